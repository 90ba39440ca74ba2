"""The per-ISA choice between the register-tiled GEMM and OpenBLAS's for the recurrence."""

import numpy as np
import pytest

import grufast
from grufast import _isa
from grufast._isa import kernels


def test_l2_size_is_read_or_unknown():
    size = _isa.l2_cache_bytes()
    assert size is None or (isinstance(size, int) and size >= 64 * 1024)


def test_limit_rule_scales_with_l2_on_avx2_only():
    mib = 1 << 20
    assert _isa.tiled_limit_for("grufast._kernels_avx512", mib) is None
    assert _isa.tiled_limit_for("grufast._kernels", mib) is None
    assert _isa.tiled_limit_for("grufast._kernels_avx2", mib) == 20_000_000
    assert _isa.tiled_limit_for("grufast._kernels_avx2", mib // 2) == 10_000_000
    assert _isa.tiled_limit_for("grufast._kernels_avx2", None) == 20_000_000


def test_limit_in_force_matches_the_rule():
    want = _isa.tiled_limit_for(kernels.__name__, _isa.l2_cache_bytes())
    assert kernels.tiled_limit() == (2**62 if want is None else want)


def test_limit_binds_training_only():
    """Inference runs tiled whatever the limit (on packed weights it won at every measured
    shape); a training step leaves the tiles above it, for one GEMV per sequence below 4
    sequences; one sequence always takes its GEMV, 2 and 3 the tiles of 2 and 3 rows."""
    old = kernels.tiled_limit()
    try:
        kernels.set_tiled_limit(0)
        assert kernels.recurrence_plan(64, 32, False)[0] is True
        assert kernels.recurrence_plan(64, 32, True)[0] is False
        kernels.set_tiled_limit(2**62)
        assert kernels.recurrence_plan(64, 32, True)[0] is True
        assert kernels.recurrence_plan(3, 32, False)[0] is True
        assert kernels.recurrence_plan(2, 32, True)[0] is True
        assert kernels.recurrence_plan(1, 32, False)[0] is False
        assert kernels.recurrence_plan(1, 32, True)[0] is False
        assert not kernels.backward_reads(3, 32)  # tiles: no column panels
        kernels.set_tiled_limit(0)
        assert kernels.recurrence_plan(3, 32, True)[0] is False  # past it: GEMVs
        assert kernels.backward_reads(3, 32)
    finally:
        kernels.set_tiled_limit(old)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_macs"):
        kernels.set_tiled_limit(-1)
    with pytest.raises(ValueError, match="path"):
        kernels.force_recurrence_path("gpu")


@pytest.mark.parametrize("lbr", [True, False])
def test_both_paths_agree(lbr):
    """A batch through the tiled GEMM and through OpenBLAS: the same result to rounding,
    forward and backward; 'auto' restores the limit's choice."""
    model = grufast.GRU(12, 40, linear_before_reset=lbr, seed=0)
    x = np.random.default_rng(1).standard_normal((6, 9, 12)).astype(np.float32)
    out = {}
    try:
        for path in ("tiled", "blas"):
            kernels.force_recurrence_path(path)
            model.zero_grad()
            y, h = model(x)
            dx, _ = model.backward(np.ones_like(y))
            out[path] = (y, h, dx, model.grads["weight_hh_l0"].copy())
    finally:
        kernels.force_recurrence_path("auto")
    for a, b in zip(out["tiled"], out["blas"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
