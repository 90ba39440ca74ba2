"""grufast.GRU and GRUCell against torch.nn.GRU / GRUCell and torch autograd, over every
combination of layers x bidirectional x batch_first x bias x lengths x dtype."""

import numpy as np
import pytest
import torch

import grufast

from .helpers import assert_close, assert_layer_close
from .oracles import LAYER_CASES, layer_and_torch

torch.set_num_threads(1)
TORCH = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.mark.parametrize("layers,bidirectional,batch_first,bias,use_lengths,dtype",
                         LAYER_CASES)
def test_gru_matches_torch(layers, bidirectional, batch_first, bias, use_lengths, dtype):
    rng = np.random.default_rng(layers * 100 + bidirectional * 10 + batch_first)
    gru, (y, hn, dx, dh0, _), theirs = layer_and_torch(
        rng, layers, bidirectional, batch_first, bias, use_lengths, dtype)
    assert gru.training and gru.dtype == dtype  # from_torch copies the mode, forward keeps it
    assert_layer_close((y, hn, dx, dh0, gru.grads), theirs, dtype)


def test_gradients_accumulate_until_zero_grad():
    m = torch.nn.GRU(3, 4, 2)
    gru = grufast.GRU.from_torch(m)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    y, _ = gru(x)
    gru.backward(np.ones_like(y))
    once = {k: v.copy() for k, v in gru.grads.items()}
    y, _ = gru(x)
    gru.backward(np.ones_like(y))
    for k in once:
        np.testing.assert_allclose(gru.grads[k], 2 * once[k], rtol=1e-6, atol=1e-7)
    gru.zero_grad()
    assert all(not g.any() for g in gru.grads.values())
    with pytest.raises(ValueError, match="backward needs a forward in train mode"):
        gru.backward(np.ones_like(y))  # the tape is used up
    gru.eval()
    gru(x)
    with pytest.raises(ValueError, match="backward needs a forward in train mode"):
        gru.backward(np.ones_like(y))


def test_unbatched_input_matches_batch_of_one():
    m = torch.nn.GRU(3, 4, 2, bidirectional=True, dtype=torch.float64)
    gru = grufast.GRU.from_torch(m)
    rng = np.random.default_rng(1)
    x, h0 = rng.standard_normal((5, 3)), rng.standard_normal((4, 4))
    y, hn = gru(x, h0)
    dx, dh0 = gru.backward(np.ones_like(y), np.ones_like(hn))
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    ty, thn = m(xt, ht)
    (ty.sum() + thn.sum()).backward()
    assert y.shape == (5, 8) and hn.shape == (4, 4) and dx.shape == (5, 3) and dh0.shape == (4, 4)
    assert_close(y, ty.detach().numpy(), np.float64)
    assert_close(hn, thn.detach().numpy(), np.float64)
    assert_close(dx, xt.grad.numpy(), np.float64, "grad", "unbatched dx")
    assert_close(dh0, ht.grad.numpy(), np.float64, "grad", "unbatched dh0")
    yb, hb = gru(x[:, None], h0[:, None])
    np.testing.assert_array_equal(yb[:, 0], y)
    dxb, dh0b = gru.backward(np.ones_like(yb), np.ones_like(hb))
    np.testing.assert_array_equal(dxb[:, 0], dx)
    np.testing.assert_array_equal(dh0b[:, 0], dh0)


def test_dropout_matches_torch_with_the_same_masks():
    """Dropout between layers: rebuild the network in torch, layer by layer, with grufast's
    own masks, and compare outputs and every gradient."""
    gru = grufast.GRU(3, 5, 3, dropout=0.4, bidirectional=True, dtype=np.float64, seed=3)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2, 3))
    y, hn = gru(x)
    masks = gru._tape["masks"]
    assert masks[0] is not None and masks[1] is not None and masks[2] is None
    dy = rng.standard_normal(y.shape)
    dx, _ = gru.backward(dy)
    layers = []
    xt = torch.tensor(x, requires_grad=True)
    inp = xt
    for k in range(3):
        layer = torch.nn.GRU(inp.shape[-1], 5, bidirectional=True, dtype=torch.float64)
        with torch.no_grad():
            for name, p in layer.named_parameters():
                p.copy_(torch.from_numpy(gru.state_dict()[name.replace("l0", f"l{k}")]))
        out, _ = layer(inp)
        layers.append(layer)
        inp = out * torch.from_numpy(masks[k]) if masks[k] is not None else out
    (inp * torch.from_numpy(dy)).sum().backward()
    assert_close(y, inp.detach().numpy(), np.float64)
    assert_close(dx, xt.grad.numpy(), np.float64, "grad")
    for k, layer in enumerate(layers):
        for name, p in layer.named_parameters():
            key = name.replace("l0", f"l{k}")
            assert_close(gru.grads[key], p.grad.numpy(), np.float64, "grad", key)
    # Reproducible from the seed; no dropout in eval mode.
    again = grufast.GRU(3, 5, 3, dropout=0.4, bidirectional=True, dtype=np.float64, seed=3)
    np.testing.assert_array_equal(again(x)[0], y)
    no_drop = grufast.GRU(3, 5, 3, bidirectional=True, dtype=np.float64, seed=3)
    np.testing.assert_array_equal(again.eval()(x)[0], no_drop.eval()(x)[0])


@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("layers", [1, 3])
def test_step_equals_full_forward(lbr, layers):
    gru = grufast.GRU(4, 6, layers, linear_before_reset=lbr, dtype=np.float64, seed=1).eval()
    rng = np.random.default_rng(3)
    x, h0 = rng.standard_normal((9, 2, 4)), rng.standard_normal((layers, 2, 6))
    y, hn = gru(x, h0)
    h = h0
    for t in range(9):
        y_t, h = gru.step(x[t], h)
        np.testing.assert_allclose(y_t, y[t], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(h, hn, rtol=1e-13, atol=1e-14)
    y_t, h1 = gru.step(x[0, 0], h0[:, 0])  # unbatched
    assert y_t.shape == (6,) and h1.shape == (layers, 6)
    np.testing.assert_allclose(y_t, y[0, 0], rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="unidirectional"):
        grufast.GRU(4, 6, bidirectional=True).step(x[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch_grucell(dtype, bias):
    torch.manual_seed(1)
    m = torch.nn.GRUCell(5, 3, bias=bias, dtype=TORCH[dtype])
    cell = grufast.GRUCell.from_torch(m)
    assert set(cell.state_dict()) == set(dict(m.named_parameters()))
    rng = np.random.default_rng(4)
    x, h = rng.standard_normal((4, 5)).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)
    with torch.no_grad():
        assert_close(cell(x, h), m(torch.from_numpy(x), torch.from_numpy(h)).numpy(), dtype)
        assert_close(cell(x), m(torch.from_numpy(x)).numpy(), dtype)
        assert_close(cell(x[0], h[0]), m(torch.from_numpy(x[0]), torch.from_numpy(h[0])).numpy(),
                     dtype)


def test_state_dict_names_and_strictness():
    m = torch.nn.GRU(3, 4, 2, bidirectional=True)
    gru = grufast.GRU(3, 4, 2, bidirectional=True)
    assert list(gru.state_dict()) == list(m.state_dict())
    for name, p in m.state_dict().items():
        assert gru.state_dict()[name].shape == tuple(p.shape)
    gru.load_state_dict(m.state_dict())  # torch tensors accepted
    sd = gru.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l1'\]"):
        gru.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l1"})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        gru.load_state_dict(dict(sd, extra=np.zeros(1)))
    with pytest.raises(ValueError, match=r"state_dict\['weight_ih_l0'\] has shape \(12, 4\), "
                                         r"i\.e\. input_size 4, .* input_size 3"):
        gru.load_state_dict(dict(sd, weight_ih_l0=np.zeros((12, 4))))
    before = gru.state_dict()
    with pytest.raises(TypeError, match=r"state_dict\['bias_ih_l0'\] must hold real"):
        gru.load_state_dict(dict(sd, weight_ih_l0=sd["weight_ih_l0"] + 1,
                                 bias_ih_l0=np.array(["x"] * 12)))
    for k, v in gru.state_dict().items():  # a refused load changes nothing
        np.testing.assert_array_equal(v, before[k])
    sd["weight_ih_l0"][:] = 7  # state_dict returns copies
    assert not (gru.state_dict()["weight_ih_l0"] == 7).any()


def test_layer_without_lbr_matches_stacked_reference():
    from grufast import reference as R

    gru = grufast.GRU(3, 4, 2, bidirectional=True, linear_before_reset=False,
                      dtype=np.float64, seed=5)
    sd = gru.state_dict()
    x = np.random.default_rng(6).standard_normal((5, 2, 3))
    lengths = np.array([5, 3])
    y, hn = gru(x, lengths=lengths)
    inp, hs = x, []
    for k in range(2):
        outs = []
        for d, sfx in enumerate([f"_l{k}", f"_l{k}_reverse"]):
            o, h, _ = R.gru_forward(inp, None, sd["weight_ih" + sfx], sd["weight_hh" + sfx],
                                    sd["bias_ih" + sfx], sd["bias_hh" + sfx], lengths=lengths,
                                    reverse=d == 1, linear_before_reset=False)
            outs.append(o)
            hs.append(h)
        inp = np.concatenate(outs, axis=-1)
    np.testing.assert_allclose(y, inp, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hn, np.stack(hs), rtol=1e-12, atol=1e-13)


class _DoublingGRU(torch.nn.GRU):
    def forward(self, *args):
        y, h = super().forward(*args)
        return 2 * y, h


class _TaggedGRU(torch.nn.GRU):  # a subclass that keeps GRU's forward imports
    tag = "mine"


def _hooked(module, pre=False):
    hook = module.register_forward_pre_hook if pre else module.register_forward_hook
    hook(lambda *args: None)
    return module


def _instance_forward(module):
    plain = module.forward
    module.forward = lambda *args: tuple(2 * t for t in plain(*args))
    return module


def _mixed_dtypes():
    m = torch.nn.GRU(3, 4)
    m.bias_hh_l0 = torch.nn.Parameter(m.bias_hh_l0.detach().double())
    return m


@pytest.mark.parametrize("make, exc, match", [
    (lambda: _DoublingGRU(3, 4), TypeError, "with its own forward"),
    (lambda: _instance_forward(torch.nn.GRU(3, 4)), TypeError, "with its own forward"),
    (lambda: _hooked(torch.nn.GRU(3, 4)), ValueError, "forward hooks"),
    (lambda: _hooked(torch.nn.GRUCell(3, 4), pre=True), ValueError, "forward pre-hooks"),
    (lambda: _hooked(torch.nn.Linear(3, 4)), ValueError, "forward hooks"),
    (_mixed_dtypes, TypeError, "share one dtype"),
    (lambda: torch.nn.GRU(3, 4, device="meta"), ValueError, "meta device"),
], ids=["subclass-forward", "instance-forward", "hook", "cell-pre-hook", "linear-hook",
        "mixed-dtypes", "meta"])
def test_from_torch_refuses_what_a_weight_copy_would_drop(make, exc, match):
    """Each of these imported as the plain module's weights and then computed something
    else (doubled outputs, a hook's change), or failed with torch's own error."""
    module = make()
    cls = {torch.nn.GRU: grufast.GRU, torch.nn.GRUCell: grufast.GRUCell,
           torch.nn.Linear: grufast.Linear}
    target = next(v for k, v in cls.items() if isinstance(module, k))
    with pytest.raises(exc, match=match):
        target.from_torch(module)


def test_from_torch_takes_a_subclass_that_keeps_the_forward():
    m = _TaggedGRU(3, 4).eval()
    x = torch.randn(5, 2, 3)
    gru = grufast.GRU.from_torch(m)
    np.testing.assert_allclose(gru(x.numpy())[0], m(x)[0].detach().numpy(), atol=1e-6)
