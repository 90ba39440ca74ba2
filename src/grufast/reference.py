"""The NumPy reference GRU: the specification in code, and the oracle the kernels are tested
against. It imports only NumPy and shares no code with the rest of the package.

One layer, one direction, time-major. Gate blocks of the weights are stacked r, z, n.

    gi = x_t W_ih^T + b_ih                     gh = h W_hh^T + b_hh
    r  = sigmoid(gi_r + gh_r)                  z  = sigmoid(gi_z + gh_z)
    n  = tanh(gi_n + r * gh_n)                         linear_before_reset=True
    n  = tanh(gi_n + (r * h) W_hn^T + b_hn)            linear_before_reset=False
    h' = (1 - z) * n + z * h

Sequence b is valid at step t when t < lengths[b]; other steps output zeros and keep h.
The reverse direction visits t = T-1 ... 0, so it starts at t = lengths[b] - 1 from h0[b].
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class GRUGrads(NamedTuple):
    x: np.ndarray
    h0: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray | None
    b_hh: np.ndarray | None


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False,
                linear_before_reset=True, training=False):
    """Reference forward pass. Shapes: x (T, B, I), h0 (B, H) or None, w_ih (3H, I),
    w_hh (3H, H), b_ih and b_hh (3H,) or None. Returns y (T, B, H), h_n (B, H) and a cache
    dict (None unless training). Computes in the dtype of w_ih."""
    w_ih = np.asarray(w_ih)
    dtype = w_ih.dtype
    w_hh = np.asarray(w_hh, dtype)
    x = np.asarray(x, dtype)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    has_bias = b_ih is not None
    b_ih = np.zeros(3 * H, dtype) if b_ih is None else np.asarray(b_ih, dtype)
    b_hh = np.zeros(3 * H, dtype) if b_hh is None else np.asarray(b_hh, dtype)
    h = np.zeros((B, H), dtype) if h0 is None else np.array(h0, dtype)
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths).astype(np.int64)

    W_ir, W_iz, W_in = np.split(w_ih, 3)
    W_hr, W_hz, W_hn = np.split(w_hh, 3)
    b_ir, b_iz, b_in = np.split(b_ih, 3)
    b_hr, b_hz, b_hn = np.split(b_hh, 3)

    y = np.zeros((T, B, H), dtype)
    steps = []  # what backward needs, per visited step
    order = range(T - 1, -1, -1) if reverse else range(T)
    for t in order:
        valid = (t < lengths)[:, None]          # (B, 1)
        xt = x[t]
        r = _sigmoid(xt @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
        z = _sigmoid(xt @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
        if linear_before_reset:
            hn = h @ W_hn.T + b_hn              # recurrent term, gated by r after the matmul
            n = np.tanh(xt @ W_in.T + b_in + r * hn)
        else:
            hn = (r * h) @ W_hn.T + b_hn        # r gates the state before the matmul
            n = np.tanh(xt @ W_in.T + b_in + hn)
        h_new = (1 - z) * n + z * h
        steps.append((t, valid, h, r, z, n, hn))
        h = np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)
    cache = None
    if training:
        cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, has_bias=has_bias, steps=steps,
                     linear_before_reset=linear_before_reset, shape=(T, B, H))
    return y, h.astype(dtype, copy=False), cache


def gru_backward(dy, dh_n, cache):
    """Reference backward pass: gradients of a loss L given dL/dy (T, B, H) and dL/dh_n (B, H)
    (either may be None for zero). Returns GRUGrads with the gradient for every input.

    Per step, with d = dL/dh' for the step's output (the carried gradient plus dy_t):

      h' = (1 - z) n + z h
        dn = d (1 - z)        dz = d (h - n)        dh (direct) = d z
      n = tanh(a_n), z = sigmoid(a_z), r = sigmoid(a_r): derivatives through the activations
        da_n = dn (1 - n^2)   da_z = dz z (1 - z)
      linear_before_reset=True, a_n = gi_n + r * hn, hn = h W_hn^T + b_hn:
        dr = da_n hn          d(hn) = da_n r       -> dW_hn += d(hn)^T h, db_hn += d(hn),
                                                      dh += d(hn) W_hn
      linear_before_reset=False, a_n = gi_n + (r h) W_hn^T + b_hn:
        d(rh) = da_n W_hn     dr = d(rh) h         dh += d(rh) r
                                                   dW_hn += da_n^T (r h), db_hn += da_n
      r and z: da_r = dr r (1 - r); with da_g the gate's pre-activation gradient (g = r, z)
        dW_hg += da_g^T h,  db_hg += da_g,  dh += da_g W_hg
      input side, for every gate g = r, z, n:
        dW_ig += da_g^T x_t,  db_ig += da_g,  dx_t = sum_g da_g W_ig

    Invalid steps (t >= lengths[b]) pass d through unchanged and contribute nothing.
    """
    c = cache
    x, w_ih, w_hh = c["x"], c["w_ih"], c["w_hh"]
    T, B, H = c["shape"]
    dtype = w_ih.dtype
    W_hr, W_hz, W_hn = np.split(w_hh, 3)
    W_ir, W_iz, W_in = np.split(w_ih, 3)

    dh = np.zeros((B, H), dtype) if dh_n is None else np.array(dh_n, dtype)
    dy = None if dy is None else np.asarray(dy, dtype)
    dx = np.zeros_like(x)
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db_ih = np.zeros(3 * H, dtype)
    db_hh = np.zeros(3 * H, dtype)

    for t, valid, h, r, z, n, hn in reversed(c["steps"]):
        m = valid.astype(dtype)                 # 1 where the step ran, 0 where it did not
        d = dh + (0 if dy is None else dy[t])
        dn = d * (1 - z)
        dz = d * (h - n)
        dh_direct = d * z
        da_n = dn * (1 - n * n) * m
        da_z = dz * z * (1 - z) * m
        if c["linear_before_reset"]:
            dr = da_n * hn
            dhn = da_n * r                      # gradient of h W_hn^T + b_hn
            dw_hh[2 * H:] += dhn.T @ h
            db_hh[2 * H:] += dhn.sum(0)
            dh_rec = dhn @ W_hn
        else:
            drh = da_n @ W_hn                   # gradient of r * h
            dr = drh * h
            dw_hh[2 * H:] += da_n.T @ (r * h)
            db_hh[2 * H:] += da_n.sum(0)
            dh_rec = drh * r
        da_r = dr * r * (1 - r) * m
        dw_hh[:H] += da_r.T @ h
        dw_hh[H:2 * H] += da_z.T @ h
        db_hh[:H] += da_r.sum(0)
        db_hh[H:2 * H] += da_z.sum(0)
        dh_rec = dh_rec + da_r @ W_hr + da_z @ W_hz

        xt = x[t]
        dw_ih[:H] += da_r.T @ xt
        dw_ih[H:2 * H] += da_z.T @ xt
        dw_ih[2 * H:] += da_n.T @ xt
        db_ih += np.concatenate([da_r.sum(0), da_z.sum(0), da_n.sum(0)])
        dx[t] = da_r @ W_ir + da_z @ W_iz + da_n @ W_in

        # Where the step did not run, h was passed through: so is its gradient.
        dh = np.where(valid, dh_direct + dh_rec, dh)

    has_bias = c["has_bias"]
    return GRUGrads(dx, dh, dw_ih, dw_hh, db_ih if has_bias else None,
                    db_hh if has_bias else None)
