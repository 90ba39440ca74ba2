"""Shared test helpers: random GRU problems and the tolerance rule of DESIGN.md section 5."""

import numpy as np

# Relative to the largest magnitude of the expected value.
TOL = {
    np.dtype(np.float64): {"fwd": 1e-10, "grad": 1e-10},
    np.dtype(np.float32): {"fwd": 5e-5, "grad": 5e-4},
}


def rel_err(actual, expected) -> float:
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.size == 0:
        return 0.0
    scale = max(np.abs(expected).max(), 1e-30)
    return float(np.abs(actual - expected).max() / scale)


def assert_close(actual, expected, dtype, kind="fwd", what=""):
    err = rel_err(actual, expected)
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
