"""Every streaming input form (GRUCell with (H,) or (B, H) arrays, GRU.step with one or two
layers, h as (L, H), (L, 1, H) or None) against the layer's full forward, with the shapes
returned as given."""

import numpy as np
import pytest

import grufast

from .helpers import unaligned

I, H, T = 24, 32, 5


def _xs(B: int | None, dtype=np.float32) -> np.ndarray:
    shape = (T, I) if B is None else (T, B, I)
    return np.random.default_rng(7).standard_normal(shape).astype(dtype)


def _tol(dtype) -> float:
    return 1e-6 if dtype == np.float32 else 1e-13


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("B", [None, 1, 2, 5, 8, 16, 17])
def test_gru_step_matches_forward(B, layers, lbr, dtype):
    model = grufast.GRU(I, H, num_layers=layers, linear_before_reset=lbr, dtype=dtype,
                        seed=1).eval()
    xs = _xs(B, dtype)
    y_full, h_full = model(xs)
    h = None
    for t in range(T):
        y, h = model.step(xs[t], h)
        assert y.shape == y_full[t].shape and y.dtype == dtype
        np.testing.assert_allclose(y, y_full[t], rtol=0, atol=_tol(dtype))
    assert h.shape == h_full.shape
    np.testing.assert_allclose(h, h_full, rtol=0, atol=_tol(dtype))


def test_gru_step_state_forms():
    """h as (L, H) with a vector x, (L, 1, H) with a (1, I) row; the new state shaped like
    the given one and never the caller's array."""
    model = grufast.GRU(I, H, num_layers=2, seed=2).eval()
    x = _xs(None)[0]
    h0 = np.random.default_rng(3).standard_normal((2, H)).astype(np.float32)
    y1, h1 = model.step(x, h0)
    y2, h2 = model.step(x[None], h0[:, None])
    assert y1.shape == (H,) and h1.shape == (2, H)
    assert y2.shape == (1, H) and h2.shape == (2, 1, H)
    np.testing.assert_array_equal(y1, y2[0])
    np.testing.assert_array_equal(h1, h2[:, 0])
    np.testing.assert_array_equal(y1, h1[1])
    y1[:] = 0
    assert np.any(h1[1] != 0)  # y is not a view of the state
    assert not np.shares_memory(h1, h0)


def test_gru_step_after_weights_change():
    """The per-layer plans follow load_state_dict."""
    a = grufast.GRU(I, H, num_layers=2, seed=4).eval()
    b = grufast.GRU(I, H, num_layers=2, seed=5).eval()
    x = _xs(1)[0]
    a.step(x)
    a.load_state_dict(b.state_dict())
    np.testing.assert_array_equal(a.step(x)[1], b.step(x)[1])


def test_gru_step_h_none_uses_default_h0_on_every_call():
    """h=None means the model's default_h0 (not zeros) also once the fast path's plans
    are built, and when default_h0 is set or cleared between steps."""
    model = grufast.GRU(I, H, num_layers=2, seed=4).eval()
    x = _xs(1)[0]
    h0 = np.random.default_rng(3).standard_normal((2, 1, H)).astype(np.float32)
    zeros = model.step(x)  # builds the plans
    model.default_h0 = h0
    for _ in range(2):
        y, h = model.step(x)
        y_given, h_given = model.step(x, h0)  # (the fast path: equal within rounding)
        np.testing.assert_allclose(h, h_given, rtol=_tol(np.float32), atol=_tol(np.float32))
        np.testing.assert_allclose(y, y_given, rtol=_tol(np.float32), atol=_tol(np.float32))
        assert np.abs(h - zeros[1]).max() > 1e-3
    model.default_h0 = None
    np.testing.assert_array_equal(model.step(x)[1], zeros[1])


@pytest.mark.parametrize("kind", ["bidirectional", "reverse"])
def test_gru_step_refuses_a_layer_that_must_see_the_whole_sequence(kind):
    model = grufast.GRU(I, H, seed=4, **{kind: True}).eval()
    model(_xs(1))  # a full forward first: nothing it prepares opens the step's fast path
    for _ in range(2):
        with pytest.raises(ValueError, match="unidirectional"):
            model.step(_xs(1)[0])


def test_gru_step_refuses_once_reverse_is_set_after_steps():
    """reverse is a plain attribute: set after the fast path's plans exist, the next step
    is refused, not run forward."""
    model = grufast.GRU(I, H, seed=4).eval()
    model.step(_xs(1)[0])
    model.reverse = True
    with pytest.raises(ValueError, match="unidirectional"):
        model.step(_xs(1)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("B", [None, 1, 3, 8, 16, 20])
def test_cell_matches_layer(B, lbr, dtype):
    cell = grufast.GRUCell(I, H, linear_before_reset=lbr, dtype=dtype, seed=6)
    layer = grufast.GRU(I, H, linear_before_reset=lbr, dtype=dtype, seed=6).eval()
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    xs = _xs(B, dtype)
    y_full, _ = layer(xs)
    h = None
    for t in range(T):
        h = cell(xs[t], h)
        assert h.shape == y_full[t].shape and h.dtype == dtype
        np.testing.assert_allclose(h, y_full[t], rtol=0, atol=_tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("I, H", [(5, 7), (40, 230)])
def test_one_stream_gives_the_layers_bits(I, H, lbr, dtype):
    """One vector's step reads both weights packed in panels, through the GEMV the layer's
    one-sequence forward runs for its recurrent products; every output of that GEMV and of
    the forward's tiled input projection is one chain of multiply-adds from k = 0, so
    GRUCell and GRU.step (one and two layers) give the layer's bits, step by step (H = 230:
    each gate ends in a partial panel)."""
    from threadpoolctl import threadpool_limits

    cell = grufast.GRUCell(I, H, linear_before_reset=lbr, dtype=dtype, seed=6)
    layer = grufast.GRU(I, H, linear_before_reset=lbr, dtype=dtype, seed=6).eval()
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    deep = grufast.GRU(I, H, num_layers=2, linear_before_reset=lbr, dtype=dtype,
                       seed=7).eval()
    xs = np.random.default_rng(10).standard_normal((6, 1, I)).astype(dtype)
    with threadpool_limits(1):
        y, _ = layer(xs)
        y2, _ = deep(xs)
    h, hs = None, None
    for t in range(6):
        h = cell(xs[t, 0], h)
        out, hs = deep.step(xs[t, 0], hs)
        np.testing.assert_array_equal(h, y[t, 0])
        np.testing.assert_array_equal(out, y2[t, 0])


def test_cell_forms_agree():
    """(H,), (1, H), and any layout or dtype (the general path) give the same state."""
    cell = grufast.GRUCell(I, H, seed=8)
    x = _xs(1)[0]
    h = np.random.default_rng(9).standard_normal((1, H)).astype(np.float32)
    row = cell(x, h)
    assert row.shape == (1, H)
    np.testing.assert_array_equal(cell(x[0], h[0]), row[0])
    np.testing.assert_allclose(cell(x.astype(np.float64), h.tolist()), row, atol=1e-6)
    assert cell(x).shape == (1, H) and cell(x[0]).shape == (H,)


def test_cell_bad_forms_raise():
    cell = grufast.GRUCell(I, H)
    with pytest.raises(ValueError, match="h"):
        cell(np.zeros((2, I), np.float32), np.zeros((3, H), np.float32))
    with pytest.raises(ValueError, match="h"):
        cell(np.zeros(I, np.float32), np.zeros((1, H), np.float32))
    with pytest.raises(ValueError, match="x"):
        cell(np.zeros((2, I + 1), np.float32))
    model = grufast.GRU(I, H, num_layers=2)
    with pytest.raises(ValueError, match="h"):
        model.step(np.zeros(I, np.float32), np.zeros((2, 1, H), np.float32))
    with pytest.raises(ValueError, match="h"):
        model.step(np.zeros((1, I), np.float32), np.zeros((1, 1, H), np.float32))


@pytest.mark.parametrize("form", ["byte-swapped", "unaligned"])
def test_streaming_reads_only_native_arrays_in_place(form):
    """The fast paths read x and h in place; an array of the right dtype but in the other
    byte order ('>f4' has '<f4''s type number) or unaligned must give the same numbers, not
    the raw bytes read as native floats."""
    def odd(a):
        return a.astype(a.dtype.newbyteorder()) if form == "byte-swapped" else unaligned(a)

    rng = np.random.default_rng(11)
    cell = grufast.GRUCell(I, H, seed=12)
    model = grufast.GRU(I, H, num_layers=2, seed=13).eval()
    qcell = cell.quantized("int8")
    for B in (None, 1, 3):
        lead = () if B is None else (B,)
        x = rng.standard_normal(lead + (I,)).astype(np.float32)
        h = rng.standard_normal(lead + (H,)).astype(np.float32)
        hs = rng.standard_normal((2,) + lead + (H,)).astype(np.float32)
        want = cell(x, h)
        np.testing.assert_array_equal(cell(odd(x), h), want)
        np.testing.assert_array_equal(cell(x, odd(h)), want)
        y, h_new = model.step(x, hs)
        for args in ((odd(x), hs), (x, odd(hs))):
            got_y, got_h = model.step(*args)
            np.testing.assert_array_equal(got_y, y)
            np.testing.assert_array_equal(got_h, h_new)
        if B is None:
            want_q = qcell(x, h)
            np.testing.assert_allclose(qcell(odd(x), h), want_q, rtol=0, atol=1e-6)
            np.testing.assert_allclose(qcell(x, odd(h)), want_q, rtol=0, atol=1e-6)


@pytest.mark.parametrize("quantized", [False, True])
def test_gru_step_refuses_default_lengths_it_cannot_honour(quantized):
    """default_lengths (an ONNX file's constant sequence_lens) stop sequences in a whole
    call; step runs every step it is given, so it refuses rather than ignore them, also
    when they are set after the step's plans exist."""
    model = grufast.GRU(I, H, seed=14).eval()
    if quantized:
        model = model.quantized("int8")
    x = _xs(2)[0]
    h = np.zeros((1, 2, H), np.float32)
    model.step(x, h)  # plans built
    model.default_lengths = [1, 0]
    for args in ((x, h), (x, None), (x.astype(np.float64), h)):
        with pytest.raises(ValueError, match="default_lengths"):
            model.step(*args)
    model.default_lengths = None
    model.step(x, h)
