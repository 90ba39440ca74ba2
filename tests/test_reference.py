"""The reference against central finite differences in float64: every gradient, both
variants, lengths including 0 and T, both directions, with and without bias."""

import numpy as np
import pytest

from grufast import reference as R

from .helpers import problem


def _loss(args, kw, wy, wh):
    y, h, _ = R.gru_forward(*args, **kw)
    return float(np.sum(y * wy) + np.sum(h * wh))


@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_reference_gradients_match_finite_differences(lbr, reverse, bias):
    rng = np.random.default_rng([lbr, reverse, bias])
    T, B, I, H = 4, 4, 3, 3
    args = list(problem(rng, T, B, I, H, scale=0.8, bias=bias))
    kw = dict(lengths=np.array([0, T, 2, 1]), reverse=reverse, linear_before_reset=lbr)
    y, h, cache = R.gru_forward(*args, training=True, **kw)
    wy = rng.standard_normal(y.shape)
    wh = rng.standard_normal(h.shape)
    grads = R.gru_backward(wy, wh, cache)
    eps = 1e-6
    for i, name in enumerate(["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"]):
        if args[i] is None:
            assert grads[i] is None
            continue
        numeric = np.zeros_like(args[i])
        for idx in np.ndindex(args[i].shape):
            orig = args[i][idx]
            args[i][idx] = orig + eps
            up = _loss(args, kw, wy, wh)
            args[i][idx] = orig - eps
            down = _loss(args, kw, wy, wh)
            args[i][idx] = orig
            numeric[idx] = (up - down) / (2 * eps)
        err = np.abs(grads[i] - numeric).max() / max(np.abs(numeric).max(), 1e-12)
        assert err < 1e-7, f"{name}: relative error {err:.2e}"
    # Padding gets no gradient and sequences of length 0 pass dh_n through to h0.
    assert np.all(grads.x[:, 0] == 0) and np.all(grads.x[2:, 2] == 0)
    np.testing.assert_array_equal(grads.h0[0], wh[0])


def test_reference_lengths_semantics():
    rng = np.random.default_rng(1)
    x, h0, *w = problem(rng, 5, 3, 2, 4)
    lengths = np.array([5, 2, 0])
    y, h, _ = R.gru_forward(x, h0, *w, lengths=lengths)
    assert np.all(y[2:, 1] == 0) and np.all(y[:, 2] == 0)
    np.testing.assert_array_equal(h[1], y[1, 1])
    np.testing.assert_array_equal(h[2], h0[2])
    # Reverse over a short sequence is the forward over its reversed valid part.
    yr, hr, _ = R.gru_forward(x, h0, *w, lengths=lengths, reverse=True)
    yf, hf, _ = R.gru_forward(x[1::-1, 1:2], h0[1:2], *w)
    np.testing.assert_allclose(yr[1::-1, 1:2], yf, rtol=1e-14)
    np.testing.assert_allclose(hr[1], hf[0], rtol=1e-14)
