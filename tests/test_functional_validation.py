"""grufast.functional refuses bad input with errors that name the argument, and never
modifies a caller's array."""

import numpy as np
import pytest

from grufast import functional as F
from grufast._validate import c_array

from .helpers import problem, unaligned


@pytest.fixture
def args():
    return problem(np.random.default_rng(0), 4, 3, 5, 2, np.float32)


def call(args, **changes):
    names = ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"]
    kw = dict(zip(names, args))
    kw.update({k: v for k, v in changes.items() if k in names})
    opts = {k: v for k, v in changes.items() if k not in names}
    return F.gru_forward(kw.pop("x"), kw.pop("h0"), kw.pop("w_ih"), kw.pop("w_hh"),
                         kw.pop("b_ih"), kw.pop("b_hh"), **opts)


BAD = [
    (dict(x=np.zeros((4, 3))), ValueError, r"x must be 3-D"),
    (dict(x=np.zeros((4, 3, 6))), ValueError, r"x must have shape \(T, B, I\)"),
    (dict(x=np.zeros((4, 3, 5), complex)), TypeError, r"x must hold real numbers"),
    (dict(x=np.full((4, 3, 5), "a")), TypeError, r"x must hold real numbers"),
    (dict(x=[[["a"]]]), TypeError, r"x must hold real numbers"),
    (dict(x=None), TypeError, r"x must be an array"),
    (dict(h0=np.zeros((3, 3))), ValueError, r"h0 must have shape \(B, H\) = \(3, 2\)"),
    (dict(w_ih=np.zeros((5, 5), np.float32)), ValueError, r"w_ih must have shape \(3H, I\)"),
    (dict(w_ih=np.zeros((6, 5), np.int64)), TypeError, r"w_ih must have dtype float32"),
    (dict(w_ih=np.zeros((6, 5), np.float16)), TypeError, r"w_ih must have dtype float32"),
    (dict(w_hh=np.zeros((6, 3))), ValueError, r"w_hh must have shape \(3H, H\) = \(6, 2\)"),
    (dict(b_ih=np.zeros(5)), ValueError, r"b_ih must have shape \(3H,\)"),
    (dict(b_hh=None), ValueError, r"b_ih and b_hh must be given together"),
    (dict(lengths=[1, 2]), ValueError, r"lengths must have shape \(B,\) = \(3,\)"),
    (dict(lengths=[1, 2, 5]), ValueError, r"lengths must lie in \[0, T\] = \[0, 4\]"),
    (dict(lengths=[1, -1, 2]), ValueError, r"lengths must lie in"),
    (dict(lengths=[1.5, 1, 2]), ValueError, r"lengths must be whole numbers"),
    (dict(lengths=[np.nan, 1, 2]), ValueError, r"lengths must be whole numbers"),
    (dict(lengths=["a", "b", "c"]), TypeError, r"lengths must be integers"),
    (dict(reverse=1), TypeError, r"reverse must be a bool"),
    (dict(linear_before_reset="yes"), TypeError, r"linear_before_reset must be a bool"),
    (dict(training=None), TypeError, r"training must be a bool"),
]


@pytest.mark.parametrize("change,exc,match", BAD)
def test_forward_rejects_bad_input(args, change, exc, match):
    with pytest.raises(exc, match=match):
        call(args, **change)


def test_backward_rejects_bad_input(args):
    y, h, cache = call(args, training=True)
    with pytest.raises(TypeError, match="cache must be the GRUCache"):
        F.gru_backward(y, h, None)
    _, _, none = call(args)
    with pytest.raises(TypeError, match="training=True"):
        F.gru_backward(y, h, none)
    with pytest.raises(ValueError, match=r"dy must have shape \(T, B, H\) = \(4, 3, 2\)"):
        F.gru_backward(y[:2], h, cache)
    with pytest.raises(ValueError, match=r"dh_n must have shape \(B, H\)"):
        F.gru_backward(y, h.T, cache)
    with pytest.raises(TypeError, match="dy must hold real numbers"):
        F.gru_backward(y.astype(complex), h, cache)


def test_inputs_are_never_modified_and_any_layout_works(args):
    x, h0, w_ih, w_hh, b_ih, b_hh = args
    xf = np.asfortranarray(x.astype(np.float64))           # other dtype, other order
    h0v = np.repeat(h0, 2, axis=1)[:, ::2]                  # strided view
    w_ro = w_ih.copy()
    w_ro.flags.writeable = False                            # read-only
    inputs = [xf, h0v, w_ro, w_hh.tolist(), b_ih, b_hh]
    before = [np.array(a, copy=True) for a in inputs]
    y, h, cache = F.gru_forward(*inputs, lengths=[4, 1, 0], training=True)
    g = F.gru_backward(np.ones_like(y), np.ones_like(h), cache)
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(np.asarray(a), b)
    y2, h2, cache2 = F.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=[4, 1, 0],
                                   training=True)
    g2 = F.gru_backward(np.ones_like(y), np.ones_like(h), cache2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(h, h2)
    for a, b in zip(g, g2):
        np.testing.assert_array_equal(a, b)
    assert y.dtype == np.float32 and y.flags.c_contiguous


def test_empty_sizes(args):
    x, h0, *w = args
    y, h, cache = F.gru_forward(x[:0], h0, *w, training=True)
    assert y.shape == (0, 3, 2)
    np.testing.assert_array_equal(h, h0)
    g = F.gru_backward(None, np.ones_like(h), cache)
    np.testing.assert_array_equal(g.h0, np.ones_like(h))
    assert not g.w_ih.any() and not g.b_hh.any() and g.x.shape == (0, 3, 5)
    y, h, cache = F.gru_forward(x[:, :0], h0[:0], *w, training=True)
    assert y.shape == (4, 0, 2) and h.shape == (0, 2)
    g = F.gru_backward(None, None, cache)
    assert g.x.shape == (4, 0, 5) and not g.w_hh.any()


def test_unaligned_arrays_are_copied_before_the_kernels_read_them(args):
    """C-contiguous but unaligned arrays (a buffer's odd offset) used to reach the kernels
    as they were: reading floats through a misaligned pointer is undefined behaviour, which
    the sanitizer run reports; now they are copied, and the results are bitwise those of
    aligned arrays."""
    assert c_array(unaligned(args[0])).flags.aligned  # (UB is seen only under UBSan)
    y, h, cache = F.gru_forward(*args, training=True)
    g = F.gru_backward(np.ones_like(y), np.ones_like(h), cache)
    odd = [unaligned(a) for a in args]
    y2, h2, cache2 = F.gru_forward(*odd, training=True)
    g2 = F.gru_backward(unaligned(np.ones_like(y)), unaligned(np.ones_like(h)), cache2)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(h2, h)
    for a, b in zip(g2, g):
        np.testing.assert_array_equal(a, b)
