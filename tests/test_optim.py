"""grufast.optim: defaults and clipping against torch, resuming, refreshing what modules
derived from their weights, and the argument checks (whole training runs against torch:
test_training_torch.py)."""

import copy
import pickle

import numpy as np
import pytest
import torch

import grufast
from grufast import optim
from tests.helpers import rel_err
from tests.training_helpers import grufast_step, models, training_data


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny problems: torch's thread pool only adds overhead (10x on a loaded machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def test_defaults_are_torchs():
    lin = grufast.Linear(2, 2)
    for ours, theirs in ((optim.SGD, torch.optim.SGD), (optim.Adam, torch.optim.Adam),
                         (optim.AdamW, torch.optim.AdamW)):
        d = theirs([torch.zeros(1, requires_grad=True)]).defaults
        for k, v in ours([lin]).defaults.items():
            assert (tuple(d[k]) if k == "betas" else d[k]) == v, (ours, k)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.1, 1e6])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    rng = np.random.default_rng(3)
    gru = grufast.GRU(3, 4, dtype=np.float64)
    head = grufast.Linear(4, 2, dtype=np.float64)
    ref = []
    for m in (gru, head):
        for g in m.grads.values():
            g[...] = rng.standard_normal(g.shape)
            t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
            t.grad = torch.tensor(g)
            ref.append(t)
    total = optim.clip_grad_norm([gru, head], max_norm, norm_type)
    ttotal = float(torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type))
    assert isinstance(total, float) and abs(total - ttotal) <= 1e-12 * ttotal
    ours = np.concatenate([g.ravel() for m in (gru, head) for g in m.grads.values()])
    theirs = np.concatenate([t.grad.numpy().ravel() for t in ref])
    assert rel_err(ours, theirs) <= 1e-12


def test_clip_grad_norm_errors_and_nonfinite():
    lin = grufast.Linear(2, 2)
    with pytest.raises(ValueError, match="max_norm must lie in"):
        optim.clip_grad_norm([lin], -1.0)
    with pytest.raises(ValueError, match="norm_type"):
        optim.clip_grad_norm([lin], 1.0, 0)
    lin.grads["weight"][0, 0] = np.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm([lin], 1.0, error_if_nonfinite=True)
    assert optim.clip_grad_norm([lin], 1.0) == np.inf


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("nan_first", [True, False])
def test_clip_grad_norm_sees_a_nan_in_any_module(norm_type, nan_first):
    """A NaN gradient makes the total NaN whatever the modules' order (Python's max over
    floats dropped it when it came after a larger finite norm), as torch's does."""
    a, b = grufast.Linear(2, 2), grufast.Linear(2, 2)
    a.grads["weight"][:] = 5
    b.grads["weight"][0, 0] = np.nan
    mods = [b, a] if nan_first else [a, b]
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm(mods, 1.0, norm_type, error_if_nonfinite=True)
    assert np.isnan(optim.clip_grad_norm(mods, 1.0, norm_type))


@pytest.mark.parametrize("make, match, exc", [
    (lambda m: optim.Adam([]), "at least one module", ValueError),
    (lambda m: optim.Adam([m, m]), "must not repeat a module", ValueError),
    (lambda m: optim.SGD([m], lr=-0.1), r"lr must lie in \[0.0, inf\], got -0.1", ValueError),
    (lambda m: optim.Adam([m], lr=float("nan")), "lr must lie in", ValueError),
    (lambda m: optim.Adam([m], lr="0.1"), "lr must be a real number", TypeError),
    (lambda m: optim.Adam([m], betas=(0.9, 1.0)), r"betas\[1\] must lie in", ValueError),
    (lambda m: optim.Adam([m], betas=0.9), "betas must be a pair", TypeError),
    (lambda m: optim.AdamW([m], eps=-1), "eps must lie in", ValueError),
    (lambda m: optim.SGD([m], nesterov=True), "nesterov needs momentum > 0", ValueError),
    (lambda m: optim.SGD([m], momentum=-0.5), "momentum must lie in", ValueError),
    (lambda m: optim.Adam(m), "pass \\[module\\]", TypeError),
    (lambda m: optim.Adam([m, "w"]), r"modules\[1\] must be a grufast", TypeError),
    (lambda m: optim.Adam(3), "modules must be a list", TypeError),
])
def test_argument_errors(make, match, exc):
    with pytest.raises(exc, match=match):
        make(grufast.Linear(2, 2))


def test_step_refreshes_what_modules_derived_from_weights():
    rng = np.random.default_rng(4)
    gru, cell, head = grufast.GRU(3, 4), grufast.GRUCell(3, 4), grufast.Linear(4, 2)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    gru.eval()(x), cell(x[0]), cell(x[0, 0])  # prepare transposed copies and the cell plan
    for m in (gru, cell, head):
        for g in m.grads.values():
            g[...] = rng.standard_normal(g.shape)
    opt = optim.SGD([gru, cell, head], lr=0.5)
    opt.step()
    fresh_gru = grufast.GRU(3, 4).eval()
    fresh_gru.load_state_dict(gru.state_dict())
    fresh_cell = grufast.GRUCell(3, 4)
    fresh_cell.load_state_dict(cell.state_dict())
    np.testing.assert_array_equal(gru(x)[0], fresh_gru(x)[0])
    np.testing.assert_array_equal(cell(x[0]), fresh_cell(x[0]))
    np.testing.assert_array_equal(cell(x[0, 0]), fresh_cell(x[0, 0]))  # streaming fast path
    assert not np.array_equal(gru(x)[0], grufast.GRU(3, 4).eval()(x)[0])


def _train(gru, head, opt, data):
    for x, target in data:
        grufast_step(gru, head, opt, x, target, 1.0)


@pytest.mark.parametrize("kind", ["state_dict", "pickle"])
def test_resume_matches_an_uninterrupted_run(kind):
    data = training_data(np.float64, 12)
    _, _, gru, head = models(np.float64)
    opt = optim.Adam([gru, head], lr=1e-2)
    _train(gru, head, opt, data[:6])
    if kind == "state_dict":
        saved = (gru.state_dict(), head.state_dict(), copy.deepcopy(opt.state_dict()))
        _, _, gru2, head2 = models(np.float64, seed=5)
        opt2 = optim.Adam([gru2, head2], lr=0.5)
        gru2.load_state_dict(saved[0])
        head2.load_state_dict(saved[1])
        opt2.load_state_dict(saved[2])
        assert opt2.lr == 1e-2
    else:
        opt2 = pickle.loads(pickle.dumps(opt))
        gru2, head2 = opt2.modules
    _train(gru, head, opt, data[6:])
    _train(gru2, head2, opt2, data[6:])
    for a, b in ((gru, gru2), (head, head2)):
        for name, p in a.state_dict().items():
            np.testing.assert_array_equal(b.state_dict()[name], p)


def test_load_state_dict_checks():
    lin = grufast.Linear(2, 3)
    opt = optim.Adam([lin])
    lin.grads["weight"][...] = 1
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="for a Adam optimiser, this one is SGD"):
        optim.SGD([lin]).load_state_dict(sd)
    with pytest.raises(ValueError, match="expected a list for 2 modules"):
        optim.Adam([lin, grufast.Linear(2, 3)]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"\['exp_avg'\] must have shape \(2, 2\)"):
        optim.Adam([grufast.Linear(2, 2)]).load_state_dict(sd)
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        opt.load_state_dict([1])


def _edited(sd, **entry_changes):
    """sd with the first module's 'weight' entry changed (None removes a key)."""
    sd = copy.deepcopy(sd)
    entry = sd["state"][0]["weight"]
    for k, v in entry_changes.items():
        if v is None:
            entry.pop(k)
        else:
            entry[k] = v
    return sd


def test_load_state_dict_refuses_buffers_it_would_ignore_or_miss():
    """Nothing accepted and ignored: a misspelt buffer, a stepped parameter without the
    moments its next step reads, or a buffer that is not an array of the parameter's shape
    is refused by name (each used to load, then be ignored, restart at zero under the old
    step count, or fail inside step())."""
    lin = grufast.Linear(2, 3)
    adam = optim.Adam([lin])
    lin.grads["weight"][...] = 1
    adam.step()
    sd = adam.state_dict()
    avg = sd["state"][0]["weight"]["exp_avg"]
    for bad, match in ((_edited(sd, exp_avgg=avg), r"unexpected \['exp_avgg'\]"),
                       (_edited(sd, exp_avg=None), r"missing \['exp_avg'\]"),
                       (_edited(sd, exp_avg=avg.tolist()[0]), r"\['exp_avg'\] must have")):
        with pytest.raises(ValueError, match=match):
            optim.Adam([grufast.Linear(2, 3)]).load_state_dict(bad)
    # A parameter that has not stepped needs no buffers.
    optim.Adam([grufast.Linear(2, 3)]).load_state_dict(_edited(sd, step=0, exp_avg=None,
                                                                exp_avg_sq=None))
    sgd = optim.SGD([lin], momentum=0.9)
    sgd.step()
    sd = sgd.state_dict()
    with pytest.raises(ValueError, match=r"\['momentum_buffer'\] must have shape"):
        optim.SGD([grufast.Linear(2, 3)], momentum=0.9).load_state_dict(
            _edited(sd, momentum_buffer=[[1.0, 2.0]]))
    with pytest.raises(TypeError, match=r"\['momentum_buffer'\]"):
        optim.SGD([grufast.Linear(2, 3)], momentum=0.9).load_state_dict(
            _edited(sd, momentum_buffer="fast"))
    loaded = optim.SGD([grufast.Linear(2, 3)], momentum=0.9)
    loaded.load_state_dict(sd)
    buf = loaded.state[0]["weight"]["momentum_buffer"]
    assert not np.shares_memory(buf, sd["state"][0]["weight"]["momentum_buffer"])


def test_amsgrad_switched_on_mid_training_starts_its_maximum():
    lin = grufast.Linear(2, 3, seed=0)
    opt = optim.Adam([lin])
    lin.grads["weight"][...] = 1
    opt.step()
    opt.amsgrad = True
    resumed = optim.Adam([copy.deepcopy(lin)])
    resumed.load_state_dict(opt.state_dict())  # stepped without amsgrad's buffer: loads
    opt.step()  # used to raise KeyError: 'max_exp_avg_sq'
    st = opt.state[0]["weight"]
    np.testing.assert_array_equal(st["max_exp_avg_sq"], st["exp_avg_sq"])
    opt.load_state_dict(opt.state_dict())  # and its own state, buffer included, reloads


def test_a_subclass_without_buffers_declared_loads_its_state():
    class Plain(optim.SGD):  # a user's optimiser built on the base class's machinery
        def _update(self, p, g, st):
            st["step"] += 1
            st["trace"] = g.copy()
            p -= self.defaults["lr"] * g

        _buffers = optim.Optimizer._buffers

    lin = grufast.Linear(2, 3)
    opt = Plain([lin], lr=0.1)
    opt.step()
    Plain([grufast.Linear(2, 3)], lr=0.1).load_state_dict(opt.state_dict())


def test_hyperparameters_settable_and_checked():
    opt = optim.SGD([grufast.Linear(2, 2)], lr=0.1)
    opt.lr = 0.01
    assert opt.lr == 0.01 and opt.defaults["lr"] == 0.01
    with pytest.raises(ValueError, match="lr must lie in"):
        opt.lr = -1
    assert "SGD([Linear], lr=0.01" in repr(opt)
