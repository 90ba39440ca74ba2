"""The many-core run: grufast against ONNX Runtime and PyTorch at 1, 2, 4, ... threads up to
every core, on T = 100, I = H = 512 with B = 64, 1 and 8, in one command (for a machine
lent for minutes).

    python tools/many_cores.py --out DIR [--budget SECONDS]

It writes DIR/many_cores.txt and .json (the bench, ``python -m grufast bench --threads ...
--tables-only``, each thread count in its own pinned process, one cpu per physical core
first), DIR/splits.txt (grufast's two ways to split a batch across threads, by sequences
and by hidden units, at each thread count from 2, on the grid's batch shapes) and
DIR/topology.txt (lscpu), and prints the speed-ups last.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

# Issue 11's two shapes, and a batch too small for a split by sequences to use many threads.
SHAPES = ["100,64,512,512", "100,1,512,512", "100,8,512,512"]


def thread_counts(cpus: int) -> list[int]:
    """1, 2, 4, ... below ``cpus``, and ``cpus``."""
    out, n = [], 1
    while n < cpus:
        out.append(n)
        n *= 2
    return out + [cpus]


SPLIT_SHAPES = [(100, 64, 512, 512), (100, 64, 256, 256), (50, 256, 128, 256),
                (100, 16, 128, 128), (100, 8, 512, 512), (100, 16, 512, 512)]


def splits_worker(threads: int, rounds: int) -> str:
    """Median ms of grufast inference with ``threads`` threads, in this (pinned) process,
    for each of SPLIT_SHAPES split by sequences and by hidden units (forced, interleaved
    round by round: neither calls OpenBLAS, whose spinning threads would slow the other),
    and which one the rule picks."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    import grufast
    from grufast._isa import kernels

    threadpool_limits(threads)
    rng = np.random.default_rng(0)
    lines = []
    for T, B, I, H in SPLIT_SHAPES:
        gru = grufast.GRU(I, H, seed=0)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        auto = kernels.recurrence_plan(B, H, False)[1]
        times: dict[str, list[float]] = {"sequences": [], "units": []}
        for split in times:  # warm each split once
            kernels.force_batch_split(split)
            gru(x)
        for _ in range(rounds):
            for split, t in times.items():
                kernels.force_batch_split(split)
                t0 = time.perf_counter()
                gru(x)
                t.append(1e3 * (time.perf_counter() - t0))
        kernels.force_batch_split("auto")
        med = {k: float(np.median(v)) for k, v in times.items()}
        lines.append(f"threads {threads:2d}  {T},{B},{I},{H}  by sequences "
                     f"{med['sequences']:8.2f} ms  by units {med['units']:8.2f} ms  "
                     f"units/sequences {med['units'] / med['sequences']:.2f}  rule: {auto}")
    return "\n".join(lines)


def _pinned(threads: int):
    from grufast._bench_env import cpus_for, worker_env

    cpus = cpus_for(threads)

    def pin():
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return worker_env(threads), pin


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+")
    ap.add_argument("--shape", action="append", metavar="T,B,I,H",
                    help="the bench's shapes (default: the three above)")
    ap.add_argument("--no-splits", action="store_true", help="skip splits.txt")
    ap.add_argument("--splits-worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.splits_worker:
        print(splits_worker(args.splits_worker, args.rounds), flush=True)
        return 0
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0))
    counts = args.threads or thread_counts(cpus)
    topo = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    topo += "\n" + subprocess.run(["lscpu", "-e"], capture_output=True, text=True).stdout
    (out / "topology.txt").write_text(topo)
    print(topo, flush=True)
    splits = []
    for n in [] if args.no_splits else counts[1:]:
        env, pin = _pinned(n)
        r = subprocess.run([sys.executable, __file__, "--out", str(out), "--rounds",
                            str(args.rounds), "--splits-worker", str(n)], env=env,
                           preexec_fn=pin, capture_output=True, text=True)
        splits.append(r.stdout.strip() or r.stderr[-2000:])
        print(splits[-1], flush=True)
    if splits:
        (out / "splits.txt").write_text("\n".join(splits) + "\n")
    cmd = [sys.executable, "-m", "grufast", "bench", "--threads", *map(str, counts),
           "--peers", "torch,onnxruntime", "--no-reference", "--tables-only",
           "--budget", str(args.budget), "--json", str(out / "many_cores.json")]
    for s in args.shape or SHAPES:
        cmd += ["--shape", s]
    with open(out / "many_cores.txt", "w") as f:
        f.write(" ".join(cmd[1:]) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.DEVNULL).returncode
    if rc:
        print(f"bench failed (exit {rc}); see {out / 'many_cores.txt'}")
        return rc
    print(summary(json.loads((out / "many_cores.json").read_text())))
    return 0


def summary(results: list[dict]) -> str:
    """Median ms per peer and thread count, grufast / fastest peer, and each one's speed-up
    over its own one-thread time."""
    lines = []
    for kind in ("inference", "training"):
        for i, shape in enumerate(r["shape"] for r in results[0]["rows"]):
            lines.append(f"{kind} T, B, I, H = {shape}")
            one = results[0]["rows"][i][kind]
            for res in results:
                cells = res["rows"][i][kind]
                med = {n: c["median"] for n, c in cells.items() if "median" in c}
                if res["rows"][i].get("sgemm") and kind == "inference":
                    med["sgemm"] = res["rows"][i]["sgemm"]["median"]
                peers = {n: t for n, t in med.items() if n in ("torch", "onnxruntime")}
                best = min(peers, key=peers.get) if peers else None
                ratio = f"{med['grufast'] / peers[best]:.2f} vs {best}" if best else "-"
                lines.append(f"  {res['environment']['threads']:2d} threads: " + "  ".join(
                    f"{n} {t:8.2f} ms (x{one[n].get('median', float('nan')) / t:.2f})"
                    if n != "sgemm" else
                    f"sgemm {t:8.2f} ms (x{results[0]['rows'][i]['sgemm']['median'] / t:.2f})"
                    for n, t in med.items()) + f"  grufast/best {ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
