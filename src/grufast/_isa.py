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


# Pool threads spin this many rounds (a pause instruction each: about 0.2 ms on a Zen 4
# core, 0.1-0.5 ms elsewhere) after a parallel region before they sleep. A call's threads
# are then still awake for the next call of a loop (a sleeping thread took 1-2 ms to wake on
# this project's VM, as long as a whole T = 100 call at B = 1), and a core is never held for
# longer than that: ONNX Runtime's pool spins ~45 ms after each run. Measured, two threads,
# bench cells (T = 100): B = 1, H = 512 4.24 -> 3.47 ms (ONNX Runtime 3.35-3.79); H = 256
# 1.43 -> 0.92; B = 16, H = 128 2.60 -> 2.59. libgomp shortens the spin by itself when it
# manages more threads than there are CPUs (oversubscription).
GOMP_SPINCOUNT = 10000


def _load() -> ModuleType:
    """select(), with libgomp told to spin only briefly between parallel regions.

    grufast opens one parallel region per call (or chunk of steps), and between them other
    code runs, OpenBLAS's threads included: threads spinning for long (libgomp's default is
    about 3 ms, "active" waiting spins for minutes) would take the cores it needs. libgomp
    reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when the kernels load it: passive waits
    after GOMP_SPINCOUNT rounds of spinning. The variables are set for that moment only,
    and only if the user set neither (a user's own setting wins), so libraries loaded later
    see the environment unchanged.
    """
    unset = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if unset:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ["GOMP_SPINCOUNT"] = str(GOMP_SPINCOUNT)
    try:
        return select()
    finally:
        if unset:
            del os.environ["OMP_WAIT_POLICY"]
            del os.environ["GOMP_SPINCOUNT"]


def l2_cache_bytes() -> int | None:
    """The L2 cache of one core, in bytes, from sysconf or Linux's sysfs (None if unknown)."""
    name = "SC_LEVEL2_CACHE_SIZE"
    if name in getattr(os, "sysconf_names", {}):
        try:
            size = os.sysconf(name)
            if size > 0:
                return size
        except (OSError, ValueError):
            pass
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(f"{base}/{entry}/level") as f:
                level = f.read().strip()
            with open(f"{base}/{entry}/type") as f:
                kind = f.read().strip()
            with open(f"{base}/{entry}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data"):
            units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
            try:
                if text[-1:].upper() in units:
                    return int(text[:-1]) * units[text[-1:].upper()]
                return int(text)
            except ValueError:
                return None
    return None


# Above this many multiply-adds per step (B * 3H * H, at 1 MiB of L2 per core) the AVX2
# build runs a training step's recurrent products (and the backward's flushes) in
# OpenBLAS's GEMM: tiled, a T = 100, B = 64, H = 512 training step took 1.29x OpenBLAS's
# time on one thread and 1.6x on two (tools/isa_crossover.py had measured inference losing
# 6-18% from 25M and tying below 13M before W_hh^T was packed for the tiles; now inference
# wins everywhere and ignores the limit). The limit scales with the L2 size read at run
# time.
AVX2_TILED_MACS_PER_MIB = 20_000_000


def tiled_limit_for(build: str, l2_bytes: int | None) -> int | None:
    """The multiply-adds per step above which a batch's training step leaves the tiled
    GEMM, for this build and L2 size (None: no limit)."""
    if not build.endswith("_avx2"):
        return None
    mib = (l2_bytes or (1 << 20)) / (1 << 20)
    return int(AVX2_TILED_MACS_PER_MIB * mib)


kernels = _load()
L2_BYTES = l2_cache_bytes()  # per core, read once: the tiled limit and functional.flush_rows
_limit = tiled_limit_for(kernels.__name__, L2_BYTES)
if _limit is not None:
    kernels.set_tiled_limit(_limit)
# Inference batches whose recurrent weights exceed one core's L2 split by hidden units on
# many threads (_kernels_threads.pxi); unknown L2: 1 MiB.
kernels.set_units_min_bytes(L2_BYTES or (1 << 20))
