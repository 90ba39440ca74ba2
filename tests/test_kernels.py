"""The Cython kernels (through grufast.functional) against the NumPy reference,
property-based over shapes from 1 upward (the empty ones apart), lengths, both variants,
directions and dtypes."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

from grufast import functional as F
from grufast import reference as R

from .helpers import assert_close, problem, rel_err


@st.composite
def gru_cases(draw, empty=False):
    """A non-empty problem (T, B >= 1) with a gradient to propagate (dy, dh or both); with
    ``empty``, T = 0 or B = 0 instead (the early returns)."""
    if empty:
        T, B = draw(st.sampled_from([(0, 0), (0, 3), (4, 0)]))
    else:
        T, B = draw(st.integers(1, 9)), draw(st.integers(1, 5))
    lengths = draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    grads = draw(st.sampled_from(["dy", "dh", "both"]))
    c = dict(
        T=T, B=B, I=draw(st.integers(1, 11)), H=draw(st.integers(1, 11)),
        lengths=None if lengths is None else np.array(lengths, dtype=np.int64),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        lbr=draw(st.booleans()), reverse=draw(st.booleans()), bias=draw(st.booleans()),
        h0=draw(st.booleans()), dy=grads != "dh", dh=grads != "dy",
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    return c


def _padded(c) -> bool:
    return c["lengths"] is not None and bool((c["lengths"] < c["T"]).any())


def check_against_reference(c):
    rng = np.random.default_rng(c["seed"])
    dtype = np.dtype(c["dtype"])
    x, h0, *w = problem(rng, c["T"], c["B"], c["I"], c["H"], dtype, bias=c["bias"], scale=0.7)
    h0 = h0 if c["h0"] else None
    kw = dict(lengths=c["lengths"], reverse=c["reverse"], linear_before_reset=c["lbr"])
    y, h, cache = F.gru_forward(x, h0, *w, training=True, **kw)
    y_inf, h_inf, none = F.gru_forward(x, h0, *w, **kw)
    assert none is None and y.dtype == dtype and h.dtype == dtype
    np.testing.assert_array_equal(y_inf, y)  # training keeps more, computes the same
    np.testing.assert_array_equal(h_inf, h)

    # The oracle runs in float64 on the same (rounded) inputs.
    as64 = [None if a is None else a.astype(np.float64) for a in (x, h0, *w)]
    yr, hr, cr = R.gru_forward(*as64, training=True, **kw)
    assert_close(y, yr, dtype, "fwd", "y")
    assert_close(h, hr, dtype, "fwd", "h_n")

    dy = rng.standard_normal(y.shape).astype(dtype) if c["dy"] else None
    dh = rng.standard_normal(h.shape).astype(dtype) if c["dh"] else None
    g = F.gru_backward(dy, dh, cache)
    gr = R.gru_backward(dy, dh, cr)
    assert len(g) == len(gr) == 6
    for name, a, b in zip(g._fields, g, gr):
        if b is None:
            assert a is None, name
        else:
            assert a.dtype == dtype, name
            assert_close(a, b, dtype, "grad", name)


@given(gru_cases())
def test_kernels_match_reference(c):
    # Steer the search towards the combination that needs all the kernel's branches at once.
    target(float(c["dtype"] == np.float32) + c["reverse"] + _padded(c), label="f32/rev/pad")
    check_against_reference(c)


@settings(max_examples=20)
@given(gru_cases(empty=True))
def test_kernels_on_empty_problems_match_reference(c):
    check_against_reference(c)


@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_float32_reverse_padded_matches_reference(lbr, bias):
    """The combination a random draw rarely makes: float32, reverse, padding (lengths 0, 1,
    partial and full), both variants, both gradients."""
    c = dict(T=7, B=5, I=6, H=9, lengths=np.array([7, 0, 3, 1, 6]), dtype=np.float32,
             lbr=lbr, reverse=True, bias=bias, h0=True, dy=True, dh=True, seed=17)
    check_against_reference(c)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("I, H", [(3, 13), (9, 13), (30, 29)])
@pytest.mark.parametrize("lbr", [True, False])
def test_weight_gradients_of_a_large_flush_match_reference(monkeypatch, threads, I, H, lbr):
    """On every build: a flush of more rows than small_gemm_tn copies at a time (300 > 256:
    B = 300, one step per flush on one thread), 3H = 39 or 87 gate rows (blocks of 32 and a
    rest that is not a whole register tile), few inputs (dW_ih summed transposed) and more;
    widths that take full, narrower and edge tiles, from W's rows packed into panels once
    per 256 rows."""
    from threadpoolctl import threadpool_limits

    from grufast import _isa

    c = dict(T=2, B=300, I=I, H=H, lengths=None, dtype=np.float32, lbr=lbr, reverse=False,
             bias=True, h0=True, dy=True, dh=True, seed=5)
    for build in _isa.runnable():
        monkeypatch.setattr(F, "_kernels", build)
        with threadpool_limits(threads, user_api="openmp"):
            check_against_reference(c)


@pytest.mark.parametrize("B", [1, 6])
@pytest.mark.parametrize("lbr", [True, False])
def test_training_above_the_tiled_limit_matches_reference(B, lbr):
    """With the tiled-GEMM limit at 0 (every product above it, as large ones are on the AVX2
    build), a training step's recurrent products and the backward's flushes (dW as dG^T h,
    dx) run in OpenBLAS's GEMM, transposed operands included."""
    from grufast._isa import kernels

    old = kernels.tiled_limit()
    try:
        kernels.set_tiled_limit(0)
        for I in (3, 9):
            rng = np.random.default_rng(3)
            x, h0, *w = problem(rng, 5, B, I, 13, np.float32, bias=True, scale=0.7)
            y, _, cache = F.gru_forward(x, h0, *w, training=True, linear_before_reset=lbr)
            g = F.gru_backward(np.ones_like(y), None, cache)
            as64 = [a.astype(np.float64) for a in (x, h0, *w)]
            yr, _, cr = R.gru_forward(*as64, training=True, linear_before_reset=lbr)
            gr = R.gru_backward(np.ones_like(yr), None, cr)
            assert_close(y, yr, np.float32, "fwd", "y")
            for name, a, b in zip(g._fields, g, gr):
                assert_close(a, b, np.float32, "grad", name)
    finally:
        kernels.set_tiled_limit(old)


def test_backward_twice_gives_same_result_and_keeps_cache():
    rng = np.random.default_rng(5)
    for lbr in (True, False):
        x, h0, *w = problem(rng, 6, 3, 4, 5)
        _, _, cache = F.gru_forward(x, h0, *w, training=True, linear_before_reset=lbr,
                                    lengths=[6, 2, 0])
        dy = rng.standard_normal((6, 3, 5))
        g1 = F.gru_backward(dy, None, cache)
        g2 = F.gru_backward(dy, None, cache)
        for a, b in zip(g1, g2):
            np.testing.assert_array_equal(a, b)


def test_nan_padding_does_not_reach_gradients():
    rng = np.random.default_rng(6)
    x, h0, *w = problem(rng, 5, 2, 3, 4)
    x[3:, 1] = np.nan
    lengths = np.array([5, 3])
    y, h, cache = F.gru_forward(x, h0, *w, lengths=lengths, training=True)
    g = F.gru_backward(np.ones_like(y), np.ones_like(h), cache)
    assert all(np.all(np.isfinite(a)) for a in g)
    assert np.isnan(x[4, 1, 0])  # the caller's array is untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("B", [2, 3])
@pytest.mark.parametrize("H", [6, 96, 400])
def test_small_batches_give_each_sequence_its_own_bits(B, H, lbr, dtype):
    """2 and 3 sequences run register tiles of 2 and 3 rows, each element one chain of
    fused multiply-adds over k from 0, as one sequence's GEMV sums each lane (not OpenBLAS's
    GEMM, which repacks the weights every step): each row of a small batch is the sequence
    run alone, outputs and gradients, to the last bit on the SIMD builds wherever every
    product's inner dimension fits one K block of the tiles (1024). At H = 400 the
    backward's dh sums over 3H = 1200 (linear_before_reset) in two blocks, where the GEMV
    keeps one chain: equal to rounding there (and on the baseline build, whose plain loops
    round as they do)."""
    from grufast._isa import kernels

    rng = np.random.default_rng(7)
    x, h0, *w = problem(rng, 7, B, 5, H, dtype)
    y, h, c = F.gru_forward(x, h0, *w, linear_before_reset=lbr, training=True)
    g = F.gru_backward(np.ones_like(y), None, c)
    simd = kernels.__name__.rsplit(".", 1)[-1] in ("_kernels_avx2", "_kernels_avx512")
    exact = simd and 3 * H <= 1024  # _gemm.pxd's K_BLOCK
    for b in range(B):
        y1, h1, c1 = F.gru_forward(x[:, b:b + 1], h0[b:b + 1], *w, linear_before_reset=lbr,
                                   training=True)
        g1 = F.gru_backward(np.ones_like(y1), None, c1)
        pairs = [(y1[:, 0], y[:, b]), (g1.x[:, 0], g.x[:, b]), (g1.h0[0], g.h0[b])]
        for one, batch in pairs:
            if exact:
                np.testing.assert_array_equal(one, batch)
            else:
                tol = 64 * np.finfo(dtype).eps
                np.testing.assert_allclose(one, batch, rtol=tol, atol=tol)


def test_every_build_matches_the_reference(monkeypatch):
    """Every build the CPU runs (baseline, AVX2 + FMA, AVX-512) meets the tolerances, through
    full and edge tiles of the small-batch GEMM; the functional API uses grufast._isa's.
    H = 40: without linear_before_reset the gates' columns cut W_hh^T's packed panels into
    one- and two-vector tiles (AVX2 floats: 72-80 and 80-96), H = 37 into edge tiles."""
    from grufast import _isa

    rng = np.random.default_rng(8)
    for build, dtype, lbr, H in itertools.product(_isa.runnable(), (np.float32, np.float64),
                                                  (True, False), (37, 40)):
        monkeypatch.setattr(F, "_kernels", build)
        x, h0, *w = problem(rng, 12, 5, 9, H, dtype)
        y, h, cache = F.gru_forward(x, h0, *w, lengths=[12, 3, 0, 7, 12],
                                    linear_before_reset=lbr, training=True)
        g = F.gru_backward(np.ones_like(y), None, cache)
        as64 = [a.astype(np.float64) for a in (x, h0, *w)]
        yr, hr, cr = R.gru_forward(*as64, lengths=[12, 3, 0, 7, 12],
                                   linear_before_reset=lbr, training=True)
        gr = R.gru_backward(np.ones_like(yr), None, cr)
        assert_close(y, yr, dtype, "fwd", f"{build.__name__} y")
        for name, a, b in zip(g._fields, g, gr):
            assert_close(a, b, dtype, "grad", f"{build.__name__} {name}")


def test_recurrent_gemm_paths_agree_at_their_boundaries():
    """B = 1..3 (a gemv per sequence), 4..64 (register-tiled GEMM, full and edge tiles), 65
    (OpenBLAS in training, the tiled GEMM in inference)."""
    rng = np.random.default_rng(9)
    for B in (1, 2, 3, 4, 7, 64, 65):
        for dtype in (np.float32, np.float64):
            for lbr in (True, False):
                x, h0, *w = problem(rng, 3, B, 10, 29, dtype)
                y, h, cache = F.gru_forward(x, h0, *w, linear_before_reset=lbr, training=True)
                g = F.gru_backward(np.ones_like(y), np.ones_like(h), cache)
                as64 = [a.astype(np.float64) for a in (x, h0, *w)]
                yr, _, cr = R.gru_forward(*as64, linear_before_reset=lbr, training=True)
                gr = R.gru_backward(np.ones_like(yr), np.ones_like(h, np.float64), cr)
                assert_close(y, yr, dtype, "fwd", f"B={B} y")
                y_inf, _, _ = F.gru_forward(x, h0, *w, linear_before_reset=lbr)
                assert_close(y_inf, yr, dtype, "fwd", f"B={B} inference y")
                for name, a, b in zip(g._fields, g, gr):
                    assert_close(a, b, dtype, "grad", f"B={B} {name}")


def test_inference_in_chunks_of_steps_matches_training(monkeypatch):
    """Inference projects the inputs a few steps at a time (memory independent of T);
    chunks of 1, 3 and 7 steps, both directions, give the training forward's outputs."""
    rng = np.random.default_rng(10)
    x, h0, *w = problem(rng, 20, 5, 6, 7, np.float64)
    lengths = [20, 13, 0, 7, 19]
    for steps in (1, 3, 7):
        monkeypatch.setattr(F, "INFERENCE_CHUNK_BYTES", steps * 5 * 21 * 8)
        for reverse in (False, True):
            for lbr in (True, False):
                kw = dict(lengths=lengths, reverse=reverse, linear_before_reset=lbr)
                y, h, _ = F.gru_forward(x, h0, *w, **kw)
                yt, ht, _ = F.gru_forward(x, h0, *w, training=True, **kw)
                np.testing.assert_allclose(y, yt, rtol=1e-13, atol=1e-15)
                np.testing.assert_allclose(h, ht, rtol=1e-13, atol=1e-15)


def test_parallel_steps_match_serial():
    """Shapes big enough to be split across OpenMP threads (by sequences) give the one-thread
    result up to the summation order of the input projection (tiled GEMM vs OpenBLAS),
    forward and backward, both variants, with lengths; and both meet the tolerances."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(11)
    for B, H in ((8, 120), (13, 100), (64, 64)):
        for lbr in (True, False):
            for training in (False, True):
                x, h0, *w = problem(rng, 6, B, 7, H, np.float32)
                lengths = rng.integers(0, 7, B)
                runs = []
                for threads in (1, 2):
                    with threadpool_limits(threads):
                        y, h, cache = F.gru_forward(x, h0, *w, lengths=lengths,
                                                    linear_before_reset=lbr, training=training)
                        g = F.gru_backward(np.ones_like(y), None, cache) if training else ()
                    runs.append((y, h, *g))
                for a, b in zip(*runs):  # relative to the largest magnitude, as everywhere
                    assert rel_err(a, b) <= 1e-5
                as64 = [a.astype(np.float64) for a in (x, h0, *w)]
                yr, hr, _ = R.gru_forward(*as64, lengths=lengths, linear_before_reset=lbr)
                assert_close(runs[1][0], yr, np.float32, "fwd", f"B={B} H={H}")
                assert_close(runs[1][1], hr, np.float32, "fwd", f"B={B} H={H}")


def test_one_sequence_split_across_threads(monkeypatch):
    """B = 1 with H >= 224 splits the hidden units across threads, which meet at a spinning
    barrier after every step: 1, 2 and 3 threads (3 oversubscribe a 2-core machine: the
    barrier must yield, not hang), both variants and directions, odd and even T (the state
    alternates between two rows), lengths, chunked inference and training, float32 and
    float64, an input wider than one K block (the projections' windows read in two K
    blocks), all meet the tolerances and agree with one thread."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(12)
    monkeypatch.setattr(F, "INFERENCE_CHUNK_BYTES", 4 * 3 * 240 * 8)  # 4 steps per chunk
    for H, T, lengths, dtype, I in ((240, 9, None, np.float64, 5),
                                    (256, 6, [4], np.float32, 5),
                                    (240, 7, [0], np.float64, 5),
                                    (256, 1, None, np.float32, 5),
                                    (240, 3, None, np.float32, 1030),
                                    (240, 2, [1], np.float64, 1030)):
        for lbr in (True, False):
            for reverse in (False, True):
                x, h0, *w = problem(rng, T, 1, I, H, dtype, scale=0.5)
                kw = dict(lengths=lengths, reverse=reverse, linear_before_reset=lbr)
                as64 = [a.astype(np.float64) for a in (x, h0, *w)]
                yr, hr, cr = R.gru_forward(*as64, training=True, **kw)
                gr = R.gru_backward(np.ones_like(yr), None, cr)
                runs = []
                for threads in (1, 2, 3):
                    with threadpool_limits(threads):
                        y_inf, h_inf, _ = F.gru_forward(x, h0, *w, **kw)
                        y, h, cache = F.gru_forward(x, h0, *w, training=True, **kw)
                        g = F.gru_backward(np.ones_like(y), None, cache)
                    where = f"H={H} T={T} lbr={lbr} reverse={reverse} threads={threads}"
                    assert_close(y_inf, yr, dtype, "fwd", f"{where} inference y")
                    assert_close(h_inf, hr, dtype, "fwd", f"{where} inference h_n")
                    assert_close(y, yr, dtype, "fwd", f"{where} y")
                    for name, a, b in zip(g._fields, g, gr):
                        assert_close(a, b, dtype, "grad", f"{where} {name}")
                    runs.append((y_inf, h_inf, y, h, *g))
                for run in runs[1:]:
                    for a, b in zip(runs[0], run):
                        assert rel_err(a, b) <= (1e-5 if dtype == np.float32 else 1e-13)


def test_parallel_layer_backward_accumulates_like_serial():
    """The multi-threaded backward (sequences split for the recurrence, then dx by columns and
    the weight gradients by gate rows, sums over T*B > 1024 in blocks) adds into the layer's
    grads and into dx of the layer below as one thread does (bidirectional, two layers,
    lengths, two backward passes), for both splits: B = 32 by sequences, and B = 1 by
    hidden units with 3H > 1024."""
    from threadpoolctl import threadpool_limits

    import grufast

    rng = np.random.default_rng(13)
    for T, B, I, H in ((40, 32, 24, 64), (5, 1, 7, 352)):
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        lengths = rng.integers(1, T + 1, B)
        dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
        runs = []
        for threads in (1, 2):
            gru = grufast.GRU(I, H, num_layers=2, bidirectional=True, seed=3)
            with threadpool_limits(threads):
                for _ in range(2):
                    gru(x, lengths=lengths)
                    dx, dh0 = gru.backward(dy)
            runs.append((dx, dh0, *(gru.grads[k] for k in sorted(gru.grads))))
        for a, b in zip(*runs):
            assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("threads", [1, 2])
def test_input_projection_paths_agree(threads):
    """On several threads, serial input projections of at most 8M multiply-adds, or of 128
    rows or fewer, run in the tiled GEMM on weights packed once per update; the others in
    OpenBLAS, which threads them: both sides of each boundary meet the tolerances (150 rows
    with 7.7M and 8.6M multiply-adds; 128 and 129 rows with 24M; 100 rows with 33.6M; 20
    rows with K = 1100, past one K block of 1024, and a partial last panel). On one thread
    every projection runs in the tiled GEMM."""
    from threadpoolctl import threadpool_limits

    from grufast._isa import kernels

    assert kernels.projection_limit() == (8_000_000, 128)
    rng = np.random.default_rng(14)
    with threadpool_limits(threads):
        assert kernels.tiled_projection(129, 600, 400) == (threads == 1)
        assert kernels.tiled_projection(150, 510, 100)  # 7.65M
        assert kernels.tiled_projection(128, 600, 400)
        assert kernels.tiled_projection(6400, 1536, 512) == (threads == 1)
        for T, I, H in ((150, 100, 170), (150, 100, 190), (128, 400, 200), (129, 400, 200),
                        (100, 400, 280), (20, 1100, 501)):
            for dtype in (np.float32, np.float64):
                x, h0, *w = problem(rng, T, 1, I, H, dtype)
                y, h, _ = F.gru_forward(x, h0, *w)
                as64 = [a.astype(np.float64) for a in (x, h0, *w)]
                yr, hr, _ = R.gru_forward(*as64)
                assert_close(y, yr, dtype, "fwd", f"T={T} y")
                assert_close(h, hr, dtype, "fwd", f"T={T} h_n")


def test_backward_split_by_sequences_matches_reference():
    """The backward split by sequences: each thread accumulates its sequences' share of the
    weight gradients a flush of steps at a time (several steps per flush below B = 64, a
    last partial flush) and the shares are added at the end; few inputs take dx as dot
    products, more the tiled GEMM. Gradients against the float64 reference, on 1 and 2
    threads (B * 3H^2 >= 150k: split), with lengths, both variants."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(12)
    for B, I in ((13, 3), (24, 12)):
        for lbr in (True, False):
            for dtype in (np.float32, np.float64):
                x, h0, *w = problem(rng, 11, B, I, 64, np.dtype(dtype))
                kw = dict(lengths=rng.integers(0, 12, B), linear_before_reset=lbr)
                as64 = [a.astype(np.float64) for a in (x, h0, *w)]
                _, _, cr = R.gru_forward(*as64, training=True, **kw)
                dy = rng.standard_normal((11, B, 64)).astype(dtype)
                gr = R.gru_backward(dy, None, cr)
                for threads in (1, 2):
                    with threadpool_limits(threads):
                        y, _, cache = F.gru_forward(x, h0, *w, training=True, **kw)
                        g = F.gru_backward(dy, None, cache)
                    for name, a, b in zip(g._fields, g, gr):
                        assert_close(a, b, np.dtype(dtype), "grad",
                                     f"{name} B={B} I={I} lbr={lbr} threads={threads}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (16, 16), (33, 5), (1536, 512)])
def test_transpose_into_is_exact(shape, dtype):
    """The blocked transpose behind the weight copies the tiled GEMM reads (edge blocks
    included), and its refusal of a wrong output shape."""
    from grufast._isa import kernels

    a = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    out = np.empty(shape[::-1], dtype)
    kernels.transpose_into(a, out)
    np.testing.assert_array_equal(out, a.T)
    with pytest.raises(ValueError, match="out must have shape"):
        kernels.transpose_into(a, np.empty(shape, dtype) if shape[0] != shape[1]
                               else np.empty((shape[0] + 1, shape[1]), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [1, 16, 100, 130])
def test_weight_panels_hold_the_documented_layout(H, dtype):
    """W_hh packed for the GEMVs of one to three sequences (_panels.h): by gate rows for the
    forward (panel [g][j][k][i] = W_hh[g H + 16 j + i, k]) and by columns for the
    backward's dh (panel [j][k][i] = W_hh[k, 16 j + i]), zero-padded past H."""
    from grufast._isa import kernels

    w = np.random.default_rng(H).standard_normal((3 * H, H)).astype(dtype)
    per = -(-H // 16)
    rows = kernels.pack_weight_panels(w).reshape(3, per, H, 16)
    want = np.zeros((3, per * 16, H), dtype)
    want[:, :H] = w.reshape(3, H, H)
    np.testing.assert_array_equal(rows.transpose(0, 1, 3, 2).reshape(3, per * 16, H), want)
    cols = kernels.pack_weight_columns(w).reshape(per, 3 * H, 16)
    want = np.zeros((3 * H, per * 16), dtype)
    want[:, :H] = w
    np.testing.assert_array_equal(cols.transpose(1, 0, 2).reshape(3 * H, per * 16), want)
    with pytest.raises(ValueError, match="3H, H"):
        kernels.pack_weight_columns(w[:-1])


def test_flush_rows_grow_with_the_partial_sums_against_l2():
    """64 rows per L2 the partial sums fill (at least one), at most 256; float64 sums are
    twice the bytes."""
    mib = 1 << 20
    assert F.flush_rows(128, 128, 4, mib) == 64  # 0.4 MB of partial sums
    assert F.flush_rows(256, 256, 4, mib) == 128  # 1.6 MB
    assert F.flush_rows(512, 512, 4, mib) == 256  # 6.3 MB, capped
    assert F.flush_rows(128, 128, 4, mib // 4) == 128
    assert F.flush_rows(256, 256, 4, mib // 2) == 256  # 3.02 L2s: 4 x 64
    assert F.flush_rows(128, 128, 8, mib // 4) == 256
    assert F.flush_rows(128, 2, 4) >= 64  # the L2 read at run time (or 1 MiB)


def test_copies_of_w_hh_are_made_for_the_calls_that_read_them():
    """One sequence reads W_hh's panels only, a tiled batch its packed transpose only: the
    other copies are never made (a training loop would make them after every step)."""
    import grufast

    rng = np.random.default_rng(12)
    g = grufast.GRU(6, 32)
    g(rng.standard_normal((5, 1, 6)).astype(np.float32))
    made = set(vars(g._layer_weights("_l0")))
    assert "w_hh_p" in made and not made & {"w_ih_t", "w_hh_t", "w_hh_pp"}, made
    g._weights_changed()
    g(rng.standard_normal((5, 8, 6)).astype(np.float32))
    made = set(vars(g._layer_weights("_l0")))
    assert "w_hh_pp" in made and not made & {"w_ih_t", "w_hh_t", "w_hh_p"}, made


def test_a_split_by_units_reads_the_packed_input_weights_in_place():
    """A sequence split by hidden units projects its inputs from windows of the packed
    W_ih^T, so it needs no transposed copy (one per optimiser step, 0.25 ms at H = 512),
    and computes the same bits as one thread."""
    from threadpoolctl import threadpool_limits

    import grufast
    from grufast._isa import kernels

    rng = np.random.default_rng(17)
    g = grufast.GRU(40, 256).eval()
    x = rng.standard_normal((7, 1, 40)).astype(np.float32)
    with threadpool_limits(1, user_api="openmp"):
        want, _ = g(x)
    g._weights_changed()
    with threadpool_limits(2, user_api="openmp"):
        assert kernels.recurrence_plan(1, 256, False)[1] == "units"
        y, _ = g(x)
    made = set(vars(g._layer_weights("_l0")))
    assert "w_hh_p" in made and not made & {"w_ih_t", "w_hh_t", "w_hh_pp"}, made
    np.testing.assert_array_equal(y, want)


def test_a_split_by_units_reads_its_panels_even_when_tiles_are_forced():
    """force_recurrence_path('tiled') marks one sequence's plan tiled, but a split by hidden
    units runs its own GEMVs on W_hh's panels: they must be handed over (not None)."""
    from threadpoolctl import threadpool_limits

    from grufast._isa import kernels

    rng = np.random.default_rng(15)
    x, h0, *w = problem(rng, 4, 1, 5, 256, np.float32)
    want, _, _ = F.gru_forward(x, h0, *w)
    try:
        kernels.force_recurrence_path("tiled")
        with threadpool_limits(2, user_api="openmp"):
            assert kernels.recurrence_plan(1, 256, False) == (True, "units")
            y, _, _ = F.gru_forward(x, h0, *w)
    finally:
        kernels.force_recurrence_path("auto")
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["auto", "tiled", "blas"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B, H", [(1, 16), (1, 256), (3, 16), (8, 16)])
def test_forward_reads_names_exactly_the_copies_forward_reads(monkeypatch, path, threads,
                                                              B, H):
    """One rule for which weight copies a forward reads (forward_reads: read_by makes only
    those, the kernel checks for them), held against what the kernel does with the copies
    when it is handed both: each one the rule names is read (filled with NaN, it turns
    the output NaN) and refused when missing; each other one can be dropped without
    changing a bit. Inference and training, every forced path, one thread and a split by
    units (B = 1, H = 256 on two)."""
    from threadpoolctl import threadpool_limits

    from grufast._isa import kernels

    names = ("w_hh_pp", "w_hh_p")
    rng = np.random.default_rng(16)
    x, h0, *w = problem(rng, 3, B, 5, H, np.float32)

    def handing(change=None):
        def read_by(self, B, training):
            copies = [self.w_hh_pp, self.w_hh_p]
            if change is not None:
                i, how = change
                copies[i] = None if how == "drop" else np.full_like(copies[i], np.nan)
            return tuple(copies)
        monkeypatch.setattr(F.Weights, "read_by", read_by)

    try:
        kernels.force_recurrence_path(path)
        with threadpool_limits(threads, user_api="openmp"):
            split = kernels.recurrence_plan(B, H, False)[1]
            assert split == ("units" if (B, H, threads) == (1, 256, 2) else "serial"), split
            for training in (False, True):
                reads = kernels.forward_reads(B, H, training)
                handing()
                want = F.gru_forward(x, h0, *w, training=training)[0]
                assert np.isfinite(want).all()
                for i, name in enumerate(names):
                    where = f"{name} path={path} training={training}"
                    if reads[i]:
                        handing((i, "nan"))
                        y = F.gru_forward(x, h0, *w, training=training)[0]
                        assert np.isnan(y).any(), f"{where}: named as read, but not read"
                        handing((i, "drop"))
                        with pytest.raises(ValueError, match=f"{name} is None"):
                            F.gru_forward(x, h0, *w, training=training)
                    else:
                        handing((i, "drop"))
                        y = F.gru_forward(x, h0, *w, training=training)[0]
                        np.testing.assert_array_equal(y, want, err_msg=where)
    finally:
        kernels.force_recurrence_path("auto")


@pytest.mark.parametrize("B, H, missing", [(1, 16, "w_hh_p"), (8, 16, "w_hh_pp"),
                                           (1, 256, "w_hh_p")])
def test_forward_refuses_a_missing_copy_it_would_read(monkeypatch, B, H, missing):
    """The kernel checks the copies against its own plan: a caller that leaves out the one
    the call reads gets an error naming it, not a read through a null pointer (B = 1,
    H = 256 on two threads: split by hidden units)."""
    from threadpoolctl import threadpool_limits

    monkeypatch.setattr(F.Weights, "read_by", lambda self, B, training: (None, None))
    rng = np.random.default_rng(13)
    from grufast._isa import kernels

    x, h0, *w = problem(rng, 4, B, 5, H, np.float32)
    with threadpool_limits(2, user_api="openmp"):
        split = kernels.recurrence_plan(B, H, False)[1]
        assert split == ("units" if H == 256 else "serial"), split
        with pytest.raises(ValueError, match=f"{missing} is None"):
            F.gru_forward(x, h0, *w)


@pytest.mark.parametrize("lbr", [True, False])
def test_only_training_and_gates_keep_the_gates(monkeypatch, lbr):
    """Inference skips storing r, z, n (and the state, the n term) that only backward and
    GRU.gates read; training and GRU.gates keep them, and a training call that would not is
    refused by name rather than leaving backward to read input projections."""
    import grufast
    from grufast import _gates

    calls = []
    real = F._kernels

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def forward(self, *args):
            calls.append(args)
            return real.forward(*args)

    monkeypatch.setattr(F, "_kernels", Spy())
    monkeypatch.setattr(_gates, "_kernels", Spy())
    x, h0, *w = problem(np.random.default_rng(15), 4, 2, 5, 8, np.float32)
    keep_at = 15  # forward's argument after gates
    F.gru_forward(x, h0, *w, linear_before_reset=lbr)
    assert calls[-1][keep_at] is False and calls[-1][keep_at + 1] is None
    F.gru_forward(x, h0, *w, linear_before_reset=lbr, training=True)
    args = list(calls[-1])
    assert args[keep_at] is True and args[keep_at + 1] is not None
    args[keep_at] = False
    with pytest.raises(ValueError, match="needs keep_gates"):
        real.forward(*args)
    m = grufast.GRU(5, 8, linear_before_reset=lbr).eval()
    g = m.gates(x)
    assert calls[-1][keep_at] is True
    assert np.all((g.r > 0) & (g.r < 1)) and np.all((g.z > 0) & (g.z < 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, K", [(39, 1030), (150, 7), (48, 16)])
def test_packing_from_the_transpose_equals_packing_the_transposed_copy(dtype, N, K):
    """W_ih^T is packed straight from W_ih (N, K): the same panels as from a transposed
    copy, over a K_BLOCK edge (1030 > 1024), with panel widths of every kind, on every
    build (their tile widths differ)."""
    from grufast import _isa

    w = np.random.default_rng(14).standard_normal((N, K)).astype(dtype)
    for build in _isa.runnable():
        np.testing.assert_array_equal(build.pack_gemm_panels(w, transposed=True),
                                      build.pack_gemm_panels(np.ascontiguousarray(w.T)),
                                      err_msg=build.__name__)
