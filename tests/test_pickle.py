"""Pickle and deepcopy of every public class: bitwise-equal results afterwards, nothing
derived from the weights carried along (it is rebuilt), and grufast.load still refusing
pickled files."""

import copy
import pickle

import numpy as np
import pytest

import grufast

COPIES = {
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
    "deepcopy": copy.deepcopy,
}


def x_batch(T=7, B=5, I=3, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True),
                                    dict(batch_first=True, dtype=np.float64, bias=False)])
def test_gru_copies_are_bitwise_equal(how, config):
    gru = grufast.GRU(3, 6, seed=1, **config)
    x = x_batch()
    gru.eval()
    y, h_n = gru(x)  # prepares the kernels' weights
    twin = COPIES[how](gru)
    assert twin._prepared == {}  # rebuilt on first use, not copied
    assert not twin.training and twin.config() == gru.config()
    y2, h2 = twin(x)
    assert np.array_equal(y, y2) and np.array_equal(h_n, h2)
    # the copy is independent: training it leaves the original alone
    twin.train()
    twin(x)
    twin.backward(np.ones_like(y))
    assert np.array_equal(gru(x)[0], y)


def test_gru_in_train_mode_leaves_its_tape_behind():
    gru = grufast.GRU(3, 6, seed=1)
    x = x_batch()
    y, _ = gru(x)  # train mode: a tape for backward
    twin = pickle.loads(pickle.dumps(gru))
    assert twin.training and twin._tape is None
    with pytest.raises(ValueError, match="backward needs a forward in train mode"):
        twin.backward(np.ones_like(y))
    # the dropout random stream travels: the same masks on both sides
    drop = grufast.GRU(3, 6, num_layers=2, dropout=0.5, seed=2)
    drop_twin = copy.deepcopy(drop)
    assert np.array_equal(drop(x)[0], drop_twin(x)[0])


@pytest.mark.parametrize("how", COPIES)
def test_gru_cell_copies_rebuild_their_plan(how):
    cell = grufast.GRUCell(3, 6, seed=4)
    x = x_batch()[0]
    h = cell(x)
    twin = COPIES[how](cell)
    assert twin._plan is not cell._plan
    assert np.array_equal(twin(x), h) and np.array_equal(twin(x[0]), cell(x[0]))
    # the rebuilt plan follows the copy's own weights
    state = twin.state_dict()
    state["weight_hh"] *= 2
    twin.load_state_dict(state)
    assert not np.array_equal(twin(x, h), cell(x, h))


def test_pickle_carries_no_prepared_weights():
    gru = grufast.GRU(64, 64, seed=0).eval()
    plain = len(pickle.dumps(gru))
    gru(x_batch(I=64))  # prepares transposed copies of both weight matrices
    assert len(pickle.dumps(gru)) == plain


def test_load_refuses_a_pickled_file(tmp_path):
    gru = grufast.GRU(3, 4)
    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps(gru))
    with pytest.raises(ValueError, match="grufast"):  # refused before anything is unpickled
        grufast.load(path)


@pytest.mark.parametrize("how", COPIES)
def test_linear_copies_are_bitwise_equal(how):
    head = grufast.Linear(6, 3, seed=5)
    x = x_batch()[0].repeat(2, axis=1)
    out = head(x)  # train mode: keeps x for backward
    twin = COPIES[how](head)
    assert twin._x is None  # the recorded input stays behind
    assert np.array_equal(twin(x), out)
    assert np.array_equal(twin.backward(np.ones_like(out)), head.backward(np.ones_like(out)))
    assert all(np.array_equal(twin.grads[k], head.grads[k]) for k in head.grads)


def train_steps(gru, head, opt, steps=3):
    x = x_batch(B=4)
    for _ in range(steps):
        gru.train()
        head.train()
        _, h_n = gru(x)
        loss, d = grufast.losses.mse(head(h_n[-1]), np.zeros((4, 2), np.float32))
        opt.zero_grad()
        gru.backward(None, head.backward(d)[None])
        opt.step()
    return gru.eval()(x)[1]


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("make", [
    lambda mods: grufast.optim.Adam(mods, lr=0.01, weight_decay=1e-3),
    lambda mods: grufast.optim.AdamW(mods, lr=0.01),
    lambda mods: grufast.optim.SGD(mods, lr=0.1, momentum=0.9, nesterov=True),
], ids=["Adam", "AdamW", "SGD"])
def test_optimiser_copies_continue_bitwise_equal(how, make):
    gru, head = grufast.GRU(3, 5, seed=0), grufast.Linear(5, 2, seed=1)
    opt = make([gru, head])
    train_steps(gru, head, opt)  # moments and step counts to carry
    # The optimiser copied together with its modules keeps pointing at the copies.
    gru2, head2, opt2 = COPIES[how]((gru, head, opt))
    assert opt2.modules[0] is gru2 and opt2.modules[1] is head2
    assert np.array_equal(train_steps(gru, head, opt), train_steps(gru2, head2, opt2))


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_estimator_copies_predict_and_continue_bitwise_equal(how, kind):
    from grufast.sklearn import GRUClassifier, GRURegressor

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 5, 2)).astype(np.float32)
    y = X[:, :, 0].sum(axis=1)
    cls, y = (GRURegressor, y) if kind == "regressor" else (GRUClassifier, y > 0)
    unfitted = COPIES[how](cls(hidden_size=4, bidirectional=True))
    assert unfitted.get_params()["bidirectional"] is True
    est = cls(hidden_size=4, max_iter=2, random_state=0)
    est.partial_fit(X, y, **({"classes": [False, True]} if kind == "classifier" else {}))
    twin = COPIES[how](est)
    assert np.array_equal(twin.predict(X), est.predict(X))
    # optimiser moments and the shuffling stream travel too: training goes on identically
    est.partial_fit(X, y)
    twin.partial_fit(X, y)
    method = "predict" if kind == "regressor" else "predict_proba"
    assert np.array_equal(getattr(twin, method)(X), getattr(est, method)(X))


def test_gru_pickles_after_streaming_steps():
    # GRU.step builds one cell plan per layer; a copy rebuilds them, it never ships them.
    gru = grufast.GRU(3, 8, num_layers=2, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y, h = gru.step(x[0])
    for clone in (pickle.loads(pickle.dumps(gru)), copy.deepcopy(gru)):
        np.testing.assert_array_equal(clone.step(x[1], h)[0], gru.step(x[1], h)[0])


@pytest.mark.parametrize("make", [
    lambda: (grufast.GRU(3, 6, seed=2).eval(), x_batch()),
    lambda: (grufast.GRUCell(3, 6, seed=2), x_batch()[0]),
    lambda: (grufast.Linear(3, 6, seed=2), x_batch()[0]),
    lambda: (grufast.GRU(3, 6, seed=2).quantized("int8"), x_batch()),
    lambda: (grufast.GRUCell(3, 6, seed=2).quantized("bf16"), x_batch()[0]),
], ids=["GRU", "GRUCell", "Linear", "QuantizedGRU", "QuantizedGRUCell"])
def test_copy_copy_is_independent(make):
    """copy.copy gives an independent model: new weights loaded into the copy change the
    copy's results only. (A shallow copy shared the parameter arrays, not the weights
    prepared from them: the original then computed with neither the old weights nor the
    new.)"""
    def out(m):
        r = m(x)
        return r[0] if isinstance(r, tuple) else r

    model, x = make()
    before = out(model)  # prepares the kernels' weights, which the copy must not share
    other = copy.copy(model)
    new = {k: (v * 0.5).astype(v.dtype) if v.dtype.kind == "f" else v
           for k, v in model.state_dict().items()}
    other.load_state_dict(new)
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(new)
    np.testing.assert_array_equal(out(model), before)
    np.testing.assert_array_equal(out(other), out(fresh))
    assert not np.array_equal(out(other), before)
