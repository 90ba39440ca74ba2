"""Reduced-precision weights for inference: ``gru.quantized("int8" | "bf16")``.

A quantized model stores its input and recurrent weight matrices in a narrow type and keeps
everything else in float32 (biases, inputs, activations, the state, all accumulation):

- ``"int8"``: symmetric, one float32 scale per output row (per gate unit), chosen from the
  weights (no calibration data): ``scale = max|w_row| / 127``, ``q = round(w / scale)``;
  an all-zero row gets scale 1. A weight is ``q * scale``.
- ``"bf16"``: the top 16 bits of the float32 weight after rounding to nearest, ties to even
  (NaN stays NaN), stored as uint16. A weight is those bits shifted back up.

The models are inference-only copies with the float model's call API. Each call widens the
weights in registers (grufast's quantized kernels) or, where that path does not apply,
dequantises one layer's weights into float32 scratch for the duration of the call: no
float32 copy of the weights is ever kept, so the memory saving holds.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from grufast import _buffers
from grufast._isa import kernels as _kernels
from grufast._layout import step_input
from grufast._validate import describe, flag, positive_int, real_array, shaped
from grufast.functional import INFERENCE_CHUNK_BYTES, Weights, forward_into
from grufast.layers import GRU, GRUCell

FORMATS = ("int8", "bf16")
# Storage dtype of the weight matrices per weight format.
STORAGE = {"int8": np.dtype(np.int8), "bf16": np.dtype(np.uint16)}
SCALE_SUFFIX = "_scale"  # state-dict key of an int8 matrix's per-row scales
INT8_MAX = 127

_F32 = np.dtype(np.float32)
# Batches below this run the quantized kernels: each step reads the narrow recurrent weights
# once per sequence, widening them in registers. From it on, the float kernels' register-
# tiled GEMM reuses each weight across sequences, which a widening GEMV cannot: the layer's
# weights are dequantised into float32 scratch for the call instead.
KERNEL_MAX_BATCH = 4


def _check_format(weight_format: Any) -> str:
    if not isinstance(weight_format, str):
        raise TypeError(f"weight_format must be a str, one of {list(FORMATS)}, got "
                        f"{describe(weight_format)}")
    if weight_format not in FORMATS:
        raise ValueError(f"weight_format must be one of {list(FORMATS)}, got {weight_format!r}")
    return weight_format


# -- the two number formats ------------------------------------------------------------------

def quantize_int8(w: np.ndarray, name: str = "w") -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per row.

    Parameters
    ----------
    w : ndarray, shape (R, K), float32, finite

    Returns
    -------
    q : ndarray, shape (R, K), int8 in [-127, 127]
    scale : ndarray, shape (R,), float32, positive: w is about q * scale[:, None]
    """
    w = np.ascontiguousarray(w, _F32)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} must be finite to be quantized to int8, got NaN or inf")
    amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0], _F32)
    scale = np.where(amax > 0, amax / np.float32(INT8_MAX), np.float32(1)).astype(_F32)
    q = np.rint(w / scale[:, None]).clip(-INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None
                    ) -> np.ndarray:
    """float32 (R, K) = q * scale[:, None] (exact: an int8 times a float32 rounds once)."""
    return np.multiply(q, scale[:, None], out=out, dtype=_F32)


def to_bf16(w: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest, ties to even; NaN stays NaN
    (quiet), infinities stay infinite, and finite values too large round to infinity as
    IEEE rounding does."""
    w = np.ascontiguousarray(w, _F32)
    u = w.view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit rounds half to even; it cannot wrap for any
    # non-NaN pattern (the largest, -inf, is 0xFF800000).
    bits = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = np.isnan(w)
    if nan.any():  # keep the sign and payload's top bits, force the quiet bit
        bits[nan] = ((u[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return bits


def from_bf16(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32 (exact)."""
    wide = np.left_shift(bits, 16, dtype=np.uint32)
    if out is None:
        return wide.view(_F32)
    out.view(np.uint32)[...] = wide
    return out


# -- storage shared by the quantized GRU and GRUCell -----------------------------------------

class _QuantizedParameters:
    """Weight matrices in the narrow type (plus int8 scales) and float32 biases, under the
    float model's state-dict names; nothing float32-sized besides the biases."""

    weight_format: str
    _store: dict[str, np.ndarray]
    _weight_names: list[str]
    _shapes: dict[str, tuple[int, ...]]
    training = False  # eval-only; GRU.__call__ reads it
    dtype = _F32  # the compute dtype: inputs are converted to float32

    def _init_store(self, weight_format: str, shapes: dict[str, tuple[int, ...]]) -> None:
        self.weight_format = _check_format(weight_format)
        self._shapes = dict(shapes)
        self._weight_names = [k for k in shapes if k.startswith("weight_")]
        store: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            if name in self._weight_names:
                store[name] = np.zeros(shape, STORAGE[weight_format])
                if weight_format == "int8":
                    store[name + SCALE_SUFFIX] = np.ones(shape[0], _F32)
            else:
                store[name] = np.zeros(shape, _F32)
        self._store = store
        self._store_changed()

    def _quantize_from(self, params: dict[str, np.ndarray]) -> None:
        """Fill the store from a float32 state dict (names as in _shapes)."""
        for name in self._shapes:
            w = params[name]
            if name not in self._weight_names:
                self._store[name] = np.array(w, _F32)
            elif self.weight_format == "int8":
                self._store[name], self._store[name + SCALE_SUFFIX] = quantize_int8(w, name)
            else:
                self._store[name] = to_bf16(w)
        self._store_changed()

    # -- caches: the kernel plans built from the store ------------------------------------
    def _store_changed(self) -> None:
        """Move every stored array that does not start on a cache line to one that does,
        then rebuild: the kernels read the narrow weights in place, and NumPy's allocator
        (as unpickling's) gives 16 bytes, where a load off a line's boundary straddles two
        lines (the float kernels' copies are aligned for the same reason)."""
        for name, a in self._store.items():
            if a.ctypes.data % _buffers.ALIGN_BYTES:
                b = _buffers.aligned(a.shape, a.dtype)
                b[...] = a
                self._store[name] = b
        self._rebuild()

    def _rebuild(self) -> None:
        """Build what is derived from the store; called whenever the store changes."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_plan")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._store_changed()

    def __copy__(self) -> _QuantizedParameters:
        # Independent, as _Parameters.__copy__ says why: a shallow copy would share the
        # stored arrays' dict (load_state_dict updates it) but not the plans built from it.
        return copy.deepcopy(self)

    # -- the float32 view, transient -----------------------------------------------------
    def _dequantize(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        q = self._store[name]
        if self.weight_format == "int8":
            return dequantize_int8(q, self._store[name + SCALE_SUFFIX], out)
        return from_bf16(q, out)

    def _float_weights(self, sfx: str) -> Weights:
        """One layer and direction in float32, for one call only (never cached)."""
        s = self._store
        w_ih = self._dequantize("weight_ih" + sfx)
        w_hh = self._dequantize("weight_hh" + sfx)
        has_bias = "bias_ih" + sfx in s
        zeros = np.zeros(w_hh.shape[0], _F32)
        return Weights(w_ih, w_hh, s.get("bias_ih" + sfx, zeros),
                       s.get("bias_hh" + sfx, zeros), has_bias)

    def _scales(self, name: str) -> np.ndarray:
        """An int8 matrix's per-row scales; ones for bf16 (the kernels ignore them)."""
        s = self._store.get(name + SCALE_SUFFIX)
        return s if s is not None else np.ones(self._store[name].shape[0], _F32)

    def _biases(self, sfx: str) -> tuple[np.ndarray, np.ndarray]:
        G = self._store["weight_hh" + sfx].shape[0]
        zeros = np.zeros(G, _F32)
        return self._store.get("bias_ih" + sfx, zeros), self._store.get("bias_hh" + sfx, zeros)

    def _run(self, inp: np.ndarray, sfx: str, state: np.ndarray, lens: np.ndarray,
             reverse: bool, out: np.ndarray, col: int) -> None:
        """One layer and direction on prepared buffers: inp (T, B, K) C-contiguous float32
        -> out[..., col:col + H] of out (T, B, W); state (B, H) holds h0 and ends holding
        h_n."""
        T, B, K = inp.shape
        lbr = self.linear_before_reset
        if B >= KERNEL_MAX_BATCH:
            forward_into(inp, self._float_weights(sfx), state, lens, reverse, lbr, False,
                         out, col)
            return
        name = "weight_hh" + sfx
        w_hh = self._store[name]
        G, H = w_hh.shape
        # The kernel widens the input weights into scratch once per chunk of steps (no
        # float32 copy outlives the call) and projects the chunk on the team that runs its
        # steps (memory independent of T, as in the float kernels).
        q_ih = self._store["weight_ih" + sfx]
        w_ih = _buffers.aligned((q_ih.size,), _F32)
        s_ih = self._scales("weight_ih" + sfx)
        b_ih, b_hh = self._biases(sfx)
        s_hh = self._scales(name)
        chunk = max(1, min(T, INFERENCE_CHUNK_BYTES // max(1, B * G * 4)))
        gates = _buffers.aligned((chunk, B, G), _F32)
        gh, rh, scratch = (_buffers.aligned((B, G), _F32), _buffers.aligned((B, H), _F32),
                           _buffers.aligned((max(2 * B, 3), H), _F32))
        done = 0
        while done < T:
            n = min(chunk, T - done)
            first = T - done - n if reverse else done
            _kernels.quantized_steps(inp[first:first + n], q_ih, s_ih, w_ih, gates[:n], first,
                                     reverse, w_hh, s_hh, b_ih, b_hh, lens, lbr, out, col,
                                     state, gh, rh, scratch)
            done += n

    def _float_state_dict(self) -> dict[str, np.ndarray]:
        return {name: (self._dequantize(name) if name in self._weight_names
                       else self._store[name].copy()) for name in self._shapes}

    # -- state dict ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the stored arrays: each weight matrix in its storage dtype (int8, or
        uint16 holding bfloat16 bits) under the float model's name, int8 scales (float32,
        one per row) under ``<name>_scale``, biases in float32."""
        return {name: a.copy() for name, a in self._store.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load stored arrays by name, strictly: the same keys as ``state_dict()``, exact
        shapes and dtypes (a float matrix is refused: quantize a float model instead)."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {describe(state_dict)}")
        keys = set(state_dict.keys())
        missing = sorted(set(self._store) - keys)
        unexpected = sorted(keys - set(self._store))
        if missing or unexpected:
            raise ValueError(f"state_dict does not match the quantized model: missing keys "
                             f"{missing}, unexpected keys {unexpected}")
        converted = {}
        for name, target in self._store.items():
            value = np.asarray(state_dict[name])
            if value.dtype != target.dtype:
                raise TypeError(f"state_dict[{name!r}] must have dtype {target.dtype} "
                                f"(weight_format {self.weight_format!r}), got {value.dtype}")
            shaped(f"state_dict[{name!r}]", value, target.shape, str(target.shape))
            if name.endswith(SCALE_SUFFIX) and not (np.all(np.isfinite(value))
                                                    and np.all(value > 0)):
                raise ValueError(f"state_dict[{name!r}] must hold positive finite scales")
            converted[name] = np.array(value, order="C")
        self._store.update(converted)  # all checked before anything changes
        self._store_changed()

    @property
    def nbytes(self) -> int:
        """Bytes of everything the model stores: weights, int8 scales, biases."""
        return sum(a.nbytes for a in self._store.values())

    # -- inference only ------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Quantized models are inference-only: ``train(False)`` is ``eval()``; train mode
        raises."""
        if flag("mode", mode):
            raise RuntimeError(_INFERENCE_ONLY.format(what=f"train() a {type(self).__name__}"))
        return self

    def eval(self):
        return self

    def backward(self, *args, **kwargs):
        """Not available: quantized models are inference-only."""
        raise RuntimeError(_INFERENCE_ONLY.format(what=f"backward through a "
                                                       f"{type(self).__name__}"))


_INFERENCE_ONLY = ("cannot {what}: quantized models are inference-only; train the float "
                   "model and quantize it again (model.quantized(weight_format))")


def _float32_source(model: GRU | GRUCell) -> None:
    if model.dtype != _F32:
        kind = type(model).__name__
        raise TypeError(
            f"quantized() needs a float32 model, got a {model.dtype} {kind}; convert it "
            f"first, e.g. m32 = grufast.{kind}(**{{**model.config(), 'dtype': 'float32'}}); "
            f"m32.load_state_dict(model.state_dict()); m32.quantized(...)")


# -- the layers ------------------------------------------------------------------------------

class QuantizedGRU(_QuantizedParameters):
    """An inference-only GRU whose weight matrices are int8 or bfloat16.

    Made by ``GRU.quantized(weight_format)`` (or read by ``grufast.load``); the constructor builds a
    zero model of the given configuration, to be filled by ``load_state_dict``. Call API as
    ``GRU``'s in eval mode: ``q(x, h0=None, *, lengths=None)`` and ``q.step(x_t, h=None)``,
    all layers, directions, ``batch_first`` and unbatched inputs.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, bidirectional: bool = False, *,
                 linear_before_reset: bool = True, reverse: bool = False,
                 weight_format: str = "int8") -> None:
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.bias = flag("bias", bias)
        self.batch_first = flag("batch_first", batch_first)
        self.bidirectional = flag("bidirectional", bidirectional)
        self.linear_before_reset = flag("linear_before_reset", linear_before_reset)
        self.reverse = flag("reverse", reverse)
        if self.reverse and self.bidirectional:
            raise ValueError("reverse=True needs bidirectional=False (a bidirectional GRU "
                             "already runs both directions)")
        self._default_h0: np.ndarray | None = None
        self._default_lengths: np.ndarray | None = None
        self._init_store(weight_format, self._parameter_shapes())

    @classmethod
    def from_float(cls, model: GRU, weight_format: str) -> QuantizedGRU:
        """Quantize a float32 ``GRU`` (left unchanged)."""
        if not isinstance(model, GRU):
            raise TypeError(f"model must be a grufast.GRU, got {describe(model)}")
        _check_format(weight_format)
        _float32_source(model)
        c = model.config()
        q = cls(c["input_size"], c["hidden_size"], c["num_layers"], c["bias"],
                c["batch_first"], c["bidirectional"],
                linear_before_reset=c["linear_before_reset"], reverse=c.get("reverse", False),
                weight_format=weight_format)
        q._quantize_from(model.state_dict())
        q._default_h0 = getattr(model, "default_h0", None)  # copies
        q._default_lengths = getattr(model, "default_lengths", None)
        return q

    def config(self) -> dict[str, Any]:
        """The constructor arguments, as save() stores them."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    bidirectional=self.bidirectional,
                    linear_before_reset=self.linear_before_reset, reverse=self.reverse,
                    weight_format=self.weight_format)

    def __repr__(self) -> str:
        return "QuantizedGRU(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    def dequantized(self) -> GRU:
        """The float32 ``GRU`` (eval mode) whose weights are this model's, widened: the
        exact function this model computes, up to summation order."""
        c = {k: v for k, v in self.config().items() if k != "weight_format"}
        m = GRU(**c, dtype=np.float32)
        m.load_state_dict(self._float_state_dict())
        m.default_h0, m.default_lengths = self._default_h0, self._default_lengths
        return m.eval()

    # The layer structure (directions, parameter names and shapes) and default_h0 /
    # default_lengths (constants an ONNX model may carry), as GRU's
    _EXTRAS = ("default_h0", "default_lengths")
    for _name in ("default_h0", "default_lengths", "_checked_default_h0",
                  "_checked_default_lengths", "_refuse_step_lengths", "_initial_state",
                  "_parameter_shapes", "num_directions", "_suffixes",
                  "_with_extras", "_split_extras"):
        locals()[_name] = vars(GRU)[_name]  # the float model's descriptors, unchanged
    del _name

    def state_dict(self) -> dict[str, np.ndarray]:
        """The stored arrays (see ``_QuantizedParameters.state_dict``), plus ``default_h0``
        and ``default_lengths`` when the model has them."""
        return self._with_extras(super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load stored arrays strictly; ``default_h0`` and ``default_lengths`` as GRU's."""
        rest, h0, lengths = self._split_extras(state_dict)
        super().load_state_dict(rest)
        self._default_h0, self._default_lengths = h0, lengths

    # The float model's input checks, layouts, masks and default state, unchanged: they read
    # the configuration, ``dtype`` and ``training`` and hand prepared buffers to _forward.
    # GRU.gates runs the float gate kernels on this model's weights widened for the call.
    __call__ = GRU.__call__
    _sequence_inputs = GRU._sequence_inputs
    gates = GRU.gates
    _layer_weights = _QuantizedParameters._float_weights

    def _forward(self, x: np.ndarray, h0: np.ndarray, lens: np.ndarray, layout):
        T, B, _ = x.shape
        D, H = self.num_directions, self.hidden_size
        h_n = np.array(h0, order="C")  # each direction's state is updated in place
        inp = x
        for k in range(self.num_layers):
            out = _buffers.aligned((T, B, D * H), _F32)
            for d, sfx in enumerate(self._suffixes(k)):
                self._run(inp, sfx, h_n[k * D + d], lens, d == 1 or self.reverse, out, d * H)
            inp = out
        return inp, h_n

    def step(self, x_t: ArrayLike, h: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One time step through all layers of a unidirectional model (see ``GRU.step``).

        Parameters
        ----------
        x_t : array_like, shape (B, input_size) or (input_size,)
        h : array_like, shape (num_layers, B, hidden_size) ((num_layers, hidden_size) for
            1-D x_t), or None for zeros

        Returns
        -------
        y_t : ndarray, shape (B, hidden_size) (or (hidden_size,))
        h : ndarray, the new state shaped like the given one
        """
        if self.bidirectional or self.reverse:
            raise ValueError("step needs a unidirectional, forward GRU: a bidirectional or "
                             "reverse one must see the whole sequence (got bidirectional="
                             f"{self.bidirectional}, reverse={self.reverse})")
        self._refuse_step_lengths()
        x_t, unbatched = step_input("x_t", x_t, self.input_size, _F32)
        B, L, H = x_t.shape[0], self.num_layers, self.hidden_size
        if h is None:
            state = self._initial_state(B)
        else:
            h = real_array("h", h, _F32)
            shaped("h", h, (L, H) if unbatched else (L, B, H), "(num_layers, B, hidden_size)")
            state = np.array(h.reshape(L, B, H), order="C")
        lens = np.ones(B, dtype=np.intp)
        inp = x_t[None]
        for k in range(L):
            out = np.empty((1, B, H), _F32)
            self._run(inp, f"_l{k}", state[k], lens, False, out, 0)
            inp = out
        if unbatched:
            return inp[0, 0], state[:, 0]
        return inp[0], state


class QuantizedGRUCell(_QuantizedParameters):
    """An inference-only GRU cell whose weight matrices are int8 or bfloat16; made by
    ``GRUCell.quantized(weight_format)``. ``cell(x, h=None)`` as ``GRUCell``: x (B, input_size) or
    (input_size,), h (B, hidden_size) or (hidden_size,) or None; returns the new h."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 linear_before_reset: bool = True, weight_format: str = "int8") -> None:
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.bias = flag("bias", bias)
        self.linear_before_reset = flag("linear_before_reset", linear_before_reset)
        H = self.hidden_size
        shapes = {"weight_ih": (3 * H, self.input_size), "weight_hh": (3 * H, H)}
        if self.bias:
            shapes.update(bias_ih=(3 * H,), bias_hh=(3 * H,))
        self._init_store(weight_format, shapes)

    @classmethod
    def from_float(cls, cell: GRUCell, weight_format: str) -> QuantizedGRUCell:
        """Quantize a float32 ``GRUCell`` (left unchanged)."""
        if not isinstance(cell, GRUCell):
            raise TypeError(f"cell must be a grufast.GRUCell, got {describe(cell)}")
        _check_format(weight_format)
        _float32_source(cell)
        q = cls(cell.input_size, cell.hidden_size, cell.bias,
                linear_before_reset=cell.linear_before_reset, weight_format=weight_format)
        q._quantize_from(cell.state_dict())
        return q

    def config(self) -> dict[str, Any]:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                    linear_before_reset=self.linear_before_reset, weight_format=self.weight_format)

    def __repr__(self) -> str:
        return ("QuantizedGRUCell(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items())
                + ")")

    def dequantized(self) -> GRUCell:
        """The float32 ``GRUCell`` whose weights are this cell's, widened."""
        c = {k: v for k, v in self.config().items() if k != "weight_format"}
        m = GRUCell(**c, dtype=np.float32)
        m.load_state_dict(self._float_state_dict())
        return m

    gates = GRUCell.gates  # on the weights widened for the call
    _step_inputs = GRUCell._step_inputs
    _layer_weights = _QuantizedParameters._float_weights

    def _rebuild(self) -> None:
        b_ih, b_hh = self._biases("")
        self._plan = _kernels.QuantizedCellPlan(
            self._store["weight_ih"], self._scales("weight_ih"), self._store["weight_hh"],
            self._scales("weight_hh"), b_ih, b_hh, self.linear_before_reset)

    def __call__(self, x: ArrayLike, h: ArrayLike | None = None) -> np.ndarray:
        # Streaming fast path: one sequence, C-contiguous float32 arrays.
        out = self._plan.step(x, h)
        if out is not None:
            return out
        x, unbatched = step_input("x", x, self.input_size, _F32)
        B, H = x.shape[0], self.hidden_size
        if h is None:
            state = np.zeros((B, H), _F32)
        else:
            h = real_array("h", h, _F32)
            shaped("h", h, (H,) if unbatched else (B, H), "(B, hidden_size)")
            state = np.array(h.reshape(B, H), order="C")
        out = np.empty((1, B, H), _F32)
        self._run(x[None], "", state, np.ones(B, dtype=np.intp), False, out, 0)
        return state[0] if unbatched else state
