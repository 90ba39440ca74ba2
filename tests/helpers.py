"""Shared test helpers: random GRU problems and the tolerance rule of DESIGN.md section 5."""

import numpy as np

# Relative to the largest magnitude of the expected value.
TOL = {
    np.dtype(np.float64): {"fwd": 1e-10, "grad": 1e-10},
    np.dtype(np.float32): {"fwd": 5e-5, "grad": 5e-4},
}


def rel_err(actual, expected, floor: float = 1e-30) -> float:
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.size == 0:
        return 0.0
    scale = max(np.abs(expected).max(), floor)
    return float(np.abs(actual - expected).max() / scale)


# float32 results whose largest magnitude is below 1e-2 are judged against 1e-2: a float32
# gate near saturation carries ~1e-7 absolute error in any implementation (on the case that
# showed it, T = B = I = H = 1 with y = 2.4e-3, ONNX Runtime was 4e-5 off the float64 truth
# and grufast 2e-5), which relative to such a tiny output exceeds 5e-5.
FLOOR = {np.dtype(np.float64): 1e-30, np.dtype(np.float32): 1e-2}


def assert_close(actual, expected, dtype, kind="fwd", what=""):
    err = rel_err(actual, expected, FLOOR[np.dtype(dtype)])
    tol = TOL[np.dtype(dtype)][kind]
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
    return err


def problem(rng, T, B, I, H, dtype=np.float64, bias=True, scale=None):
    """x, h0, w_ih, w_hh, b_ih, b_hh with PyTorch's init range (or ``scale``)."""
    k = scale if scale is not None else 1 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-k, k, shape).astype(dtype)

    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype) * 0.5
    b = (u(3 * H), u(3 * H)) if bias else (None, None)
    return x, h0, u(3 * H, I), u(3 * H, H), *b


def assert_equal_bits_in_release(actual, desired) -> None:
    """Bitwise equality on release builds. A debug build (-O0) is compared to 1e-6 of the
    largest magnitude instead: without optimisation gcc does not contract a * b + c into an
    FMA in the loops outside the tiled GEMM (whose tiles, _tiles.h, fuse on every build),
    while OpenBLAS's kernels still fuse, so paths that agree bit for bit in a release build
    (OpenBLAS vs the tiled GEMM on different batch or thread splits) may round differently
    there."""
    from grufast import _build_info

    actual, desired = np.asarray(actual), np.asarray(desired)
    if _build_info.DEBUG:
        scale = max(float(np.max(np.abs(desired), initial=0.0)), 1.0)
        np.testing.assert_allclose(actual, desired, rtol=0, atol=1e-6 * scale)
    else:
        np.testing.assert_array_equal(actual, desired)


def assert_layer_close(ours, theirs, dtype) -> None:
    """A layer's forward and backward against an oracle's: each a tuple (y, h_n, dx, dh0,
    parameter gradients by state-dict name), within the dtype's tolerances."""
    (y, hn, dx, dh0, grads), (ty, thn, tdx, tdh0, tgrads) = ours, theirs
    assert_close(y, ty, dtype, "fwd", "y")
    assert_close(hn, thn, dtype, "fwd", "h_n")
    assert_close(dx, tdx, dtype, "grad", "dx")
    assert_close(dh0, tdh0, dtype, "grad", "dh0")
    assert set(grads) == set(tgrads)
    for name, g in tgrads.items():
        assert_close(grads[name], g, dtype, "grad", name)


def unaligned(a: np.ndarray) -> np.ndarray:
    """a's values in a C-contiguous array that starts one byte past an aligned address."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    out = raw[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned and out.flags.c_contiguous
    return out
