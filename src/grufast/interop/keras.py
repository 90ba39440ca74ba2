"""keras.layers.GRU -> grufast.GRU (Keras 3, any backend). Keras stacks gates z, r, h in
kernel (I, 3H) and recurrent_kernel (H, 3H); its bias is (2, 3H) [input, recurrent] with
reset_after=True and (3H,) with reset_after=False. Keras is batch-major: batch_first=True."""

from __future__ import annotations

import numpy as np

from grufast._validate import describe
from grufast.interop import zrn_to_rzn


def _name(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def gru_from_keras(cls, layer):
    import keras

    if not isinstance(layer, keras.layers.GRU):
        raise TypeError(f"layer must be a keras.layers.GRU, got {describe(layer)}")
    if not layer.built:
        raise ValueError("layer must be built (called once, or build(input_shape)) so that "
                         "its weights exist")
    cell = layer.cell
    if _name(cell.activation) != "tanh" or _name(cell.recurrent_activation) != "sigmoid":
        raise ValueError(f"layer uses activation={_name(cell.activation)!r} and "
                         f"recurrent_activation={_name(cell.recurrent_activation)!r}; "
                         "grufast supports only tanh and sigmoid")
    if layer.go_backwards:
        raise ValueError("layer has go_backwards=True, which grufast.GRU cannot represent "
                         "(it runs forward or both ways)")
    kernel = np.asarray(keras.ops.convert_to_numpy(cell.kernel))
    recurrent = np.asarray(keras.ops.convert_to_numpy(cell.recurrent_kernel))
    H = cell.units
    dtype = kernel.dtype if kernel.dtype in (np.float32, np.float64) else np.float32
    gru = cls(kernel.shape[0], H, 1, bool(cell.use_bias), True,
              linear_before_reset=bool(cell.reset_after), dtype=dtype)
    state = {"weight_ih_l0": zrn_to_rzn(kernel.T), "weight_hh_l0": zrn_to_rzn(recurrent.T)}
    if cell.use_bias:
        bias = np.asarray(keras.ops.convert_to_numpy(cell.bias))
        if cell.reset_after:
            state["bias_ih_l0"], state["bias_hh_l0"] = zrn_to_rzn(bias[0]), zrn_to_rzn(bias[1])
        else:  # one bias inside each activation: put it on the input side
            state["bias_ih_l0"], state["bias_hh_l0"] = zrn_to_rzn(bias), np.zeros(3 * H)
    gru.load_state_dict(state)
    return gru.eval()
