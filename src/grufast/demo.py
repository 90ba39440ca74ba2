"""``python -m grufast demo``: why a GRU has gates, shown on the adding problem.

The adding problem (Le, Jaitly & Hinton 2015): each sequence has two input channels, values
uniform in [0, 1] and a marker that is 1 at one position in each half of the sequence; the
target is the sum of the two marked values. Answering 1 always scores MSE 1/6 ~ 0.167 (the
variance of the sum of two uniform values), so a model below that has learned to carry a
value across up to T steps.

A GRU (grufast) and a plain tanh RNN (the NumPy class below, exact back-propagation through
time) train with the same hidden size, optimiser (Adam), data, seed and readout. The GRU's
update gate can close (z -> 1) to hold the first marked value until the second arrives; the
RNN's gradient from the target shrinks at every step back through tanh and W_hh, so the
first marked value never gets a learning signal.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from grufast import losses, optim
from grufast._cli_args import int_at_least, output_file, positive_float, seed_arg
from grufast._parameters import _Parameters
from grufast.layers import GRU
from grufast.linear import Linear

BASELINE_MSE = 1.0 / 6.0  # always answering 1: Var(U1 + U2) = 2 / 12
# Chosen so that at T = 100 the GRU reaches test MSE <= 0.01 and both models train in under
# 3 minutes together on one core (README, "The demo").
DEFAULTS = dict(T=100, hidden=128, steps=2000, batch=32, lr=3e-3, clip=1.0, seed=0)


def adding_problem(rng: np.random.Generator, n: int, T: int, dtype=np.float32
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n sequences of the adding problem, time-major.

    Returns
    -------
    x : ndarray (T, n, 2): channel 0 the values, channel 1 the markers
    y : ndarray (n, 1): the sum of the two marked values
    marks : ndarray (n, 2) of int: the marked positions, one in each half
    """
    if T < 2:
        raise ValueError(f"T must be at least 2 (one marker in each half), got {T}")
    values = rng.uniform(0, 1, (T, n))
    half = T // 2
    marks = np.stack([rng.integers(0, half, n), rng.integers(half, T, n)], axis=1)
    x = np.zeros((T, n, 2), dtype)
    x[:, :, 0] = values
    cols = np.arange(n)
    x[marks[:, 0], cols, 1] = 1
    x[marks[:, 1], cols, 1] = 1
    y = (values[marks[:, 0], cols] + values[marks[:, 1], cols])[:, None].astype(dtype)
    return x, y, marks


class TanhRNN(_Parameters):
    """A plain Elman RNN, h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), one layer,
    time-major, zero initial state, with torch.nn.RNN's names and initialisation (uniform in
    +-1/sqrt(hidden_size)). ``backward`` is exact back-propagation through time. A
    grufast module: the optimisers and clip_grad_norm take it."""

    def __init__(self, input_size: int, hidden_size: int, *, dtype=np.float32,
                 seed: int | None = None) -> None:
        self.input_size, self.hidden_size = input_size, hidden_size
        self.dtype = np.dtype(dtype)
        H = hidden_size
        self._init_params({"weight_ih_l0": (H, input_size), "weight_hh_l0": (H, H),
                           "bias_ih_l0": (H,), "bias_hh_l0": (H,)}, H, seed)
        self._tape: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (T, B, I) -> the state after the last step (B, H); keeps what backward needs."""
        p = self._params
        T, B, _ = x.shape
        H = self.hidden_size
        # All input projections in one GEMM, then one small GEMM per step.
        a = (x.reshape(T * B, -1) @ p["weight_ih_l0"].T).reshape(T, B, H)
        a += p["bias_ih_l0"] + p["bias_hh_l0"]
        hs = np.empty((T + 1, B, H), self.dtype)  # hs[t + 1] is the state after step t
        hs[0] = 0
        w_hh_t = np.ascontiguousarray(p["weight_hh_l0"].T)
        for t in range(T):
            np.tanh(a[t] + hs[t] @ w_hh_t, out=hs[t + 1])
        self._tape = (x, hs)
        return hs[T]

    def backward(self, dh: np.ndarray) -> np.ndarray:
        """dL/dh_T (B, H) -> dL/dx (T, B, I); parameter gradients accumulate into grads."""
        x, hs = self._tape
        self._tape = None
        p, g = self._params, self.grads
        T = x.shape[0]
        w_hh = p["weight_hh_l0"]
        da = np.empty_like(hs[1:])  # gradient wrt each step's pre-activation
        for t in range(T - 1, -1, -1):
            np.multiply(dh, 1 - hs[t + 1] * hs[t + 1], out=da[t])
            dh = da[t] @ w_hh
        TB = da.shape[0] * da.shape[1]
        da2 = da.reshape(TB, -1)
        g["weight_ih_l0"] += da2.T @ x.reshape(TB, -1)
        g["weight_hh_l0"] += da2.T @ hs[:-1].reshape(TB, -1)
        db = da2.sum(axis=0)
        g["bias_ih_l0"] += db
        g["bias_hh_l0"] += db
        return (da2 @ p["weight_ih_l0"]).reshape(x.shape)


class GRUModel:
    """The demo's GRU: grufast.GRU, readout of the last state through grufast.Linear."""

    def __init__(self, hidden: int, seed: int) -> None:
        self.rnn = GRU(2, hidden, seed=seed)
        self.head = Linear(hidden, 1, seed=seed + 1)

    @property
    def modules(self) -> list:
        return [self.rnn, self.head]

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.rnn.eval()
        self.head.eval()
        _, h_n = self.rnn(x)
        return self.head(h_n[-1])

    def loss_and_backward(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Train-mode forward, MSE, backward; returns the loss and dL/dx (T, B, 2)."""
        self.rnn.train()
        self.head.train()
        _, h_n = self.rnn(x)
        loss, dpred = losses.mse(self.head(h_n[-1]), y)
        dx, _ = self.rnn.backward(None, self.head.backward(dpred)[None])
        return loss, dx


class RNNModel(GRUModel):
    """The demo's plain RNN: TanhRNN, the same readout."""

    def __init__(self, hidden: int, seed: int) -> None:
        self.rnn = TanhRNN(2, hidden, seed=seed)
        self.head = Linear(hidden, 1, seed=seed + 1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.head.eval()
        out = self.head(self.rnn(x))
        self.rnn._tape = None
        return out

    def loss_and_backward(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        self.head.train()
        loss, dpred = losses.mse(self.head(self.rnn(x)), y)
        return loss, self.rnn.backward(self.head.backward(dpred))


def train(model: GRUModel, *, T: int, steps: int, batch: int, lr: float, clip: float,
          seed: int, test: tuple[np.ndarray, np.ndarray], eval_every: int,
          label: str = "", progress: bool = True, target_mse: float | None = None
          ) -> dict[str, Any]:
    """Adam on fresh batches (the same ones for every model with the same seed); the test
    MSE every ``eval_every`` steps. Returns the curve, the final test MSE, the seconds spent
    training (wall and CPU, evaluation excluded), and the seconds until the test MSE first
    reached ``target_mse`` (None if it never did)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("the demo's progress bar needs tqdm: pip install "
                          "'grufast[demo]' (tqdm, matplotlib)") from None

    rng = np.random.default_rng(seed)
    opt = optim.Adam(model.modules, lr=lr)
    x_test, y_test = test
    curve = [(0, losses.mse(model.predict(x_test), y_test)[0])]
    wall = cpu = 0.0
    reached = None
    bar = tqdm(range(1, steps + 1), desc=label, disable=not progress, leave=True,
               mininterval=0.5)
    running = None
    for step in bar:
        x, y, _ = adding_problem(rng, batch, T)
        w0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad()
        loss, _ = model.loss_and_backward(x, y)
        optim.clip_grad_norm(model.modules, clip)
        opt.step()
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        running = loss if running is None else 0.95 * running + 0.05 * loss
        if step % eval_every == 0 or step == steps:
            mse = losses.mse(model.predict(x_test), y_test)[0]
            curve.append((step, mse))
            if target_mse is not None and reached is None and mse <= target_mse:
                reached = wall
        # shown at the bar's own refresh rate
        bar.set_postfix(loss=f"{running:.4f}", test=f"{curve[-1][1]:.4f}", refresh=False)
    return dict(curve=curve, test_mse=curve[-1][1], seconds=wall, cpu_seconds=cpu,
                seconds_to_target=reached)


def input_gradient(model: GRUModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|dL/dx_t| per input step t: the norm over channels, averaged over the batch, (T,)."""
    for m in model.modules:
        m.zero_grad()
    _, dx = model.loss_and_backward(x, y)
    for m in model.modules:
        m.zero_grad()
    return np.linalg.norm(dx.astype(np.float64), axis=2).mean(axis=1)


def run(T: int = DEFAULTS["T"], hidden: int = DEFAULTS["hidden"],
        steps: int = DEFAULTS["steps"], batch: int = DEFAULTS["batch"],
        lr: float = DEFAULTS["lr"], clip: float = DEFAULTS["clip"],
        seed: int = DEFAULTS["seed"], test_size: int = 512, eval_every: int = 50,
        progress: bool = True) -> dict[str, Any]:
    """Train both models; the numbers the table, the JSON and the figure show."""
    x_test, y_test, marks = adding_problem(np.random.default_rng(seed + 10_000), test_size, T)
    result: dict[str, Any] = {"T": T, "hidden": hidden, "steps": steps, "batch": batch,
                              "lr": lr, "clip": clip, "seed": seed, "test_size": test_size,
                              "baseline_mse": BASELINE_MSE}
    models = {"gru": GRUModel(hidden, seed), "rnn": RNNModel(hidden, seed)}
    for name, model in models.items():
        result[name] = train(model, T=T, steps=steps, batch=batch, lr=lr, clip=clip,
                             seed=seed, test=(x_test, y_test), eval_every=eval_every,
                             label=name.upper(), progress=progress, target_mse=0.01)
        result[name]["grad_per_step"] = [float(f"{v:.4g}") for v in
                                         input_gradient(model, x_test, y_test)]
    gru = models["gru"].rnn
    z = gru.gates(x_test[:, :1]).z[0, :, 0]  # (T, H): the update gate on one test sequence
    result["example"] = {"marks": marks[0].tolist(), "z": np.round(z, 4).tolist()}
    return result


def table(result: dict[str, Any]) -> str:
    """The final table: test MSE of both models against the baseline, and wall times."""
    lines = [f"adding problem, T = {result['T']}, hidden = {result['hidden']}, "
             f"{result['steps']} steps of batch {result['batch']} (Adam, lr {result['lr']})",
             f"{'model':<10}{'test MSE':>12}{'vs baseline':>14}{'train s':>10}{'CPU s':>8}"]
    for name in ("gru", "rnn"):
        r = result[name]
        lines.append(f"{name.upper():<10}{r['test_mse']:>12.4f}"
                     f"{r['test_mse'] / result['baseline_mse']:>13.1%}{r['seconds']:>10.1f}"
                     f"{r['cpu_seconds']:>8.1f}")
    lines.append(f"{'baseline':<10}{result['baseline_mse']:>12.4f}{'100.0%':>14}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path) -> None:
    """One figure, three panels: test MSE over training, the GRU's update gate on one test
    sequence, and |dL/dx_t| per input step for both models."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the demo's figure needs matplotlib: pip install "
                          "'grufast[demo]' (tqdm, matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {"gru": "tab:blue", "rnn": "tab:red"}
    for name in ("gru", "rnn"):
        steps, mse = zip(*result[name]["curve"])
        ax[0].plot(steps, mse, color=colours[name], label=name.upper())
    ax[0].axhline(result["baseline_mse"], color="grey", ls="--", label="always 1 (1/6)")
    ax[0].set(yscale="log", xlabel="training step", ylabel="test MSE",
              title=f"Adding problem, T = {result['T']}")
    ax[0].legend()

    z = np.asarray(result["example"]["z"])  # (T, H)
    # The units whose gate moves most over the sequence: the ones doing the remembering.
    units = np.argsort(z.max(axis=0) - z.min(axis=0))[-6:]
    for u in units:
        ax[1].plot(z[:, u], lw=1.2)
    for m in result["example"]["marks"]:
        ax[1].axvline(m, color="black", ls=":", lw=1.5)
    ax[1].set(ylim=(0, 1), xlabel="time step t", ylabel="update gate z",
              title="GRU update gate, one test sequence (dotted: marked steps)")

    for name in ("gru", "rnn"):
        ax[2].plot(result[name]["grad_per_step"], color=colours[name], label=name.upper())
    ax[2].set(yscale="log", xlabel="input step t", ylabel="|dL/dx_t|",
              title="Gradient reaching each input step")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--T", type=int_at_least("--T", 2), default=d["T"],
                        help="sequence length (%(default)s)")
    parser.add_argument("--hidden", type=int_at_least("--hidden"), default=d["hidden"],
                        help="hidden size of both models (%(default)s)")
    parser.add_argument("--steps", type=int_at_least("--steps"), default=d["steps"],
                        help="training steps per model (%(default)s)")
    parser.add_argument("--batch", type=int_at_least("--batch"), default=d["batch"],
                        help="sequences per step (%(default)s)")
    parser.add_argument("--lr", type=positive_float("--lr"), default=d["lr"],
                        help="Adam's learning rate (%(default)s)")
    parser.add_argument("--seed", type=seed_arg, default=d["seed"], help="(%(default)s)")
    parser.add_argument("--plot", type=output_file, metavar="PNG",
                        help="write the three-panel figure here")
    parser.add_argument("--json", type=output_file, metavar="PATH",
                        help="write the numbers here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    # The values are checked as add_arguments parses them (grufast._cli_args).
    result = run(T=args.T, hidden=args.hidden, steps=args.steps, batch=args.batch,
                 lr=args.lr, seed=args.seed, progress=not args.quiet)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        plot(result, args.plot)
        print(f"figure written to {args.plot}")
    return 0
