"""Does the bench's held ONNX Runtime (grufast._bench_hold) run its AVX2 kernels?

Times a float32 MatMul (n x n by n x n) on one pinned core in fresh processes, alternating
round by round: ONNX Runtime as installed, its held copy, and OpenBLAS (SciPy's sgemm) held
to its Haswell kernels, the AVX2 rate. On a CPU with full-width AVX-512 units the held copy
should run at about OpenBLAS Haswell's rate, the installed one near twice that; on a CPU
whose AVX-512 units are half width (Zen 4) the two are closer.

Usage:
    python tools/ort_hold_check.py [--n 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ORT = """
import sys, time, numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
n = int(sys.argv[1])
v = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n])
g = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "g", [v("A"), v("B")],
                      [v("C")])
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
s = ort.InferenceSession(helper.make_model(g).SerializeToString(), so,
                         providers=["CPUExecutionProvider"])
a, b = (np.random.default_rng(i).random((n, n), dtype=np.float32) for i in (0, 1))
run = lambda: s.run(None, {"A": a, "B": b})
print(ort.capi.onnxruntime_pybind11_state.__file__)
"""
BLAS = """
import sys, time, numpy as np
from scipy.linalg.blas import sgemm
n = int(sys.argv[1])
a, b = (np.asfortranarray(np.random.default_rng(i).random((n, n), dtype=np.float32))
        for i in (0, 1))
run = lambda: sgemm(1.0, a, b)
"""
TIME = """
run()
ts = []
for _ in range(9):
    t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
print(2 * n ** 3 / sorted(ts)[4] / 1e9)
"""


def rate(code: str, n: int, env: dict[str, str], held: str | None = None) -> float:
    """GFLOP/s of ``code``'s product in a fresh process pinned to one core; ``held``: the
    held copy's directory, which the process must have imported ONNX Runtime from."""
    out = subprocess.run([sys.executable, "-c", code + TIME, str(n)], env=env,
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir(),
                         preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    lines = out.stdout.split()
    if held is not None and not lines[0].startswith(os.path.join(held, "")):
        raise SystemExit(f"the held run imported ONNX Runtime from {lines[0]}")
    return float(lines[-1])


def _cpu() -> str:
    from grufast._bench_env import _cpu as cpu

    info = cpu()
    return f"{info['model']} [{', '.join(info['flags'])}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from grufast._bench_hold import HoldError, hold_onnxruntime, python_path

    base = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    print(f"$ python tools/ort_hold_check.py --n {args.n} --rounds {args.rounds}   # "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {_cpu()}, one pinned core")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            how = hold_onnxruntime(tmp)
        except (HoldError, OSError) as e:
            print(f"error: onnxruntime cannot be held here: {e}", file=sys.stderr)
            return 2
        print(f"held copy: {how}")
        runs = {"onnxruntime as installed": (ORT, base, None),
                "onnxruntime held": (ORT, {**base, "PYTHONPATH": python_path(tmp, base)}, tmp),
                "OpenBLAS, Haswell kernels": (BLAS, {**base, "OPENBLAS_CORETYPE": "Haswell"},
                                              None)}
        rates = {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, (code, env, held) in runs.items():
                rates[name].append(rate(code, args.n, env, held))
    print(f"float32 MatMul {args.n}^3, one core, GFLOP/s (median of {args.rounds} rounds; "
          "each the median of 9 calls):")
    for name, rs in rates.items():
        print(f"  {name:28s} {statistics.median(rs):7.1f}  ({min(rs):.1f}-{max(rs):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
