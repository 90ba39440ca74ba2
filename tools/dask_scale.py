"""Scale and memory of grufast.dask.predict on a distributed.LocalCluster.

    python tools/dask_scale.py throughput [--n 20000] [--T 100] [--I 32] [--H 128]
        Predictions of a GRURegressor over n sequences, with 1 worker and with 2 (one
        thread each, worker processes). "pinned": worker i is pinned to core i, so each
        worker has one core (scale-out over workers); "unpinned": the workers share the
        machine and each task caps its threads (1 worker: all cores for grufast; 2 workers:
        half each). The input is generated on the workers and kept in memory before timing.

    python tools/dask_scale.py memory [--gb 4] [--memory-limit 1GiB]
        Predictions over an input generated lazily (dask.array.random) several times larger
        than each worker's memory limit; prints each worker's peak resident memory, sampled
        by the worker's own system monitor every 100 ms.

Figures depend on the machine and its load; the script prints both with the results.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

import grufast.dask
from grufast.sklearn import GRURegressor


def model(I: int, H: int) -> GRURegressor:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 10, I), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRURegressor(hidden_size=H, max_iter=1, random_state=0).fit(X, X[:, 0, 0])


def pin_workers(client: Client) -> None:
    """Pin each worker process to its own core (by sorted address)."""
    for i, addr in enumerate(sorted(client.scheduler_info()["workers"])):
        client.run(os.sched_setaffinity, 0, {i}, workers=[addr])


def throughput(args) -> None:
    est = model(args.I, args.H)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")
    print(f"n={args.n} T={args.T} I={args.I} H={args.H}, chunks of {args.chunk} sequences")
    results = {}
    for pinned in (True, False):
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                if pinned:
                    pin_workers(client)
                X = da.random.default_rng(0).standard_normal(
                    (args.n, args.T, args.I), chunks=(args.chunk, args.T, args.I),
                    dtype=np.float32).persist()
                wait(X)
                grufast.dask.predict(est, X[: 2 * args.chunk]).compute()  # warm up
                times, cpu = [], []
                for _ in range(args.repeat):
                    before = sum(client.run(_cpu_seconds).values())
                    start = time.perf_counter()
                    grufast.dask.predict(est, X).compute()
                    times.append(time.perf_counter() - start)
                    cpu.append(sum(client.run(_cpu_seconds).values()) - before)
                best = min(times)
                results[pinned, workers] = best
                label = "pinned" if pinned else "unpinned"
                print(f"{label:9s} {workers} worker(s): best of {args.repeat} "
                      f"{best:.2f} s ({args.n / best:,.0f} sequences/s), all "
                      f"{', '.join(f'{t:.2f}' for t in times)}; CPU seconds of the workers "
                      f"{', '.join(f'{c:.2f}' for c in cpu)}", flush=True)
    for pinned in (True, False):
        label = "pinned" if pinned else "unpinned"
        print(f"{label}: 2 workers / 1 worker throughput = "
              f"{results[pinned, 1] / results[pinned, 2]:.2f}x")
    print(f"load average after: {os.getloadavg()}")


def _cpu_seconds() -> float:
    """CPU time (user + system) of this worker process so far."""
    t = os.times()
    return t.user + t.system


def _peak_rss(dask_worker) -> float:
    return float(max(dask_worker.monitor.quantities["memory"]))


def memory(args) -> None:
    est = model(args.I, args.H)
    n = int(args.gb * 2**30 / (args.T * args.I * 4))
    chunk_bytes = args.chunk * args.T * args.I * 4
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")
    print(f"input: {n} x {args.T} x {args.I} float32 = {n * args.T * args.I * 4 / 2**30:.2f} "
          f"GiB generated lazily, chunks of {args.chunk} sequences ({chunk_bytes / 2**20:.1f} "
          f"MiB); H={args.H}; 2 workers x 1 thread, memory_limit={args.memory_limit}")
    with dask.config.set({"distributed.admin.system-monitor.interval": "100ms"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         memory_limit=args.memory_limit, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        idle = client.run(lambda: __import__("psutil").Process().memory_info().rss)
        X = da.random.default_rng(0).standard_normal(
            (n, args.T, args.I), chunks=(args.chunk, args.T, args.I), dtype=np.float32)
        start = time.perf_counter()
        total = grufast.dask.predict(est, X).sum().compute()
        seconds = time.perf_counter() - start
        peaks = client.run(_peak_rss)
        print(f"{n} sequences in {seconds:.1f} s (sum of predictions {total:.6g})")
        for addr in sorted(peaks):
            print(f"worker {addr}: resident before {idle[addr] / 2**20:.0f} MiB, peak "
                  f"{peaks[addr] / 2**20:.0f} MiB")
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["throughput", "memory"])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--I", type=int, default=32)
    parser.add_argument("--H", type=int, default=None,
                        help="hidden size (default 128 for throughput, 32 for memory)")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gb", type=float, default=4.0)
    parser.add_argument("--memory-limit", default="1GiB")
    args = parser.parse_args()
    if args.H is None:
        args.H = 128 if args.what == "throughput" else 32
    (throughput if args.what == "throughput" else memory)(args)


if __name__ == "__main__":
    main()
