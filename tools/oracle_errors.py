"""Largest errors of grufast against each independent oracle over a fixed set of random
problems (relative to the largest magnitude, as in the tests). Usage:
    python tools/oracle_errors.py
Needs the test dependencies (torch, onnxruntime, keras)."""

import itertools
import os
import sys

import numpy as np

# The oracle adapters live with the tests (tests/oracles.py), which are not installed: the
# repository root goes on the path once, and only the shared modules are imported, never a
# test module.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.helpers import problem, rel_err  # noqa: E402
from tests.oracles import (  # noqa: E402
    LAYER_CASES,
    keras_gru,
    layer_and_torch,
    run_onnx_gru,
    torch_autograd_gru_no_lbr,
    torch_gru,
)

from grufast import functional as F  # noqa: E402


def main() -> None:
    worst: dict[tuple, float] = {}

    def note(key, err):
        worst[key] = max(worst.get(key, 0.0), err)

    rng = np.random.default_rng(2026)
    for dtype, lbr, reverse, bias, lens in itertools.product(
            (np.float32, np.float64), (True, False), (False, True), (True, False),
            (False, True)):
        for _ in range(3):
            T, B, I, H = rng.integers(1, 12, 4)
            x, h0, *w = problem(rng, T, B, I, H, dtype, bias=bias)
            lengths = rng.integers(1, T + 1, B) if lens else None
            y, h, cache = F.gru_forward(x, h0, *w, lengths=lengths, reverse=reverse,
                                        linear_before_reset=lbr, training=True)
            dy = rng.standard_normal(y.shape).astype(dtype)
            dh = rng.standard_normal(h.shape).astype(dtype)
            g = [a for a in F.gru_backward(dy, dh, cache) if a is not None]
            name = np.dtype(dtype).name
            oracle = torch_gru if lbr else torch_autograd_gru_no_lbr
            ty, th, tg = oracle(x, h0, *w, lengths, reverse, dy, dh)
            label = "torch nn.GRU" if lbr else "torch autograd (no lbr)"
            note((label, name, "forward"), max(rel_err(y, ty), rel_err(h, th)))
            note((label, name, "gradients"), max(rel_err(a, b) for a, b in zip(g, tg)))
            if dtype == np.float32:
                oy, oh = run_onnx_gru(x, h0, *w, lengths, reverse, lbr)
                note(("onnxruntime GRU", name, "forward"), max(rel_err(y, oy), rel_err(h, oh)))
                if not lens:
                    ky, kh, kg = keras_gru(x, h0, *w, reverse, lbr, dy, dh)
                    note(("keras GRU", name, "forward"), max(rel_err(y, ky), rel_err(h, kh)))
                    grads = F.gru_backward(dy, dh, cache)
                    note(("keras GRU", name, "gradients"), max(
                        rel_err(a, kg[n]) for n, a in zip(grads._fields, grads) if a is not None))
    # The layer: every combination of the layer tests, against torch autograd.
    for layers, bi, bf, bias, lens, dtype in LAYER_CASES:
        gru, (y, hn, dx, dh0, grads), (ty, thn, tdx, tdh0, tg) = layer_and_torch(
            rng, layers, bi, bf, bias, lens, dtype, seed=layers)
        name = np.dtype(dtype).name
        note(("torch layer", name, "forward"), max(rel_err(y, ty), rel_err(hn, thn)))
        note(("torch layer", name, "gradients"), max(
            [rel_err(dx, tdx), rel_err(dh0, tdh0)]
            + [rel_err(grads[k], v) for k, v in tg.items()]))
    print(f"{'oracle':26} {'dtype':8} {'what':10} {'largest relative error':>24}")
    for (oracle, dtype, what), err in sorted(worst.items()):
        print(f"{oracle:26} {dtype:8} {what:10} {err:24.2e}")


if __name__ == "__main__":
    main()
