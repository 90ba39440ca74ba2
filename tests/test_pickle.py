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
    with pytest.raises(ValueError, match="not a readable grufast .npz file"):
        grufast.load(path)
