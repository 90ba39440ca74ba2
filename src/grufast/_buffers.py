"""Large kernel buffers kept between calls, for training loops (docs/design.md section 4).

A training iteration allocates the same buffers every time: the forward's cache (gates,
states, recurrent n terms: 16 MB at T=100, B=64, H=128 in float32) and the backward's scratch.
Fresh from NumPy, each is a new mapping whose pages the operating system zeroes on first
touch (in a profile of the demo's training loop, perf cpu-clock, the operating system's
share fell from 14% to 7% with this pool). ``empty`` hands back a buffer a previous call
used, once nothing outside the pool refers to it any more (the cache it was part of was
dropped after its backward, say); so no live array is ever written behind its owner's back.

Each thread has its own pool (the kernels run without the GIL, so two threads could
otherwise take the same buffer). Idle buffers are kept up to ``IDLE_BYTES`` per thread, most
recently used first; smaller requests than ``MIN_BYTES`` are allocated afresh (NumPy's
allocator already reuses small blocks).

Every buffer starts on a cache line (``aligned``): the kernels' vector loads then never
straddle two lines, whatever address NumPy's allocator returned.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

from grufast._isa import kernels as _kernels

ALIGN_BYTES = _kernels.align_bytes
MIN_BYTES = 64 << 10
IDLE_BYTES = 64 << 20

_local = threading.local()


def _count(items: list, i: int) -> int:
    return sys.getrefcount(items[i])


# The reference count of a buffer that only the pool's list holds, read as _count reads it
# (the list's reference plus the call's own, on this interpreter). Every array handed out
# and every view of one, has the buffer as its base.
_ALONE = _count([np.empty(1, np.uint8)], 0)


def aligned(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, as ``np.empty``, whose data starts on an
    ``ALIGN_BYTES`` boundary (in an allocation ``ALIGN_BYTES`` larger)."""
    return _kernels.aligned_array(shape, dtype)


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, as ``aligned``, backed by a pooled buffer."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize  # np.prod costs microseconds per call
    if nbytes < MIN_BYTES:
        return aligned(shape, dtype)
    # The pool's entries: uint8 buffers of nbytes + ALIGN_BYTES.
    pool: list[np.ndarray] | None = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = []
    found = None
    idle = 0
    for i in range(len(pool)):
        if _count(pool, i) > _ALONE:
            continue  # still part of something alive
        if found is None and pool[i].nbytes == nbytes + ALIGN_BYTES:
            found = i
        else:
            idle += pool[i].nbytes
    buf = pool.pop(found) if found is not None else np.empty(nbytes + ALIGN_BYTES, np.uint8)
    pool.insert(0, buf)  # most recently used first
    # Drop the least recently used idle buffers past the budget (never one in use).
    for i in range(len(pool) - 1, 0, -1):
        if idle <= IDLE_BYTES:
            break
        if _count(pool, i) <= _ALONE:
            idle -= pool[i].nbytes
            del pool[i]
    return _kernels.aligned_array(shape, dtype, buf)


def clear() -> None:
    """Forget this thread's pooled buffers (their memory is freed once unreferenced)."""
    _local.pool = []
