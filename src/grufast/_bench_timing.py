"""Interleaved timing: every peer of a cell measured round by round, so that a slow minute
of a shared machine falls on all of them alike.

A round runs each peer once, in an order drawn afresh every round (a seeded shuffle), as a
burst of calls: enough calls for about ``BURST_S`` (one for long calls), each timed on its
own. With more than one thread, each burst starts once the process is quiet (``settle``:
no thread of it has been running for a ``QUIET_WINDOW_S`` window, up to ``QUIET_MAX_S``)
and, for calls under ``DISCARD_BELOW_S``, after one untimed call. Pools keep spinning after
their work: ONNX Runtime's for ~45 ms after each run, OpenBLAS's (the GEMM and NumPy
reference columns) up to ~0.1 s. A fixed pause shorter than that left a spinning thread on
a core while the next peer's burst ran, and that peer's threads (which a user running one
library would not share a core with) lost their time slices to it. The shuffle keeps any
remaining effect spread over all peers. Rounds go on until the cell's time budget is spent
and every peer has ``min_rounds``, or ``max_rounds`` is reached. Results: median and
spread of all timed calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BURST_S = 0.005
SETTLE_S = 0.01
QUIET_WINDOW_S = 0.005
QUIET_BUSY = 0.25  # a window is quiet when the process ran less than this fraction of it
QUIET_MAX_S = 0.5
DISCARD_BELOW_S = 0.05
ORDER_SEED = 2026  # the rounds' orders are random but the same from run to run


def stats(samples: list[float], scale: float, rounds: int) -> dict[str, float | int]:
    """Median, quartiles, min and max of ``samples`` (seconds) times ``scale``."""
    q = np.percentile(np.asarray(samples) * scale, [0, 25, 50, 75, 100])
    return {"median": float(q[2]), "q1": float(q[1]), "q3": float(q[3]), "min": float(q[0]),
            "max": float(q[4]), "samples": len(samples), "rounds": rounds}


def settle(max_s: float = QUIET_MAX_S) -> float:
    """Sleep ``SETTLE_S``, then until this process's threads stop running: windows of
    ``QUIET_WINDOW_S`` until one in which the process used less than ``QUIET_BUSY`` of a
    core (pool threads that spin after their work use a whole one), at most ``max_s``.
    Returns the seconds waited."""
    t_start = time.perf_counter()
    time.sleep(SETTLE_S)
    while time.perf_counter() - t_start < max_s:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(QUIET_WINDOW_S)
        if time.process_time() - c0 < QUIET_BUSY * (time.perf_counter() - w0):
            break
    return time.perf_counter() - t_start


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
                settle()
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
