"""Choose the kernels' build for this CPU at import: the AVX2 + FMA build where the CPU has
both, the baseline build everywhere else. GRUFAST_ISA=baseline forces the baseline."""

from __future__ import annotations

import os
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


def select() -> ModuleType:
    from grufast import _kernels

    if os.environ.get("GRUFAST_ISA", "").lower() == "baseline":
        return _kernels
    features = cpu_features()
    if features.get("AVX2") and features.get("FMA3"):
        try:
            from grufast import _kernels_avx2
        except ImportError:  # not built on this platform
            return _kernels
        return _kernels_avx2
    return _kernels


kernels = select()
