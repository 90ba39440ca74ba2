"""Choose the kernels' build for this CPU at import: AVX-512 where the CPU has it, else AVX2 +
FMA, else the baseline x86-64 (or other platform) build. GRUFAST_ISA=baseline|avx2|avx512 caps
it (docs/design.md section 6)."""

from __future__ import annotations

import os
import warnings
from types import ModuleType


def cpu_features() -> dict[str, bool]:
    """NumPy's run-time CPU feature detection (empty if this NumPy does not expose it)."""
    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            module = __import__(name, fromlist=["__cpu_features__"])
            return dict(module.__cpu_features__)
        except (ImportError, AttributeError):
            continue
    return {}


# Builds from the most to the least capable, with the CPU features each needs (NumPy's names).
BUILDS = [("avx512", ("AVX512_SKX", "FMA3")), ("avx2", ("AVX2", "FMA3"))]
# The values GRUFAST_ISA accepts (case-insensitive); unset or empty means no cap.
ISA_CAPS = ("baseline", "avx2", "avx512")


def isa_cap() -> str:
    """GRUFAST_ISA, lower-cased; an unknown value warns (naming the valid ones) and counts
    as unset, so a typo never stops the package from loading."""
    value = os.environ.get("GRUFAST_ISA", "")
    cap = value.strip().lower()
    if cap and cap not in ISA_CAPS:
        warnings.warn(
            f"GRUFAST_ISA={value!r} is not one of {', '.join(ISA_CAPS)} (or unset); "
            "ignoring it: grufast uses the most capable build this CPU supports",
            RuntimeWarning,
            stacklevel=2,
        )
        return ""
    return cap


def select() -> ModuleType:
    """The most capable build this CPU runs; GRUFAST_ISA (baseline, avx2, avx512) caps it."""
    import importlib

    from grufast import _kernels

    cap = isa_cap()
    if cap == "baseline":
        return _kernels
    names = [name for name, _ in BUILDS]
    allowed = names[names.index(cap):] if cap in names else names
    features = cpu_features()
    for name, needs in BUILDS:
        if name in allowed and all(features.get(f) for f in needs):
            try:
                return importlib.import_module(f"grufast._kernels_{name}")
            except ImportError:  # not built on this platform
                continue
    return _kernels


def runnable() -> list[ModuleType]:
    """Every build this CPU can run (for tests that check them all)."""
    import importlib

    from grufast import _kernels

    features = cpu_features()
    out = [_kernels]
    for name, needs in BUILDS:
        if all(features.get(f) for f in needs):
            try:
                out.append(importlib.import_module(f"grufast._kernels_{name}"))
            except ImportError:
                pass
    return out


def _load() -> ModuleType:
    """select(), with libgomp told to sleep rather than spin between parallel regions.

    grufast opens one parallel region per chunk of steps, and between them OpenBLAS's
    threads run the big GEMMs: spinning OpenMP threads would take their cores. libgomp reads
    OMP_WAIT_POLICY once, when the kernels load it; the variable is set for that moment only
    (a user's own setting wins), so libraries loaded later see the environment unchanged.
    """
    unset = "OMP_WAIT_POLICY" not in os.environ
    if unset:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        return select()
    finally:
        if unset:
            del os.environ["OMP_WAIT_POLICY"]


kernels = _load()
