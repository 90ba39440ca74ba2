"""grufast.Linear against torch.nn.Linear: forward, backward, init, state dicts, save/load."""

import copy
import pickle

import numpy as np
import pytest
import torch

import grufast
from tests.helpers import assert_close

DTYPES = [np.float32, np.float64]
TORCH = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(), (5,), (4, 3), (2, 3, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_backward_match_torch(dtype, lead, bias):
    rng = np.random.default_rng(1)
    ref = torch.nn.Linear(7, 3, bias=bias, dtype=TORCH[dtype])
    lin = grufast.Linear.from_torch(ref)
    x = rng.standard_normal((*lead, 7)).astype(dtype)
    dy = rng.standard_normal((*lead, 3)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    y = lin(x)
    assert y.shape == (*lead, 3) and y.dtype == dtype
    assert_close(y, yt.detach().numpy(), dtype, "fwd", "y")
    dx = lin.backward(dy)
    assert dx.shape == x.shape
    assert_close(dx, xt.grad.numpy(), dtype, "grad", "dx")
    assert_close(lin.grads["weight"], ref.weight.grad.numpy(), dtype, "grad", "dW")
    if bias:
        assert_close(lin.grads["bias"], ref.bias.grad.numpy(), dtype, "grad", "db")
    else:
        assert set(lin.grads) == {"weight"}


def test_gradients_accumulate_until_zero_grad():
    rng = np.random.default_rng(2)
    lin = grufast.Linear(4, 2, dtype=np.float64, seed=0)
    x, dy = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    lin(x)
    lin.backward(dy)
    once = {k: g.copy() for k, g in lin.grads.items()}
    lin(x)
    lin.backward(dy)
    for k in once:
        np.testing.assert_allclose(lin.grads[k], 2 * once[k])
    lin.zero_grad()
    assert all(not g.any() for g in lin.grads.values())


def test_init_range_names_and_seed():
    lin = grufast.Linear(400, 300, seed=3)
    ref = torch.nn.Linear(400, 300)
    assert set(lin.state_dict()) == set(ref.state_dict())
    k = 1 / np.sqrt(400)
    for name, p in lin.state_dict().items():
        assert p.shape == tuple(ref.state_dict()[name].shape)
        assert np.abs(p).max() <= k
        assert np.abs(p).max() > 0.95 * k  # the whole range is used, as torch does
    np.testing.assert_array_equal(lin.weight, grufast.Linear(400, 300, seed=3).weight)


def test_eval_keeps_nothing_and_backward_needs_a_training_forward():
    lin = grufast.Linear(3, 2).eval()
    lin(np.ones(3))
    with pytest.raises(ValueError, match="forward in train mode"):
        lin.backward(np.ones(2))
    lin.train()
    lin(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"dy must have the shape .*\(4, 2\)"):
        lin.backward(np.ones((4, 3)))
    lin.backward(np.ones((4, 2)))
    with pytest.raises(ValueError, match="forward in train mode"):
        lin.backward(np.ones((4, 2)))


@pytest.mark.parametrize("args, kwargs, exc, match", [
    ((0, 3), {}, ValueError, "in_features"),
    ((3, 2.0), {}, TypeError, "out_features"),
    ((3, 2), {"bias": 1}, TypeError, "bias"),
    ((3, 2), {"dtype": np.int32}, TypeError, "dtype"),
])
def test_constructor_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        grufast.Linear(*args, **kwargs)


def test_input_errors():
    lin = grufast.Linear(3, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., in_features\)"):
        lin(np.ones((4, 5)))
    with pytest.raises(ValueError, match="in_features"):
        lin(np.float32(1))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        lin(np.array(["a", "b", "c"]))
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        grufast.Linear.from_torch(torch.nn.GRU(2, 2))


def test_state_dict_roundtrip_save_load_pickle(tmp_path):
    lin = grufast.Linear(5, 4, dtype=np.float64, seed=1)
    other = grufast.Linear(5, 4, dtype=np.float64, seed=2)
    other.load_state_dict(lin.state_dict())
    x = np.arange(10.0).reshape(2, 5)
    np.testing.assert_array_equal(other(x), lin(x))
    grufast.save(lin, tmp_path / "lin.npz")
    loaded = grufast.load(tmp_path / "lin.npz")
    assert isinstance(loaded, grufast.Linear) and not loaded.training
    assert loaded.config() == lin.config()
    np.testing.assert_array_equal(loaded(x), lin(x))
    for clone in (pickle.loads(pickle.dumps(lin)), copy.deepcopy(lin)):
        np.testing.assert_array_equal(clone(x), lin(x))
        assert clone.weight is not lin.weight
    with pytest.raises(ValueError, match="missing keys"):
        lin.load_state_dict({"weight": np.zeros((4, 5))})
    with pytest.raises(ValueError, match=r"state_dict\['weight'\] has shape \(5, 4\), "
                                         r"but this Linear has in_features 5"):
        lin.load_state_dict({"weight": np.zeros((5, 4)), "bias": np.zeros(4)})
