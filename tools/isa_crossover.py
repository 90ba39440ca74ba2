"""The register-tiled GEMM against OpenBLAS's for the recurrent products, per ISA build.

For each ISA build this CPU runs (a fresh interpreter each, GRUFAST_ISA set; the AVX2 run
also holds OpenBLAS to its Haswell kernels, OPENBLAS_CORETYPE=Haswell, as on an AVX2 CPU),
one thread, inference, T steps, I = H: the forward's time with the recurrent products forced
into the tiled GEMM and into OpenBLAS's sgemm, in alternating rounds. Each time is the
calling thread's CPU time (one thread: OpenBLAS runs in it), the least over the rounds: on a
shared machine that is the figure least disturbed by other processes. Ratio above 1: the
tiled GEMM loses there. The input projections are the same in both (one GEMM).

Usage:
    python tools/isa_crossover.py [--rounds 9] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

BATCHES = (16, 64, 256)
HIDDEN = (128, 256, 512)

CHILD = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
import grufast
from grufast._isa import kernels
rounds, steps = int(sys.argv[1]), int(sys.argv[2])
rows = []
with threadpool_limits(1):
    for H in HIDDEN:
        m = grufast.GRU(H, H, seed=0).eval()
        for B in BATCHES:
            x = np.random.default_rng(0).standard_normal((steps, B, H)).astype(np.float32)
            times = {"tiled": [], "blas": []}
            for path in times:
                kernels.force_recurrence_path(path)
                m(x)
            for _ in range(rounds):
                for path in times:
                    kernels.force_recurrence_path(path)
                    t0 = time.thread_time()
                    m(x)
                    times[path].append(time.thread_time() - t0)
            kernels.force_recurrence_path("auto")
            rows.append((B, H, min(times["tiled"]), min(times["blas"])))
print(json.dumps({"kernels": kernels.__name__, "rows": rows}))
"""


def run(isa: str, rounds: int, steps: int, batches=BATCHES, hidden=HIDDEN) -> dict:
    env = dict(os.environ, GRUFAST_ISA=isa)
    if isa == "avx2":
        env["OPENBLAS_CORETYPE"] = "Haswell"
    code = f"BATCHES, HIDDEN = {tuple(batches)!r}, {tuple(hidden)!r}\n" + CHILD
    out = subprocess.run([sys.executable, "-c", code, str(rounds), str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--isa", default="avx512,avx2")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--hidden", default=",".join(map(str, HIDDEN)))
    args = parser.parse_args(argv)
    print(f"one thread, inference, T = {args.steps}, I = H, least CPU time of {args.rounds}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'build':22} {'B':>4} {'H':>4} {'tiled ms':>9} {'OpenBLAS ms':>11} {'tiled/BLAS':>10}")
    for isa in args.isa.split(","):
        result = run(isa, args.rounds, args.steps,
                     [int(b) for b in args.batches.split(",")],
                     [int(h) for h in args.hidden.split(",")])
        for B, H, tiled, blas in result["rows"]:
            print(f"{result['kernels']:22} {B:4} {H:4} {tiled * 1e3:9.2f} {blas * 1e3:11.2f} "
                  f"{tiled / blas:10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
