"""Keras 3 GRU models -> grufast.GRU (any backend). Keras stacks gates z, r, h in kernel
(I, 3H) and recurrent_kernel (H, 3H); its bias is (2, 3H) [input, recurrent] with
reset_after=True and (3H,) with reset_after=False. Keras is batch-major: batch_first=True.

What imports:

- ``keras.layers.GRU``; with ``go_backwards=True`` it becomes a reverse-only layer
  (``GRU(reverse=True)``). Keras returns such a layer's sequence in processing order
  (reversed time); grufast writes each output at its own step, so Keras's sequence is
  grufast's ``y[:, ::-1]``. The final state is the same.
- ``keras.layers.Bidirectional(GRU(...))`` with ``merge_mode="concat"`` (grufast's layout:
  forward then backward features); other merge modes are refused.
- A ``keras.Sequential`` or functional ``keras.Model`` that is a plain stack of those layers
  (after an optional ``InputLayer``), equal in units, reset_after, use_bias, activations and
  direction, every layer but the last returning sequences. Not a stack of go_backwards
  GRUs: each feeds the next its sequence in reversed time, which grufast's reverse=True
  does not do (refused).

Keras's ``dropout`` and ``recurrent_dropout`` act only in training and are not carried (the
imported model is for inference; its own ``dropout`` is 0). Masks are call-time arguments
in Keras and in grufast (``gru(x, mask=...)``); a ``Masking`` layer inside the model is
refused with that hint.
"""

from __future__ import annotations

import numpy as np

from grufast._validate import describe
from grufast.interop import zrn_to_rzn


def _name(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def _numpy(keras, v) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v))


def _computes(keras, fn, reference) -> bool:
    """Whether the activation ``fn`` gives ``reference``'s values on a grid over the range
    where the two differ if they differ at all. By value, not by name: a user's function
    called tanh can compute something else, and a backend's own tanh (tf.nn.tanh,
    jax.nn.sigmoid) is another object than Keras's."""
    v = np.linspace(-9.0, 9.0, 145).astype(np.float32)
    try:
        out = _numpy(keras, fn(keras.ops.convert_to_tensor(v)))
    except Exception:  # noqa: BLE001 - whatever fails here is not an activation we run
        return False
    return out.shape == v.shape and bool(np.allclose(out, reference(v.astype(np.float64)),
                                                     rtol=0, atol=1e-6))


def _check_gru(keras, layer, where: str) -> None:
    if not isinstance(layer, keras.layers.GRU):
        raise TypeError(f"{where} must be a keras.layers.GRU, got {describe(layer)}")
    if not layer.built:
        raise ValueError(f"{where} must be built (called once, or build(input_shape)) so that "
                         "its weights exist")
    cell = layer.cell
    if not (_computes(keras, cell.activation, np.tanh)
            and _computes(keras, cell.recurrent_activation, lambda v: 1 / (1 + np.exp(-v)))):
        raise ValueError(f"{where} uses activation={_name(cell.activation)!r} and "
                         f"recurrent_activation={_name(cell.recurrent_activation)!r}; "
                         "grufast supports only tanh and sigmoid (checked by their values)")


def _signature(layer) -> tuple:
    cell = layer.cell
    return (cell.units, bool(cell.reset_after), bool(cell.use_bias))


def _directions(keras, layer, where: str) -> tuple[list, str]:
    """The GRU layers of one grufast layer, in grufast's direction order, and its kind:
    'forward', 'reverse' or 'bidirectional'."""
    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode != "concat":
            raise ValueError(f"{where} is Bidirectional with merge_mode={layer.merge_mode!r}; "
                             "grufast's bidirectional output concatenates the directions, so "
                             "only merge_mode='concat' imports")
        fwd, bwd = layer.forward_layer, layer.backward_layer
        _check_gru(keras, fwd, f"{where}.forward_layer")
        _check_gru(keras, bwd, f"{where}.backward_layer")
        if fwd.go_backwards or not bwd.go_backwards:
            raise ValueError(f"{where} is Bidirectional with a forward layer that has "
                             f"go_backwards={fwd.go_backwards} and a backward layer that has "
                             f"go_backwards={bwd.go_backwards}; grufast needs False and True")
        if _signature(fwd) != _signature(bwd):
            raise ValueError(f"{where}: its forward and backward GRUs differ in units, "
                             f"reset_after or use_bias ({_signature(fwd)} vs "
                             f"{_signature(bwd)})")
        return [fwd, bwd], "bidirectional"
    _check_gru(keras, layer, where)
    return [layer], "reverse" if layer.go_backwards else "forward"


def _stack(keras, model) -> list:
    """The layers of a model that must be a plain stack of GRU / Bidirectional(GRU)."""
    if isinstance(model, (keras.layers.GRU, keras.layers.Bidirectional)):
        return [model]
    if not isinstance(model, keras.Model):
        raise TypeError("layer must be a keras.layers.GRU, a keras.layers.Bidirectional of "
                        "one, or a keras Sequential/functional Model stacking them, got "
                        f"{describe(model)}")
    layers = [lay for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]
    for lay in layers:
        if isinstance(lay, keras.layers.Masking):
            raise ValueError(f"model has a Masking layer ({lay.name!r}); grufast takes masks "
                             "at call time: pass gru(x, mask=np.any(x != mask_value, "
                             "axis=-1)) to the imported GRU")
        if not isinstance(lay, (keras.layers.GRU, keras.layers.Bidirectional)):
            raise ValueError(f"model has a {type(lay).__name__} layer ({lay.name!r}); "
                             "grufast.GRU represents only a stack of GRU layers")
    if not layers:
        raise ValueError("model has no GRU layer")
    if not isinstance(model, keras.Sequential):
        # A functional model must chain its layers one after the other, input to output.
        inputs = model.inputs
        tensor = inputs[0] if len(inputs) == 1 else None
        for lay in layers:
            node = next((n for n in lay._inbound_nodes if len(n.input_tensors) == 1
                         and n.input_tensors[0] is tensor), None)
            if tensor is None or node is None:
                raise ValueError(f"model is not a plain chain of GRU layers at {lay.name!r}; "
                                 "grufast.GRU represents only a stack")
            tensor = node.output_tensors[0]
        if not any(o is tensor for o in model.outputs):
            raise ValueError("model's output is not its last GRU layer's output; "
                             "grufast.GRU represents only a stack")
    return layers


def gru_from_keras(cls, layer):
    import keras

    stack = _stack(keras, layer)
    groups = [_directions(keras, lay, f"layer {lay.name!r}") for lay in stack]
    kinds = {kind for _, kind in groups}
    if len(kinds) > 1:
        raise ValueError(f"the GRU layers run in different directions ({sorted(kinds)}); "
                         "grufast.GRU needs them equal")
    kind = kinds.pop()
    if kind == "reverse" and len(groups) > 1:
        raise ValueError(f"a stack of {len(groups)} go_backwards GRUs: Keras returns each "
                         "one's sequence in its processing (reversed) order, so the next "
                         "layer runs forward over the input's steps, where grufast's "
                         "reverse=True runs every layer backwards; only a single "
                         "go_backwards GRU (or Bidirectional layers) imports")
    signatures = {_signature(g) for grus, _ in groups for g in grus}
    if len(signatures) > 1:
        raise ValueError(f"the GRU layers differ in (units, reset_after, use_bias): "
                         f"{sorted(signatures)}; grufast.GRU needs them equal")
    for lay in stack[:-1]:
        inner = lay.forward_layer if isinstance(lay, keras.layers.Bidirectional) else lay
        if not inner.return_sequences:
            raise ValueError(f"layer {lay.name!r} has return_sequences=False but feeds "
                             "another GRU layer")
    H, reset_after, use_bias = signatures.pop()
    first = groups[0][0][0]
    kernel = _numpy(keras, first.cell.kernel)
    dtype = kernel.dtype if kernel.dtype in (np.float32, np.float64) else np.float32
    gru = cls(kernel.shape[0], H, len(groups), use_bias, True,
              bidirectional=kind == "bidirectional", linear_before_reset=reset_after,
              dtype=dtype, reverse=kind == "reverse")
    state = {}
    for k, (grus, _) in enumerate(groups):
        for g, sfx in zip(grus, gru._suffixes(k)):
            cell = g.cell
            state["weight_ih" + sfx] = zrn_to_rzn(_numpy(keras, cell.kernel).T)
            state["weight_hh" + sfx] = zrn_to_rzn(_numpy(keras, cell.recurrent_kernel).T)
            if use_bias:
                bias = _numpy(keras, cell.bias)
                if reset_after:
                    state["bias_ih" + sfx] = zrn_to_rzn(bias[0])
                    state["bias_hh" + sfx] = zrn_to_rzn(bias[1])
                else:  # one bias inside each activation: put it on the input side
                    state["bias_ih" + sfx] = zrn_to_rzn(bias)
                    state["bias_hh" + sfx] = np.zeros(3 * H)
    gru.load_state_dict(state)
    return gru.eval()
