"""Fuzzing the public API with hypothesis: random shapes, dtypes, layouts and values. Every
call must give the right answer (the reference's, or the canonical C-contiguous call's) or
raise ValueError/TypeError; any other exception, or a crash, fails."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import grufast
from grufast import functional as F
from grufast import reference as R

from .helpers import TOL

DTYPES = [np.float32, np.float64, np.int32, np.float16, np.complex64, np.bool_, object, "U2"]
REAL_FLOATS = (np.float32, np.float64)


@st.composite
def messy(draw, shape, allow_none=False):
    """An array-like for ``shape``: sometimes of another shape, dtype or layout."""
    if allow_none and draw(st.integers(0, 5)) == 0:
        return None
    if draw(st.integers(0, 9)) == 0:  # a wrong shape
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
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
    layout = draw(st.sampled_from(["C", "F", "strided", "list", "readonly"]))
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


@settings(max_examples=300)
@given(data=st.data(), T=st.integers(0, 5), B=st.integers(0, 4), I=st.integers(1, 5),
       H=st.integers(1, 5), lbr=st.booleans(), reverse=st.booleans(), training=st.booleans())
def test_fuzz_functional(data, T, B, I, H, lbr, reverse, training):
    x = data.draw(messy((T, B, I)))
    h0 = data.draw(messy((B, H), allow_none=True))
    w_ih = data.draw(messy((3 * H, I)))
    w_hh = data.draw(messy((3 * H, H)))
    bias = data.draw(st.booleans())
    b_ih = data.draw(messy((3 * H,))) if bias else None
    b_hh = data.draw(messy((3 * H,))) if bias else None
    lengths = data.draw(st.none() | st.lists(st.integers(-1, T + 1), min_size=B, max_size=B)
                        | st.just([0.5] * B))
    try:
        y, h, cache = F.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths,
                                    reverse=reverse, linear_before_reset=lbr,
                                    training=training)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        return
    dtype = np.asarray(w_ih).dtype
    assert dtype in REAL_FLOATS and y.dtype == dtype
    args = [_canonical(a, dtype) for a in (x, h0, w_ih, w_hh, b_ih, b_hh)]
    yr, hr, cr = R.gru_forward(*args, lengths=lengths, reverse=reverse,
                               linear_before_reset=lbr, training=True)
    tol = TOL[np.dtype(dtype)]
    assert rel_err(y, yr) <= tol["fwd"] and rel_err(h, hr) <= tol["fwd"]
    if training:
        g = F.gru_backward(np.ones_like(y), None, cache)
        gr = R.gru_backward(np.ones_like(yr), None, cr)
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
    gru = grufast.GRU(I, H, layers, batch_first=batch_first, bidirectional=bidirectional,
                      dtype=dtype, seed=0).train(train)
    if unbatched:
        x, h0 = data.draw(messy((T, I))), data.draw(messy((LD, H), allow_none=True))
    else:
        x = data.draw(messy((B, T, I) if batch_first else (T, B, I)))
        h0 = data.draw(messy((LD, B, H), allow_none=True))
    lengths = data.draw(st.none() | st.lists(st.integers(-1, T + 1), min_size=B, max_size=B))
    try:
        y, h = gru(x, h0, lengths=lengths)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        return
    # The right answer: the same call on clean C-contiguous arrays of the model's dtype.
    clean = grufast.GRU(I, H, layers, batch_first=batch_first, bidirectional=bidirectional,
                        dtype=dtype, seed=0).eval()
    y2, h2 = clean(np.array(x, dtype), None if h0 is None else np.array(h0, dtype),
                   lengths=lengths)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(h, h2)
    if train:
        try:
            gru.backward(data.draw(messy(y.shape, allow_none=True)))
        except (ValueError, TypeError) as exc:
            assert str(exc)
