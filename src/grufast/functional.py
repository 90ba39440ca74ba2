"""Validated pure functions over one GRU layer in one direction (docs/design.md section 2).

Inputs are checked and converted once, to C-contiguous arrays of the weights' dtype
(float32 or float64); callers' arrays are never written. The loops run in
``grufast._kernels`` without the GIL.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from grufast import _buffers
from grufast._isa import L2_BYTES
from grufast._isa import kernels as _kernels
from grufast._layout import full_lengths, zero_padding
from grufast._validate import (
    blas_sized,
    c_array,
    describe,
    flag,
    lengths_array,
    ndim,
    real_array,
    real_values,
    shaped,
    weight_dtype,
)

INFERENCE_CHUNK_BYTES = 8 << 20  # per direction: a few steps of projections, cache-sized
FLUSH_ROWS = 64  # backward: least rows of gates' gradients per weight-gradient flush
FLUSH_ROWS_MAX = 256
DOT_INPUTS = 8  # backward: fewer inputs take dx as dot products with W_ih^T (the kernels' own)


def flush_rows(H: int, I: int, itemsize: int, l2_bytes: int | None = None) -> int:
    """Rows of gates' gradients per weight-gradient flush (the K of its GEMMs on one thread;
    split by sequences, each thread's share): 64 per L2 cache (per core, read at run time; 1
    MiB if unknown) that the partial sums ((H + I + 2) x 3H) fill, at least 64, at most 256.
    Each flush reads and writes all the partial sums once, so rows amortise that traffic
    once the sums leave L2: T = 100, B = 64, H = I = 512 training took 0.85x the time with
    256 rows on one thread, 0.72-0.76x on two; H = 256 with 128 rows 0.95-0.99x and
    0.84-0.95x; 256 rows at H = 256 1.04x."""
    l2 = l2_bytes or L2_BYTES or (1 << 20)
    caches = -(-(H + I + 2) * 3 * H * itemsize // l2)
    return FLUSH_ROWS * min(FLUSH_ROWS_MAX // FLUSH_ROWS, max(1, caches))


class GRUGrads(NamedTuple):
    """Gradients of a loss with respect to every input of :func:`gru_forward`.

    Shapes follow the inputs: x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H),
    b_ih and b_hh (3H,), or None when the forward ran without biases.
    """

    x: np.ndarray
    h0: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray | None
    b_hh: np.ndarray | None


@dataclass(frozen=True, eq=False)
class GRUCache:
    """What a training forward keeps for :func:`gru_backward`; treat it as opaque.

    gates (T, B, 3H) holds r, z, n; hprev (T, B, H) the state entering each step; ghn
    (T, B, H) the recurrent n term h W_hn^T + b_hn (linear_before_reset only, else None).
    """

    x: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    has_bias: bool
    lengths: np.ndarray
    reverse: bool
    linear_before_reset: bool
    gates: np.ndarray
    hprev: np.ndarray
    ghn: np.ndarray | None


class Weights:
    """One layer's parameters as the kernels take them: w_ih_t and w_hh_t transposed
    (GRUCell, GRU.step); w_ih_pp and w_hh_pp, the same packed for the register-tiled GEMM
    (input projections of few rows, of each thread's sequences or of a split by hidden
    units; the recurrent products of batches); w_hh_p, W_hh packed in panels, for the
    GEMVs of one sequence (and of 2-3 past the training limit).

    The copies other than w_ih_pp are made on first use (a training loop makes them again
    after every optimiser step): a call on one sequence reads only w_hh_p, a batch only
    w_hh_pp (or W_hh itself in OpenBLAS's GEMM), a cell w_ih_t and w_hh_t. At H = 512 the
    two copies one sequence does not read were 8% of a training step with its weight
    update (B = 1, T = 100). Both packed copies are made straight from W_ih and W_hh,
    without a transposed copy first (0.30 ms against 0.72 at H = 512)."""

    def __init__(self, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray,
                 b_hh: np.ndarray, has_bias: bool) -> None:
        self.w_ih = w_ih
        self.w_hh = c_array(w_hh)
        self.b_ih = b_ih
        self.b_hh = b_hh
        self.has_bias = has_bias
        # Every tiled float projection (the split by units' windows included) reads W_ih^T
        # packed, straight from W_ih (no transposed copy first).
        self.w_ih_pp = _kernels.pack_gemm_panels(c_array(w_ih),
                                                 transposed=True)

    @cached_property
    def w_ih_t(self) -> np.ndarray:
        return _transposed(self.w_ih)

    @cached_property
    def w_hh_t(self) -> np.ndarray:
        return _transposed(self.w_hh)

    @cached_property
    def w_hh_p(self) -> np.ndarray:
        return _kernels.pack_weight_panels(self.w_hh)

    @cached_property
    def w_hh_pp(self) -> np.ndarray:
        return _kernels.pack_gemm_panels(self.w_hh, transposed=True)

    def read_by(self, B: int, training: bool) -> tuple[np.ndarray | None, ...]:
        """(w_hh_pp, w_hh_p) for the kernels' forward on B sequences, each None where the
        call's plan does not read it: the kernels' own rule (``forward_reads``), which
        their forward checks the copies against."""
        hh_pp, hh_p = _kernels.forward_reads(B, self.w_hh.shape[1], training)
        return self.w_hh_pp if hh_pp else None, self.w_hh_p if hh_p else None


def _transposed(w: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of w.T: the kernels' blocked transpose for the float matrices
    they take, NumPy's otherwise (made on first use after a weight update, for the cells
    and a split by hidden units only)."""
    if w.ndim != 2 or w.dtype not in (np.float32, np.float64) or not w.flags.c_contiguous:
        return np.ascontiguousarray(w.T)
    out = _buffers.aligned(w.shape[::-1], w.dtype)
    _kernels.transpose_into(w, out)
    return out


def check_weights(w_ih, w_hh, b_ih, b_hh) -> Weights:
    """Validate one layer's parameters; missing biases become zeros (has_bias False)."""
    dtype = weight_dtype("w_ih", w_ih)
    w_ih = ndim("w_ih", real_array("w_ih", w_ih, dtype), 2, "(3H, I)")
    if w_ih.shape[0] == 0 or w_ih.shape[0] % 3 or w_ih.shape[1] == 0:
        raise ValueError(f"w_ih must have shape (3H, I) with H >= 1 and I >= 1, "
                         f"got {w_ih.shape}")
    H = w_ih.shape[0] // 3
    w_hh = shaped("w_hh", real_array("w_hh", w_hh, dtype), (3 * H, H), "(3H, H)")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih and b_hh must be given together or both be None, got "
                         f"b_ih={describe(b_ih)} and b_hh={describe(b_hh)}")
    has_bias = b_ih is not None
    if has_bias:
        b_ih = shaped("b_ih", real_array("b_ih", b_ih, dtype), (3 * H,), "(3H,)")
        b_hh = shaped("b_hh", real_array("b_hh", b_hh, dtype), (3 * H,), "(3H,)")
    else:
        b_ih = b_hh = np.zeros(3 * H, dtype)
    return Weights(w_ih, w_hh, b_ih, b_hh, has_bias)


def gru_forward(
    x: ArrayLike,
    h0: ArrayLike | None,
    w_ih: ArrayLike,
    w_hh: ArrayLike,
    b_ih: ArrayLike | None = None,
    b_hh: ArrayLike | None = None,
    *,
    lengths: ArrayLike | None = None,
    reverse: bool = False,
    linear_before_reset: bool = True,
    training: bool = False,
) -> tuple[np.ndarray, np.ndarray, GRUCache | None]:
    """One GRU layer in one direction over a whole sequence.

    Parameters
    ----------
    x : array_like, shape (T, B, I)
    h0 : array_like, shape (B, H), or None for zeros
    w_ih : array_like, shape (3H, I), gate blocks r, z, n; its dtype (float32 or float64)
        is the dtype of the computation
    w_hh : array_like, shape (3H, H)
    b_ih, b_hh : array_like, shape (3H,), or both None
    lengths : array_like of int, shape (B,), optional
        Valid steps per sequence, in [0, T]: later steps output zeros and keep the state.
    reverse : bool
        Run t = T-1 ... 0 (from lengths[b] - 1 for sequence b).
    linear_before_reset : bool
        True: n = tanh(gi_n + r * (h W_hn^T + b_hn)) (PyTorch, cuDNN); False: the original
        n = tanh(gi_n + (r * h) W_hn^T + b_hn).
    training : bool
        Keep what :func:`gru_backward` needs and return it as the cache. The cache refers
        to ``x`` and the weights where they are already C-contiguous arrays of the compute
        dtype (no copy): change them before :func:`gru_backward` and it computes the
        gradient of neither the old values nor the new. (The layers, ``GRU`` and
        ``Linear``, copy their input for the tape and refuse a backward after their
        weights changed.)

    Returns
    -------
    y : ndarray, shape (T, B, H)
    h_n : ndarray, shape (B, H)
    cache : GRUCache or None
    """
    reverse = flag("reverse", reverse)
    lbr = flag("linear_before_reset", linear_before_reset)
    training = flag("training", training)
    w = check_weights(w_ih, w_hh, b_ih, b_hh)
    dtype = w.w_ih.dtype
    H, I = w.w_hh.shape[1], w.w_ih.shape[1]
    x = ndim("x", real_values("x", x), 3, "(T, B, I)")
    T, B = x.shape[:2]
    shaped("x", x, (T, B, I), "(T, B, I)")
    blas_sized(**{"T*B": T * B, "3*hidden_size": 3 * H, "input_size": I})
    x = c_array(x, dtype)  # only now that its size is known to be sane
    if h0 is None:
        h = np.zeros((B, H), dtype)
    else:
        h = np.array(shaped("h0", real_array("h0", h0, dtype), (B, H), "(B, H)"), order="C")
    if lengths is None:
        lens = full_lengths(B, T)
    else:
        lens = lengths_array(lengths, B, T)
        if training:
            x = zero_padding(x, lens)

    y = _buffers.aligned((T, B, H), dtype)
    cache = forward_into(x, w, h, lens, reverse, lbr, training, y, 0)
    return y, h, cache


def forward_into(x: np.ndarray, w: Weights, h: np.ndarray, lens: np.ndarray, reverse: bool,
                 lbr: bool, training: bool, y: np.ndarray, y_col: int) -> GRUCache | None:
    """Kernel call on validated, prepared buffers (no checks here): h (B, H) holds h0 and
    ends holding h_n; the outputs go to columns [y_col, y_col + H) of y (T, B, W)."""
    T, B, _ = x.shape
    H = w.w_hh.shape[1]
    dtype = w.w_ih.dtype
    # Inference projects the inputs a chunk of steps at a time: memory independent of T.
    step_bytes = max(1, B * 3 * H * dtype.itemsize)
    chunk = T if training else max(1, min(T, INFERENCE_CHUNK_BYTES // step_bytes))
    # Pooled: a training loop gets back the buffers of the cache its last backward dropped.
    gates = _buffers.empty((chunk, B, 3 * H), dtype)
    hprev = _buffers.empty((T, B, H), dtype) if training else None
    ghn = _buffers.empty((T, B, H), dtype) if training and lbr else None
    scratch = _buffers.empty((7 * B * H,), dtype)  # per step: gh (B, 3H), rh (B, H), 3 (B, H)
    w_hh_pp, w_hh_p = w.read_by(B, training)
    _kernels.forward(x, w.w_ih, w.w_ih_pp, w.w_hh, w_hh_pp, w_hh_p,
                     w.b_ih, w.b_hh, lens, reverse, lbr, y, y_col, h,
                     gates, training, hprev, ghn, scratch[:3 * B * H].reshape(B, 3 * H),
                     scratch[3 * B * H:4 * B * H].reshape(B, H),
                     scratch[4 * B * H:].reshape(3 * B, H))
    if not training:
        return None
    return GRUCache(x, w.w_ih, w.w_hh, w.has_bias, lens, reverse, lbr, gates, hprev, ghn)


def gru_backward(dy: ArrayLike | None, dh_n: ArrayLike | None, cache: GRUCache) -> GRUGrads:
    """Back-propagation through time for the forward that produced ``cache``.

    Parameters
    ----------
    dy : array_like, shape (T, B, H), or None for zero
        Gradient of the loss with respect to y.
    dh_n : array_like, shape (B, H), or None for zero
        Gradient of the loss with respect to h_n.
    cache : GRUCache
        From ``gru_forward(..., training=True)``.

    Returns
    -------
    GRUGrads
        x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih and b_hh (3H,) or None.
    """
    if not isinstance(cache, GRUCache):
        raise TypeError("cache must be the GRUCache returned by gru_forward(..., "
                        f"training=True), got {describe(cache)}")
    c = cache
    dtype = c.w_ih.dtype
    T, B, I = c.x.shape
    H = c.w_hh.shape[1]
    if dy is not None:
        dy = shaped("dy", real_array("dy", dy, dtype), (T, B, H), "(T, B, H)")
    if dh_n is None:
        dh = np.zeros((B, H), dtype)
    else:
        dh = np.array(shaped("dh_n", real_array("dh_n", dh_n, dtype), (B, H), "(B, H)"),
                      order="C")
    dx = _buffers.aligned((T, B, I), dtype)
    dw_ih = np.empty((3 * H, I), dtype)
    dw_hh = np.empty((3 * H, H), dtype)
    db_ih = np.empty(3 * H, dtype) if c.has_bias else None
    db_hh = np.empty(3 * H, dtype) if c.has_bias else None
    backward_into(c, dy, 0, dh, dx, False, dw_ih, dw_hh, db_ih, db_hh, accumulate=False)
    return GRUGrads(dx, dh, dw_ih, dw_hh, db_ih, db_hh)


def backward_into(c: GRUCache, dy, dy_col, dh, dx, dx_accumulate, dw_ih, dw_hh, db_ih, db_hh,
                  *, accumulate: bool) -> None:
    """Kernel call on prepared buffers (no validation): dy (T, B, W) or None, this
    direction's gradient in columns [dy_col, dy_col + H); dh holds dh_n and ends holding dh0;
    dx and the parameter gradients are overwritten, or added to when asked."""
    T, B, I = c.x.shape
    H = c.w_hh.shape[1]
    dtype = c.w_ih.dtype
    lbr = c.linear_before_reset
    # Serial or split by sequences, the weight gradients accumulate during the recurrence, a
    # flush of steps (flush_rows rows of products) at a time: per-flush buffers, and one row
    # of partial sums per thread that may share the call.
    steps = max(1, min(T, -(-flush_rows(H, I, dtype.itemsize) // max(B, 1))))
    flush = _buffers.empty(((8 * H + 2 * I) * steps * B,), dtype)
    partials = _buffers.empty((max(1, _kernels.openmp_threads()), (H + I + 2) * 3 * H), dtype)
    # Split by hidden units: dG of every step, weight gradients after the loop.
    # Fresh, not pooled: pages never touched (every other split) cost nothing.
    dG = _buffers.aligned((T, B, 3 * H), dtype)
    dGt = _buffers.aligned((3 * H, T * B), dtype)
    dgh = _buffers.aligned((2, B * 3 * H), dtype)
    ds = None if lbr else _buffers.aligned((B, H), dtype)
    work = None if lbr else _buffers.aligned((T, B, H), dtype)
    _kernels.backward(c.x, c.w_ih, c.w_hh, c.lengths, c.reverse, lbr,
                      c.gates, c.hprev, c.ghn, dy, dy_col, dh, dx, dx_accumulate, dw_ih, dw_hh,
                      db_ih, db_hh, accumulate, dG, dGt, dgh, ds, work,
                      np.zeros((B, H), dtype), steps, flush, partials,
                      np.ascontiguousarray(c.w_ih.T) if I < DOT_INPUTS else None,
                      _kernels.pack_weight_columns(c.w_hh) if _kernels.backward_reads(B, H)
                      else None)
