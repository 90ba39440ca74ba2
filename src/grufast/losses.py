"""Losses for training without a framework: each returns (loss, gradient of the loss with
respect to its first argument), with PyTorch's definitions and mean reduction."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from grufast._validate import FLOAT_DTYPES, describe, real_values


def _float(name: str, value) -> np.ndarray:
    """A float array; float32 and float64 kept, integers computed in float64."""
    arr = real_values(name, value)
    if arr.dtype not in FLOAT_DTYPES:
        arr = arr.astype(np.float64)
    return arr


def mse(pred: ArrayLike, target: ArrayLike) -> tuple[float, np.ndarray]:
    """Mean squared error, as torch.nn.functional.mse_loss(pred, target).

    Parameters
    ----------
    pred : array_like, any shape
    target : array_like, the same shape (no broadcasting: a mismatch is an error)

    Returns
    -------
    loss : float
        mean((pred - target) ** 2)
    dpred : ndarray shaped like pred, in pred's dtype (float64 for integer pred)
        2 (pred - target) / pred.size
    """
    p = _float("pred", pred)
    t = real_values("target", target)
    if p.shape != t.shape:
        raise ValueError(f"target must have the shape of pred {p.shape}, got {t.shape}")
    if p.size == 0:
        raise ValueError("pred must not be empty: the mean of no elements is undefined, got "
                         f"shape {p.shape}")
    diff = p - t.astype(p.dtype, copy=False)
    loss = float(np.mean(np.square(diff, dtype=np.float64)))
    diff *= p.dtype.type(2.0 / p.size)
    return loss, diff


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy with class indices, as torch.nn.functional.cross_entropy.

    Parameters
    ----------
    logits : array_like, shape (N, C), (C,) for one sample, or (N, C, d1, ..., dk)
    labels : array_like of int, shape (N,), () for one sample, or (N, d1, ..., dk); each
        in [0, C)

    Returns
    -------
    loss : float
        mean over samples of logsumexp(logits) - logits[label], computed stably
    dlogits : ndarray shaped like logits, in logits' dtype (float64 for integer logits)
        (softmax(logits) - onehot(labels)) / number of samples
    """
    z = _float("logits", logits)
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"labels must be an array of integers, got {describe(labels)}: "
                        f"{exc}") from None
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must hold integer class indices, got dtype {y.dtype}")
    if z.ndim == 0:
        raise ValueError("logits must be (N, C), (C,) or (N, C, d1, ...), got a scalar")
    want = () if z.ndim == 1 else (z.shape[0], *z.shape[2:])
    if y.shape != want:
        raise ValueError(f"labels must have shape {want} for logits of shape {z.shape}, got "
                         f"{y.shape}")
    C = z.shape[0] if z.ndim == 1 else z.shape[1]
    if y.size == 0:
        raise ValueError(f"logits must hold at least one sample, got shape {z.shape}")
    if y.min() < 0 or y.max() >= C:
        raise ValueError(f"labels must lie in [0, C) = [0, {C}), got min {y.min()} and max "
                         f"{y.max()}")
    # Classes on the last axis, samples on the first: (M, C).
    zc = z[None] if z.ndim == 1 else np.moveaxis(z, 1, -1)
    zc = zc.reshape(-1, C)
    yc = y.reshape(-1)
    M = zc.shape[0]
    shifted = zc - zc.max(axis=1, keepdims=True)  # log-sum-exp: exp never overflows
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(M)
    loss = float(np.mean(np.log(s[:, 0].astype(np.float64))
                         - shifted[rows, yc].astype(np.float64)))
    grad = e / s
    grad[rows, yc] -= 1
    grad *= z.dtype.type(1.0 / M)
    if z.ndim == 1:
        return loss, grad[0]
    grad = grad.reshape(z.shape[0], *z.shape[2:], C)
    return loss, np.ascontiguousarray(np.moveaxis(grad, -1, 1))
