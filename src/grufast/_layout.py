"""How a call's sequences are laid out, and the conversions between that and the kernels'
time-major (T, B, features) buffers: one place for the unbatched and batch_first cases of a
layer's inputs, outputs, gradients and gates, for masks, and for zeroing padded steps."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from grufast._validate import c_array, describe, real_array


@dataclass(frozen=True)
class SequenceLayout:
    """A whole-sequence call's layout: time-major (T, B, F), batch-major (B, T, F) when
    ``batch_first``, or one unbatched sequence (T, F)."""

    batch_first: bool
    unbatched: bool

    def shape(self, T: int, B: int, features: int) -> tuple[int, ...]:
        """The shape of a (T, B, features) array in this layout."""
        if self.unbatched:
            return (T, features)
        return (B, T, features) if self.batch_first else (T, B, features)

    def to_time_major(self, a: np.ndarray) -> np.ndarray:
        """A view of ``a`` (in this layout) as (T, B, F); callers make it contiguous."""
        if self.unbatched:
            return a[:, None, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def from_time_major(self, a: np.ndarray, lead: int = 0, contiguous: bool = True
                        ) -> np.ndarray:
        """``a`` (..., T, B, F), with ``lead`` axes before T, in this layout; batch-major
        results are copied to C order unless ``contiguous`` is False."""
        if self.unbatched:
            return a[(slice(None),) * (lead + 1) + (0,)]
        if self.batch_first:
            a = np.swapaxes(a, lead, lead + 1)
            return c_array(a) if contiguous else a
        return a


# A small call's Python side is a few microseconds, and these two were 0.3 and 0.6 of them:
# each is built once and shared (both immutable).
_LAYOUTS = {(bf, ub): SequenceLayout(bf, ub) for bf in (False, True) for ub in (False, True)}
_SHARED_LENGTHS_MAX_B = 1024  # the cache's memory stays under 64 x 8 KiB


def layout_of(batch_first: bool, unbatched: bool) -> SequenceLayout:
    """The SequenceLayout of these flags (shared)."""
    return _LAYOUTS[bool(batch_first), bool(unbatched)]


def full_lengths(B: int, T: int) -> np.ndarray:
    """lengths (B,) all T, as the kernels take them (intp), read-only: shared between calls
    for B up to 1024."""
    if B > _SHARED_LENGTHS_MAX_B:
        return _full_lengths(B, T)
    return _shared_full_lengths(B, T)


def _full_lengths(B: int, T: int) -> np.ndarray:
    lens = np.full(B, T, dtype=np.intp)
    lens.flags.writeable = False
    return lens


_shared_full_lengths = functools.lru_cache(maxsize=64)(_full_lengths)


def zero_padding(x: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """x (T, B, F) with the steps past each sequence's length set to zero, as a copy (the
    caller's array is never written); x itself when nothing is padded. Padding never reaches
    the outputs, but in training 0 * NaN would reach the weight gradients."""
    T = x.shape[0]
    if not np.any(lens < T):
        return x
    x = x.copy()
    x[np.arange(T)[:, None] >= lens[None, :]] = 0
    return x


def step_input(name: str, value, input_size: int, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """One step's input as (B, input_size), and whether it came unbatched (input_size,)."""
    x = real_array(name, value, dtype)
    unbatched = x.ndim == 1
    if unbatched:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != input_size:
        raise ValueError(f"{name} must have shape (B, input_size) or (input_size,) with "
                         f"input_size = {input_size}, got {x.shape}")
    return x, unbatched


def mask_array(value, batch: int, steps: int, unbatched: bool) -> np.ndarray:
    """A call's mask as a (B, T) bool array."""
    arr = np.asarray(value)
    if arr.dtype != np.bool_:
        raise TypeError(f"mask must be an array of bools, got {describe(arr)}")
    want = (steps,) if unbatched else (batch, steps)
    if arr.shape != want:
        raise ValueError(f"mask must have shape {'(T,)' if unbatched else '(B, T)'} = {want}, "
                         f"got {arr.shape}")
    return arr.reshape(batch, steps)


def unpack_steps(y: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Put packed steps (T, B, F) back at their own steps: y[t, b] goes to order[t, b]."""
    out = np.empty_like(y)
    out[order, np.arange(y.shape[1])] = y
    return out
