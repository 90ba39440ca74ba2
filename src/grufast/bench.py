"""``python -m grufast bench``: grufast side by side with the NumPy reference and whichever of
PyTorch, ONNX Runtime and JAX are installed, on a standard grid of eight (T, B, I, H) shapes.

Every peer gets the same weights, inputs and thread count; each cell is the median of
repeated runs after a warm-up, in one process, so ratios between columns are what to read
(absolute times drift on shared machines). The "sgemm" column is one float32 GEMM with the
FLOP count of the GRU forward: a ceiling no GRU can beat by much.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from functools import partial

import numpy as np

GRID = [(100, 1, 64, 64), (100, 1, 256, 256), (100, 1, 512, 512), (100, 16, 128, 128),
        (100, 64, 256, 256), (100, 64, 512, 512), (1000, 1, 32, 32), (50, 256, 128, 256)]
STREAM_H = 128


def median_ms(fn: Callable[[], object], budget_s: float, min_repeats: int = 5,
              settle_s: float = 0.3) -> float:
    """Median wall time of ``fn`` in ms: one warm-up, then repeats filling ``budget_s``.

    It first sleeps ``settle_s``: OpenBLAS, OpenMP (PyTorch) and ONNX Runtime threads spin
    for a while after their work, and on two cores a previous peer's spinning threads would
    steal the core from the one being measured.
    """
    time.sleep(settle_s)
    fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    repeats = int(min(200, max(min_repeats, budget_s / max(once, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _weights(rng, I, H):
    k = 1 / np.sqrt(H)
    return {name: rng.uniform(-k, k, shape).astype(np.float32) for name, shape in [
        ("weight_ih_l0", (3 * H, I)), ("weight_hh_l0", (3 * H, H)),
        ("bias_ih_l0", (3 * H,)), ("bias_hh_l0", (3 * H,))]}


# -- peers: each returns (inference fn, training fn or None) for one shape ------------------

def _grufast(sd, x, dy):
    import grufast

    T, B, I = x.shape
    H = sd["weight_hh_l0"].shape[1]
    inf = grufast.GRU(I, H).eval()
    inf.load_state_dict(sd)
    tr = grufast.GRU(I, H).train()
    tr.load_state_dict(sd)

    def train():
        tr(x)
        tr.backward(dy)

    return (lambda: inf(x)), train


def _reference(sd, x, dy):
    from grufast import reference as R

    w = [sd[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]

    def train():
        _, _, cache = R.gru_forward(x, None, *w, training=True)
        R.gru_backward(dy, None, cache)

    return (lambda: R.gru_forward(x, None, *w)), train


def _torch(sd, x, dy):
    import torch

    T, B, I = x.shape
    H = sd["weight_hh_l0"].shape[1]
    m = torch.nn.GRU(I, H)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)

    def infer():
        with torch.inference_mode():
            m(xt)

    def train():
        xg = xt.clone().requires_grad_()
        y, _ = m(xg)
        y.backward(dyt)

    return infer, train


def _onnxruntime(sd, x, dy, threads):
    import tempfile

    import onnxruntime as ort

    import grufast

    T, B, I = x.shape
    H = sd["weight_hh_l0"].shape[1]
    gru = grufast.GRU(I, H).eval()
    gru.load_state_dict(sd)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gru.onnx")
        gru.to_onnx(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {"x": x, "h0": np.zeros((1, B, H), np.float32)}
    return (lambda: sess.run(None, feeds)), None


def _jax(sd, x, dy):
    import jax
    import jax.numpy as jnp

    H = sd["weight_hh_l0"].shape[1]
    params = {k: jnp.asarray(v) for k, v in sd.items()}

    def gru(p, xs):
        gi = xs @ p["weight_ih_l0"].T + p["bias_ih_l0"]

        def step(h, g):
            gh = h @ p["weight_hh_l0"].T + p["bias_hh_l0"]
            r = jax.nn.sigmoid(g[:, :H] + gh[:, :H])
            z = jax.nn.sigmoid(g[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - z) * n + z * h
            return h, h

        h0 = jnp.zeros((xs.shape[1], H), xs.dtype)
        _, ys = jax.lax.scan(step, h0, gi)
        return ys

    fwd = jax.jit(gru)
    grad = jax.jit(jax.grad(lambda p, xs, d: jnp.sum(gru(p, xs) * d), argnums=(0, 1)))
    xj, dyj = jnp.asarray(x), jnp.asarray(dy)
    return (lambda: fwd(params, xj).block_until_ready(),
            lambda: jax.block_until_ready(grad(params, xj, dyj)))


def _sgemm(x, H):
    T, B, I = x.shape
    a = np.ones((T * B, I + H), np.float32)
    b = np.ones((I + H, 3 * H), np.float32)
    return lambda: a @ b


# -- streaming ------------------------------------------------------------------------------

def streaming(threads: int, budget: float, peers: list[str]) -> dict[str, float]:
    """Microseconds per GRUCell call, B = 1, I = H = STREAM_H."""
    import grufast

    H = STREAM_H
    rng = np.random.default_rng(1)
    cell = grufast.GRUCell(H, H, seed=0)
    x, h = rng.standard_normal(H).astype(np.float32), np.zeros(H, np.float32)
    out = {"grufast": 1e3 * median_ms(lambda: cell(x, h), budget, 50)}
    if "torch" in peers:
        import torch

        tc = torch.nn.GRUCell(H, H)
        xt, ht = torch.from_numpy(x)[None], torch.from_numpy(h)[None]

        def tstep():
            with torch.inference_mode():
                tc(xt, ht)

        out["torch"] = 1e3 * median_ms(tstep, budget, 50)
    if "onnxruntime" in peers:
        sd = {k + "_l0": v for k, v in cell.state_dict().items()}
        run, _ = _onnxruntime(sd, x[None, None], None, threads)
        out["onnxruntime"] = 1e3 * median_ms(run, budget, 50)
    return out


# -- driver ---------------------------------------------------------------------------------

def available_peers() -> list[str]:
    import importlib.util

    return [p for p in ("torch", "onnxruntime", "jax") if importlib.util.find_spec(p)]


def environment(threads: int) -> dict:
    from threadpoolctl import threadpool_info

    import grufast

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions = {"grufast": grufast.__version__, "numpy": np.__version__}
    for mod in ("scipy", "torch", "onnxruntime", "jax"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    from grufast._isa import kernels

    return {"cpu": cpu, "cores_visible": len(os.sched_getaffinity(0)), "threads": threads,
            "kernels": kernels.__name__, "openmp_threads": kernels.openmp_threads(),
            "python": platform.python_version(), "versions": versions,
            "blas": [{k: i.get(k) for k in ("internal_api", "version", "num_threads",
                                            "architecture", "filepath")}
                     for i in threadpool_info()]}


def run(threads: int, budget: float, shapes=GRID, with_reference: bool = True) -> dict:
    from threadpoolctl import threadpool_limits

    peers = available_peers()
    if "torch" in peers:
        import torch

        torch.set_num_threads(threads)
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional
        def tqdm(it, **_):
            return it
    rows = []
    with threadpool_limits(threads):
        for shape in tqdm(shapes, desc=f"bench, {threads} thread(s)", unit="shape"):
            T, B, I, H = shape
            rng = np.random.default_rng(0)
            sd = _weights(rng, I, H)
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            dy = rng.standard_normal((T, B, H)).astype(np.float32)
            makers = {"grufast": _grufast}
            if with_reference:
                makers["numpy-reference"] = _reference
            if "torch" in peers:
                makers["torch"] = _torch
            if "onnxruntime" in peers:
                makers["onnxruntime"] = partial(_onnxruntime, threads=threads)
            if "jax" in peers:
                makers["jax"] = _jax
            row = {"shape": shape, "inference_ms": {}, "training_ms": {},
                   "sgemm_ms": median_ms(_sgemm(x, H), budget)}
            for name, make in makers.items():
                infer, train = make(sd, x, dy)
                row["inference_ms"][name] = median_ms(infer, budget)
                if train is not None:
                    row["training_ms"][name] = median_ms(train, budget)
            rows.append(row)
        stream = streaming(threads, budget, peers)
    return {"environment": environment(threads), "rows": rows, "streaming_us": stream}


def _fastest_peer(times: dict) -> tuple[str, float]:
    peers = {k: v for k, v in times.items() if k not in ("grufast", "numpy-reference")}
    if not peers:
        return "-", float("nan")
    name = min(peers, key=peers.get)
    return name, peers[name]


def format_table(result: dict) -> str:
    env = result["environment"]
    lines = [f"CPU: {env['cpu']}; threads: {env['threads']}; "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), ""]
    for kind in ("inference_ms", "training_ms"):
        names = list(result["rows"][0][kind])
        head = f"{'T, B, I, H':18}" + "".join(f"{n:>16}" for n in names)
        if kind == "inference_ms":
            head += f"{'sgemm':>9}{'vs sgemm':>9}"
        head += f"{'vs best peer':>14}"
        lines += [kind.replace("_ms", " (median ms)"), head]
        ratios = []
        for row in result["rows"]:
            t = row[kind]
            line = f"{', '.join(map(str, row['shape'])):18}" + "".join(
                f"{t.get(n, float('nan')):16.3f}" for n in names)
            if kind == "inference_ms":
                line += f"{row['sgemm_ms']:9.3f}{t['grufast'] / row['sgemm_ms']:9.2f}"
            peer, best = _fastest_peer(t)
            ratio = t["grufast"] / best
            ratios.append(ratio)
            line += f"{ratio:8.2f} ({peer})"
            lines.append(line)
        finite = [r for r in ratios if np.isfinite(r)]
        if finite:
            lines.append(f"geometric mean of grufast / best peer: "
                         f"{float(np.exp(np.mean(np.log(finite)))):.2f}")
        lines.append("")
    s = result["streaming_us"]
    lines.append(f"streaming step (GRUCell, B=1, I=H={STREAM_H}, median us per call): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(13, 4.2 * len(results)), squeeze=False)
    for row_axes, result in zip(axes, results):
        for ax, kind in zip(row_axes, ("inference_ms", "training_ms")):
            rows = result["rows"]
            names = list(rows[0][kind])
            labels = ["\n".join(map(str, r["shape"])) for r in rows]
            width = 0.8 / len(names)
            for i, n in enumerate(names):
                rel = [r[kind].get(n, np.nan) / r[kind]["grufast"] for r in rows]
                ax.bar(np.arange(len(rows)) + i * width, rel, width, label=n)
            ax.set_yscale("log")
            ax.axhline(1, color="k", lw=0.8)
            ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, labels, fontsize=7)
            ax.set_ylabel("time / grufast's time")
            ax.set_title(f"{kind.split('_')[0]}, {result['environment']['threads']} thread(s)"
                         " (T, B, I, H)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _in_subprocess(args: argparse.Namespace, threads: int) -> dict:
    """One thread count per process: JAX fixes its thread pool when it is first imported."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "result.json")
        cmd = [sys.executable, "-m", "grufast", "bench", "--budget", str(args.budget),
               "--json", out]
        # One thread means one core: pinned, so that no library's helpers use another.
        cmd += ["--one-core"] if threads == 1 else ["--threads", str(threads)]
        cmd += ["--quick"] * args.quick + ["--no-reference"] * args.no_reference
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)[0]


def main(args: argparse.Namespace) -> int:
    if args.one_core:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        thread_counts = [1]
    else:
        thread_counts = args.threads or [1, len(os.sched_getaffinity(0))]
    shapes = GRID if not args.quick else GRID[:1] + GRID[3:4]
    results = []
    if len(thread_counts) > 1:
        results = [_in_subprocess(args, n) for n in thread_counts]
    else:
        if thread_counts[0] == 1:  # before JAX is imported
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_"
                                       "thread_eigen=false intra_op_parallelism_threads=1")
        result = run(thread_counts[0], args.budget, shapes, not args.no_reference)
        results.append(result)
        print(format_table(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, nargs="+",
                   help="thread counts to run (default: 1, on one pinned core, and all "
                        "visible cores)")
    p.add_argument("--one-core", action="store_true",
                   help="pin the process to one core and run with one thread")
    p.add_argument("--budget", type=float, default=0.4,
                   help="seconds of repeats per measurement (default 0.4)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    p.add_argument("--quick", action="store_true", help="two shapes only, for a smoke test")
    p.add_argument("--no-reference", action="store_true", help="skip the NumPy reference")
