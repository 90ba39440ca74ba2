"""Keras (torch backend) as the oracle with gradients for linear_before_reset=False
(reset_after=False), and a second one for True; gate order z, r, h converted here.

float32 only: Keras 3.15's torch-backend matmul casts float64 operands down to float32
(keras/src/backend/torch/numpy.py, matmul's result_type), so a float64 layer is not float64.
float64 is covered by PyTorch (True) and by the finite-difference-checked reference."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from grufast import functional as F  # noqa: E402

from .helpers import assert_close, problem  # noqa: E402
from .onnx_helpers import rzn_to_zrn  # noqa: E402

assert keras.backend.backend() == "torch"


def zrn_to_rzn(w):
    z, r, n = np.split(w, 3)
    return np.concatenate([r, z, n])


def keras_gru(x, h0, w_ih, w_hh, b_ih, b_hh, reverse, lbr, dy, dh):
    T, B, I = x.shape
    H = w_hh.shape[1]
    layer = keras.layers.GRU(H, reset_after=lbr, use_bias=b_ih is not None,
                             return_sequences=True, return_state=True, go_backwards=reverse,
                             dtype=str(x.dtype))
    layer.build((B, T, I))
    weights = [rzn_to_zrn(w_ih).T, rzn_to_zrn(w_hh).T]
    if b_ih is not None:
        weights.append(np.stack([rzn_to_zrn(b_ih), rzn_to_zrn(b_hh)]) if lbr
                       else rzn_to_zrn(b_ih + b_hh))
    layer.set_weights(weights)
    xt = torch.tensor(x.transpose(1, 0, 2).copy(), requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    seq, state = layer(xt, initial_state=[ht])
    seq = seq.transpose(0, 1)
    if reverse:  # go_backwards lists the outputs in the order it visited them
        seq = seq.flip(0)
    loss = (seq * torch.from_numpy(dy)).sum() + (state * torch.from_numpy(dh)).sum()
    loss.backward()
    g = [w.value.grad.detach().numpy() for w in layer.weights]
    grads = {"x": xt.grad.numpy().transpose(1, 0, 2), "h0": ht.grad.numpy(),
             "w_ih": zrn_to_rzn(g[0].T), "w_hh": zrn_to_rzn(g[1].T)}
    if b_ih is not None:
        if lbr:
            grads["b_ih"], grads["b_hh"] = zrn_to_rzn(g[2][0]), zrn_to_rzn(g[2][1])
        else:  # one bias b_ih + b_hh: both get its gradient
            grads["b_ih"] = grads["b_hh"] = zrn_to_rzn(g[2])
    return seq.detach().numpy(), state.detach().numpy(), grads


@settings(max_examples=60)
@given(T=st.integers(1, 7), B=st.integers(1, 4), I=st.integers(1, 8), H=st.integers(1, 8),
       lbr=st.booleans(), reverse=st.booleans(), bias=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_matches_keras_gru(T, B, I, H, lbr, reverse, bias, seed):
    dtype = np.float32
    rng = np.random.default_rng(seed)
    x, h0, *w = problem(rng, T, B, I, H, dtype, bias=bias)
    y, h, cache = F.gru_forward(x, h0, *w, reverse=reverse, linear_before_reset=lbr,
                                training=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(h.shape).astype(dtype)
    g = F.gru_backward(dy, dh, cache)
    ky, kh, kg = keras_gru(x, h0, *w, reverse, lbr, dy, dh)
    assert_close(y, ky, dtype, "fwd", "y")
    assert_close(h, kh, dtype, "fwd", "h_n")
    for name, ours in zip(g._fields, g):
        if ours is None:
            assert name not in kg
        else:
            assert_close(ours, kg[name], dtype, "grad", name)
