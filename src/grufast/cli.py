"""``python -m grufast``: a self-check of the kernels against the NumPy reference;
``python -m grufast bench``: the side-by-side benchmark (grufast.bench);
``python -m grufast demo``: a GRU and a plain RNN on the adding problem (grufast.demo)."""

from __future__ import annotations

import argparse
import re

import numpy as np

from grufast import functional, reference
from grufast._cli_args import int_at_least, seed_arg
from grufast.bench import median_ms


def _problem(rng, T, B, I, H, dtype):
    k = 1 / np.sqrt(H)
    shapes = [(3 * H, I), (3 * H, H), (3 * H,), (3 * H,)]
    w = [rng.uniform(-k, k, s).astype(dtype) for s in shapes]
    x = rng.standard_normal((T, B, I)).astype(dtype)
    return x, rng.standard_normal((B, H)).astype(dtype), w


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check(args: argparse.Namespace) -> int:
    """Kernels vs the reference (in float64) on random data: largest relative errors."""
    rng = np.random.default_rng(args.seed)
    limits = {np.float32: (5e-5, 5e-4), np.float64: (1e-10, 1e-10)}
    ok = True
    # One format for the header and the rows, so the columns stay aligned.
    row = "{:<8} {:<25} {:<9} {:>12} {:>12}{}"
    print(row.format("dtype", "variant", "direction", "forward err", "grad err", ""))
    for dtype in (np.float32, np.float64):
        for lbr in (True, False):
            for reverse in (False, True):
                x, h0, w = _problem(rng, 20, 5, 13, 17, dtype)
                lengths = rng.integers(0, 21, 5)
                kw = dict(lengths=lengths, reverse=reverse, linear_before_reset=lbr)
                y, h, cache = functional.gru_forward(x, h0, *w, training=True, **kw)
                as64 = [a.astype(np.float64) for a in (x, h0, *w)]
                yr, hr, cr = reference.gru_forward(*as64, training=True, **kw)
                dy = rng.standard_normal(y.shape)
                g = functional.gru_backward(dy, None, cache)
                gr = reference.gru_backward(dy, None, cr)
                fwd = max(_rel(y, yr), _rel(h, hr))
                grad = max(_rel(a, b) for a, b in zip(g, gr))
                passed = fwd <= limits[dtype][0] and grad <= limits[dtype][1]
                ok &= passed
                print(row.format(np.dtype(dtype).name, f"linear_before_reset={lbr}",
                                 "reverse" if reverse else "forward", f"{fwd:.2e}",
                                 f"{grad:.2e}", "" if passed else "  FAIL"))
    T, B, I, H = 100, 64, 256, 256
    x, h0, w = _problem(rng, T, B, I, H, np.float32)
    kern = median_ms(lambda: functional.gru_forward(x, h0, *w), 0, args.repeats, 0)
    ref = median_ms(lambda: reference.gru_forward(x, h0, *w), 0, max(3, args.repeats // 3), 0)
    _, _, cache = functional.gru_forward(x, h0, *w, training=True)
    dy = np.ones((T, B, H), np.float32)
    train = median_ms(lambda: functional.gru_backward(
        dy, None, functional.gru_forward(x, h0, *w, training=True)[2]), 0, args.repeats, 0)
    print(f"\nT={T} B={B} I={I} H={H} float32, median of {args.repeats}:")
    print(f"  kernel forward   {kern:8.2f} ms")
    print(f"  reference fwd    {ref:8.2f} ms   ({ref / kern:.1f}x the kernel's time)")
    print(f"  kernel fwd+bwd   {train:8.2f} ms")
    print("self-check " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def _plain(doc: str | None) -> str:
    """A docstring as help text: reStructuredText literals and roles without their markup."""
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc or "")
    return re.sub(r"``([^`]+)``", r"\1", doc).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grufast", description=_plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("check", help="kernels vs the NumPy reference, with timings (default)",
                       description=_plain(check.__doc__))
    for q in (parser, p):
        # SUPPRESS in the subcommand, so "--seed 3 check" keeps the 3 given before it.
        default = {"seed": 0, "repeats": 9} if q is parser else dict.fromkeys(
            ("seed", "repeats"), argparse.SUPPRESS)
        q.add_argument("--seed", type=seed_arg, default=default["seed"],
                       help="seed of the random test problems (default 0)")
        q.add_argument("--repeats", type=int_at_least("--repeats"), default=default["repeats"],
                       help="timed runs per measurement; the median is printed (default 9)")
    from grufast import bench

    b = sub.add_parser("bench", help="grufast vs the reference, PyTorch, ONNX Runtime, JAX",
                       description=_plain(bench.__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    from grufast import demo

    d = sub.add_parser("demo", help="a GRU and a plain RNN on the adding problem "
                       "(needs the [demo] extra: tqdm, matplotlib)", description=demo.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(d)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main(args)
    if args.command == "demo":
        return demo.main(args)
    return check(args)


if __name__ == "__main__":
    raise SystemExit(main())
