"""PyTorch as an independent oracle for linear_before_reset=True: torch.nn.GRU outputs and
autograd gradients, packed sequences for lengths, the reverse half of a bidirectional GRU."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grufast import functional as F

from .helpers import assert_close, problem
from .oracles import torch_autograd_gru_no_lbr, torch_gru

torch.set_num_threads(1)


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
    assert (g.b_ih is None) == (g.b_hh is None) == (not c["bias"])
    ours = [a for a in g if a is not None]
    assert len(ours) == len(tg) == (6 if c["bias"] else 4)
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
    assert len(g) == len(tg) == 6
    for name, a, b in zip(g._fields, g, tg):
        assert_close(a, b, dtype, "grad", name)


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
    # Without biases, their gradients are None (not zeros): the rest must line up with torch.
    assert (g.b_ih is None) == (g.b_hh is None) == (not c["bias"])
    ours = [a for a in g if a is not None]
    assert len(ours) == len(tg) == (6 if c["bias"] else 4)
    for name, a, b in zip(g._fields, ours, tg):
        assert_close(a, b, dtype, "grad", name)
