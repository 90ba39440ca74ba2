"""Gate values of a GRU layer, for looking inside it: the training forward's path (which
leaves r, z, n of every step in its projection buffer), with nothing kept for backward."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from grufast._isa import kernels as _kernels
from grufast.functional import Weights


class GRUGates(NamedTuple):
    """The reset gate r, update gate z and candidate state n of every step.

    From ``GRU.gates``: each (num_layers * num_directions, T, B, H) ((…, B, T, H) when
    batch_first, no B axis for unbatched input), zero past a sequence's length. From
    ``GRUCell.gates``: each (B, H) or (H,).
    """

    r: np.ndarray
    z: np.ndarray
    n: np.ndarray


def gates_into(x: np.ndarray, w: Weights, h: np.ndarray, lens: np.ndarray, reverse: bool,
               lbr: bool, y: np.ndarray, y_col: int, gates: np.ndarray) -> None:
    """One layer and direction on validated, prepared buffers (no checks here): as
    functional.forward_into, and gates (T, B, 3H), C-contiguous, ends holding r, z, n of
    every step (zeros past a sequence's length)."""
    B = x.shape[1]
    H = w.w_hh.shape[1]
    scratch = np.empty(7 * B * H, w.w_ih.dtype)  # gh (B, 3H), rh (B, H), 3 x (B, H)
    # gates holding all T steps makes the kernel project every input at once and leave the
    # gates there, as in training; hprev and ghn None: nothing is kept for backward.
    w_hh_pp, w_hh_p = w.read_by(B, False)
    _kernels.forward(x, w.w_ih, w.w_ih_pp, w.w_hh, w_hh_pp, w_hh_p,
                     w.b_ih, w.b_hh, lens, reverse, lbr, y, y_col, h, gates, True, None, None,
                     scratch[:3 * B * H].reshape(B, 3 * H),
                     scratch[3 * B * H:4 * B * H].reshape(B, H),
                     scratch[4 * B * H:].reshape(3 * B, H))
