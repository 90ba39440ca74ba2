"""GRU.gates and GRUCell.gates against the gates recomputed step by step in PyTorch from the
same weights."""

import numpy as np
import pytest
import torch

import grufast
from tests.helpers import assert_close

TORCH = {np.float32: torch.float32, np.float64: torch.float64}


def _torch_gates(sd, x, h0, lengths, num_layers, D, H, lbr):
    """r, z, n (L*D, T, B, H) and y of the last layer, step by step in torch (float64)."""
    x = torch.tensor(x, dtype=torch.float64)
    T, B, _ = x.shape
    out = {g: torch.zeros(num_layers * D, T, B, H, dtype=torch.float64) for g in "rzn"}
    inp = x
    for k in range(num_layers):
        y = torch.zeros(T, B, D * H, dtype=torch.float64)
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            w_ih, w_hh = (torch.tensor(sd[n + sfx], dtype=torch.float64)
                          for n in ("weight_ih", "weight_hh"))
            b_ih, b_hh = (torch.tensor(sd[n + sfx], dtype=torch.float64)
                          for n in ("bias_ih", "bias_hh"))
            for b in range(B):
                h = torch.tensor(h0[k * D + d, b], dtype=torch.float64)
                steps = range(lengths[b] - 1, -1, -1) if d else range(lengths[b])
                for t in steps:
                    gi = inp[t, b] @ w_ih.T + b_ih
                    gh = h @ w_hh.T + b_hh
                    r = torch.sigmoid(gi[:H] + gh[:H])
                    z = torch.sigmoid(gi[H:2 * H] + gh[H:2 * H])
                    if lbr:
                        n = torch.tanh(gi[2 * H:] + r * gh[2 * H:])
                    else:
                        n = torch.tanh(gi[2 * H:] + (r * h) @ w_hh[2 * H:].T + b_hh[2 * H:])
                    h = (1 - z) * n + z * h
                    for g, v in zip("rzn", (r, z, n)):
                        out[g][k * D + d, t, b] = v
                    y[t, b, d * H:(d + 1) * H] = h
        inp = y
    return [out[g].numpy() for g in "rzn"], inp.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layers, bidirectional, lbr", [
    (1, False, True), (2, True, True), (2, False, False), (1, True, False)])
def test_gates_match_torch(dtype, layers, bidirectional, lbr):
    rng = np.random.default_rng(0)
    T, B, I, H = 5, 3, 4, 6
    D = 2 if bidirectional else 1
    gru = grufast.GRU(I, H, layers, bidirectional=bidirectional, linear_before_reset=lbr,
                      dtype=dtype, seed=1).eval()
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    lengths = np.array([5, 0, 3])
    g = gru.gates(x, h0, lengths=lengths)
    assert isinstance(g, grufast.GRUGates)
    (r, z, n), y_last = _torch_gates(gru.state_dict(), x, h0, lengths, layers, D, H, lbr)
    for got, want, name in zip(g, (r, z, n), "rzn"):
        assert got.shape == (layers * D, T, B, H) and got.dtype == dtype
        assert_close(got, want, dtype, "fwd", name)
    # the recomputation is the model: its last layer is the GRU's output
    assert_close(gru(x, h0, lengths=lengths)[0], y_last, dtype, "fwd", "y")
    # zeros past lengths
    assert not g.z[:, 3:, 2].any() and not g.r[:, :, 1].any()
    if lbr:  # the same recomputation agrees with torch's own GRU
        tg = torch.nn.GRU(I, H, layers, bidirectional=bidirectional, dtype=torch.float64)
        tg.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                            for k, v in gru.state_dict().items()})
        full = np.full(B, T)
        _, y_full = _torch_gates(gru.state_dict(), x, h0, full, layers, D, H, True)
        ty = tg(torch.tensor(x, dtype=torch.float64), torch.tensor(h0, dtype=torch.float64))
        np.testing.assert_allclose(y_full, ty[0].detach().numpy(), atol=1e-12)


def test_layouts_batch_first_and_unbatched():
    rng = np.random.default_rng(1)
    gru = grufast.GRU(3, 4, 2, bidirectional=True, dtype=np.float64, seed=2).eval()
    x = rng.standard_normal((6, 2, 3))
    tm = gru.gates(x)
    gru.batch_first = True
    bf = gru.gates(x.transpose(1, 0, 2))
    for a, b in zip(tm, bf):
        assert b.shape == (4, 2, 6, 4)
        np.testing.assert_array_equal(a.transpose(0, 2, 1, 3), b)
    ub = gru.gates(x[:, 1])
    for a, b in zip(tm, ub):
        assert b.shape == (4, 6, 4)
        np.testing.assert_allclose(a[:, :, 1], b, rtol=0, atol=1e-15)


def test_train_mode_no_dropout_no_tape():
    rng = np.random.default_rng(2)
    gru = grufast.GRU(3, 4, 2, dropout=0.5, dtype=np.float64, seed=3)
    x = rng.standard_normal((5, 2, 3))
    train_gates = gru.gates(x)  # no dropout: the same gates as in eval mode
    with pytest.raises(ValueError, match="forward in train mode"):
        gru.backward(np.ones((5, 2, 4)))  # gates recorded nothing
    eval_gates = gru.eval().gates(x)
    for a, b in zip(train_gates, eval_gates):
        np.testing.assert_array_equal(a, b)
    # A tape from a training forward survives a gates call.
    gru.train()
    gru.dropout = 0.0
    y, _ = gru(x)
    gru.gates(x)
    dx, _ = gru.backward(np.ones_like(y))
    ref = grufast.GRU(3, 4, 2, dtype=np.float64, seed=3)
    ref.load_state_dict(gru.state_dict())
    ref(x)
    np.testing.assert_array_equal(ref.backward(np.ones_like(y))[0], dx)


def test_gates_input_errors():
    gru = grufast.GRU(3, 4)
    with pytest.raises(ValueError, match="input_size = 3"):
        gru.gates(np.ones((5, 2, 2)))
    with pytest.raises(ValueError, match="lengths must lie in"):
        gru.gates(np.ones((5, 2, 3)), lengths=[6, 1])
    with pytest.raises(ValueError, match="h0 must have shape"):
        gru.gates(np.ones((5, 2, 3)), np.zeros((1, 3, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
def test_cell_gates_match_torch(dtype, lbr):
    rng = np.random.default_rng(3)
    cell = grufast.GRUCell(4, 5, linear_before_reset=lbr, dtype=dtype, seed=4)
    x = rng.standard_normal((3, 4)).astype(dtype)
    h = rng.standard_normal((3, 5)).astype(dtype)
    sd = {k + "_l0": v for k, v in cell.state_dict().items()}
    (r, z, n), _ = _torch_gates(sd, x[None], h[None], [1, 1, 1], 1, 1, 5, lbr)
    got = cell.gates(x, h)
    for a, b, name in zip(got, (r[0, 0], z[0, 0], n[0, 0]), "rzn"):
        assert a.shape == (3, 5) and a.dtype == dtype
        assert_close(a, b, dtype, "fwd", name)
    one = cell.gates(x[1])  # unbatched, h None: zeros
    (r1, z1, n1), _ = _torch_gates(sd, x[None, 1:2], np.zeros((1, 1, 5)), [1], 1, 1, 5, lbr)
    for a, b in zip(one, (r1[0, 0, 0], z1[0, 0, 0], n1[0, 0, 0])):
        assert a.shape == (5,)
        assert_close(a, b, dtype, "fwd", "unbatched")
    with pytest.raises(ValueError, match="h must have shape"):
        cell.gates(x, h[:2])


@pytest.mark.parametrize("B, H", [(16, 64), (1, 256)])  # batch-split and unit-split threads
def test_gates_on_threaded_paths_rebuild_the_output(B, H):
    """On two threads: the gates give back the model's output through h' = (1-z) n + z h."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(5)
    gru = grufast.GRU(3, H, dtype=np.float64, seed=6).eval()
    x = rng.standard_normal((6, B, 3))
    with threadpool_limits(2):
        g = gru.gates(x)
        y, _ = gru(x)
    h = np.zeros((B, H))
    for t in range(6):
        h = (1 - g.z[0, t]) * g.n[0, t] + g.z[0, t] * h
        np.testing.assert_allclose(h, y[t], rtol=0, atol=1e-12)
    with threadpool_limits(1):
        one = gru.gates(x)
    for a, b in zip(g, one):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_gates_of_a_reverse_only_layer_run_backwards_in_time():
    # A reverse-only layer (ONNX direction="reverse", Keras go_backwards) runs t = T-1 ... 0:
    # its gates are those of the same weights run forward on the time-flipped input.
    rng = np.random.default_rng(3)
    rev = grufast.GRU(3, 5, num_layers=2, reverse=True, seed=1).eval()
    fwd = grufast.GRU(3, 5, num_layers=2, seed=1).eval()
    fwd.load_state_dict(rev.state_dict())
    x = rng.standard_normal((7, 2, 3))
    got = rev.gates(x)
    want = fwd.gates(x[::-1])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w[:, ::-1], rtol=0, atol=1e-6)
