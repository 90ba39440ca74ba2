"""Interleaved timing: every peer of a cell measured round by round, so that a slow minute
of a shared machine falls on all of them alike.

A round runs each peer once, in an order drawn afresh every round (a seeded shuffle), as a
burst of calls: enough
calls for about ``BURST_S`` (one for long calls), each timed on its own. With more than one
thread, each burst starts after a ``SETTLE_S`` pause and, for calls under
``DISCARD_BELOW_S``, one untimed call: the previous peer's pool threads spin for a while
after their work, and that pause and call absorb it instead of the first timed call. The
shuffle is what makes that fair: a pool that spins longer than the pause (OpenBLAS's, for
up to ~0.1 s, after the GEMM reference or the NumPy reference) slows whoever comes next,
and a fixed cyclic order, even rotated, always puts the same peer next. Rounds
go on until the cell's time budget is spent and every peer has ``min_rounds``, or
``max_rounds`` is reached. Results: median and spread of all timed calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BURST_S = 0.005
SETTLE_S = 0.01
DISCARD_BELOW_S = 0.05
ORDER_SEED = 2026  # the rounds' orders are random but the same from run to run


def stats(samples: list[float], scale: float, rounds: int) -> dict[str, float | int]:
    """Median, quartiles, min and max of ``samples`` (seconds) times ``scale``."""
    q = np.percentile(np.asarray(samples) * scale, [0, 25, 50, 75, 100])
    return {"median": float(q[2]), "q1": float(q[1]), "q3": float(q[3]), "min": float(q[0]),
            "max": float(q[4]), "samples": len(samples), "rounds": rounds}


def interleaved(calls: dict[str, Callable[[], Any]], *, budget_s: float, min_rounds: int = 5,
                max_rounds: int = 3000, threaded: bool = False, scale: float = 1e3,
                contexts: dict[str, Callable[[], Any]] | None = None,
                round_caps: dict[str, int] | None = None) -> dict[str, dict]:
    """Time ``calls`` round by round; returns name -> stats (in seconds x ``scale``).

    contexts: name -> a context-manager factory entered around each burst (outside the
    timer), e.g. torch.inference_mode. round_caps: name -> the most rounds that peer joins
    (for a slow informational column such as the NumPy reference).
    """
    contexts = contexts or {}
    round_caps = round_caps or {}
    names = list(calls)
    burst, discard = {}, {}
    for n in names:  # warm-up (first-call costs: allocation, compilation, page faults)
        with contexts.get(n, contextlib.nullcontext)():
            calls[n]()
            t0 = time.perf_counter()
            calls[n]()
            once = time.perf_counter() - t0
        burst[n] = int(min(200, max(1, BURST_S / max(once, 1e-7))))
        discard[n] = threaded and once < DISCARD_BELOW_S
    samples: dict[str, list[float]] = {n: [] for n in names}
    rounds = dict.fromkeys(names, 0)
    t_start = time.perf_counter()
    rng = np.random.default_rng(ORDER_SEED)
    r = 0
    while r < max_rounds:
        order = [names[i] for i in rng.permutation(len(names))]
        for n in order:
            if rounds[n] >= round_caps.get(n, max_rounds):
                continue
            fn, out = calls[n], samples[n]
            if threaded:
                time.sleep(SETTLE_S)
            with contexts.get(n, contextlib.nullcontext)():
                if discard[n]:
                    fn()
                for _ in range(burst[n]):
                    t0 = time.perf_counter()
                    fn()
                    out.append(time.perf_counter() - t0)
            rounds[n] += 1
        r += 1
        if r >= min_rounds and time.perf_counter() - t_start >= budget_s:
            break
    return {n: stats(samples[n], scale, rounds[n]) for n in names}


def median_ms(fn: Callable[[], object], budget: float, min_repeats: int = 5,
              settle_s: float = 0.0) -> float:
    """Median wall time of ``fn`` in ms over at least ``min_repeats`` calls filling
    ``budget`` seconds, after one warm-up call (for the self-check's one-off timings)."""
    time.sleep(settle_s)
    fn()
    times: list[float] = []
    t_end = time.perf_counter() + budget
    while len(times) < min_repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))
