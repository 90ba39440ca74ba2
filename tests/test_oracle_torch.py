"""PyTorch as an independent oracle for linear_before_reset=True: torch.nn.GRU outputs and
autograd gradients, packed sequences for lengths, the reverse half of a bidirectional GRU."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grufast import functional as F

from .helpers import assert_close, problem

torch.set_num_threads(1)
TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def torch_gru(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, dy, dh):
    """Run torch.nn.GRU and return y, h_n and the autograd gradients of sum(y dy + h_n dh)."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    tdt = TORCH_DTYPE[x.dtype]
    gru = torch.nn.GRU(I, H, bias=b_ih is not None, bidirectional=reverse, dtype=tdt)
    sfx = "_reverse" if reverse else ""
    params = {f"weight_ih_l0{sfx}": w_ih, f"weight_hh_l0{sfx}": w_hh}
    if b_ih is not None:
        params.update({f"bias_ih_l0{sfx}": b_ih, f"bias_hh_l0{sfx}": b_hh})
    with torch.no_grad():
        for name, value in params.items():
            getattr(gru, name).copy_(torch.from_numpy(value))
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(np.stack([h0] * (2 if reverse else 1)), requires_grad=True)
    if lengths is None:
        out, hn = gru(xt, ht)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.from_numpy(lengths), enforce_sorted=False)
        out, hn = gru(packed, ht)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    if reverse:
        out, hn = out[..., H:], hn[1:]
    loss = (out * torch.from_numpy(dy)).sum() + (hn[0] * torch.from_numpy(dh)).sum()
    loss.backward()
    grads = [xt.grad, ht.grad[-1]] + [getattr(gru, name).grad for name in params]
    return out.detach().numpy(), hn[0].detach().numpy(), [g.numpy() for g in grads]


@st.composite
def cases(draw):
    T = draw(st.integers(1, 8))
    B = draw(st.integers(1, 5))
    return dict(
        T=T, B=B, I=draw(st.integers(1, 9)), H=draw(st.integers(1, 9)),
        dtype=np.dtype(draw(st.sampled_from([np.float32, np.float64]))),
        bias=draw(st.booleans()), reverse=draw(st.booleans()),
        # torch's packed sequences refuse length 0; lengths 0 are covered by the reference.
        lengths=draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(cases())
def test_matches_torch_gru(c):
    rng = np.random.default_rng(c["seed"])
    dtype = c["dtype"]
    x, h0, *w = problem(rng, c["T"], c["B"], c["I"], c["H"], dtype, bias=c["bias"])
    lengths = None if c["lengths"] is None else np.array(c["lengths"], np.int64)
    y, h, cache = F.gru_forward(x, h0, *w, lengths=lengths, reverse=c["reverse"],
                                training=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(h.shape).astype(dtype)
    g = F.gru_backward(dy, dh, cache)
    ty, th, tg = torch_gru(x, h0, *w, lengths, c["reverse"], dy, dh)
    assert_close(y, ty, dtype, "fwd", "y")
    assert_close(h, th, dtype, "fwd", "h_n")
    ours = [a for a in g if a is not None]
    assert len(ours) == len(tg)
    for name, a, b in zip(g._fields, ours, tg):
        assert_close(a, b, dtype, "grad", name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_on_a_larger_shape(dtype):
    rng = np.random.default_rng(11)
    x, h0, *w = problem(rng, 30, 7, 33, 40, dtype)
    lengths = np.array([30, 1, 17, 30, 29, 2, 8])
    y, h, cache = F.gru_forward(x, h0, *w, lengths=lengths, training=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(h.shape).astype(dtype)
    g = F.gru_backward(dy, dh, cache)
    ty, th, tg = torch_gru(x, h0, *w, lengths, False, dy, dh)
    assert_close(y, ty, dtype, "fwd", "y")
    assert_close(h, th, dtype, "fwd", "h_n")
    for name, a, b in zip(g._fields, g, tg):
        assert_close(a, b, dtype, "grad", name)


def torch_autograd_gru_no_lbr(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, dy, dh):
    """linear_before_reset=False written in torch ops: autograd supplies the gradients that
    torch.nn.GRU cannot (it only computes the other variant)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, h0, w_ih, w_hh)]
    xt, h, wi, wh = leaves
    if b_ih is not None:
        leaves += [torch.tensor(b_ih, requires_grad=True), torch.tensor(b_hh, requires_grad=True)]
        bi, bh = leaves[4:]
    else:
        bi = bh = torch.zeros(3 * H, dtype=xt.dtype)
    lens = torch.from_numpy(np.full(B, T) if lengths is None else lengths)
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        gi = xt[t] @ wi.T + bi
        r = torch.sigmoid(gi[:, :H] + h @ wh[:H].T + bh[:H])
        z = torch.sigmoid(gi[:, H:2 * H] + h @ wh[H:2 * H].T + bh[H:2 * H])
        n = torch.tanh(gi[:, 2 * H:] + (r * h) @ wh[2 * H:].T + bh[2 * H:])
        valid = (t < lens)[:, None]
        new = (1 - z) * n + z * h
        ys[t] = torch.where(valid, new, torch.zeros_like(new))
        h = torch.where(valid, new, h)
    y = torch.stack(ys)
    ((y * torch.from_numpy(dy)).sum() + (h * torch.from_numpy(dh)).sum()).backward()
    return y.detach().numpy(), h.detach().numpy(), [a.grad.numpy() for a in leaves]


@given(cases())
def test_no_lbr_matches_torch_autograd(c):
    rng = np.random.default_rng(c["seed"])
    dtype = c["dtype"]
    x, h0, *w = problem(rng, c["T"], c["B"], c["I"], c["H"], dtype, bias=c["bias"])
    lengths = None if c["lengths"] is None else np.array(c["lengths"], np.int64)
    y, h, cache = F.gru_forward(x, h0, *w, lengths=lengths, reverse=c["reverse"],
                                linear_before_reset=False, training=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(h.shape).astype(dtype)
    g = F.gru_backward(dy, dh, cache)
    ty, th, tg = torch_autograd_gru_no_lbr(x, h0, *w, lengths, c["reverse"], dy, dh)
    assert_close(y, ty, dtype, "fwd", "y")
    assert_close(h, th, dtype, "fwd", "h_n")
    for name, a, b in zip(g._fields, [a for a in g if a is not None], tg):
        assert_close(a, b, dtype, "grad", name)
