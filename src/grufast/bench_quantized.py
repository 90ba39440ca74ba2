"""``python -m grufast.bench_quantized [--quick]``: grufast's int8 and bf16 inference models
against grufast float32, ONNX Runtime float32 (one GRU node, IOBinding) and PyTorch float32
and its dynamically quantized GRU (``quantize_dynamic``, qint8 and float16), on one pinned
core and on two threads.

All peers get the same weights and inputs. Each shape's candidates are timed in interleaved
rounds in one process (candidate A, B, C, ... then again), and each figure is the median over
the rounds: on a shared machine the load drifts, and interleaving spreads the drift over all
candidates alike, so the ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

SHAPES = [(100, 1, 256, 256), (100, 1, 512, 512), (100, 64, 256, 256)]
STREAM = 128  # the streaming step: GRUCell, B = 1, I = H = STREAM


def _state_dict(I: int, H: int, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch's initialisation (uniform in +-1/sqrt(H)), layer 0, PyTorch's names."""
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    shapes = {"weight_ih_l0": (3 * H, I), "weight_hh_l0": (3 * H, H),
              "bias_ih_l0": (3 * H,), "bias_hh_l0": (3 * H,)}
    return {n: rng.uniform(-k, k, s).astype(np.float32) for n, s in shapes.items()}


# -- PyTorch ---------------------------------------------------------------------------------

def torch_quantized(module, dtype: str):
    """PyTorch's dynamic quantization of an nn.GRU or nn.GRUCell: ``dtype`` "qint8" or
    "float16". ``quantize_dynamic`` replaces child modules only, so the module is wrapped in
    a parent; returns the quantized child, callable like the original. (PyTorch warns that
    torch.ao.quantization is deprecated in favour of torchao; the warning is silenced.)"""
    import torch

    class Parent(torch.nn.Module):
        def __init__(self, child):
            super().__init__()
            self.child = child

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(
            Parent(module), {type(module)}, dtype=getattr(torch, dtype))
    return q.child


def torch_gru(sd: dict[str, np.ndarray]):
    import torch

    H, I = sd["weight_hh_l0"].shape[1], sd["weight_ih_l0"].shape[1]
    m = torch.nn.GRU(I, H)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    return m.eval()


# -- ONNX Runtime ----------------------------------------------------------------------------

def onnx_gru_runner(sd: dict[str, np.ndarray], x: np.ndarray, threads: int) -> Callable:
    """One ONNX GRU node (linear_before_reset=1) in ONNX Runtime, inputs and outputs bound
    once (IOBinding): the call runs the node and nothing else."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from grufast.interop.onnx import make_model

    T, B, I = x.shape
    H = sd["weight_hh_l0"].shape[1]

    def zrh(a):  # PyTorch stacks the gates r, z, n; ONNX z, r, h
        return np.concatenate([a[H:2 * H], a[:H], a[2 * H:]])

    inits = [numpy_helper.from_array(zrh(sd["weight_ih_l0"])[None], "W"),
             numpy_helper.from_array(zrh(sd["weight_hh_l0"])[None], "R"),
             numpy_helper.from_array(np.concatenate([zrh(sd["bias_ih_l0"]),
                                                     zrh(sd["bias_hh_l0"])])[None], "B")]
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H,
                            linear_before_reset=1)
    graph = helper.make_graph(
        [node], "gru", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, B, H]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, B, H])], inits)
    model = make_model(graph, 14)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    onnx.checker.check_model(model)
    y = np.empty((T, 1, B, H), np.float32)
    h = np.empty((1, B, H), np.float32)
    io = sess.io_binding()
    io.bind_cpu_input("X", x)
    for name, buf in (("Y", y), ("Y_h", h)):
        io.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
    run = sess.run_with_iobinding

    def call():
        run(io)
        return y, h

    call.keep = (x, y, h, sess, io)  # the bound buffers live as long as the runner
    return call


# -- timing ----------------------------------------------------------------------------------

def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int, round_s: float,
                   settle_s: float) -> dict[str, dict[str, float]]:
    """Median ms per call of each function over ``rounds`` interleaved rounds, as wall time
    and as the process's CPU time (all its threads); a round times each function over about
    ``round_s`` seconds of calls (at least one). On one pinned thread the CPU time leaves out
    the time other processes held the core: the steadier figure on a loaded machine."""
    reps = {}
    for name, fn in fns.items():  # warm up, and size each round
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(round_s / max(time.perf_counter() - t0, 1e-9)))
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if settle_s:  # other libraries' worker threads spin for a while after a call
                time.sleep(settle_s)
            n = reps[name]
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            wall[name].append((time.perf_counter() - t0) / n)
            cpu[name].append((time.process_time() - c0) / n)
    return {name: {"wall": 1e3 * float(np.median(wall[name])),
                   "cpu": 1e3 * float(np.median(cpu[name]))} for name in fns}


def shape_candidates(T: int, B: int, I: int, H: int, threads: int) -> dict[str, Callable]:
    import torch

    import grufast

    sd = _state_dict(I, H)
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    g = grufast.GRU(I, H).eval()
    g.load_state_dict(sd)
    q8, q16 = g.quantized("int8"), g.quantized("bf16")
    tm = torch_gru(sd)
    t8, t16 = torch_quantized(tm, "qint8"), torch_quantized(tm, "float16")
    xt = torch.from_numpy(x)
    return {"grufast float32": lambda: g(x), "grufast int8": lambda: q8(x),
            "grufast bf16": lambda: q16(x),
            "onnxruntime float32": onnx_gru_runner(sd, x, threads),
            "torch float32": lambda: tm(xt), "torch qint8": lambda: t8(xt),
            "torch float16": lambda: t16(xt)}


def stream_candidates() -> dict[str, Callable]:
    import torch

    import grufast

    H = STREAM
    cell = grufast.GRUCell(H, H, seed=0)
    q8, q16 = cell.quantized("int8"), cell.quantized("bf16")
    x = np.random.default_rng(1).standard_normal(H).astype(np.float32)
    h = np.zeros(H, np.float32)
    tc = torch.nn.GRUCell(H, H)
    tc.load_state_dict({k: torch.from_numpy(v) for k, v in cell.state_dict().items()})
    t8 = torch_quantized(tc, "qint8")
    xt, ht = torch.from_numpy(x)[None], torch.from_numpy(h)[None]
    return {"grufast float32": lambda: cell(x, h), "grufast int8": lambda: q8(x, h),
            "grufast bf16": lambda: q16(x, h), "torch float32": lambda: tc(xt, ht),
            "torch qint8": lambda: t8(xt, ht)}


# -- report ----------------------------------------------------------------------------------

RATIOS = [("grufast int8", "onnxruntime float32"), ("grufast bf16", "onnxruntime float32"),
          ("grufast int8", "torch qint8"), ("grufast bf16", "torch float16"),
          ("grufast int8", "grufast float32"), ("grufast bf16", "grufast float32")]


def run(threads: int, quick: bool) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    from grufast._bench_env import describe, environment

    torch.set_num_threads(threads)
    rounds, round_s = (5, 0.02) if quick else (15, 0.05)
    settle = 0.0 if threads == 1 else 0.05
    rows = []
    with threadpool_limits(threads), torch.inference_mode():
        env = environment(threads, ["torch", "onnxruntime"])  # once the limits apply
        print(describe(env), flush=True)
        for shape in SHAPES:
            ms = interleaved_ms(shape_candidates(*shape, threads), rounds, round_s, settle)
            rows.append({"shape": list(shape), "ms": ms})
            print(format_row(shape, ms), flush=True)
        us = {k: {c: 1e3 * v for c, v in t.items()} for k, t in
              interleaved_ms(stream_candidates(), rounds, round_s, settle).items()}
    print(format_stream(us), flush=True)
    return {"environment": env, "rows": rows, "streaming_us": us}


def format_row(shape, ms: dict[str, dict[str, float]]) -> str:
    lines = [f"T, B, I, H = {', '.join(map(str, shape))}: median ms per call"]
    for clock in ("wall", "cpu"):
        times = ", ".join(f"{k} {v[clock]:.3g}" for k, v in ms.items())
        ratios = ", ".join(f"{a.split()[1]}/{b} {ms[a][clock] / ms[b][clock]:.2f}"
                           for a, b in RATIOS)
        lines += [f"  {clock:4}: {times}", f"        ratios: {ratios}"]
    return "\n".join(lines)


def format_stream(us: dict[str, dict[str, float]]) -> str:
    return (f"streaming step (GRUCell, B=1, I=H={STREAM}): median us per call (wall / cpu): "
            + ", ".join(f"{k} {v['wall']:.2f} / {v['cpu']:.2f}" for k, v in us.items()))


def _in_subprocess(threads: int, quick: bool) -> dict:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "result.json")
        cmd = [sys.executable, "-m", "grufast.bench_quantized", "--threads", str(threads),
               "--json", out] + ["--quick"] * quick
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m grufast.bench_quantized", description=__doc__)
    p.add_argument("--threads", type=int, nargs="+",
                   help="thread counts (default 1, on one pinned core, and 2); each runs in "
                        "its own process")
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    p.add_argument("--json", help="write the results to this JSON file")
    args = p.parse_args(argv)
    counts = args.threads or [1, 2]
    if len(counts) == 1:
        if counts[0] == 1:  # one thread means one core: pinned before any pool starts
            cpus = os.sched_getaffinity(0)
            os.environ.setdefault("GRUFAST_BENCH_VISIBLE_CPUS", str(len(cpus)))  # "pinned"
            os.sched_setaffinity(0, {min(cpus)})
        print(f"-- {counts[0]} thread(s)", flush=True)
        results = [run(counts[0], args.quick)]
    else:
        results = [_in_subprocess(n, args.quick) for n in counts]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
