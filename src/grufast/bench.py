"""python -m grufast bench: grufast side by side with its NumPy reference and whichever of
PyTorch, ONNX Runtime and JAX are installed, on the standard grid or on your own shapes.

Every peer gets the same weights and inputs, runs in the configuration its maintainers would
choose (docs/bench_method.md lists them), and is timed interleaved with the others, round by
round. Each thread count runs in its own worker process, pinned and thread-limited before any
library loads. Read the ratios between columns: they compare peers measured in the same
rounds; absolute times drift on shared machines. The JSON's fields: docs/bench_json.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from grufast._bench_timing import interleaved, median_ms  # noqa: F401  (median_ms: the CLI's)
from grufast._cli_args import int_at_least, output_file

GRID = [(100, 1, 64, 64), (100, 1, 256, 256), (100, 1, 512, 512), (100, 16, 128, 128),
        (100, 64, 256, 256), (100, 64, 512, 512), (1000, 1, 32, 32), (50, 256, 128, 256)]
QUICK_GRID = [GRID[0], GRID[3]]
STREAM_H = 128
SGEMM_MIN_BATCH = 16  # below it T sequential GEMVs cannot reach one big GEMM's speed
SGEMM_NAME = "one GEMM of equal FLOPs, no gate work"
REFERENCE_ROUNDS = 3  # the NumPy reference is the specification, shown for scale only


# -- arguments -------------------------------------------------------------------------------

def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.replace(" ", "").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"--shape must be four positive integers T,B,I,H (e.g. 100,16,128,128), "
            f"got {text!r}")
    return dims  # type: ignore[return-value]


def parse_peers(text: str) -> list[str]:
    from grufast._bench_peers import PEERS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--peers takes a comma-separated list of {', '.join(PEERS)} "
            f"(grufast always runs), got unknown {', '.join(unknown) or 'nothing'} "
            f"in {text!r}")
    return list(dict.fromkeys(names))


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"--budget takes seconds >= 0, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    from grufast._bench_peers import PEERS

    p.add_argument("--threads", type=int_at_least("--threads"), nargs="+", metavar="N",
                   help="thread counts to run, each in its own process (default: 1, pinned "
                        "to one core, and all visible cores)")
    p.add_argument("--one-core", action="store_true", help="same as --threads 1")
    p.add_argument("--shape", type=parse_shape, action="append", metavar="T,B,I,H",
                   help="a shape to bench instead of the standard grid (repeatable)")
    p.add_argument("--peers", type=parse_peers, metavar="NAMES",
                   help=f"comma-separated peers among {', '.join(PEERS)} (default: all "
                        "installed; grufast always runs)")
    p.add_argument("--no-reference", action="store_true", help="skip the NumPy reference")
    p.add_argument("--layers", type=int_at_least("--layers"), default=1, metavar="N",
                   help="stacked layers (default 1)")
    p.add_argument("--bidirectional", action="store_true", help="bidirectional layers")
    p.add_argument("--no-linear-before-reset", action="store_true",
                   help="the original GRU (reset applied before the recurrent product)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--budget", type=_seconds, default=None, metavar="SECONDS",
                   help="seconds of interleaved rounds per cell (default 2; 0.3 with --quick)")
    p.add_argument("--jax-unroll", type=int_at_least("--jax-unroll"), metavar="N",
                   help="JAX's scan unroll (default: the fastest of 1, 2, 4, 8 per shape)")
    p.add_argument("--emulate", choices=["avx2"],
                   help="hold grufast and every peer to this ISA (an AVX2 CPU on one with "
                        "AVX-512; docs/bench_method.md says how each is held)")
    p.add_argument("--json", type=output_file, help="write the results to this JSON file")
    p.add_argument("--plot", type=output_file, help="write a PNG plot here (needs matplotlib)")
    p.add_argument("--quick", action="store_true",
                   help="two small shapes and short budgets: a smoke test")
    p.add_argument("--tables-only", action="store_true",
                   help="the inference and training tables only: no streaming step, "
                        "training iteration, gates cost or reduced-precision run")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one thread count, inside
    p.add_argument("--worker-settings", help=argparse.SUPPRESS)


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """What the workers run, from the command line (validated there)."""
    from grufast._bench_env import available_peers

    installed = available_peers()
    wanted = args.peers if args.peers else list(installed)
    if args.no_reference and "numpy-reference" in wanted:
        wanted.remove("numpy-reference")
    shapes = args.shape or (QUICK_GRID if args.quick else GRID)
    budget = args.budget if args.budget is not None else (0.3 if args.quick else 2.0)
    return {"shapes": [list(s) for s in shapes], "requested": wanted,
            "peers": [p for p in wanted if p in installed], "layers": args.layers,
            "bidirectional": args.bidirectional,
            "linear_before_reset": not args.no_linear_before_reset, "dtype": args.dtype,
            "budget_s": budget, "min_rounds": 3 if args.quick else 7,
            "jax_unroll_sweep_s": 0.05 if args.quick else 0.2, "jax_unroll": args.jax_unroll,
            "quick": args.quick, "extras": not args.tables_only, "emulate": args.emulate}


# -- one worker: one thread count ------------------------------------------------------------

def _progress(items, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="shape", file=sys.stderr)


def _cells(runs: dict, kind: str) -> tuple[dict, dict, dict]:
    calls, contexts, na = {}, {}, {}
    for name, r in runs.items():
        fn = getattr(r, kind)
        if fn is None:
            na[name] = r.na.get(kind, "cannot run this kind")
        else:
            calls[name] = fn
            if kind in r.context:
                contexts[name] = r.context[kind]
    return calls, contexts, na


def run(threads: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Measure every shape and the streaming step with ``threads`` threads, in this process
    (whose pinning and thread environment the caller set up)."""
    from grufast import _bench_env as E
    from grufast import _bench_peers as P

    peers = settings["peers"]
    limits = E.ThreadLimits(threads, peers, settings["dtype"])  # before any peer does work
    variant = dict(layers=settings["layers"], bidirectional=settings["bidirectional"],
                   linear_before_reset=settings["linear_before_reset"],
                   dtype=settings["dtype"])
    timing = dict(budget_s=settings["budget_s"], min_rounds=settings["min_rounds"],
                  threaded=threads > 1)
    cache = settings.get("jax_unroll_cache")
    if cache and os.path.exists(cache):
        with open(cache) as f:
            P.unroll_cache.update(json.load(f))
    rows = []
    for shape in _progress(settings["shapes"], f"bench, {threads} thread(s)"):
        case = P.Case(*shape, **variant)
        prob = P.make_problem(case)
        runs = {"grufast": P.make_peer("grufast", prob, threads)}
        for name in peers:
            kw = {}
            if name == "jax":
                u = settings.get("jax_unroll")
                kw = {"sweep_s": settings["jax_unroll_sweep_s"],
                      "unroll": {"infer": u, "train": u} if u else None}
            runs[name] = P.make_peer(name, prob, threads, **kw)
        row: dict[str, Any] = {"shape": list(shape), "config": {
            n: r.config for n, r in runs.items() if r.config}}
        for kind, key in (("infer", "inference"), ("train", "training")):
            calls, contexts, na = _cells(runs, kind)
            if kind == "infer" and case.B >= SGEMM_MIN_BATCH:
                calls["sgemm"] = P.sgemm_call(case)
            res = interleaved(calls, contexts=contexts, **timing,
                              round_caps={"numpy-reference": REFERENCE_ROUNDS})
            if kind == "infer":
                row["sgemm"] = res.pop("sgemm", None)
            row[key] = {**res, **{n: {"na": why} for n, why in na.items()}}
        rows.append(row)
        del runs, prob
    if cache:
        with open(cache, "w") as f:
            json.dump(P.unroll_cache, f)
    settings = {k: v for k, v in settings.items() if k != "jax_unroll_cache"}
    result = {"environment": E.environment(threads, peers), "settings": settings,
              "rows": rows}
    if settings.get("extras", True):
        result.update(streaming=streaming(threads, settings),
                      **training_extras(threads, settings))
    del limits  # held (with threadpoolctl's limits) until everything is measured and recorded
    return result


def streaming(threads: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Microseconds per step, B = 1, I = H = STREAM_H, for 1 and 2 layers (and --layers)."""
    from grufast import _bench_peers as P

    out: dict[str, Any] = {"I": STREAM_H, "H": STREAM_H, "steps_per_sample": P.STREAM_STEPS,
                           "layers": {}}
    if settings["bidirectional"]:
        out["na"] = "streaming needs a unidirectional GRU"
        return out
    for L in sorted({1, 2, settings["layers"]}):
        case = P.Case(1, 1, STREAM_H, STREAM_H, L, False, settings["linear_before_reset"],
                      settings["dtype"])
        samples = P.stream_peers(case, threads, settings["peers"])
        calls = {n: f for n, f in samples.items() if not isinstance(f, str)}
        res = interleaved(calls, budget_s=settings["budget_s"] / 2,
                          min_rounds=settings["min_rounds"], threaded=threads > 1,
                          scale=1e6 / P.STREAM_STEPS)
        res.update({n: {"na": why} for n, why in samples.items() if isinstance(why, str)})
        out["layers"][str(L)] = res
    return out


def training_extras(threads: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The end-to-end training iteration of the demo's model against the identical PyTorch
    loop, and GRU.gates against an inference call, for the standard model only (float32, one
    unidirectional layer, linear_before_reset)."""
    from grufast import bench_training as BT

    standard = (settings["dtype"] == "float32" and settings["layers"] == 1
                and not settings["bidirectional"] and settings["linear_before_reset"])
    if not standard:
        return {}
    rounds = 3 if settings["quick"] else 7
    out: dict[str, Any] = {"gates": BT.gates_cost([tuple(s) for s in settings["shapes"]],
                                                  threads=threads, rounds=rounds)}
    if "torch" in settings["peers"]:
        out["training_iteration"] = BT.iteration(threads=threads, rounds=rounds)
    if {"torch", "onnxruntime"} <= set(settings["peers"]):
        from grufast import bench_quantized as BQ

        # int8 / bf16 beside grufast float32, ONNX Runtime float32 and PyTorch's dynamically
        # quantized GRU, interleaved in this process (it prints its own lines as it goes)
        print("\nreduced precision (grufast.bench_quantized):", flush=True)
        out["quantized"] = BQ.run(threads, settings["quick"])
    return out


# -- the printed table -----------------------------------------------------------------------

def fastest_peer(cells: dict) -> tuple[str, float]:
    """The fastest of the peers (not grufast, the reference or the GEMM) by median."""
    from grufast._bench_peers import PEERS

    times = {k: v["median"] for k, v in cells.items()
             if k in PEERS and k != "numpy-reference" and "median" in v}
    if not times:
        return "-", float("nan")
    name = min(times, key=times.get)
    return name, times[name]


def _cell(s: dict | None, width: int) -> str:
    if not s:
        return f"{'':>{width}}"
    if "na" in s:
        return f"{'n/a':>{width}}"
    m = s["median"]
    spread = f"({100 * (s['q3'] - s['q1']) / m:.0f}%/{100 * (s['max'] - s['min']) / m:.0f}%)"
    return f"{f'{m:.4g} {spread}':>{width}}"


def _na_notes(cells_by_row: list[dict]) -> list[str]:
    notes = {}
    for cells in cells_by_row:
        for n, s in cells.items():
            if "na" in s:
                notes[n] = s["na"]
    return [f"  n/a: cannot compute this variant or kind -- {n}: {why}"
            for n, why in notes.items()]


def format_table(result: dict) -> str:
    from grufast._bench_env import describe

    env, st = result["environment"], result["settings"]
    variant = (f"{st['dtype']}, {st['layers']} layer(s), "
               f"{'bidirectional' if st['bidirectional'] else 'unidirectional'}, "
               f"linear_before_reset={st['linear_before_reset']}")
    lines = [describe(env),
             "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
             f"model: {variant}; each cell: median (IQR / min-max range, in % of the median) "
             f"of calls interleaved round by round, {st['budget_s']:g} s per cell", ""]
    W = 22
    for key, unit in (("inference", "ms"), ("training", "ms")):
        rows = result["rows"]
        names = [n for n in rows[0][key] if not all(
            "na" in r[key][n] and "inference only" in r[key][n]["na"] for r in rows)]
        dropped = [n for n in rows[0][key] if n not in names]
        show_gemm = key == "inference" and any(r["sgemm"] for r in rows)
        head = f"{'T, B, I, H':18}" + "".join(f"{n:>{W}}" for n in names)
        if show_gemm:
            head += f"{'GEMM':>{W}}{'vs GEMM':>9}"
        head += f"{'vs best peer':>22}"
        lines += [f"{key} (median {unit} per call)", head]
        ratios = []
        for r in rows:
            t = r[key]
            line = f"{', '.join(map(str, r['shape'])):18}" + "".join(
                _cell(t[n], W) for n in names)
            if show_gemm:
                g = r["sgemm"]
                line += _cell(g, W) + (f"{t['grufast']['median'] / g['median']:9.2f}"
                                       if g else f"{'':9}")
            peer, best = fastest_peer(t)
            ratio = t["grufast"]["median"] / best
            if np.isfinite(ratio):
                ratios.append(ratio)
                line += f"{ratio:8.2f} ({peer})"
            lines.append(line)
        if ratios:
            lines.append(f"geometric mean of grufast / best peer: "
                         f"{float(np.exp(np.mean(np.log(ratios)))):.2f}")
        if show_gemm:
            lines.append(f"  GEMM: {SGEMM_NAME} (SciPy's BLAS, the one grufast calls); "
                         f"shown for B >= {SGEMM_MIN_BATCH} only")
        lines += _na_notes([r[key] for r in rows])
        lines += [f"  {n}: inference only (not in this table)" for n in dropped]
        lines.append("")
    if "streaming" in result:
        lines += format_streaming(result["streaming"])
    if "training_iteration" in result or "gates" in result:
        from grufast.bench_training import format_report

        extras = {k: result[k] for k in ("training_iteration", "gates") if k in result}
        if "training_iteration" in extras:
            extras["iteration"] = extras.pop("training_iteration")
        report = format_report({"load_average": os.getloadavg(), "threads=": extras})
        lines += [""] + report.splitlines()[3:]  # without the load line and the header
    return "\n".join(lines)


def format_streaming(s: dict) -> list[str]:
    head = (f"streaming step (B=1, I=H={s['H']}, median us per step, one call from Python "
            f"per step, {s['steps_per_sample']} steps per timed sample)")
    if "na" in s:
        return [f"{head}: n/a, {s['na']}"]
    layers = list(s["layers"])
    names = list(dict.fromkeys(n for L in layers for n in s["layers"][L]))
    lines = [head, f"{'':26}" + "".join(f"{L + ' layer' + ('s' if L != '1' else ''):>22}"
                                        for L in layers)]
    for n in names:
        lines.append(f"{n:26}" + "".join(_cell(s["layers"][L].get(n), 22) for L in layers))
    lines += _na_notes([s["layers"][L] for L in layers])
    return lines


# -- driver ----------------------------------------------------------------------------------

def _worker_main(args: argparse.Namespace) -> int:
    with open(args.worker_settings) as f:
        settings = json.load(f)
    result = run(args.worker, settings)
    print(format_table(result), flush=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    return 0


def _in_worker(threads: int, settings: dict, tmp: str) -> dict:
    """Run one thread count in a fresh process: pinned (before exec, so every thread of every
    library inherits it) and with the thread variables set before anything loads."""
    import subprocess

    from grufast._bench_env import cpus_for, visible_cpus, worker_env

    cpus = cpus_for(threads)
    env = worker_env(threads, settings.get("emulate"), settings.get("onnxruntime_hold"))
    env["GRUFAST_BENCH_VISIBLE_CPUS"] = str(len(visible_cpus()))
    settings = {**settings, "jax_unroll_cache": os.path.join(tmp, "jax_unroll.json")}
    settings_path = os.path.join(tmp, "settings.json")
    out = os.path.join(tmp, f"result_{threads}.json")
    with open(settings_path, "w") as f:
        json.dump(settings, f)
    cmd = [sys.executable, "-m", "grufast", "bench", "--worker", str(threads),
           "--worker-settings", settings_path, "--json", out]

    def pin():
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.run(cmd, env=env, preexec_fn=pin, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the bench's worker for {threads} thread(s) failed "
                         f"(exit status {proc.returncode}); its error is printed above")
    with open(out) as f:
        return json.load(f)


def _hold_onnxruntime(tmp: str) -> dict[str, str]:
    """ONNX Runtime held to the emulated ISA for the workers (a patched copy under ``tmp``:
    _bench_hold), or why it cannot be, said on stderr and in the record."""
    from grufast._bench_hold import HoldError, hold_onnxruntime

    path = os.path.join(tmp, "held_onnxruntime")
    try:
        how = hold_onnxruntime(path)
    except (HoldError, OSError) as e:
        print(f"onnxruntime: not held to the emulated ISA ({e}); its column runs the "
              "CPU's own kernels", file=sys.stderr)
        return {"error": str(e)}
    return {"path": path, "how": how}


def main(args: argparse.Namespace) -> int:
    import tempfile

    from grufast._bench_env import installed, missing_note, visible_cpus

    if args.worker is not None:
        return _worker_main(args)
    settings = settings_from(args)
    missing = [p for p in settings["requested"] if p not in settings["peers"]]
    from grufast._bench_peers import PEERS

    for line in missing_note(args.peers or list(PEERS)):
        print(line, file=sys.stderr)
    if args.peers and missing:  # asked for by name: not a silent skip
        print(f"error: --peers names {', '.join(missing)}, which cannot be imported here",
              file=sys.stderr)
        return 2
    plot_path = args.plot
    if plot_path and not installed("matplotlib"):
        print("matplotlib: not installed; --plot skipped (`pip install matplotlib`).",
              file=sys.stderr)
        plot_path = None
    if args.one_core:
        thread_counts = [1]
    else:
        thread_counts = args.threads or sorted({1, len(visible_cpus())})
    with tempfile.TemporaryDirectory() as tmp:
        if settings["emulate"] and "onnxruntime" in settings["peers"]:
            settings["onnxruntime_hold"] = _hold_onnxruntime(tmp)
        results = [_in_worker(n, settings, tmp) for n in thread_counts]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if plot_path:
        from grufast._bench_plot import plot

        plot(results, plot_path)
    return 0
