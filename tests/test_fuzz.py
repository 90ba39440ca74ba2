"""Fuzzing the public API with hypothesis: random shapes, dtypes, layouts and values. Each
drawn input is judged valid or not by the README's rules (any array-like of real numbers, in
any layout, of the documented shape; w_ih float32 or float64, as it fixes the dtype; lengths
whole numbers in [0, T]). A valid call must succeed and give the right answer (the
reference's, or the canonical C-contiguous call's); an invalid one must raise ValueError or
TypeError with a message. Any other outcome, or a crash, fails."""

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import grufast
from grufast import functional as F
from grufast import reference as R

from .helpers import TOL

DTYPES = [np.float32, np.float64, np.int32, np.float16, np.complex64, np.bool_, object, "U2"]
REAL_FLOATS = (np.float32, np.float64)


VALID_DTYPES = [np.float32, np.float64, np.int32, np.float16]


@st.composite
def messy(draw, shape, allow_none=False, valid=False, float_only=False):
    """An array-like for ``shape``: sometimes of another shape, dtype or layout. With
    ``valid``, only what the README accepts: the right shape, real numbers (floats of either
    precision, integers; floats only with ``float_only``) in any layout or as nested lists."""
    if allow_none and draw(st.integers(0, 5)) == 0:
        return None
    if not valid and draw(st.integers(0, 9)) == 0:  # a wrong shape
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
    if valid:
        dtype = draw(st.sampled_from(REAL_FLOATS if float_only else VALID_DTYPES))
    else:
        dtype = draw(st.sampled_from(DTYPES)) if draw(st.integers(0, 5)) == 0 else np.float32
        if dtype == np.float32 and draw(st.booleans()):
            dtype = np.float64
    n = int(np.prod(shape)) if shape else 1
    values = draw(st.lists(st.floats(-3, 3, width=32), min_size=n, max_size=n))
    a = np.array(values, dtype=np.float64).reshape(shape)
    if dtype == "U2":
        a = a.astype("U2")
    else:
        a = a.astype(dtype)
    layouts = ["C", "F", "strided", "list", "readonly"]
    if valid and (0 in shape or (float_only and dtype == np.float32)):
        layouts.remove("list")  # a list cannot hold an empty axis, nor a float32 dtype
    layout = draw(st.sampled_from(layouts))
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif layout == "list":
        return a.tolist()
    elif layout == "readonly":
        a.flags.writeable = False
    return a


def rel_err(actual, expected) -> float:
    """Error relative to the largest magnitude, or absolute below 1 (the natural scale of a
    GRU state): random weights up to 3 drive outputs to 1e-4, where float32's rounding of
    a gate near 1 alone exceeds 5e-5 relative, in PyTorch too."""
    expected = np.asarray(expected, np.float64)
    if expected.size == 0:
        return 0.0
    scale = max(np.abs(expected).max(), 1.0)
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / scale)


def _canonical(a, dtype):
    """What the kernels see (the data rounded to the weights' dtype), in float64."""
    return None if a is None else np.asarray(a).astype(dtype).astype(np.float64)


def real_of_shape(value, shape) -> bool:
    """The README's valid input: real numbers (float or integer) of exactly this shape."""
    a = np.asarray(value)
    return a.dtype.kind in "fiu" and a.shape == tuple(shape)


def valid_lengths(lengths, B: int, T: int) -> bool:
    if lengths is None:
        return True
    a = np.asarray(lengths)
    if a.shape != (B,) or a.dtype.kind not in "fiu":
        return False
    return bool(np.all(a == np.round(a)) and np.all((a >= 0) & (a <= T)))


def _raises_clearly(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert str(info.value)


@settings(max_examples=300)
@given(data=st.data(), T=st.integers(0, 5), B=st.integers(0, 4), I=st.integers(1, 5),
       H=st.integers(1, 5), lbr=st.booleans(), reverse=st.booleans(), training=st.booleans())
def test_fuzz_functional(data, T, B, I, H, lbr, reverse, training):
    ok = data.draw(st.booleans())  # half the draws only valid input, the rest anything
    x = data.draw(messy((T, B, I), valid=ok))
    h0 = data.draw(messy((B, H), allow_none=True, valid=ok))
    w_ih = data.draw(messy((3 * H, I), valid=ok, float_only=True))
    w_hh = data.draw(messy((3 * H, H), valid=ok))
    bias = data.draw(st.booleans())
    b_ih = data.draw(messy((3 * H,), valid=ok)) if bias else None
    b_hh = data.draw(messy((3 * H,), valid=ok)) if bias else None
    if ok:
        lengths = data.draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    else:
        lengths = data.draw(st.none() | st.just([0.5] * B)
                            | st.lists(st.integers(-1, T + 1), min_size=B, max_size=B))

    def call():
        return F.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse,
                             linear_before_reset=lbr, training=training)

    valid = (real_of_shape(x, (T, B, I))
             and (h0 is None or real_of_shape(h0, (B, H)))
             and real_of_shape(w_ih, (3 * H, I))
             and np.asarray(w_ih).dtype in REAL_FLOATS
             and real_of_shape(w_hh, (3 * H, H))
             and (not bias or (real_of_shape(b_ih, (3 * H,)) and real_of_shape(b_hh, (3 * H,))))
             and valid_lengths(lengths, B, T))
    assert valid or not ok
    event("valid" if valid else "invalid")
    if not valid:
        _raises_clearly(call)
        return
    y, h, cache = call()  # valid input: no exception allowed
    dtype = np.asarray(w_ih).dtype
    assert y.dtype == dtype and h.dtype == dtype
    args = [_canonical(a, dtype) for a in (x, h0, w_ih, w_hh, b_ih, b_hh)]
    yr, hr, cr = R.gru_forward(*args, lengths=lengths, reverse=reverse,
                               linear_before_reset=lbr, training=True)
    tol = TOL[np.dtype(dtype)]
    assert rel_err(y, yr) <= tol["fwd"] and rel_err(h, hr) <= tol["fwd"]
    if training:
        g = F.gru_backward(np.ones_like(y), None, cache)
        gr = R.gru_backward(np.ones_like(yr), None, cr)
        assert len(g) == len(gr)
        for a, b in zip(g, gr):
            assert (a is None) == (b is None)
            if a is not None:
                assert rel_err(a, b) <= tol["grad"]


@settings(max_examples=200)
@given(data=st.data(), T=st.integers(0, 4), B=st.integers(0, 3), layers=st.integers(1, 2),
       bidirectional=st.booleans(), batch_first=st.booleans(), unbatched=st.booleans(),
       dtype=st.sampled_from(REAL_FLOATS), train=st.booleans())
def test_fuzz_layer(data, T, B, layers, bidirectional, batch_first, unbatched, dtype, train):
    I, H = 3, 2
    LD = layers * (1 + bidirectional)

    def model():
        return grufast.GRU(I, H, layers, batch_first=batch_first,
                           bidirectional=bidirectional, dtype=dtype, seed=0).train(train)

    gru = model()
    if unbatched:
        x_shape, h_shape, batch = (T, I), (LD, H), 1
    else:
        x_shape = (B, T, I) if batch_first else (T, B, I)
        h_shape, batch = (LD, B, H), B
    ok = data.draw(st.booleans())  # half the draws only valid input, the rest anything
    x = data.draw(messy(x_shape, valid=ok))
    h0 = data.draw(messy(h_shape, allow_none=True, valid=ok))
    if ok:
        lengths = data.draw(st.none() | st.lists(st.integers(0, T), min_size=batch,
                                                 max_size=batch))
    else:
        lengths = data.draw(st.none() | st.lists(st.integers(-1, T + 1), min_size=B,
                                                 max_size=B))
    valid = (real_of_shape(x, x_shape) and (h0 is None or real_of_shape(h0, h_shape))
             and valid_lengths(lengths, batch, T))
    if not valid:
        # A messy x may happen to be a valid input of another shape: a 2-D one an unbatched
        # (T', I) input, a 3-D one a batched (T', B', I) (or (B', T', I)) input, of either
        # form and of its own T' and B' (x (0, 1, I) where (0, 0, I) was drawn).
        try:
            shape = np.shape(x)
        except Exception:
            shape = ()
        if len(shape) == 2:
            valid = (real_of_shape(x, (shape[0], I))
                     and (h0 is None or real_of_shape(h0, (LD, H)))
                     and valid_lengths(lengths, 1, shape[0]))
        elif len(shape) == 3:
            t, b = (shape[1], shape[0]) if batch_first else (shape[0], shape[1])
            valid = (real_of_shape(x, shape[:2] + (I,))
                     and (h0 is None or real_of_shape(h0, (LD, b, H)))
                     and valid_lengths(lengths, b, t))
    assert valid or not ok
    event("valid" if valid else "invalid")
    if not valid:
        _raises_clearly(lambda: gru(x, h0, lengths=lengths))
        return
    y, h = gru(x, h0, lengths=lengths)
    # The right answer: the same call on clean C-contiguous arrays of the model's dtype.
    clean = model()
    x2, h2 = np.array(x, dtype), None if h0 is None else np.array(h0, dtype)
    y2, h_2 = clean(x2, h2, lengths=lengths)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(h, h_2)
    if train:
        dy = data.draw(messy(y.shape, allow_none=True, valid=ok))
        if dy is not None and not real_of_shape(dy, y.shape):
            _raises_clearly(lambda: gru.backward(dy))
            return
        dx, dh0 = gru.backward(dy)
        dx2, dh02 = clean.backward(None if dy is None else np.array(dy, dtype))
        np.testing.assert_array_equal(dx, dx2)
        np.testing.assert_array_equal(dh0, dh02)
