"""End-to-end training speed: grufast against the identical PyTorch loop.

- ``iteration``: one training iteration of the demo's model (GRU + Linear readout of the last
  state + MSE + Adam: forward, loss, backward, gradient clipping, step), grufast and PyTorch
  (nn.GRU, nn.Linear, MSELoss, torch.optim.Adam) from the same weights and data, in the same
  process, in interleaved rounds; medians, the spread over rounds, and their ratio.
- ``profile``: where grufast's iteration spends its time, phase by phase.
- ``kernels``: the GRU's training forward and backward at that shape beside NumPy GEMMs of
  the same shapes and FLOPs.
- ``gates``: ``GRU.gates`` against an inference call on the benchmark grid.
- ``solution``: time-to-solution on the adding problem: training seconds until the GRU's
  test MSE first reaches 0.01, grufast and the same loop in PyTorch from the same initial
  weights and batches (evaluation excluded).

``python -m grufast.bench_training [--what ...] [--threads 1 2] [--json PATH]``; the bench
CLI can call :func:`run` and :func:`format_report`. PyTorch's thread count is set before
any work, grufast's (OpenMP and BLAS) through threadpoolctl; one thread runs pinned to one
core. The machines these run on are shared: compare ratios from one run, not absolute
times across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

GRID = [(100, 1, 64, 64), (100, 1, 256, 256), (100, 1, 512, 512), (100, 16, 128, 128),
        (100, 64, 256, 256), (100, 64, 512, 512), (1000, 1, 32, 32), (50, 256, 128, 256)]


@contextmanager
def threads_limited(threads: int):
    """grufast's and PyTorch's threads limited to ``threads``; one thread: pinned to a core.
    PyTorch and threadpoolctl are optional here (``gates`` needs neither): whichever is
    missing is left alone, and the caller's process settings apply."""
    from contextlib import nullcontext

    try:
        import torch
    except ImportError:
        torch = None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        def threadpool_limits(_):
            return nullcontext()

    before_torch = torch.get_num_threads() if torch is not None else None
    affinity = os.sched_getaffinity(0)
    if torch is not None:
        torch.set_num_threads(threads)
    if threads == 1:
        os.sched_setaffinity(0, {min(affinity)})
    try:
        with threadpool_limits(threads):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before_torch)
        os.sched_setaffinity(0, affinity)


def _models(I: int, H: int, seed: int):
    """A torch GRU + Linear, and grufast's copies of the same weights."""
    import torch

    import grufast

    torch.manual_seed(seed)
    tgru, thead = torch.nn.GRU(I, H), torch.nn.Linear(H, 1)
    return grufast.GRU.from_torch(tgru).train(), grufast.Linear.from_torch(thead), tgru, thead


def grufast_step(gru, head, opt, clip: float) -> Callable:
    """One training iteration in grufast on a batch (x (T, B, I), y (B, 1)); returns the loss."""
    from grufast import losses, optim

    mods = [gru, head]

    def step(x, y):
        opt.zero_grad()
        _, h_n = gru(x)
        loss, dpred = losses.mse(head(h_n[-1]), y)
        gru.backward(None, head.backward(dpred)[None])
        optim.clip_grad_norm(mods, clip)
        opt.step()
        return loss

    return step


def torch_step(tgru, thead, topt, clip: float) -> Callable:
    """The identical iteration in PyTorch."""
    import torch

    params = [*tgru.parameters(), *thead.parameters()]
    mse = torch.nn.MSELoss()

    def step(x, y):
        topt.zero_grad()
        _, h_n = tgru(torch.from_numpy(x))
        loss = mse(thead(h_n[-1]), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        topt.step()
        return float(loss.detach())

    return step


def _spread(times: list[float]) -> dict[str, float]:
    a = 1e3 * np.asarray(times)
    return {"median_ms": float(np.median(a)), "p25_ms": float(np.percentile(a, 25)),
            "p75_ms": float(np.percentile(a, 75)), "min_ms": float(a.min())}


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, per_round: int
                ) -> dict[str, list[float]]:
    """Seconds per call of each function, over rounds that run every function in turn
    (the order alternating between rounds), after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            time.sleep(0.05)  # let the other side's spinning threads go to sleep
            fn = fns[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def iteration(T: int = 100, B: int = 64, I: int = 2, H: int = 128, *, threads: int = 1,
              rounds: int = 7, per_round: int = 5, seed: int = 0) -> dict:
    """grufast's training iteration against PyTorch's: medians, spreads and the ratio."""
    import torch

    from grufast import optim

    with threads_limited(threads):
        gru, head, tgru, thead = _models(I, H, seed)
        rng = np.random.default_rng(seed)
        x = rng.uniform(0, 1, (T, B, I)).astype(np.float32)
        y = rng.uniform(0, 2, (B, 1)).astype(np.float32)
        ours = grufast_step(gru, head, optim.Adam([gru, head], lr=1e-3), 1.0)
        theirs = torch_step(tgru, thead, torch.optim.Adam(
            [*tgru.parameters(), *thead.parameters()], lr=1e-3), 1.0)
        times = interleaved({"grufast": lambda: ours(x, y), "torch": lambda: theirs(x, y)},
                            rounds, per_round)
    out = {"shape": dict(T=T, B=B, I=I, H=H), "threads": threads,
           "grufast": _spread(times["grufast"]), "torch": _spread(times["torch"])}
    out["ratio"] = out["grufast"]["median_ms"] / out["torch"]["median_ms"]
    return out


def profile(T: int = 100, B: int = 64, I: int = 2, H: int = 128, *, threads: int = 1,
            repeats: int = 15, seed: int = 0) -> dict[str, float]:
    """Median ms of each phase of grufast's iteration."""
    from grufast import losses, optim

    with threads_limited(threads):
        gru, head, _, _ = _models(I, H, seed)
        opt = optim.Adam([gru, head], lr=1e-3)
        mods = [gru, head]
        rng = np.random.default_rng(seed)
        x = rng.uniform(0, 1, (T, B, I)).astype(np.float32)
        y = rng.uniform(0, 2, (B, 1)).astype(np.float32)
        phases: dict[str, list[float]] = {}

        def timed(name, fn, *args):
            t0 = time.perf_counter()
            out = fn(*args)
            phases.setdefault(name, []).append(time.perf_counter() - t0)
            return out

        for i in range(repeats + 1):
            timed("zero_grad", opt.zero_grad)
            # The first forward after a step rebuilds the copies of the weights it reads (the
            # packed W_ih^T, and the copies of W_hh this batch's plan reads): its own phase.
            timed("refresh weights", lambda: gru._layer_weights("_l0").read_by(B, True))
            _, h_n = timed("GRU forward (train)", gru, x)
            pred = timed("Linear forward", head, h_n[-1])
            loss, dpred = timed("MSE", losses.mse, pred, y)
            dh = timed("Linear backward", head.backward, dpred)
            timed("GRU backward", gru.backward, None, dh[None])
            timed("clip_grad_norm", optim.clip_grad_norm, mods, 1.0)
            timed("Adam step", opt.step)
            if i == 0:
                phases.clear()  # warm-up
    return {k: 1e3 * float(np.median(v)) for k, v in phases.items()}


def kernel_floor(T: int = 100, B: int = 64, I: int = 2, H: int = 128, *, threads: int = 1,
                 rounds: int = 9, seed: int = 0) -> dict[str, float]:
    """The GRU's training forward and forward + backward at the iteration's shape, beside
    NumPy GEMMs with the same shapes and FLOPs (the floor a BLAS-bound kernel could reach):
    forward, one (B, H) x (H, 3H) product per step; backward, one (B, 3H) x (3H, H) per step
    plus the weight-gradient product (3H, T B) x (T B, H). Median ms."""
    import grufast

    rng = np.random.default_rng(seed)
    f32 = np.float32
    gru = grufast.GRU(I, H, seed=seed)
    x = rng.random((T, B, I)).astype(f32)
    dh = rng.random((1, B, H)).astype(f32)
    w, wt = rng.random((H, 3 * H)).astype(f32), rng.random((3 * H, H)).astype(f32)
    h, dg = rng.random((B, H)).astype(f32), rng.random((B, 3 * H)).astype(f32)
    dgt, hs = rng.random((3 * H, T * B)).astype(f32), rng.random((T * B, H)).astype(f32)

    def forward_backward():
        gru(x)
        gru.backward(None, dh)

    def floor_forward():
        for _ in range(T):
            h @ w

    def floor_backward():
        for _ in range(T):
            dg @ wt
        dgt @ hs

    fns = {"GRU forward (train)": gru, "GRU forward + backward": forward_backward,
           "GEMM floor, forward": floor_forward, "GEMM floor, backward": floor_backward}
    with threads_limited(threads):
        times = interleaved({k: (lambda f=f: f(x)) if f is gru else f for k, f in fns.items()},
                            rounds, 1)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def gates_cost(shapes=GRID, *, threads: int = 1, rounds: int = 5, per_round: int = 3,
               seed: int = 0) -> list[dict]:
    """GRU.gates against an inference call (eval forward), float32, one layer."""
    import grufast

    rows = []
    with threads_limited(threads):
        for T, B, I, H in shapes:
            rng = np.random.default_rng(seed)
            gru = grufast.GRU(I, H, seed=seed).eval()
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            times = interleaved({"inference": lambda g=gru, x=x: g(x),
                                 "gates": lambda g=gru, x=x: g.gates(x)}, rounds, per_round)
            inf, gat = (1e3 * float(np.median(times[k])) for k in ("inference", "gates"))
            rows.append(dict(T=T, B=B, I=I, H=H, inference_ms=inf, gates_ms=gat,
                             ratio=gat / inf))
    return rows


def time_to_solution(T: int = 100, H: int = 128, *, batch: int | None = None,
                     lr: float | None = None, target: float = 0.01, max_steps: int = 6000,
                     eval_every: int = 25, threads: int = 1, seed: int = 0) -> dict:
    """Training seconds (evaluation excluded) until the GRU's test MSE on the adding problem
    first reaches ``target``: grufast against the same loop in PyTorch, from the same initial
    weights and on the same batches. Defaults: the demo's batch and learning rate."""
    import torch

    from grufast import demo, losses, optim

    batch = demo.DEFAULTS["batch"] if batch is None else batch
    lr = demo.DEFAULTS["lr"] if lr is None else lr
    clip = demo.DEFAULTS["clip"]
    x_test, y_test, _ = demo.adding_problem(np.random.default_rng(seed + 10_000), 512, T)
    out = {"T": T, "hidden": H, "batch": batch, "lr": lr, "target_mse": target,
           "threads": threads}
    with threads_limited(threads):
        gru, head, tgru, thead = _models(2, H, seed)
        ours = grufast_step(gru, head, optim.Adam([gru, head], lr=lr), clip)
        theirs = torch_step(tgru, thead, torch.optim.Adam(
            [*tgru.parameters(), *thead.parameters()], lr=lr), clip)

        def test_grufast():
            gru.eval()
            mse = losses.mse(head(gru(x_test)[1][-1]), y_test)[0]
            gru.train()
            return mse

        def test_torch():
            with torch.no_grad():
                return float(torch.nn.functional.mse_loss(
                    thead(tgru(torch.from_numpy(x_test))[1][-1]), torch.from_numpy(y_test)))

        for name, step, test in (("grufast", ours, test_grufast),
                                 ("torch", theirs, test_torch)):
            rng = np.random.default_rng(seed)
            spent, reached = 0.0, None
            for k in range(1, max_steps + 1):
                x, y, _ = demo.adding_problem(rng, batch, T)
                t0 = time.perf_counter()
                step(x, y)
                spent += time.perf_counter() - t0
                if k % eval_every == 0:
                    mse = test()
                    if mse <= target:
                        reached = k
                        break
            out[name] = {"seconds": spent if reached else None, "steps": reached,
                         "seconds_per_step": spent / k, "final_test_mse": mse}
    if out["grufast"]["seconds"] and out["torch"]["seconds"]:
        out["ratio"] = out["grufast"]["seconds"] / out["torch"]["seconds"]
    return out


def run(what: list[str], threads: list[int], rounds: int = 7) -> dict:
    """The chosen measurements at each thread count."""
    result: dict = {"load_average": os.getloadavg()}
    for n in threads:
        r = result[f"threads={n}"] = {}
        if "iteration" in what:
            r["iteration"] = iteration(threads=n, rounds=rounds)
        if "profile" in what:
            r["profile"] = profile(threads=n)
        if "kernels" in what:
            r["kernels"] = kernel_floor(threads=n)
        if "gates" in what:
            r["gates"] = gates_cost(threads=n)
        if "solution" in what:
            r["solution"] = time_to_solution(threads=n)
    return result


def format_report(result: dict) -> str:
    lines = [f"load average at start: {', '.join(f'{v:.1f}' for v in result['load_average'])}"]
    for key, r in result.items():
        if not key.startswith("threads="):
            continue
        lines.append(f"\n== {key} ==")
        if "iteration" in r:
            it = r["iteration"]
            s = it["shape"]
            lines.append(f"training iteration T={s['T']} B={s['B']} I={s['I']} H={s['H']} "
                         "(forward, MSE, backward, clip, Adam step):")
            for k in ("grufast", "torch"):
                v = it[k]
                lines.append(f"  {k:8} median {v['median_ms']:8.2f} ms  (p25 {v['p25_ms']:.2f}, "
                             f"p75 {v['p75_ms']:.2f}, min {v['min_ms']:.2f})")
            lines.append(f"  grufast / torch = {it['ratio']:.2f}")
        if "profile" in r:
            total = sum(r["profile"].values())
            lines.append(f"grufast iteration by phase (median ms, sum {total:.2f}):")
            for k, v in r["profile"].items():
                lines.append(f"  {k:22} {v:8.3f}  {v / total:6.1%}")
        if "kernels" in r:
            lines.append("the GRU's kernels at that shape beside NumPy GEMMs of the same "
                         "shapes (median ms):")
            for k, v in r["kernels"].items():
                lines.append(f"  {k:24} {v:8.2f}")
        if "gates" in r:
            lines.append("GRU.gates vs inference (float32, median ms):")
            for g in r["gates"]:
                lines.append(f"  T={g['T']:<5} B={g['B']:<4} I={g['I']:<4} H={g['H']:<4} "
                             f"inference {g['inference_ms']:8.2f}  gates {g['gates_ms']:8.2f}"
                             f"  ratio {g['ratio']:.2f}")
        if "solution" in r:
            s = r["solution"]
            lines.append(f"time to test MSE <= {s['target_mse']} (adding problem T={s['T']}, "
                         f"H={s['hidden']}, batch {s['batch']}, Adam lr {s['lr']}):")
            for k in ("grufast", "torch"):
                v = s[k]
                done = (f"{v['seconds']:.1f} s in {v['steps']} steps" if v["seconds"]
                        else f"not reached (test MSE {v['final_test_mse']:.4f})")
                lines.append(f"  {k:8} {done}  ({1e3 * v['seconds_per_step']:.1f} ms/step)")
            if "ratio" in s:
                lines.append(f"  grufast / torch = {s['ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m grufast.bench_training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", nargs="+", default=["iteration", "profile", "kernels", "gates"],
                   choices=["iteration", "profile", "kernels", "gates", "solution"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    result = run(args.what, args.threads, args.rounds)
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
