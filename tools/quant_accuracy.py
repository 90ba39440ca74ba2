"""Accuracy of grufast's int8 and bf16 inference models, next to PyTorch's dynamic
quantization measured the same way, and a trained model's task metric before and after.

Part 1, the grid shapes (README's bench grid) at T = 100 and T = 1000: random
PyTorch-initialised weights (torch.nn.GRU, seeded), standard normal inputs; each quantized
model's outputs against its own float32 model's: max and mean |y_q - y| relative to max |y|.
grufast's are weight-only (float32 activations and accumulation); PyTorch's qint8 also
quantizes the activations, its float16 stores float16 weights.

Part 2, a trained model: a GRU and a linear head trained on the adding problem (two marked
numbers among T uniform ones; the target is their sum) with grufast's gradients and Adam;
the test MSE, R^2 and the fraction of sums predicted within 0.04 of the float32 model and
of its int8 and bf16 copies.

    python tools/quant_accuracy.py [--quick] [--out docs/quant_accuracy.txt]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import grufast
from grufast.bench_quantized import torch_quantized

GRID = [(1, 64, 64), (1, 256, 256), (1, 512, 512), (16, 128, 128), (64, 256, 256),
        (64, 512, 512), (1, 32, 32), (256, 128, 256)]  # (B, I, H); T is 100 and 1000


def errors(y: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    d = np.abs(np.asarray(y, np.float64) - ref) / np.abs(ref).max()
    return float(d.max()), float(d.mean())


def grid_rows(Ts, grid, seed: int = 0) -> list[tuple]:
    rows = []
    for B, I, H in grid:
        torch.manual_seed(seed)
        m = torch.nn.GRU(I, H).eval()
        g = grufast.GRU.from_torch(m).eval()
        q = {f: g.quantized(f) for f in ("int8", "bf16")}
        t = {d: torch_quantized(m, d) for d in ("qint8", "float16")}
        for T in Ts:
            x = np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)
            y = g(x)[0].astype(np.float64)
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                yt = m(xt)[0].numpy().astype(np.float64)
                tq = {d: errors(t[d](xt)[0].numpy(), yt) for d in t}
            gq = {f: errors(q[f](x)[0], y) for f in q}
            rows.append(((T, B, I, H), gq["int8"], gq["bf16"], tq["qint8"], tq["float16"]))
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row) -> str:
    shape, *cols = row
    return f"{', '.join(map(str, shape)):20}" + "".join(f"{a:10.1e}{b:9.1e}" for a, b in cols)


HEADER = (f"{'T, B, I, H':20}" + "".join(f"{n:>19}" for n in (
    "grufast int8", "grufast bf16", "torch qint8", "torch float16")) + "\n"
    + " " * 20 + "       max     mean" * 4)


# -- a trained model -------------------------------------------------------------------------

def adding_batch(rng, T: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """x (T, B, 2): a uniform number and a marker (two 1s per sequence); y (B,): the sum of
    the two marked numbers."""
    x = np.zeros((T, B, 2), np.float32)
    x[:, :, 0] = rng.uniform(0, 1, (T, B))
    first = rng.integers(0, T // 2, B)
    second = rng.integers(T // 2, T, B)
    x[first, np.arange(B), 1] = 1
    x[second, np.arange(B), 1] = 1
    y = x[first, np.arange(B), 0] + x[second, np.arange(B), 0]
    return x, y


class Adam:
    """torch.optim.Adam's update over a dict of arrays (defaults as PyTorch's)."""

    def __init__(self, params: dict[str, np.ndarray], lr: float) -> None:
        self.lr, self.b1, self.b2, self.eps, self.t = lr, 0.9, 0.999, 1e-8, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for k, p in params.items():
            g = grads[k]
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            mh = self.m[k] / (1 - self.b1 ** self.t)
            vh = self.v[k] / (1 - self.b2 ** self.t)
            p -= (self.lr * mh / (np.sqrt(vh) + self.eps)).astype(p.dtype)


def train_adding(T: int, H: int, steps: int, batch: int, seed: int):
    """A GRU(2, H) and a linear head on the last state, trained with grufast's gradients."""
    rng = np.random.default_rng(seed)
    gru = grufast.GRU(2, H, seed=seed).train()
    k = 1 / np.sqrt(H)
    head = {"w": rng.uniform(-k, k, H).astype(np.float32), "b": np.zeros(1, np.float32)}
    params = gru.state_dict()
    opt = Adam({**params, **head}, lr=1e-2)
    for _ in range(steps):
        x, y = adding_batch(rng, T, batch)
        gru.zero_grad()
        _, h_n = gru(x)
        h = h_n[-1]
        pred = h @ head["w"] + head["b"][0]
        dpred = 2 * (pred - y) / batch  # d mean squared error
        dh_n = np.zeros_like(h_n)
        dh_n[-1] = dpred[:, None] * head["w"][None, :]
        gru.backward(None, dh_n)
        grads = {**gru.grads, "w": h.T @ dpred, "b": np.array([dpred.sum()], np.float32)}
        opt.step({**params, **head}, grads)
        gru.load_state_dict(params)
    return gru.eval(), head


def scores(model, head, x, y) -> tuple[float, float, float]:
    """Test MSE, R^2 and the fraction of sums predicted within 0.04."""
    err = model(x)[1][-1] @ head["w"] + head["b"][0] - y
    mse = float(np.mean(err ** 2))
    return mse, 1 - mse / float(np.var(y)), float(np.mean(np.abs(err) < 0.04))


def trained_rows(T: int, H: int, steps: int, seed: int = 0) -> tuple[list[str], tuple]:
    t0 = time.perf_counter()
    gru, head = train_adding(T, H, steps, 64, seed)
    seconds = time.perf_counter() - t0
    x, y = adding_batch(np.random.default_rng(seed + 1), T, 4000)
    base = scores(gru, head, x, y)
    lines = [f"adding problem, T = {T}, GRU(2, {H}) + linear head, {steps} Adam steps of 64 "
             f"sequences ({seconds:.0f} s); 4000 test sequences (predicting the mean: MSE "
             f"{float(np.var(y)):.3f}):",
             f"  {'':8} {'test MSE':>10} {'R^2':>9} {'within 0.04':>12}",
             f"  {'float32':8} {base[0]:10.6f} {base[1]:9.5f} {base[2]:12.4f}"]
    for f in ("int8", "bf16"):
        m = scores(gru.quantized(f), head, x, y)
        lines.append(f"  {f:8} {m[0]:10.6f} {m[1]:9.5f} {m[2]:12.4f}   (MSE "
                     f"{100 * (m[0] - base[0]) / base[0]:+.1f}%, R^2 "
                     f"{100 * (m[1] - base[1]) / base[1]:+.3f}%, within 0.04 "
                     f"{100 * (m[2] - base[2]):+.2f} points vs float32)")
    return lines, base


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="three shapes, a shorter training")
    p.add_argument("--out", help="also write the report to this file")
    args = p.parse_args()
    grid = GRID[:2] + GRID[3:4] if args.quick else GRID
    print(HEADER, flush=True)
    rows = grid_rows((100, 1000), grid)
    trained, _ = trained_rows(50, 32, 300 if args.quick else 2000)
    print("\n".join(trained))
    worst = {name: max(r[i][0] for r in rows) for i, name in enumerate(
        ("grufast int8", "grufast bf16", "torch qint8", "torch float16"), start=1)}
    summary = "largest max error over the grid: " + ", ".join(
        f"{k} {v:.1e}" for k, v in worst.items())
    print(summary)
    if args.out:
        import platform

        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if "model name" in line), platform.processor())
        text = [f"python tools/quant_accuracy.py --out {args.out}",
                f"CPU: {cpu}; torch {torch.__version__}; grufast kernels "
                f"{grufast._isa.kernels.__name__}",
                "Output error of each quantized model against its own float32 model, relative "
                "to the largest float32 output magnitude; T, B, I, H; random "
                "PyTorch-initialised weights, standard normal inputs.", "", HEADER,
                *map(format_row, rows), "", summary, "", *trained, ""]
        with open(args.out, "w") as f:
            f.write("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
