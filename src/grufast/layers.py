"""The GRU and GRUCell layers: parameters, initialisation, train/eval, stacking, directions,
dropout, streaming steps and state dicts, with torch.nn.GRU's constructor, shapes and names.

Inputs are validated once here; each layer and direction then calls the kernels directly on
prepared buffers (grufast.functional.forward_into / backward_into).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from grufast._isa import kernels
from grufast._validate import (
    FLOAT_DTYPES,
    blas_sized,
    describe,
    lengths_array,
    positive_int,
    real_array,
    real_values,
    shaped,
    shaped_like,
    state_dict_shape,
)
from grufast.functional import GRUCache, Weights, backward_into, forward_into


def _model_dtype(dtype: DTypeLike) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return bool(value)


def _step_input(name: str, value, input_size: int, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """One step's input as (B, input_size), and whether it came unbatched (input_size,)."""
    x = real_array(name, value, dtype)
    unbatched = x.ndim == 1
    if unbatched:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != input_size:
        raise ValueError(f"{name} must have shape (B, input_size) or (input_size,) with "
                         f"input_size = {input_size}, got {x.shape}")
    return x, unbatched


class _Parameters:
    """Named parameters in PyTorch's state-dict layout, with gradients of the same names."""

    dtype: np.dtype
    _params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]

    def _init_params(self, shapes: dict[str, tuple[int, ...]], hidden_size: int, seed) -> None:
        # PyTorch's initialisation: every parameter uniform in +-1/sqrt(hidden_size).
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(hidden_size)
        self._params = {name: rng.uniform(-k, k, shape).astype(self.dtype)
                        for name, shape in shapes.items()}
        self.grads = {name: np.zeros(shape, self.dtype) for name, shape in shapes.items()}
        self._rng = rng
        self._prepared: dict[str, Weights] = {}  # per layer and direction; see _layer_weights

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters under PyTorch's names (weight_ih_l0, bias_hh_l1_reverse...)."""
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load parameters by name, strictly: every key present, none unexpected, exact shapes.
        Values may be anything ``np.asarray`` takes (torch tensors included)."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {describe(state_dict)}")
        keys = set(state_dict.keys())
        missing = sorted(set(self._params) - keys)
        unexpected = sorted(keys - set(self._params))
        if missing or unexpected:
            raise ValueError(f"state_dict does not match the model: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        converted = {}
        for name, target in self._params.items():
            value = state_dict[name]
            if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
                value = value.detach().cpu()
            arr = real_array(f"state_dict[{name!r}]", value, self.dtype)
            converted[name] = state_dict_shape(name, arr, target.shape,
                                               input_size=self.input_size,
                                               hidden_size=self.hidden_size)
        for name, arr in converted.items():  # all checked before anything changes
            np.copyto(self._params[name], arr)
        self._weights_changed()

    def _weights_changed(self) -> None:
        """Drop what was prepared from the old weights (transposed copies, plans)."""
        self._prepared.clear()

    def zero_grad(self) -> None:
        """Reset the accumulated parameter gradients to zero."""
        for g in self.grads.values():
            g.fill(0)

    def _layer_weights(self, sfx: str) -> Weights:
        """The kernels' view of one layer and direction, prepared once per weight update."""
        w = self._prepared.get(sfx)
        if w is None:
            p = self._params
            zeros = np.zeros(p["weight_hh" + sfx].shape[0], self.dtype)
            w = Weights.of(p["weight_ih" + sfx], p["weight_hh" + sfx],
                           p.get("bias_ih" + sfx, zeros), p.get("bias_hh" + sfx, zeros),
                           "bias_ih" + sfx in p)
            self._prepared[sfx] = w
        return w


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

    A new model is in train mode, as in PyTorch: forward keeps what ``backward`` needs.
    Call ``eval()`` for inference.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, linear_before_reset: bool = True,
                 dtype: DTypeLike = np.float32, seed: int | None = None) -> None:
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.bias = _bool("bias", bias)
        self.batch_first = _bool("batch_first", batch_first)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout must be a number in [0, 1), got {describe(dropout)}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.bidirectional = _bool("bidirectional", bidirectional)
        self.linear_before_reset = _bool("linear_before_reset", linear_before_reset)
        self.dtype = _model_dtype(dtype)
        self.training = True
        self._tape: dict | None = None
        H, D = self.hidden_size, self.num_directions
        shapes = {}
        for k in range(self.num_layers):
            for sfx in self._suffixes(k):
                shapes["weight_ih" + sfx] = (3 * H, input_size if k == 0 else D * H)
                shapes["weight_hh" + sfx] = (3 * H, H)
                if self.bias:
                    shapes["bias_ih" + sfx] = (3 * H,)
                    shapes["bias_hh" + sfx] = (3 * H,)
        self._init_params(shapes, H, seed)

    # -- configuration ------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

    def config(self) -> dict[str, Any]:
        """The constructor arguments (dtype as a name), as save() stores them."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    dropout=self.dropout, bidirectional=self.bidirectional,
                    linear_before_reset=self.linear_before_reset, dtype=self.dtype.name)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"GRU({args})"

    def train(self, mode: bool = True) -> GRU:
        self.training = _bool("mode", mode)
        self._tape = None
        return self

    def eval(self) -> GRU:
        return self.train(False)

    # -- forward ------------------------------------------------------------------------
    def __call__(self, x: ArrayLike, h0: ArrayLike | None = None, *,
                 lengths: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the GRU over a sequence.

        Parameters
        ----------
        x : array_like, shape (T, B, input_size), (B, T, input_size) if batch_first, or
            (T, input_size) unbatched
        h0 : array_like, shape (num_layers * D, B, hidden_size) ((num_layers * D,
            hidden_size) unbatched), or None for zeros; D = 2 if bidirectional else 1
        lengths : array_like of int, shape (B,), optional
            Valid steps per sequence (packed-sequence semantics): outputs past a sequence's
            length are zero and h_n holds its state at its last valid step.

        Returns
        -------
        y : ndarray, shape (T, B, D * hidden_size) (batch_first and unbatched as x)
        h_n : ndarray, shape (num_layers * D, B, hidden_size) (unbatched as h0)
        """
        x = real_values("x", x)
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D (T, B, input_size) or 2-D unbatched (T, "
                             f"input_size), got {x.ndim}-D shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x must have input_size = {self.input_size} features in its "
                             f"last axis, got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B, _ = x.shape
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        blas_sized(**{"T*B": T * B, "3*hidden_size": 3 * H})
        x = np.ascontiguousarray(x, self.dtype)  # one conversion, time-major
        if h0 is None:
            h0 = np.zeros((LD, B, H), self.dtype)
        else:
            h0 = real_array("h0", h0, self.dtype)
            if unbatched:
                h0 = shaped("h0", h0, (LD, H), "(num_layers * num_directions, hidden_size)")
                h0 = h0[:, None, :]
            shaped("h0", h0, (LD, B, H), "(num_layers * num_directions, B, hidden_size)")
        if lengths is None:
            lens = np.full(B, T, dtype=np.intp)
        else:
            lens = lengths_array(lengths, B, T)
            if self.training and np.any(lens < T):
                # Padding never reaches the outputs, but 0 * NaN would reach the gradients.
                x = x.copy()
                x[np.arange(T)[:, None] >= lens[None, :]] = 0
        y, h_n = self._forward(x, h0, lens, unbatched)
        if unbatched:
            return y[:, 0], h_n[:, 0]
        if self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        return y, h_n

    def _forward(self, x: np.ndarray, h0: np.ndarray, lens: np.ndarray, unbatched: bool):
        T, B, _ = x.shape
        D, H = self.num_directions, self.hidden_size
        h_n = np.array(h0, order="C")  # each direction's state is updated in place
        caches: list[list[GRUCache | None]] = []
        masks: list[np.ndarray | None] = []
        inp = x
        for k in range(self.num_layers):
            out = np.empty((T, B, D * H), self.dtype)
            caches.append([])
            for d, sfx in enumerate(self._suffixes(k)):
                state = h_n[k * D + d]
                caches[k].append(forward_into(inp, self._layer_weights(sfx), state, lens,
                                              d == 1, self.linear_before_reset,
                                              self.training, out, d * H))
            mask = None
            if self.training and self.dropout > 0 and k < self.num_layers - 1:
                keep = self._rng.random(out.shape) >= self.dropout
                mask = keep.astype(self.dtype) / self.dtype.type(1 - self.dropout)
                out = out * mask
            masks.append(mask)
            inp = out
        if self.training:
            self._tape = dict(caches=caches, masks=masks, shape=(T, B), unbatched=unbatched)
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
        T, B = tape["shape"]
        unbatched = tape["unbatched"]
        D, H, LD = self.num_directions, self.hidden_size, self.num_layers * self.num_directions
        if unbatched:
            y_shape, h_shape = (T, D * H), (LD, H)
        elif self.batch_first:
            y_shape, h_shape = (B, T, D * H), (LD, B, H)
        else:
            y_shape, h_shape = (T, B, D * H), (LD, B, H)
        if dy is not None:
            dy = shaped_like("dy", real_array("dy", dy, self.dtype), y_shape, "y")
            if unbatched:
                dy = dy[:, None, :]
            elif self.batch_first:
                dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
        if dh_n is None:
            dh = np.zeros((LD, B, H), self.dtype)
        else:
            dh = shaped_like("dh_n", real_array("dh_n", dh_n, self.dtype), h_shape, "h_n")
            dh = np.array(dh.reshape(LD, B, H), order="C")
        self._tape = None
        g = self.grads
        for k in range(self.num_layers - 1, -1, -1):
            caches = tape["caches"][k]
            dx = np.empty(caches[0].x.shape, self.dtype)
            for d, sfx in enumerate(self._suffixes(k)):
                backward_into(caches[d], dy, d * H, dh[k * D + d], dx, d == 1,
                              g["weight_ih" + sfx], g["weight_hh" + sfx],
                              g.get("bias_ih" + sfx), g.get("bias_hh" + sfx), accumulate=True)
            if k > 0 and tape["masks"][k - 1] is not None:
                dx *= tape["masks"][k - 1]
            dy = dx
        if unbatched:
            return dy[:, 0], dh[:, 0]
        if self.batch_first:
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
        return dy, dh

    # -- streaming ----------------------------------------------------------------------
    def step(self, x_t: ArrayLike, h: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One time step through all layers of a unidirectional GRU (no dropout, nothing
        recorded for backward).

        Parameters
        ----------
        x_t : array_like, shape (B, input_size) or (input_size,)
        h : array_like, shape (num_layers, B, hidden_size) ((num_layers, hidden_size) for
            1-D x_t), or None for zeros

        Returns
        -------
        y_t : ndarray, shape (B, hidden_size) (or (hidden_size,))
        h : ndarray, new state shaped like the given one
        """
        if self.bidirectional:
            raise ValueError("step needs a unidirectional GRU: a bidirectional one must see "
                             "the whole sequence (got bidirectional=True)")
        # Streaming fast path: C-contiguous arrays of the model's dtype, up to 16 rows,
        # through one cell plan per layer.
        fast = kernels.stack_step(self._step_plans(), x_t, h)
        if fast is not None:
            return fast
        x_t, unbatched = _step_input("x_t", x_t, self.input_size, self.dtype)
        B, L, H = x_t.shape[0], self.num_layers, self.hidden_size
        if h is None:
            state = np.zeros((L, B, H), self.dtype)
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
        """One cell plan per layer for ``step``, built once per weight update."""
        plans = self.__dict__.get("_step_plan_list")
        if plans is None:
            plans = []
            for k in range(self.num_layers):
                w = self._layer_weights(f"_l{k}")
                plans.append(kernels.CellPlan(w.w_ih_t, w.w_hh_t, w.b_ih, w.b_hh,
                                              self.linear_before_reset))
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
        """Read a model of ONNX GRU nodes (as written by ``to_onnx`` or torch.onnx.export)."""
        from grufast.interop.onnx import gru_from_onnx

        return gru_from_onnx(cls, path)

    def to_onnx(self, path, *, lengths: bool = False, opset: int = 14) -> None:
        """Write the model as standard ONNX GRU nodes. Inputs: ``x`` (the layer's layout)
        and ``h0``, plus ``lengths`` (int32, B) when asked; outputs ``y`` and ``h_n``."""
        from grufast.interop.onnx import gru_to_onnx

        gru_to_onnx(self, path, lengths=lengths, opset=opset)

    @classmethod
    def from_keras(cls, layer) -> GRU:
        """A GRU from a keras.layers.GRU (either reset_after), batch_first like Keras."""
        from grufast.interop.keras import gru_from_keras

        return gru_from_keras(cls, layer)


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
        self.bias = _bool("bias", bias)
        self.linear_before_reset = _bool("linear_before_reset", linear_before_reset)
        self.dtype = _model_dtype(dtype)
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
                                      self.linear_before_reset)

    def config(self) -> dict[str, Any]:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                    linear_before_reset=self.linear_before_reset, dtype=self.dtype.name)

    def __repr__(self) -> str:
        return "GRUCell(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    def __call__(self, x: ArrayLike, h: ArrayLike | None = None) -> np.ndarray:
        # Streaming fast path: up to 16 rows, C-contiguous arrays of the model's dtype.
        out = self._plan.step(x, h)
        if out is not None:
            return out
        x, unbatched = _step_input("x", x, self.input_size, self.dtype)
        B, H = x.shape[0], self.hidden_size
        if h is None:
            state = np.zeros((B, H), self.dtype)
        else:
            h = real_array("h", h, self.dtype)
            shaped("h", h, (H,) if unbatched else (B, H), "(B, hidden_size)")
            state = np.array(h.reshape(B, H), order="C")
        out = np.empty((1, B, H), self.dtype)
        forward_into(x[None], self._layer_weights(""), state, np.ones(B, dtype=np.intp),
                     False, self.linear_before_reset, False, out, 0)
        return state[0] if unbatched else state

    @classmethod
    def from_torch(cls, module) -> GRUCell:
        """A GRUCell with the configuration and weights of a torch.nn.GRUCell."""
        from grufast.interop.torch import cell_from_torch

        return cell_from_torch(cls, module)
