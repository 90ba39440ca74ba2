"""Where the bench runs: thread limits applied the same way to every peer, and the record of
the machine, the libraries and the limits as they stand once applied.

Thread limits, for a run with ``n`` threads (one worker process per thread count):

- the worker process is pinned before it starts (``sched_setaffinity`` in the child before
  ``exec``, so every thread any library creates inherits it): to one core for ``n = 1``, to
  ``n`` cores when fewer than all; with ``n`` = all visible cores it is left unpinned.
  Pinning is the only cap XLA (JAX) honours for its own thread pools: it sizes them from the
  cores the process may use;
- ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` = n in the worker's
  environment, read by OpenBLAS (NumPy, SciPy: grufast's BLAS) and OpenMP (grufast, PyTorch)
  when they load; threadpoolctl, when installed, sets the same limits again at run time;
- ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` for n = 1 (XLA's Eigen products on the
  calling thread); XLA has no thread-count flag (``intra_op_parallelism_threads`` is
  TensorFlow's session option, not an XLA flag), hence the pinning;
- PyTorch: ``torch.set_num_threads(n)`` and ``torch.set_num_interop_threads(n)`` right after
  import, before any work; ONNX Runtime: ``intra_op_num_threads = n`` per session.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform

import numpy as np

from grufast._bench_peers import INSTALL, MODULES, PEERS

LIMIT_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules (None) or broken
        return False


def missing_modules(peer: str) -> list[str]:
    return [m for m in MODULES[peer] if not installed(m)]


def available_peers() -> list[str]:
    return [p for p in PEERS if not missing_modules(p)]


def missing_note(peers: list[str]) -> list[str]:
    """One line per requested peer or helper that is not installed, with how to install it."""
    lines = []
    for p in peers:
        miss = missing_modules(p)
        if miss:
            lines.append(f"{p}: not installed (no module {', '.join(miss)}); skipped. "
                         f"Install it with `{INSTALL[p]}` or `pip install \"grufast[bench]\"`.")
    if not installed("threadpoolctl"):
        lines.append("threadpoolctl: not installed; thread limits come from OMP_NUM_THREADS/"
                     "OPENBLAS_NUM_THREADS set in the worker processes and from pinning "
                     "(`pip install threadpoolctl` adds run-time limits and the BLAS record).")
    return lines


def visible_cpus() -> list[int]:
    """The cpus this process may run on (all of them where affinity is not available)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _siblings(cpu: int) -> list[int]:
    """The logical cpus sharing ``cpu``'s physical core (SMT siblings, sysfs), itself
    included; [cpu] where the platform does not say."""
    try:
        with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
            text = f.read().strip()
    except OSError:
        return [cpu]
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def cores_first(cpus: list[int]) -> list[int]:
    """``cpus`` ordered so that each physical core's first sibling comes before any core's
    second: n threads pinned to the first n then run on n cores where the machine has
    them, not on n/2 cores' SMT pairs (whose FMA units they would share). The core of the
    lowest cpu comes last among them: cpu 0 carries the work the kernel cannot move
    elsewhere (some interrupts and timers), and on the lent 16-core machine cpus 0-1 were
    the slowest pair for every library."""
    first = set(_siblings(min(cpus))) if cpus else set()
    rank = {}
    for c in cpus:
        sib = [s for s in _siblings(c) if s in cpus] or [c]
        rank[c] = (sorted(sib).index(c) if c in sib else 0, c in first, c)
    return sorted(cpus, key=rank.__getitem__)


def physical_cores(cpus: list[int]) -> int:
    """How many physical cores ``cpus`` span."""
    return len({min(_siblings(c)) for c in cpus})


def cpus_for(threads: int) -> set[int] | None:
    """The cpus a worker with ``threads`` threads is pinned to, one per physical core first
    (None: unpinned, also where the platform cannot pin)."""
    visible = visible_cpus()
    if threads >= len(visible) or not hasattr(os, "sched_setaffinity"):
        return None
    return set(cores_first(visible)[:threads])


def thread_mode(threads: int, pinned: set[int] | None, visible: int) -> str:
    t = f"{threads} thread{'s' if threads > 1 else ''}"
    if pinned is None:
        return f"{t}, unpinned (all {visible} cores)"
    if len(pinned) == 1:
        return f"{t}, pinned to one core (cpu {min(pinned)})"
    cores = physical_cores(sorted(pinned))
    return (f"{t}, pinned to {len(pinned)} of {visible} cpus"
            + ("" if cores == len(pinned) else f" ({cores} physical cores)"))


# Emulating a CPU without AVX-512 on one that has it: each library's own setting, in the
# worker's environment before anything loads. XLA's flag holds only the code XLA generates;
# its matrix products go to YNNPACK, which has no such setting, so they are sent to oneDNN
# instead (the empty YNN fusion list), which ONEDNN_MAX_CPU_ISA holds. ONNX Runtime's MLAS
# tests CPUID and XCR0 when it loads and has no setting at all: the workers import a copy
# of it that reads XCR0 without AVX-512 state (_bench_hold), first on their PYTHONPATH.
EMULATE = {
    "avx2": {
        "env": {"GRUFAST_ISA": "avx2", "OPENBLAS_CORETYPE": "Haswell",
                "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                "ONEDNN_MAX_CPU_ISA": "AVX2"},
        "xla_flags": ["--xla_cpu_max_isa=AVX2", "--xla_cpu_experimental_ynn_fusion_type="],
        # Which of those settings hold each peer (XLA_FLAGS: the xla_flags above).
        "held_by": {"grufast": ["GRUFAST_ISA"], "numpy-reference": ["OPENBLAS_CORETYPE"],
                    "torch": ["ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                              "ONEDNN_MAX_CPU_ISA"],
                    "jax": ["XLA_FLAGS", "ONEDNN_MAX_CPU_ISA"]},
    },
}
# ONNX Runtime's hold, made once per bench run (_bench_hold.hold_onnxruntime), as the
# workers get it: {"path": first on PYTHONPATH, "how": what was done} or {"error": why not}.
ORT_HOLD_VAR = "GRUFAST_BENCH_ORT_HOLD"
ISA_VARS = tuple(EMULATE["avx2"]["env"])


def held(emulate: str) -> dict[str, str]:
    """Each peer the emulation of ``emulate`` holds, with the settings that hold it."""
    hold = EMULATE[emulate]
    settings = {**{k: f"{k}={v}" for k, v in hold["env"].items()},
                "XLA_FLAGS": " ".join(hold["xla_flags"])}
    return {peer: ", ".join(settings[name] for name in names)
            for peer, names in hold["held_by"].items()}


def worker_env(threads: int, emulate: str | None = None,
               ort_hold: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process with ``threads`` threads, every library held to
    the ISA ``emulate`` names (a key of EMULATE) where it can be; ``ort_hold``: ONNX
    Runtime's hold (ORT_HOLD_VAR), its held copy put first on PYTHONPATH."""
    env = dict(os.environ)
    for v in LIMIT_VARS:
        env[v] = str(threads)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_cpu_multi_thread_eigen")]
    if threads == 1:
        flags.append("--xla_cpu_multi_thread_eigen=false")
    if emulate is not None:
        hold = EMULATE[emulate]
        env.update(hold["env"])
        env["GRUFAST_BENCH_EMULATE"] = emulate  # for the worker's record
        names = {f.split("=")[0] for f in hold["xla_flags"]}
        flags = [f for f in flags if f.split("=")[0] not in names] + hold["xla_flags"]
        if ort_hold is not None:
            env[ORT_HOLD_VAR] = json.dumps(ort_hold)
            if "path" in ort_hold:
                from grufast._bench_hold import python_path

                env["PYTHONPATH"] = python_path(ort_hold["path"], env)
    env["XLA_FLAGS"] = " ".join(flags)
    return env


class ThreadLimits:
    """Apply the run-time limits inside the worker (the env and pinning came with it)."""

    def __init__(self, threads: int, peers: list[str], dtype: str) -> None:
        self.threads = threads
        self._limiter = None
        if installed("threadpoolctl"):
            from threadpoolctl import threadpool_limits

            self._limiter = threadpool_limits(threads)  # held for the process's life
        if "torch" in peers:
            import torch

            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(threads)
            except RuntimeError:  # already set (or inter-op work started) in this process
                pass
        if "jax" in peers:
            import jax

            if dtype == "float64":
                jax.config.update("jax_enable_x64", True)


def cpu_flags() -> set[str]:
    """Every feature flag /proc/cpuinfo lists for the first CPU (empty where it cannot be
    read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.partition(":")[0].strip() == "flags":
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _cpu() -> dict:
    info = {"model": platform.processor() or platform.machine(), "flags": []}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and info["model"] in ("", platform.processor(),
                                                             platform.machine()):
            info["model"] = value.strip()
        if key.strip() == "flags":
            break
    have = cpu_flags()
    info["flags"] = [f for f in ("avx2", "fma", "avx512f") if f in have]
    return info


def _l2() -> str:
    """L2 size of cpu0 and how many cpus share it (sysfs)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            if not idx.startswith("index"):
                continue
            with open(os.path.join(d, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(d, "size")) as f:
                size = f.read().strip()
            with open(os.path.join(d, "shared_cpu_list")) as f:
                shared = f.read().strip()
            n = sum(len(range(int(a), int(b) + 1)) if "-" in part else 1
                    for part in shared.split(",") for a, _, b in [part.partition("-")])
            return f"{size} per core" if n == 1 else f"{size} shared by {n} cpus"
    except (OSError, ValueError):
        pass
    return "unknown"


def _blas() -> dict:
    """The BLAS SciPy (hence grufast) calls, and every loaded BLAS/OpenMP, as threadpoolctl
    sees them now (after the limits)."""
    import scipy

    scipy_libs = os.path.dirname(scipy.__file__) + ".libs"
    if not installed("threadpoolctl"):
        dep = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return {"grufast": {"internal_api": dep.get("name"), "version": dep.get("version"),
                            "architecture": "unknown (threadpoolctl not installed)"},
                "all": []}
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads", "filepath")
    libs = [{k: i.get(k) for k in keys} for i in threadpool_info()]
    ours = next((lib for lib in libs if lib["filepath"].startswith(scipy_libs)),
                next((lib for lib in libs if lib["internal_api"] != "openmp"), {}))
    return {"grufast": ours, "all": libs}


def isa_build() -> str:
    from grufast._isa import kernels

    return kernels.__name__.rsplit(".", 1)[-1].replace("_kernels", "").lstrip("_") \
        or "baseline"


def emulation(emulate: str, peers: list[str]) -> dict:
    """The worker's record of the emulation: each peer held, with how, and each that is not,
    with why. ONNX Runtime counts as held only where this process imported the held copy."""
    record = {"isa": emulate, "held": held(emulate), "not_held": {}}
    if "onnxruntime" in peers:
        from grufast._bench_hold import imported_from

        hold = json.loads(os.environ.get(ORT_HOLD_VAR, "null")) or {
            "error": "the bench made no held copy for this worker"}
        if "path" in hold and imported_from(hold["path"]):
            record["held"]["onnxruntime"] = hold["how"]
        else:
            import onnxruntime

            record["not_held"]["onnxruntime"] = hold.get(
                "error", f"onnxruntime was imported from {onnxruntime.__file__}, not the "
                         "held copy")
    return record


def environment(threads: int, peers: list[str]) -> dict:
    """The record of this worker once its limits are applied."""
    import scipy

    import grufast
    from grufast._isa import kernels

    versions = {"python": platform.python_version(), "grufast": grufast.__version__,
                "numpy": np.__version__, "scipy": scipy.__version__}
    for peer, mods in (("torch", ["torch"]), ("onnxruntime", ["onnxruntime", "onnx"]),
                       ("jax", ["jax", "jaxlib"])):
        if peer in peers:
            versions.update({m: __import__(m).__version__ for m in mods})
    affinity = visible_cpus()
    visible = int(os.environ.get("GRUFAST_BENCH_VISIBLE_CPUS", len(affinity)))
    pinned = set(affinity) if len(affinity) < visible else None
    limits = {"affinity": affinity, "grufast_openmp_threads": kernels.openmp_threads(),
              "env": {v: os.environ.get(v) for v in LIMIT_VARS + ("XLA_FLAGS",) + ISA_VARS}}
    if "torch" in peers:
        import torch

        limits["torch_num_threads"] = torch.get_num_threads()
        limits["torch_num_interop_threads"] = torch.get_num_interop_threads()
    if "onnxruntime" in peers:
        limits["onnxruntime_intra_op_num_threads"] = threads
    blas = _blas()
    emulate = os.environ.get("GRUFAST_BENCH_EMULATE")
    emulated = None if emulate not in EMULATE else emulation(emulate, peers)
    return {"cpu": _cpu(), "l2": _l2(), "isa_build": isa_build(), "emulated": emulated,
            "blas": blas,
            "physical_cores": physical_cores(affinity), "threads": threads,
            "thread_mode": thread_mode(threads, pinned, visible), "limits": limits,
            "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def describe(env: dict) -> str:
    """One line naming the machine, the build, the BLAS, the thread mode and the date."""
    cpu = env["cpu"]
    b = env["blas"]["grufast"]
    blas = f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')} kernels)"
    emulated = env.get("emulated")
    held = "" if not emulated else (
        f", {emulated['isa'].upper()} emulated (every peer held to it"
        + (f" but {', '.join(emulated['not_held'])})" if emulated["not_held"] else ")"))
    return (f"{cpu['model']} [{', '.join(cpu['flags']) or 'no avx2'}]; grufast "
            f"{env['isa_build']} build{held}; L2 {env['l2']}; BLAS {blas}; "
            f"{env['thread_mode']}; {env['date']}")
