"""Keras (torch backend) as the oracle with gradients for linear_before_reset=False
(reset_after=False), and a second one for True; gate order z, r, h converted here.

float32 only: Keras 3.15's torch-backend matmul casts float64 operands down to float32
(keras/src/backend/torch/numpy.py, matmul's result_type), so a float64 layer is not float64.
float64 is covered by PyTorch (True) and by the finite-difference-checked reference."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from grufast import functional as F  # noqa: E402

from .helpers import assert_close, problem  # noqa: E402
from .oracles import keras_gru, valid_steps  # noqa: E402

assert keras.backend.backend() == "torch"


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


@settings(max_examples=25)
@given(T=st.integers(1, 6), B=st.integers(1, 4), H=st.integers(1, 6), lbr=st.booleans(),
       reverse=st.booleans(), data=st.data())
def test_matches_keras_gru_with_lengths(T, B, H, lbr, reverse, data):
    """Lengths against a Keras mask (right padding): the valid outputs, the final state (each
    sequence's state at its last valid step) and every gradient. Keras carries its previous
    output through masked steps where grufast writes zeros, so the loss only weighs valid
    outputs."""
    dtype = np.float32
    lengths = np.array(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, h0, *w = problem(rng, T, B, 3, H, dtype)
    valid = valid_steps(lengths, T)[:, :, None]
    y, h, cache = F.gru_forward(x, h0, *w, lengths=lengths, reverse=reverse,
                                linear_before_reset=lbr, training=True)
    assert not y[~valid.repeat(H, axis=2)].any()  # padding outputs zeros
    dy = (rng.standard_normal(y.shape) * valid).astype(dtype)
    dh = rng.standard_normal(h.shape).astype(dtype)
    g = F.gru_backward(dy, dh, cache)
    ky, kh, kg = keras_gru(x, h0, *w, reverse, lbr, dy, dh, lengths=lengths)
    assert_close(y * valid, ky * valid, dtype, "fwd", "valid y")
    assert_close(h, kh, dtype, "fwd", "h_n")
    for name, ours in zip(g._fields, g):
        assert_close(ours, kg[name], dtype, "grad", name)
