"""Per-call cost of every streaming input form, for the bench's streaming column.

``streaming_forms()`` times, in one process and interleaved rounds, GRUCell with an (H,)
vector and with a (1, H) row, GRU.step with one and two layers (per call), and a batch of B
streams in one call against B single calls. ``python -m grufast.bench_streaming`` prints
the table (run it pinned, e.g. ``taskset -c 0``, for one core).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

import grufast


def _per_call(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def streaming_forms(input_size: int = 128, hidden_size: int = 128, batch: int = 8,
                    calls: int = 2000, rounds: int = 7, dtype=np.float32
                    ) -> dict[str, float]:
    """Median seconds per call of each streaming form.

    Parameters
    ----------
    input_size, hidden_size : the cell's and the layers' sizes
    batch : B for the small-batch form (one call on (B, I) vs B calls on (I,))
    calls : calls per timing; rounds : interleaved timings per form (the median is kept)

    Returns
    -------
    dict : form name -> seconds per call
    """
    rng = np.random.default_rng(0)
    cell = grufast.GRUCell(input_size, hidden_size, dtype=dtype, seed=0)
    one = grufast.GRU(input_size, hidden_size, dtype=dtype, seed=0).eval()
    two = grufast.GRU(input_size, hidden_size, num_layers=2, dtype=dtype, seed=0).eval()
    x = rng.standard_normal(input_size).astype(dtype)
    h = rng.standard_normal(hidden_size).astype(dtype)
    xb = rng.standard_normal((batch, input_size)).astype(dtype)
    hb = rng.standard_normal((batch, hidden_size)).astype(dtype)
    h1, h2 = h[None].copy(), np.stack([h, h])
    rows = [(xb[b].copy(), hb[b].copy()) for b in range(batch)]

    def singles():
        for xr, hr in rows:
            cell(xr, hr)

    forms: dict[str, Callable[[], object]] = {
        "GRUCell (H,)": lambda: cell(x, h),
        "GRUCell (1, H)": lambda: cell(x[None], h[None]),
        "GRU.step 1 layer": lambda: one.step(x, h1),
        "GRU.step 2 layers": lambda: two.step(x, h2),
        f"GRUCell B={batch} one call": lambda: cell(xb, hb),
        f"GRUCell B={batch} as {batch} calls": singles,
    }
    times: dict[str, list[float]] = {name: [] for name in forms}
    for fn in forms.values():
        fn()
    for _ in range(rounds):
        for name, fn in forms.items():
            n = calls // batch if name.endswith("calls") else calls
            times[name].append(_per_call(fn, n))
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    from grufast._isa import kernels

    print(f"kernels {kernels.__name__}, I = H = 128, float32, median per call")
    for name, t in streaming_forms().items():
        print(f"{name:28} {t * 1e6:8.2f} us")


if __name__ == "__main__":
    main()
