"""What changes grufast's results, and by how much: BLAS thread count and batch composition.

Usage: python tools/determinism.py
Repeated calls with the same inputs, batch and thread count are bitwise equal (tested in
tests/test_robustness.py); this script measures the two things that are not.
"""

import numpy as np
from threadpoolctl import threadpool_limits

import grufast


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'dtype':8} {'threads 1 vs 2':>16} {'alone vs in batch of 64':>24}")
    for dtype in (np.float32, np.float64):
        gru = grufast.GRU(256, 256, dtype=dtype, seed=0).eval()
        x = rng.standard_normal((100, 64, 256)).astype(dtype)
        with threadpool_limits(1):
            y1, _ = gru(x)
        with threadpool_limits(2):
            y2, _ = gru(x)
        alone = np.stack([gru(x[:, b:b + 1])[0][:, 0] for b in range(0, 64, 8)], axis=1)
        print(f"{np.dtype(dtype).name:8} {np.abs(y1 - y2).max():16.2e} "
              f"{np.abs(alone - y1[:, ::8]).max():24.2e}")


if __name__ == "__main__":
    main()
