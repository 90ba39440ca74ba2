"""grufast.losses against torch.nn.functional: values and gradients, random and extreme."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grufast import losses
from tests.helpers import assert_close, rel_err


def _torch_loss(fn, first, second, dtype):
    a = torch.tensor(first, dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
    loss = fn(a, torch.tensor(second))
    loss.backward()
    return float(loss.detach()), a.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7,), (4, 3), (5, 2, 3)])
def test_mse_matches_torch(dtype, shape):
    rng = np.random.default_rng(0)
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    loss, grad = losses.mse(pred, target)
    tl, tg = _torch_loss(F.mse_loss, pred, target, dtype)
    assert isinstance(loss, float) and grad.dtype == dtype and grad.shape == shape
    assert abs(loss - tl) <= (5e-6 if dtype == np.float32 else 1e-12) * abs(tl)
    assert_close(grad, tg, dtype, "grad", "dpred")


def test_mse_errors():
    with pytest.raises(ValueError, match=r"target must have the shape of pred \(3,\), got "
                                         r"\(3, 1\)"):
        losses.mse(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(TypeError, match="target must hold real numbers"):
        losses.mse(np.zeros(2), ["a", "b"])
    with pytest.raises(ValueError, match="pred must not be empty"):
        losses.mse(np.zeros(0), np.zeros(0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_cross_entropy_matches_torch(dtype, scale):
    rng = np.random.default_rng(1)
    C = 6
    logits = (rng.standard_normal((2 * C, C)) * scale).astype(dtype)
    logits[0] = scale  # ties
    logits[1, :] = -scale
    logits[1, 3] = scale  # one class dominating by 2 * scale
    labels = np.arange(2 * C) % C  # every class appears
    loss, grad = losses.cross_entropy(logits, labels)
    tl, tg = _torch_loss(F.cross_entropy, logits, labels, dtype)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    tol = 5e-6 if dtype == np.float32 else 1e-12
    assert abs(loss - tl) <= tol * max(abs(tl), 1.0), (loss, tl)
    assert_close(grad, tg, dtype, "grad", "dlogits")


@pytest.mark.parametrize("label", range(4))
def test_cross_entropy_extreme_logits_each_label(label):
    logits = np.array([[1e4, -1e4, 0.0, 1e4 - 1]], np.float32)
    loss, grad = losses.cross_entropy(logits, np.array([label]))
    tl, tg = _torch_loss(F.cross_entropy, logits, np.array([label]), np.float32)
    assert abs(loss - tl) <= 5e-6 * max(abs(tl), 1.0)
    assert rel_err(grad, tg) <= 5e-6


def test_cross_entropy_unbatched_and_spatial():
    rng = np.random.default_rng(2)
    z = rng.standard_normal(5)
    loss, grad = losses.cross_entropy(z, np.int64(2))
    tl, tg = _torch_loss(F.cross_entropy, z, np.int64(2), np.float64)
    assert abs(loss - tl) < 1e-12 and rel_err(grad, tg) < 1e-12
    z = rng.standard_normal((3, 4, 2, 5))
    y = rng.integers(0, 4, (3, 2, 5))
    loss, grad = losses.cross_entropy(z, y)
    tl, tg = _torch_loss(F.cross_entropy, z, y, np.float64)
    assert abs(loss - tl) < 1e-12 and rel_err(grad, tg) < 1e-12


def test_cross_entropy_errors():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, C\) = \[0, 4\)"):
        losses.cross_entropy(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="labels must lie in"):
        losses.cross_entropy(z, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="labels must hold integer class indices"):
        losses.cross_entropy(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="labels must hold integer"):
        losses.cross_entropy(z, np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        losses.cross_entropy(z, np.array([0, 1]))
    with pytest.raises(TypeError, match="logits must hold real numbers"):
        losses.cross_entropy(np.array(["a"]), 0)
