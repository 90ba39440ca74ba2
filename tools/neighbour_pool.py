"""grufast next to another library's thread pool in the same process: ONNX Runtime runs (two
intra-op threads, spinning on, as the bench configures it) alternating with grufast calls,
round by round, with grufast on one thread and on two (each in a fresh process).

ONNX Runtime's pool keeps spinning for ~45 ms after each run; a grufast call in that window
shares a core with it. The table gives grufast's time per call: the mean (throughput) and
the spread (latency).

Usage:
    python tools/neighbour_pool.py [--rounds 150] [--shape T,B,H]
    GRUFAST_ISA=avx2 OPENBLAS_CORETYPE=Haswell python tools/neighbour_pool.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

WORKER = """
import os, sys, tempfile, time
import numpy as np, onnxruntime as ort, grufast
T, B, H, rounds = (int(v) for v in sys.argv[1:5])
m = grufast.GRU(H, H, seed=0).eval()
x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
path = os.path.join(tempfile.mkdtemp(), "m.onnx")
m.to_onnx(path)
so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
feed = {i.name: (x if i.name == s.get_inputs()[0].name else np.zeros((1, B, H), np.float32))
        for i in s.get_inputs()}
for _ in range(10):
    m(x); s.run(None, feed)
ts = []
for _ in range(rounds):
    for _ in range(3):
        s.run(None, feed)
    for _ in range(4):
        t = time.perf_counter(); m(x); ts.append(time.perf_counter() - t)
ts = np.array(ts) * 1e3
print(ts.mean(), *np.percentile(ts, [50, 90]), (ts > 1.5 * np.percentile(ts, 10)).mean())
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--shape", default="100,16,128", help="T,B,H (I = H)")
    args = p.parse_args()
    T, B, H = (int(v) for v in args.shape.split(","))
    from grufast._isa import kernels

    print(f"$ python tools/neighbour_pool.py --rounds {args.rounds} --shape {args.shape}   # "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, grufast "
          f"{kernels.__name__.rsplit('.', 1)[-1]}, cpus {sorted(os.sched_getaffinity(0))}")
    print("grufast threads   mean ms   median   p90   share of calls > 1.5x its p10")
    for n in (1, 2, 1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(n)}
        out = subprocess.run([sys.executable, "-c", WORKER, str(T), str(B), str(H),
                              str(args.rounds)], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        mean, median, p90, slow = (float(v) for v in out)
        print(f"{n:15d} {mean:9.3f} {median:8.3f} {p90:5.2f}   {slow:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
