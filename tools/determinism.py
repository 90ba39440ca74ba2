"""What changes grufast's results, and by how much: thread count and batch composition.

Usage: python tools/determinism.py
Repeated calls with the same inputs, batch and thread count are bitwise equal (tested in
tests/test_robustness.py); this script measures the two things that are not. Largest
difference relative to the largest magnitude, as in the tests.
"""

import numpy as np
from threadpoolctl import threadpool_limits

import grufast


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _train(gru: grufast.GRU, x: np.ndarray, dy: np.ndarray) -> list[np.ndarray]:
    gru.zero_grad()
    y, _ = gru(x)
    dx, _ = gru.backward(dy)
    # Copies: the model's gradient arrays are zeroed and refilled in place by the next run.
    return [y, dx, *(g.copy() for g in gru.grads.values())]


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'dtype':8} {'shape (T, B, H)':16} {'threads 1 vs 2: inference':>26} "
          f"{'training (y, dx, grads)':>24} {'alone vs in batch, 1 thread':>28} "
          f"{'2 threads':>10}")
    for dtype in (np.float32, np.float64):
        for T, B, H in ((100, 64, 256), (100, 1, 512)):
            gru = grufast.GRU(H, H, dtype=dtype, seed=0)
            x = rng.standard_normal((T, B, H)).astype(dtype)
            dy = rng.standard_normal((T, B, H)).astype(dtype)
            runs = []
            for threads in (1, 2):
                with threadpool_limits(threads):
                    gru.eval()
                    y, _ = gru(x)
                    gru.train()
                    runs.append((y, _train(gru, x, dy)))
            inference = _rel(runs[1][0], runs[0][0])
            training = max(_rel(a, b) for a, b in zip(runs[1][1], runs[0][1]))
            batch = ["-", "-"]
            if B > 1:
                gru.eval()
                for i, threads in enumerate((1, 2)):
                    with threadpool_limits(threads):
                        alone = np.stack([gru(x[:, b:b + 1])[0][:, 0] for b in range(0, B, 8)],
                                         axis=1)
                    batch[i] = f"{_rel(alone, runs[i][0][:, ::8]):.2e}"
            print(f"{np.dtype(dtype).name:8} {f'{T}, {B}, {H}':16} {inference:26.2e} "
                  f"{training:24.2e} {batch[0]:>28} {batch[1]:>10}")


if __name__ == "__main__":
    main()
