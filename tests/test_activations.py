"""The kernels' own sigmoid and tanh against libm in float64: the documented error bound."""

import numpy as np
import pytest

from grufast import _isa

BOUND = {np.float32: 1e-7, np.float64: 5e-16}
# Every build of the kernels this machine can run: baseline, AVX2 + FMA, AVX-512.
BUILDS = [pytest.param(m, id=m.__name__.rsplit(".", 1)[-1]) for m in _isa.runnable()]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_error_bound(dtype, build):
    x = np.concatenate([np.linspace(-120, 120, 1_200_001), np.linspace(-3, 3, 600_001),
                        np.geomspace(1e-30, 1e30, 10_001), -np.geomspace(1e-30, 1e30, 10_001)])
    x = x.astype(dtype)
    sig, tanh = np.empty_like(x), np.empty_like(x)
    build.activations(x, sig, tanh)
    xd = x.astype(np.float64)
    with np.errstate(over="ignore"):
        expected = 1 / (1 + np.exp(-xd))
    assert np.abs(sig - expected).max() <= BOUND[dtype]
    assert np.abs(tanh - np.tanh(xd)).max() <= BOUND[dtype]
    # Saturation is exact and monotone where it matters to the gates.
    assert np.all(tanh[x >= 20] == 1) and np.all(tanh[x <= -20] == -1)
    assert np.all((sig >= 0) & (sig <= 1)) and np.all(np.abs(tanh) <= 1)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("at", [0, 16, 56], ids=["head", "vector-body", "tail"])
def test_activation_special_values(dtype, build, at):
    # Placed inside a longer array too: the vectorised loop body (whose clamps are max/min
    # instructions with their own NaN rule) and the scalar remainder are separate code.
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e6, -1e6], dtype)
    # NaNs with payloads too (R's NA is one): an integer add into the exponent bits, tried
    # for 2^k, turned them into finite numbers.
    bits = ([0x7FC00001, 0xFFC00123, 0x7F800001] if dtype == np.float32 else
            [0x7FF80000000007A2, 0xFFF8000000000123, 0x7FF0000000000001])
    nans = np.array(bits, np.uint32 if dtype == np.float32 else np.uint64).view(dtype)
    specials = np.concatenate([specials, nans])
    x = np.full(67, 0.25, dtype)
    x[at:at + specials.size] = specials
    sig, tanh = np.empty_like(x), np.empty_like(x)
    build.activations(x, sig, tanh)
    s, t = sig[at:at + specials.size], tanh[at:at + specials.size]
    assert np.isnan(s[0]) and np.isnan(t[0])
    assert np.isnan(s[-3:]).all() and np.isnan(t[-3:]).all()
    assert s[1] == 1 and 0 <= s[2] < 1e-37 and s[3] == 0.5 and s[5] == 1 and 0 <= s[6] < 1e-37
    np.testing.assert_array_equal(t[1:7], [1, -1, 0, 0, 1, -1])
    assert np.signbit(t[4])
    rest = np.delete(np.arange(x.size), np.arange(at, at + specials.size))
    assert np.all(sig[rest] == sig[rest][0]) and np.all(tanh[rest] == tanh[rest][0])
