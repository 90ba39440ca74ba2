"""The layer's own behaviour, black-box: dropout statistics and gradients, weights reloaded,
train/eval mode through interop and save/load, padding in training and inference, the
initialisation range, integer inputs, GRUCell's variant and fast paths, the other variant's
layer gradients against torch autograd, third-party ONNX files and the CLI self-check.

Each test here was written to catch a bug planted by tools/mutate.py that the rest of the
suite let through."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import grufast
from grufast import functional as F
from grufast import reference as R

from .helpers import assert_close, assert_layer_close, problem
from .oracles import torch_recurrence

torch.set_num_threads(1)


# -- dropout ---------------------------------------------------------------------------

def _dropout_probe(p, H=64, seed=0):
    """A 2-layer GRU whose second layer passes its input through almost unchanged: no
    recurrence, update gate shut (z = sigmoid(-50)), n = tanh(eps * x). Its output divided by
    eps is the dropped-out output of layer 0, to ~eps^2 relative."""
    eps = 1e-4
    gru = grufast.GRU(H, H, 2, dropout=p, dtype=np.float64, seed=seed)
    sd = gru.state_dict()
    w = np.zeros((3 * H, H))
    w[2 * H:] = eps * np.eye(H)
    b = np.zeros(3 * H)
    b[H:2 * H] = -50.0
    sd.update(weight_ih_l1=w, weight_hh_l1=np.zeros((3 * H, H)), bias_ih_l1=b,
              bias_hh_l1=np.zeros(3 * H))
    gru.load_state_dict(sd)
    first = grufast.GRU(H, H, 1, dtype=np.float64)  # layer 0 alone, no dropout
    first.load_state_dict({k: v for k, v in sd.items() if k.endswith("_l0")})
    return gru, first, eps


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_dropout_drops_a_fraction_p_and_rescales_the_rest(p):
    gru, first, eps = _dropout_probe(p)
    x = np.random.default_rng(1).standard_normal((10, 8, 64))
    y, _ = gru(x)
    out0, _ = first.eval()(x)
    ratio = y / eps / out0
    dropped = np.abs(ratio) < 1e-6
    kept = ~dropped
    # 5120 units: the fraction dropped is p to within 5 standard deviations (~0.032).
    assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / ratio.size), dropped.mean()
    np.testing.assert_allclose(ratio[kept], 1 / (1 - p), rtol=1e-6)
    # A fresh mask per forward, and none in eval mode.
    y2, _ = gru(x)
    assert (np.abs(y2 / eps / out0) < 1e-6).mean() > 0 and not np.array_equal(y, y2)
    y_eval, _ = gru.eval()(x)
    np.testing.assert_allclose(y_eval / eps / out0, 1.0, rtol=1e-6)


def test_dropout_gradients_flow_through_the_same_mask():
    p, H = 0.4, 64
    gru, first, eps = _dropout_probe(p, H, seed=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, H))
    y, _ = gru(x)
    dy = rng.standard_normal(y.shape)
    dx, _ = gru.backward(dy)
    out0, _ = first(x)  # train mode: keeps what backward needs
    mask = np.where(np.abs(y / eps / out0) < 1e-6, 0.0, 1 / (1 - p))
    # dL/d(out0) = mask * eps * (1 - n^2) * dy for layer 1 = tanh(eps * x) with z ~ 0.
    dx_want, _ = first.backward(mask * eps * (1 - y**2) * dy)
    assert_close(dx, dx_want, np.float64, "grad", "dx")
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        assert_close(gru.grads[name], first.grads[name], np.float64, "grad", name)


# -- weights, modes, save/load ---------------------------------------------------------

@pytest.mark.parametrize("B", [1, 5, 70])
def test_forward_after_load_state_dict_uses_the_new_weights(B):
    old = grufast.GRU(4, 6, 2, bidirectional=True, dtype=np.float64, seed=1).eval()
    new = grufast.GRU(4, 6, 2, bidirectional=True, dtype=np.float64, seed=2).eval()
    x = np.random.default_rng(4).standard_normal((3, B, 4))
    old(x)  # prepares (and caches) the old weights
    old.load_state_dict(new.state_dict())
    np.testing.assert_array_equal(old(x)[0], new(x)[0])
    uni_old = grufast.GRU(4, 6, 2, dtype=np.float64, seed=1).eval()
    uni_new = grufast.GRU(4, 6, 2, dtype=np.float64, seed=2).eval()
    uni_old.step(x[0])
    uni_old.load_state_dict(uni_new.state_dict())
    np.testing.assert_array_equal(uni_old.step(x[0])[0], uni_new.step(x[0])[0])


def test_cell_after_load_state_dict_uses_the_new_weights():
    old = grufast.GRUCell(4, 6, dtype=np.float64, seed=1)
    new = grufast.GRUCell(4, 6, dtype=np.float64, seed=2)
    x = np.random.default_rng(5).standard_normal((3, 4))
    old(x[0]), old(x)  # fast path and general path
    old.load_state_dict(new.state_dict())
    np.testing.assert_array_equal(old(x[0]), new(x[0]))
    np.testing.assert_array_equal(old(x), new(x))


@pytest.mark.parametrize("training", [True, False])
def test_from_torch_copies_the_mode(training):
    m = torch.nn.GRU(3, 4, 2, dropout=0.25, batch_first=True).train(training)
    gru = grufast.GRU.from_torch(m)
    assert gru.training is training
    assert gru.dropout == 0.25 and gru.batch_first


def test_load_returns_a_model_in_eval_mode(tmp_path):
    gru = grufast.GRU(3, 4, 2, dropout=0.5, seed=0)  # train mode, dropout active
    grufast.save(gru, tmp_path / "m.npz")
    back = grufast.load(tmp_path / "m.npz")
    assert back.training is False
    x = np.random.default_rng(6).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(back(x)[0], back(x)[0])  # no dropout: deterministic
    np.testing.assert_array_equal(back(x)[0], gru.eval()(x)[0])


def test_initialisation_spans_plus_minus_one_over_sqrt_h():
    """PyTorch's U(-1/sqrt(H), 1/sqrt(H)): with thousands of draws, the largest |w| is within
    2% of the bound and never beyond it; the mean |w| is half the bound."""
    for model in (grufast.GRU(10, 400, 2, bidirectional=True, seed=0),
                  grufast.GRUCell(10, 400, seed=0)):
        k = 1 / np.sqrt(400)
        for name, p in model.state_dict().items():
            a = np.abs(p.astype(np.float64))
            assert a.max() <= k * (1 + 1e-6), name
            assert a.max() >= k * 0.98, name  # P(fail) = 0.99^1200 ~ 6e-6 per draw
            assert abs(a.mean() - k / 2) < 0.05 * k, name


# -- inputs ----------------------------------------------------------------------------

def test_integer_inputs_are_accepted_and_equal_the_float_result():
    rng = np.random.default_rng(7)
    xi = rng.integers(-3, 4, (5, 2, 3)).astype(np.int32)
    xf = xi.astype(np.float32)
    gru = grufast.GRU(3, 4, 2, seed=0).eval()
    np.testing.assert_array_equal(gru(xi)[0], gru(xf)[0])
    np.testing.assert_array_equal(gru(xi.tolist())[0], gru(xf)[0])
    np.testing.assert_array_equal(gru.step(xi[0])[0], gru.step(xf[0])[0])
    cell = grufast.GRUCell(3, 4, seed=0)
    np.testing.assert_array_equal(cell(xi[0]), cell(xf[0]))
    np.testing.assert_array_equal(cell(xi[0, 0]), cell(xf[0, 0]))
    _, h0, *w = problem(rng, 5, 2, 3, 4, np.float64)
    np.testing.assert_array_equal(F.gru_forward(xi, h0, *w)[0],
                                  F.gru_forward(xf.astype(np.float64), h0, *w)[0])


# -- padding ---------------------------------------------------------------------------

@pytest.mark.parametrize("lbr", [True, False])
def test_layer_nan_padding_gives_the_zero_padding_gradients(lbr):
    rng = np.random.default_rng(8)
    lengths = np.array([6, 2, 0, 4])
    x = rng.standard_normal((6, 4, 3))
    pad = np.arange(6)[:, None] >= lengths[None, :]
    x_nan, x_zero = x.copy(), x.copy()
    x_nan[pad], x_zero[pad] = np.nan, 0.0
    dy = rng.standard_normal((6, 4, 10)) * ~pad[:, :, None]
    runs = []
    for xx in (x_nan, x_zero):
        gru = grufast.GRU(3, 5, 2, bidirectional=True, linear_before_reset=lbr,
                          dtype=np.float64, seed=3)
        y, h = gru(xx, lengths=lengths)
        dx, dh0 = gru.backward(dy, np.ones_like(h))
        runs.append((y, h, dx, dh0, gru.grads))
    (y, h, dx, dh0, g), (y0, h0, dx0, dh00, g0) = runs
    for a, b in ((y, y0), (h, h0), (dh0, dh00)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dx[~pad], dx0[~pad])
    for name in g0:
        assert np.all(np.isfinite(g[name])), name
        np.testing.assert_array_equal(g[name], g0[name], err_msg=name)


def test_nan_padding_in_inference_never_reaches_the_results():
    rng = np.random.default_rng(9)
    lengths = np.array([5, 1, 3])
    x = rng.standard_normal((5, 3, 3)).astype(np.float32)
    pad = np.arange(5)[:, None] >= lengths[None, :]
    x_nan, x_zero = x.copy(), x.copy()
    x_nan[pad], x_zero[pad] = np.nan, 0.0
    gru = grufast.GRU(3, 4, 2, bidirectional=True, seed=1).eval()
    y, h = gru(x_nan, lengths=lengths)
    y0, h0 = gru(x_zero, lengths=lengths)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(h, h0)
    assert not y[pad].any()  # padding outputs zeros
    y1, h1, _ = F.gru_forward(x_nan, None, *problem(rng, 1, 1, 3, 4, np.float32)[2:],
                              lengths=lengths, reverse=True)
    assert np.all(np.isfinite(y1)) and np.all(np.isfinite(h1)) and not y1[pad].any()


# -- GRUCell and step ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
def test_cell_both_variants_and_paths_match_the_reference(dtype, lbr):
    cell = grufast.GRUCell(5, 7, linear_before_reset=lbr, dtype=dtype, seed=4)
    sd = {k: v.astype(np.float64) for k, v in cell.state_dict().items()}
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 5)).astype(dtype)
    h = rng.standard_normal((3, 7)).astype(dtype)

    def ref(xx, hh):
        return R.gru_forward(xx[None].astype(np.float64),
                             None if hh is None else hh.astype(np.float64),
                             sd["weight_ih"], sd["weight_hh"], sd["bias_ih"], sd["bias_hh"],
                             linear_before_reset=lbr)[1]

    assert_close(cell(x, h), ref(x, h), dtype, "fwd", "batched")             # general path
    assert_close(cell(x), ref(x, None), dtype, "fwd", "batched, h None")
    for b in range(3):                                                       # fast path
        assert_close(cell(x[b], h[b]), ref(x[b:b + 1], h[b:b + 1])[0], dtype, "fwd", "1-D")
        assert_close(cell(x[b]), ref(x[b:b + 1], None)[0], dtype, "fwd", "1-D, h None")
        assert_close(cell(x[b].tolist()), ref(x[b:b + 1], None)[0], dtype, "fwd", "list")


@pytest.mark.parametrize("lbr", [True, False])
def test_step_with_h_none_starts_from_zeros(lbr):
    gru = grufast.GRU(4, 6, 2, linear_before_reset=lbr, dtype=np.float64, seed=1).eval()
    x = np.random.default_rng(11).standard_normal((3, 4))
    y_t, h = gru.step(x)
    y_z, h_z = gru.step(x, np.zeros((2, 3, 6)))
    np.testing.assert_array_equal(y_t, y_z)
    np.testing.assert_array_equal(h, h_z)
    y_full, h_full = gru(x[None])
    np.testing.assert_allclose(y_t, y_full[0], rtol=1e-13, atol=1e-14)
    y1, h1 = gru.step(x[0])  # unbatched, h None
    np.testing.assert_allclose(y1, y_full[0, 0], rtol=1e-13, atol=1e-14)
    assert h1.shape == (2, 6)


# -- the other variant's layer gradients -----------------------------------------------

def _torch_stack(sd, x, h0, lengths, layers, bidirectional, lbr, dy, dh):
    """A stacked, bidirectional GRU written in torch ops, either variant: y, h_n, dx, dh0 and
    the parameter gradients by state-dict name, of sum(y dy + h_n dh)."""
    params = {k: torch.tensor(v, requires_grad=True) for k, v in sd.items()}
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    T, B, _ = x.shape
    lens = torch.from_numpy(np.full(B, T) if lengths is None else lengths)
    inp, finals = xt, []
    D = 2 if bidirectional else 1
    for k in range(layers):
        outs = []
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            y, h = torch_recurrence(inp, ht[k * D + d], params["weight_ih" + sfx],
                                    params["weight_hh" + sfx], params["bias_ih" + sfx],
                                    params["bias_hh" + sfx], lens, d == 1, lbr)
            outs.append(y)
            finals.append(h)
        inp = torch.cat(outs, dim=-1)
    hn = torch.stack(finals)
    ((inp * torch.from_numpy(dy)).sum() + (hn * torch.from_numpy(dh)).sum()).backward()
    return (inp.detach().numpy(), hn.detach().numpy(), xt.grad.numpy(), ht.grad.numpy(),
            {k: p.grad.numpy() for k, p in params.items()})


@pytest.mark.parametrize("lbr", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_gradients_match_torch_autograd_for_both_variants(lbr, dtype):
    gru = grufast.GRU(3, 5, 2, bidirectional=True, linear_before_reset=lbr, dtype=dtype,
                      seed=6)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 4, 3)).astype(dtype)
    h0 = rng.standard_normal((4, 4, 5)).astype(dtype)
    lengths = np.array([6, 1, 4, 5])
    y, hn = gru(x, h0, lengths=lengths)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(hn.shape).astype(dtype)
    dx, dh0 = gru.backward(dy, dh)
    assert_layer_close((y, hn, dx, dh0, gru.grads),
                       _torch_stack(gru.state_dict(), x, h0, lengths, 2, True, lbr, dy, dh),
                       dtype)


# -- a third-party ONNX file -----------------------------------------------------------

def test_from_onnx_reads_a_hand_written_node_with_defaults_biases_and_lengths(tmp_path):
    """A GRU node as another tool writes it: no linear_before_reset attribute (ONNX's default
    0), W, R and B as initializers, sequence_lens and initial_h as graph inputs. grufast's
    import must give ONNX Runtime's outputs on the same file."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(13)
    T, B, I, H = 5, 3, 4, 6
    W = rng.uniform(-0.5, 0.5, (1, 3 * H, I)).astype(np.float32)
    Rw = rng.uniform(-0.5, 0.5, (1, 3 * H, H)).astype(np.float32)
    Bb = rng.uniform(-0.5, 0.5, (1, 6 * H)).astype(np.float32)
    node = helper.make_node("GRU", ["X", "W", "R", "B", "L", "H0"], ["Y", "Y_h"],
                            hidden_size=H, name="third_party_gru")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]),
         helper.make_tensor_value_info("L", TensorProto.INT32, [B]),
         helper.make_tensor_value_info("H0", TensorProto.FLOAT, [1, B, H])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, B, H]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, B, H])],
        [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (Rw, "R"), (Bb, "B"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    path = str(tmp_path / "third_party.onnx")
    onnx.save(model, path)
    gru = grufast.GRU.from_onnx(path)
    assert not gru.linear_before_reset and gru.bias and not gru.training
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    lengths = np.array([5, 2, 4], np.int32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    oy, oh = sess.run(None, {"X": x, "L": lengths, "H0": h0})
    y, h = gru(x, h0, lengths=lengths)
    assert_close(y, oy[:, 0], np.float32, "fwd", "y")
    assert_close(h, oh, np.float32, "fwd", "h_n")


# -- the CLI ---------------------------------------------------------------------------

def test_cli_self_check_runs_and_prints_its_table(monkeypatch, capsys):
    """The self-check's table of errors and its verdict. Its timings are not under test (and
    take minutes on a loaded machine): median_ms is stubbed out. The module entry point runs
    in a subprocess (--help)."""
    from grufast import cli

    monkeypatch.setattr(cli, "median_ms", lambda *args: 1.0)
    assert cli.main(["--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "forward err" in out and "grad err" in out and "self-check passed" in out
    rows = [ln for ln in out.splitlines() if ln.startswith(("float32", "float64"))]
    assert len(rows) == 8  # dtype x variant x direction
    for row in rows:
        fwd, grad = (float(v) for v in row.split()[-2:])
        assert fwd <= (5e-5 if row.startswith("float32") else 1e-10)
        assert grad <= (5e-4 if row.startswith("float32") else 1e-10)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(grufast.__file__))] + sys.path))
    proc = subprocess.run([sys.executable, "-m", "grufast", "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "self-check" in proc.stdout.lower(), proc.stderr


@pytest.mark.parametrize("form", ["time-major", "torch-tensor", "view"])
def test_train_forward_keeps_a_private_copy_of_x(form):
    """backward gives the gradients of the x the forward saw, even when the caller reuses
    x's buffer in between (the tape used to keep the caller's array itself)."""
    rng = np.random.default_rng(21)
    base = rng.standard_normal((6, 3, 4)).astype(np.float32)
    gru, head = grufast.GRU(4, 5, seed=22).train(), grufast.Linear(4, 2, seed=23).train()

    def grads(x):
        gru.zero_grad()
        head.zero_grad()
        y, _ = gru(x)
        out = head(x)
        return y, out

    y, out = grads(base.copy())
    gru.backward(np.ones_like(y))
    head.backward(np.ones_like(out))
    want = {k: v.copy() for m in (gru, head) for k, v in m.grads.items()}
    buf = base.copy()
    x = {"time-major": buf, "torch-tensor": torch.from_numpy(buf),
         "view": buf.reshape(18, 4).reshape(6, 3, 4)}[form]
    y, out = grads(x)
    buf *= 3  # the caller reuses its buffer before backward
    gru.backward(np.ones_like(y))
    head.backward(np.ones_like(out))
    for m in (gru, head):
        for k, v in m.grads.items():
            np.testing.assert_array_equal(v, want[k], err_msg=k)


@pytest.mark.parametrize("change", ["optimiser step", "load_state_dict"])
@pytest.mark.parametrize("layer", ["GRU", "Linear"])
def test_backward_refuses_weights_changed_since_the_forward(change, layer):
    model = (grufast.GRU(4, 5, seed=24) if layer == "GRU" else grufast.Linear(4, 5)).train()
    x = np.ones((3, 2, 4), np.float32)
    out = model(x)
    y = out[0] if layer == "GRU" else out
    if change == "optimiser step":
        grufast.optim.SGD([model], lr=0.1).step()
    else:
        model.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="weights changed between the train-mode forward"):
        model.backward(np.ones_like(y))
    out = model(x)  # a new forward, then backward: fine
    model.backward(np.ones_like(out[0] if layer == "GRU" else out))
