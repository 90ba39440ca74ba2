"""Throughput of grufast and ONNX Runtime under load, one thread vs two per model call.

Scenarios (each on the machine's first two cores):
  hog        a CPU-hog process spinning on core 0 while one model call runs at a time
  threads4   4 Python threads calling models at once (each call's library on n threads)
  procs2     two fresh processes calling models at once (n threads each)
For each, the same work on 1 and on 2 threads per call, in alternating rounds; the table
gives the median wall time of the whole work and the ratio 2 threads / 1 thread (above 1:
the second thread loses; the target is at most 1.2). ONNX Runtime runs one GRU node (the
model's own to_onnx export) with intra_op_num_threads = n, inter_op_num_threads = 1.

``--emulate avx2`` runs it all as on an AVX2 machine: grufast's AVX2 build, OpenBLAS on its
Haswell kernels, and ONNX Runtime's copy held to its FMA3 kernels (grufast._bench_hold, as in
the bench's --emulate avx2).

Usage:
    python tools/load_test.py [--rounds 3] [--out docs/load_test.txt] [--emulate avx2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

SHAPES = [(100, 1, 512), (100, 64, 256)]  # (T, B, H), I = H: split by units / by sequences
CALLS = {1: 12, 64: 3}  # calls per worker and shape (B)


def _hog() -> None:
    os.sched_setaffinity(0, {0})
    while True:
        pass


class Runner:
    """One library's model of one shape, called on n threads."""

    def __init__(self, lib: str, T: int, B: int, H: int, onnx_dir: str) -> None:
        import grufast

        self.lib = lib
        self.model = grufast.GRU(H, H, seed=0).eval()
        self.x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
        self.sessions = {}
        if lib == "onnxruntime":
            self.path = os.path.join(onnx_dir, f"gru_{T}_{B}_{H}.onnx")
            if not os.path.exists(self.path):
                self.model.to_onnx(self.path)

    def session(self, n: int):
        if n not in self.sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
            self.sessions[n] = ort.InferenceSession(self.path, opts,
                                                    providers=["CPUExecutionProvider"])
        return self.sessions[n]

    def calls(self, n: int, count: int) -> None:
        if self.lib == "grufast":
            from threadpoolctl import threadpool_limits

            with threadpool_limits(n):  # per calling thread for OpenMP
                for _ in range(count):
                    self.model(self.x)
        else:
            sess = self.session(n)
            B, H = self.x.shape[1], self.model.hidden_size
            feed = {"x": self.x, "h0": np.zeros((1, B, H), np.float32)}
            for _ in range(count):
                sess.run(None, feed)


def _in_threads(runner: Runner, n: int, count: int, workers: int) -> float:
    threads = [threading.Thread(target=runner.calls, args=(n, count)) for _ in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def _process_main(lib, shape, n, count, onnx_dir, start, done) -> None:
    os.sched_setaffinity(0, {0, 1})
    runner = Runner(lib, *shape, onnx_dir)
    runner.calls(n, 1)  # warm up
    start.wait()
    t0 = time.perf_counter()
    runner.calls(n, count)
    done.put(time.perf_counter() - t0)


def _in_processes(lib, shape, n, count, onnx_dir) -> float:
    ctx = multiprocessing.get_context("spawn")  # fresh processes: a fork runs serially
    start, done = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(lib, shape, n, count, onnx_dir, start,
                                                      done)) for _ in range(2)]
    for p in procs:
        p.start()
    start.wait()
    times = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def measure(scenario: str, lib: str, shape, rounds: int, onnx_dir: str) -> dict[int, float]:
    count = CALLS[shape[1]]
    runner = None if scenario == "procs2" else Runner(lib, *shape, onnx_dir)
    hog = None
    if scenario == "hog":
        hog = multiprocessing.get_context("spawn").Process(target=_hog, daemon=True)
        hog.start()
    out: dict[int, list[float]] = {1: [], 2: []}
    try:
        if runner is not None:
            runner.calls(1, 1)
            runner.calls(2, 1)
        for _ in range(rounds):
            for n in (1, 2):
                if scenario == "hog":
                    out[n].append(_in_threads(runner, n, count, 1))
                elif scenario == "threads4":
                    out[n].append(_in_threads(runner, n, count, 4))
                else:
                    out[n].append(_in_processes(lib, shape, n, count, onnx_dir))
    finally:
        if hog is not None:
            hog.terminate()
            hog.join()
    return {n: statistics.median(v) for n, v in out.items()}


SCENARIOS = ("hog", "threads4", "procs2")


def _scenarios(text: str) -> list[str]:
    names = text.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {unknown}; choose among "
                                         f"{', '.join(SCENARIOS)}")
    return names


HELD = "GRUFAST_LOAD_TEST_HELD"  # set in the held run: what holds onnxruntime


def _held_run(argv: list[str]) -> int:
    """This script again, in a process whose libraries are held to AVX2 (the processes it
    starts inherit the environment)."""
    from grufast._bench_hold import HoldError, hold_onnxruntime, python_path

    with tempfile.TemporaryDirectory() as tmp:
        try:
            how = hold_onnxruntime(tmp)
        except (HoldError, OSError) as e:
            print(f"error: --emulate avx2 cannot hold onnxruntime here: {e}", file=sys.stderr)
            return 2
        env = {**os.environ, "GRUFAST_ISA": "avx2", "OPENBLAS_CORETYPE": "Haswell", HELD: how,
               "PYTHONPATH": python_path(tmp, os.environ)}
        return subprocess.run([sys.executable, os.path.abspath(__file__), *argv],
                              env=env, check=False).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), type=_scenarios,
                        help=f"comma-separated, among {', '.join(SCENARIOS)}")
    parser.add_argument("--emulate", choices=["avx2"],
                        help="grufast, OpenBLAS and ONNX Runtime held to AVX2")
    args = parser.parse_args(argv)
    if args.emulate and HELD not in os.environ:
        return _held_run(argv if argv is not None else sys.argv[1:])
    os.sched_setaffinity(0, {0, 1})
    from grufast._isa import kernels

    held = ""
    if args.emulate:
        from grufast._bench_hold import imported_from

        if not imported_from(os.environ["PYTHONPATH"].split(os.pathsep)[0]):
            raise SystemExit("onnxruntime was not imported from the held copy")
        held = f"; AVX2 emulated, OpenBLAS Haswell, onnxruntime: {os.environ[HELD]}"
    lines = [f"grufast kernels {kernels.__name__}, cpus {sorted(os.sched_getaffinity(0))}, "
             f"load average before {os.getloadavg()[0]:.1f}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{held}",
             f"{'scenario':9} {'T,B,H':12} {'library':12} {'1 thread s':>10} "
             f"{'2 threads s':>11} {'2/1':>5}"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as onnx_dir:
        for scenario in args.scenarios:
            for shape in SHAPES:
                for lib in ("grufast", "onnxruntime"):
                    t = measure(scenario, lib, shape, args.rounds, onnx_dir)
                    line = (f"{scenario:9} {','.join(map(str, shape)):12} {lib:12} "
                            f"{t[1]:10.3f} {t[2]:11.3f} {t[2] / t[1]:5.2f}")
                    print(line, flush=True)
                    lines.append(line)
    lines.append(f"load average after {os.getloadavg()[0]:.1f}; command: python "
                 f"tools/load_test.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
