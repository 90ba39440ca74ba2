"""The GRU and GRUCell layers: configuration, train/eval, stacking, directions, dropout,
streaming steps and gates, with torch.nn.GRU's and torch.nn.GRUCell's constructors, shapes and
names. The parameter container is grufast._parameters; layouts are grufast._layout.

Inputs are validated once here; each layer and direction then calls the kernels directly on
prepared buffers (grufast.functional.forward_into / backward_into).
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from grufast import _buffers
from grufast._gates import GRUGates, gates_into
from grufast._isa import kernels
from grufast._layout import (
    SequenceLayout,
    full_lengths,
    layout_of,
    mask_array,
    step_input,
    unpack_steps,
    zero_padding,
)
from grufast._parameters import _Parameters
from grufast._validate import (
    blas_sized,
    c_array,
    describe,
    flag,
    lengths_array,
    model_dtype,
    positive_int,
    private_copy,
    real_array,
    real_values,
    shaped,
    shaped_like,
)
from grufast.functional import GRUCache, backward_into, forward_into

if TYPE_CHECKING:
    from grufast.quantized import QuantizedGRU, QuantizedGRUCell

# Bound once: GRU.step's fast path calls it per streamed step.
_stack_step = kernels.stack_step


class GRU(_Parameters):
    """A multi-layer GRU with torch.nn.GRU's constructor, shapes and parameter names.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int
    bias : bool
    batch_first : bool
        Inputs and outputs (B, T, features) instead of (T, B, features).
    dropout : float in [0, 1)
        Dropout on the outputs of every layer but the last, in train mode only.
    bidirectional : bool
    linear_before_reset : bool
        True: PyTorch's n = tanh(gi_n + r * (h W_hn^T + b_hn)); False: the original GRU.
    dtype : float32 or float64
    seed : int, optional
        Seeds the initialisation and the dropout masks.
    reverse : bool
        A reverse-only layer (needs bidirectional=False): every layer runs t = L_b-1 ... 0
        and writes each output at its own step, like ONNX ``direction="reverse"`` and Keras
        ``go_backwards=True`` followed by a flip of the outputs. PyTorch has no such layer;
        it exists so those models import. ``step`` refuses it (it needs the whole sequence).
        A keyword of its own rather than a ``direction`` argument, so that torch's
        ``bidirectional`` keeps its meaning.

    Attributes
    ----------
    default_h0 : ndarray (num_layers * D, B0, hidden_size) or None
        The initial state used when a call passes ``h0=None`` (zeros when None). B0 = 1
        broadcasts over any batch; another B0 needs calls of that batch. A constant, not a
        parameter: nothing accumulates a gradient for it. ``from_onnx`` sets it from a
        constant ``initial_h``; ``state_dict``, ``save`` and ``to_onnx`` carry it.
    default_lengths : ndarray (B0,) of int or None
        The lengths used when a call passes ``lengths=None`` (every step valid when None);
        calls must then have batch B0. ``from_onnx`` sets it from a constant
        ``sequence_lens``; carried like ``default_h0``.

    A new model is in train mode, as in PyTorch: forward keeps what ``backward`` needs.
    Call ``eval()`` for inference.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, linear_before_reset: bool = True,
                 dtype: DTypeLike = np.float32, seed: int | None = None,
                 reverse: bool = False) -> None:
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.bias = flag("bias", bias)
        self.batch_first = flag("batch_first", batch_first)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout must be a number in [0, 1), got {describe(dropout)}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.bidirectional = flag("bidirectional", bidirectional)
        self.linear_before_reset = flag("linear_before_reset", linear_before_reset)
        self.reverse = flag("reverse", reverse)
        if self.reverse and self.bidirectional:
            raise ValueError("reverse=True makes a reverse-only layer and needs "
                             "bidirectional=False, got bidirectional=True")
        self.dtype = model_dtype(dtype)
        self.training = True
        self._tape: dict | None = None
        self._default_h0: np.ndarray | None = None
        self._default_lengths: np.ndarray | None = None
        self._step_plan_list: list | None = None  # GRU.step's plans; see _step_plans
        self._init_params(self._parameter_shapes(), self.hidden_size, seed)

    # -- configuration ------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

    def _parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape under its PyTorch name, from the configuration."""
        H, D = self.hidden_size, self.num_directions
        shapes = {}
        for k in range(self.num_layers):
            for sfx in self._suffixes(k):
                shapes["weight_ih" + sfx] = (3 * H, self.input_size if k == 0 else D * H)
                shapes["weight_hh" + sfx] = (3 * H, H)
                if self.bias:
                    shapes["bias_ih" + sfx] = (3 * H,)
                    shapes["bias_hh" + sfx] = (3 * H,)
        return shapes

    def config(self) -> dict[str, Any]:
        """The constructor arguments (dtype as a name), as save() stores them."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    dropout=self.dropout, bidirectional=self.bidirectional,
                    linear_before_reset=self.linear_before_reset, dtype=self.dtype.name,
                    reverse=self.reverse)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"GRU({args})"

    # -- default initial state and lengths (constants of imported models) ---------------
    @property
    def default_h0(self) -> np.ndarray | None:
        return None if self._default_h0 is None else self._default_h0.copy()

    @default_h0.setter
    def default_h0(self, value: ArrayLike | None) -> None:
        self._default_h0 = self._checked_default_h0(value)

    def _checked_default_h0(self, value) -> np.ndarray | None:
        if value is None:
            return None
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu()
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        h = real_array("default_h0", value, self.dtype)
        if h.ndim != 3 or h.shape[0] != LD or h.shape[2] != H or h.shape[1] < 1:
            raise ValueError(f"default_h0 must have shape (num_layers * num_directions, B0, "
                             f"hidden_size) = ({LD}, B0, {H}), got {h.shape}")
        return h.copy()

    @property
    def default_lengths(self) -> np.ndarray | None:
        return None if self._default_lengths is None else self._default_lengths.copy()

    @default_lengths.setter
    def default_lengths(self, value: ArrayLike | None) -> None:
        self._default_lengths = self._checked_default_lengths(value)
        self._step_plan_list = None  # step's next call checks them (_refuse_step_lengths)

    def _refuse_step_lengths(self) -> None:
        """step runs one step per call and cannot stop a sequence at its length: with
        default_lengths set (an ONNX file's constant sequence_lens) it would ignore them."""
        if self._default_lengths is not None:
            raise ValueError("step cannot honour the model's default_lengths "
                             f"{self._default_lengths.tolist()[:8]} (from an ONNX file's "
                             "sequence_lens?): it runs every step it is given; set "
                             "default_lengths = None to stream, or call the model on the "
                             "whole sequence")

    @staticmethod
    def _checked_default_lengths(value) -> np.ndarray | None:
        if value is None:
            return None
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu()
        arr = np.asarray(value)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"default_lengths must be 1-D (B0,) with B0 >= 1, got shape "
                             f"{arr.shape}")
        # The checks of a call's lengths; the bound T is checked at each call.
        return lengths_array(arr, arr.shape[0], np.iinfo(np.intp).max).copy()

    def _initial_state(self, B: int) -> np.ndarray:
        """h0 for a call that passed none: default_h0 (broadcast from B0 = 1) or zeros."""
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        d = self._default_h0
        if d is None:
            return np.zeros((LD, B, H), self.dtype)
        if d.shape[1] not in (1, B):
            raise ValueError(f"h0 is None, so the model's default_h0 of shape {d.shape} is "
                             f"used, and its batch {d.shape[1]} cannot serve a batch of {B}; "
                             "pass h0, or set default_h0 = None for zeros")
        return np.array(np.broadcast_to(d, (LD, B, H)), order="C")

    _EXTRAS = ("default_h0", "default_lengths")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters under PyTorch's names, plus ``default_h0`` and
        ``default_lengths`` when the model has them (constants that torch.nn.GRU cannot
        hold: a torch module refuses them as unexpected keys rather than dropping them)."""
        return self._with_extras(super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load parameters by name, strictly (see ``state_dict``); ``default_h0`` and
        ``default_lengths`` are loaded when present and must be present when the model has
        them (set them to None first to load a plain PyTorch state dict)."""
        rest, h0, lengths = self._split_extras(state_dict)
        super().load_state_dict(rest)  # everything is checked before anything changes
        self._default_h0, self._default_lengths = h0, lengths

    # The two halves of the extras' handling, free of super() so that the quantized model,
    # which is not a GRU subclass, can use them too.
    def _with_extras(self, d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self._EXTRAS:
            value = getattr(self, "_" + name)
            if value is not None:
                d[name] = value.copy()
        return d

    def _split_extras(self, state_dict) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
        """The state dict without the extras, and the checked extras (None when absent)."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {describe(state_dict)}")
        extras = {k: state_dict[k] for k in self._EXTRAS if k in state_dict}
        missing = [k for k in self._EXTRAS
                   if getattr(self, "_" + k) is not None and k not in extras]
        if missing:
            raise ValueError(f"state_dict does not match the model: missing keys {missing} "
                             "(the model has them; set them to None to drop them)")
        h0 = self._checked_default_h0(extras.get("default_h0"))
        lengths = self._checked_default_lengths(extras.get("default_lengths"))
        return {k: v for k, v in state_dict.items() if k not in extras}, h0, lengths

    def train(self, mode: bool = True) -> GRU:
        self.training = flag("mode", mode)
        self._tape = None
        return self

    def eval(self) -> GRU:
        return self.train(False)

    # -- forward ------------------------------------------------------------------------
    def __call__(self, x: ArrayLike, h0: ArrayLike | None = None, *,
                 lengths: ArrayLike | None = None,
                 mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the GRU over a sequence.

        Parameters
        ----------
        x : array_like, shape (T, B, input_size), (B, T, input_size) if batch_first, or
            (T, input_size) unbatched
        h0 : array_like, shape (num_layers * D, B, hidden_size) ((num_layers * D,
            hidden_size) unbatched), or None for ``default_h0`` (zeros when that is None);
            D = 2 if bidirectional else 1
        lengths : array_like of int, shape (B,), optional
            Valid steps per sequence (packed-sequence semantics): outputs past a sequence's
            length are zero and h_n holds its state at its last valid step. None: the
            model's ``default_lengths``, or every step when that is None.
        mask : array_like of bool, shape (B, T) ((T,) unbatched), optional
            Keras's masking: steps where the mask is False are skipped by every layer and
            direction (the state is kept), wherever they are, and output zeros (Keras's
            ``zero_output_for_mask=True``; by default Keras repeats the last output
            instead). Given instead of ``lengths``; ``mask[b, t] = t < lengths[b]`` is the
            same computation.

        Returns
        -------
        y : ndarray, shape (T, B, D * hidden_size) (batch_first and unbatched as x)
        h_n : ndarray, shape (num_layers * D, B, hidden_size) (unbatched as h0)
        """
        given = x
        x, h0, lens, layout, order = self._sequence_inputs(x, h0, lengths, mask)
        if self.training:
            x = zero_padding(x, lens)
            # The tape keeps x until backward: never the caller's memory, which the caller
            # may reuse in between (the gradients changed with it).
            x = private_copy(x, given)
        y, h_n = self._forward(x, h0, lens, layout)
        if order is not None:
            y = unpack_steps(y, order)
            if self.training:
                self._tape["order"] = order
        return layout.from_time_major(y), (h_n[:, 0] if layout.unbatched else h_n)

    def _sequence_inputs(self, x, h0, lengths, mask=None) -> tuple[
            np.ndarray, np.ndarray, np.ndarray, SequenceLayout, np.ndarray | None]:
        """Validate a whole-sequence call's inputs: x time-major (T, B, I) in the model's
        dtype, h0 (num_layers * D, B, H), lengths (B,), the call's layout, and for a mask
        the (T, B) source step of each packed step (None without a mask)."""
        x = real_values("x", x)
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D (T, B, input_size) or 2-D unbatched (T, "
                             f"input_size), got {x.ndim}-D shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x must have input_size = {self.input_size} features in its "
                             f"last axis, got shape {x.shape}")
        layout = layout_of(self.batch_first, x.ndim == 2)
        unbatched = layout.unbatched
        x = layout.to_time_major(x)
        T, B, _ = x.shape
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        blas_sized(**{"T*B": T * B, "3*hidden_size": 3 * H})
        x = c_array(x, self.dtype)  # one conversion, time-major
        if h0 is None:
            h0 = self._initial_state(B)
        else:
            h0 = real_array("h0", h0, self.dtype)
            if unbatched:
                h0 = shaped("h0", h0, (LD, H), "(num_layers * num_directions, hidden_size)")
                h0 = h0[:, None, :]
            shaped("h0", h0, (LD, B, H), "(num_layers * num_directions, B, hidden_size)")
        order = None
        if mask is not None:
            if lengths is not None:
                raise ValueError("pass lengths or mask, not both: got both")
            keep = mask_array(mask, B, T, unbatched)
            # Skipping a step keeps the state, so each sequence's valid steps can run packed
            # at its start (lengths = their count); each output then goes back to its step.
            order = np.argsort(~keep, axis=1, kind="stable").T  # (T, B) source step
            x = x[order, np.arange(B)]
            lengths = keep.sum(axis=1)
        if lengths is None and self._default_lengths is not None:
            d = self._default_lengths
            if d.shape[0] != B or d.max() > T:
                raise ValueError(f"lengths is None, so the model's default_lengths "
                                 f"{d.tolist()[:8]} (batch {d.shape[0]}) are used; they need "
                                 f"a batch of {d.shape[0]} and T >= {d.max()}, got B = {B} "
                                 f"and T = {T}; pass lengths, or set default_lengths = None")
            lengths = d
        if lengths is None:
            lens = full_lengths(B, T)
        else:
            lens = lengths_array(lengths, B, T)
        return x, h0, lens, layout, order

    def _forward(self, x: np.ndarray, h0: np.ndarray, lens: np.ndarray,
                 layout: SequenceLayout):
        T, B, _ = x.shape
        D, H = self.num_directions, self.hidden_size
        h_n = np.array(h0, order="C")  # each direction's state is updated in place
        caches: list[list[GRUCache | None]] = []
        masks: list[np.ndarray | None] = []
        inp = x
        for k in range(self.num_layers):
            out = _buffers.aligned((T, B, D * H), self.dtype)
            caches.append([])
            for d, sfx in enumerate(self._suffixes(k)):
                state = h_n[k * D + d]
                caches[k].append(forward_into(inp, self._layer_weights(sfx), state, lens,
                                              d == 1 or self.reverse, self.linear_before_reset,
                                              self.training, out, d * H))
            mask = None
            if self.training and self.dropout > 0 and k < self.num_layers - 1:
                keep = self._rng.random(out.shape) >= self.dropout
                mask = keep.astype(self.dtype) / self.dtype.type(1 - self.dropout)
                out = out * mask
            masks.append(mask)
            inp = out
        if self.training:
            self._tape = dict(caches=caches, masks=masks, shape=(T, B), layout=layout,
                              weights_version=self._weights_version)
        return inp, h_n

    # -- backward -----------------------------------------------------------------------
    def backward(self, dy: ArrayLike | None, dh_n: ArrayLike | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Back-propagate through the last train-mode forward.

        Parameter gradients are added into ``grads`` (state-dict keys) until ``zero_grad()``.

        Parameters
        ----------
        dy : array_like shaped like that forward's y, or None for zero
        dh_n : array_like shaped like its h_n, or None for zero

        Returns
        -------
        dx : ndarray shaped like x
        dh0 : ndarray shaped like h0 (num_layers * D, B, hidden_size), unbatched as x
        """
        tape = self._tape
        if tape is None:
            raise ValueError("backward needs a forward in train mode first (call train(), "
                             "then the model, then backward); got none since the last "
                             "backward, train() or eval()")
        self._check_weights_since(tape["weights_version"])
        T, B = tape["shape"]
        layout: SequenceLayout = tape["layout"]
        D, H, LD = self.num_directions, self.hidden_size, self.num_layers * self.num_directions
        y_shape = layout.shape(T, B, D * H)
        h_shape = (LD, H) if layout.unbatched else (LD, B, H)
        if dy is not None:
            dy = shaped_like("dy", real_array("dy", dy, self.dtype), y_shape, "y")
            dy = c_array(layout.to_time_major(dy))
        order = tape.get("order")
        if order is not None and dy is not None:  # a masked forward ran packed steps
            dy = dy[order, np.arange(B)]
        if dh_n is None:
            dh = np.zeros((LD, B, H), self.dtype)
        else:
            dh = shaped_like("dh_n", real_array("dh_n", dh_n, self.dtype), h_shape, "h_n")
            dh = np.array(dh.reshape(LD, B, H), order="C")
        self._tape = None
        g = self.grads
        for k in range(self.num_layers - 1, -1, -1):
            caches = tape["caches"][k]
            dx = _buffers.aligned(caches[0].x.shape, self.dtype)
            for d, sfx in enumerate(self._suffixes(k)):
                backward_into(caches[d], dy, d * H, dh[k * D + d], dx, d == 1,
                              g["weight_ih" + sfx], g["weight_hh" + sfx],
                              g.get("bias_ih" + sfx), g.get("bias_hh" + sfx), accumulate=True)
            if k > 0 and tape["masks"][k - 1] is not None:
                dx *= tape["masks"][k - 1]
            dy = dx
        if order is not None:
            dy = unpack_steps(dy, order)
        return layout.from_time_major(dy), (dh[:, 0] if layout.unbatched else dh)

    # -- introspection ------------------------------------------------------------------
    def gates(self, x: ArrayLike, h0: ArrayLike | None = None, *,
              lengths: ArrayLike | None = None) -> GRUGates:
        """The gates of every layer, direction and step for the input x.

        Inputs as for calling the model. Runs as in eval mode whatever the mode (no dropout)
        and records nothing for backward.

        Returns
        -------
        GRUGates(r, z, n), each of shape (num_layers * D, T, B, hidden_size) ((..., B, T,
        hidden_size) if batch_first, (..., T, hidden_size) for unbatched x); layer k and
        direction d at index k * D + d, as in h_n. Steps past a sequence's length are zero.
        """
        x, h0, lens, layout, _ = self._sequence_inputs(x, h0, lengths)
        T, B, _ = x.shape
        D, H = self.num_directions, self.hidden_size
        buf = np.empty((self.num_layers * D, T, B, 3 * H), self.dtype)
        h = np.array(h0, order="C")
        inp = x
        for k in range(self.num_layers):
            out = np.empty((T, B, D * H), self.dtype)
            for d, sfx in enumerate(self._suffixes(k)):
                gates_into(inp, self._layer_weights(sfx), h[k * D + d], lens,
                           d == 1 or self.reverse,
                           self.linear_before_reset, out, d * H, buf[k * D + d])
            inp = out
        buf = layout.from_time_major(buf, lead=1, contiguous=False)
        return GRUGates(*(np.ascontiguousarray(buf[..., i * H:(i + 1) * H]) for i in range(3)))

    # -- streaming ----------------------------------------------------------------------
    def step(self, x_t: ArrayLike, h: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One time step through all layers of a unidirectional GRU (no dropout, nothing
        recorded for backward).

        Parameters
        ----------
        x_t : array_like, shape (B, input_size) or (input_size,)
        h : array_like, shape (num_layers, B, hidden_size) ((num_layers, hidden_size) for
            1-D x_t), or None for ``default_h0`` (zeros when that is None)

        Returns
        -------
        y_t : ndarray, shape (B, hidden_size) (or (hidden_size,))
        h : ndarray, new state shaped like the given one
        """
        # Streaming fast path: C-contiguous arrays of the model's dtype, up to 16 rows,
        # through one cell plan per layer (h=None means zeros there, so not with a
        # default_h0). Its checks are in the kernel: at ~5 us a call, each Python-level
        # attribute or call here costs ~1%. (reverse and bidirectional are read on every
        # call: they are plain attributes, which a caller may change after the plans exist.)
        if not (self.reverse or self.bidirectional) and (h is not None
                                                         or self._default_h0 is None):
            plans = self._step_plan_list  # None: the first step after a weight update
            fast = _stack_step(self._step_plans() if plans is None else plans, x_t, h)
            if fast is not None:
                return fast
        if self.reverse or self.bidirectional:
            raise ValueError("step needs a unidirectional, forward GRU: a bidirectional or "
                             "reverse one must see the whole sequence (got bidirectional="
                             f"{self.bidirectional}, reverse={self.reverse})")
        self._refuse_step_lengths()
        x_t, unbatched = step_input("x_t", x_t, self.input_size, self.dtype)
        B, L, H = x_t.shape[0], self.num_layers, self.hidden_size
        if h is None:
            state = self._initial_state(B)
        else:
            h = real_array("h", h, self.dtype)
            want = (L, H) if unbatched else (L, B, H)
            shaped("h", h, want, "(num_layers, B, hidden_size)")
            state = np.array(h.reshape(L, B, H), order="C")
        lens = np.ones(B, dtype=np.intp)
        inp = x_t[None]
        for k in range(L):
            out = np.empty((1, B, H), self.dtype)
            forward_into(inp, self._layer_weights(f"_l{k}"), state[k], lens, False,
                         self.linear_before_reset, False, out, 0)
            inp = out
        if unbatched:
            return inp[0, 0], state[:, 0]
        return inp[0], state

    def _step_plans(self) -> list:
        """One cell plan per layer for ``step``, built once per weight update (and after
        default_lengths is set)."""
        self._refuse_step_lengths()
        plans = []
        for k in range(self.num_layers):
            w = self._layer_weights(f"_l{k}")
            plans.append(kernels.CellPlan(w.w_ih_t, w.w_hh_t, w.b_ih, w.b_hh,
                                          self.linear_before_reset, w.w_ih, w.w_hh_p))
        self._step_plan_list = plans
        return plans

    def _weights_changed(self) -> None:
        super()._weights_changed()
        self._step_plan_list = None

    # -- interop ------------------------------------------------------------------------
    @classmethod
    def from_torch(cls, module) -> GRU:
        """A GRU with the configuration, weights and train/eval mode of a torch.nn.GRU."""
        from grufast.interop.torch import gru_from_torch

        return gru_from_torch(cls, module)

    @classmethod
    def from_onnx(cls, path) -> GRU:
        """Read a model of ONNX GRU nodes (as written by ``to_onnx`` or torch.onnx.export):
        every input and attribute of a GRU node is honoured or the model is refused with an
        error naming it. See grufast.interop.onnx."""
        from grufast.interop.onnx import gru_from_onnx

        return gru_from_onnx(cls, path)

    def to_onnx(self, path, *, lengths: bool = False, opset: int = 14) -> None:
        """Write the model as standard ONNX GRU nodes. Inputs: ``x`` (the layer's layout)
        and ``h0``, plus ``lengths`` (int32, B) when asked; outputs ``y`` and ``h_n``.
        ``default_h0`` becomes h0's default value (an initializer of the same name, expanded
        to the batch when it has batch 1); ``default_lengths`` becomes lengths' default, or
        a constant of the file without ``lengths``; ``reverse`` writes direction="reverse"."""
        from grufast.interop.onnx import gru_to_onnx

        gru_to_onnx(self, path, lengths=lengths, opset=opset)

    @classmethod
    def from_keras(cls, layer) -> GRU:
        """A GRU from a keras.layers.GRU (either reset_after; go_backwards gives a reverse
        layer), a Bidirectional(GRU) with merge_mode="concat", or a Sequential/functional
        model stacking them; batch_first like Keras. See grufast.interop.keras."""
        from grufast.interop.keras import gru_from_keras

        return gru_from_keras(cls, layer)

    # -- reduced precision --------------------------------------------------------------
    def quantized(self, weight_format: str) -> QuantizedGRU:
        """An inference-only copy whose weight matrices are stored in ``weight_format``: "int8"
        (symmetric, one float32 scale per output row) or "bf16" (bfloat16); biases,
        activations, the state and accumulation stay float32. This model is unchanged; it
        must be float32. See grufast.quantized."""
        from grufast.quantized import QuantizedGRU

        return QuantizedGRU.from_float(self, weight_format)


class GRUCell(_Parameters):
    """One GRU step with torch.nn.GRUCell's semantics and state-dict names.

    ``cell(x, h)``: x (B, input_size) or (input_size,), h (B, hidden_size) or
    (hidden_size,) or None for zeros; returns the new h, shaped like x's batch. Up to 16
    rows of C-contiguous arrays of the model's dtype take the streaming fast path.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 linear_before_reset: bool = True, dtype: DTypeLike = np.float32,
                 seed: int | None = None) -> None:
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.bias = flag("bias", bias)
        self.linear_before_reset = flag("linear_before_reset", linear_before_reset)
        self.dtype = model_dtype(dtype)
        H = self.hidden_size
        shapes = {"weight_ih": (3 * H, self.input_size), "weight_hh": (3 * H, H)}
        if self.bias:
            shapes.update(bias_ih=(3 * H,), bias_hh=(3 * H,))
        self._init_params(shapes, H, seed)
        self._weights_changed()

    def _weights_changed(self) -> None:
        super()._weights_changed()
        w = self._layer_weights("")
        self._plan = kernels.CellPlan(w.w_ih_t, w.w_hh_t, w.b_ih, w.b_hh,
                                      self.linear_before_reset, w.w_ih, w.w_hh_p)

    def config(self) -> dict[str, Any]:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                    linear_before_reset=self.linear_before_reset, dtype=self.dtype.name)

    def __repr__(self) -> str:
        return "GRUCell(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    def _step_inputs(self, x, h) -> tuple[np.ndarray, np.ndarray, bool]:
        """x as (B, input_size), the state as a fresh (B, H) array (zeros for None), and
        whether x came unbatched."""
        x, unbatched = step_input("x", x, self.input_size, self.dtype)
        B, H = x.shape[0], self.hidden_size
        if h is None:
            return x, np.zeros((B, H), self.dtype), unbatched
        h = real_array("h", h, self.dtype)
        shaped("h", h, (H,) if unbatched else (B, H), "(B, hidden_size)")
        return x, np.array(h.reshape(B, H), order="C"), unbatched

    def __call__(self, x: ArrayLike, h: ArrayLike | None = None) -> np.ndarray:
        # Streaming fast path: up to 16 rows, C-contiguous arrays of the model's dtype.
        out = self._plan.step(x, h)
        if out is not None:
            return out
        x, state, unbatched = self._step_inputs(x, h)
        B, H = x.shape[0], self.hidden_size
        out = np.empty((1, B, H), self.dtype)
        forward_into(x[None], self._layer_weights(""), state, np.ones(B, dtype=np.intp),
                     False, self.linear_before_reset, False, out, 0)
        return state[0] if unbatched else state

    def gates(self, x: ArrayLike, h: ArrayLike | None = None) -> GRUGates:
        """The gates of one step: x and h as for calling the cell.

        Returns
        -------
        GRUGates(r, z, n), each (B, hidden_size), or (hidden_size,) for 1-D x.
        """
        x, state, unbatched = self._step_inputs(x, h)
        B, H = x.shape[0], self.hidden_size
        buf = np.empty((1, B, 3 * H), self.dtype)
        gates_into(x[None], self._layer_weights(""), state, np.ones(B, dtype=np.intp), False,
                   self.linear_before_reset, np.empty((1, B, H), self.dtype), 0, buf)
        g = buf[0, 0] if unbatched else buf[0]
        return GRUGates(*(np.ascontiguousarray(g[..., i * H:(i + 1) * H]) for i in range(3)))

    @classmethod
    def from_torch(cls, module) -> GRUCell:
        """A GRUCell with the configuration and weights of a torch.nn.GRUCell."""
        from grufast.interop.torch import cell_from_torch

        return cell_from_torch(cls, module)

    def quantized(self, weight_format: str) -> QuantizedGRUCell:
        """An inference-only copy with "int8" or "bf16" weight matrices (see
        ``GRU.quantized``); this cell is unchanged; it must be float32."""
        from grufast.quantized import QuantizedGRUCell

        return QuantizedGRUCell.from_float(self, weight_format)
