"""grufast.sklearn: scikit-learn's own estimator checks, the input conventions (layouts,
NaN padding, dtypes), the training options, and the estimators inside pipelines, cross-
validation and grid search."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import grufast
from grufast.sklearn import GRUClassifier, GRURegressor

# Small, quick settings that still learn scikit-learn's check problems (check_regressors_train
# asks for R^2 > 0.5 with alpha=0.01; check_classifiers_train for 83% accuracy).
CHECK = dict(hidden_size=8, max_iter=50, learning_rate=0.01, batch_size=32, random_state=0)
# Smaller still for the tests below: they test behaviour, not accuracy.
TINY = dict(hidden_size=4, max_iter=3, batch_size=8, learning_rate=0.01, random_state=0)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@parametrize_with_checks([GRURegressor(**CHECK), GRUClassifier(**CHECK)])
def test_sklearn_estimator_checks(estimator, check):
    # Every check scikit-learn runs on these two passes: none is listed as an expected
    # failure (2-D X is a univariate series; its columns are the time steps). One check,
    # check_array_api_input, skips itself unless SCIPY_ARRAY_API=1 was set before SciPy was
    # imported; the next test runs it in a process where it was.
    check(estimator)


def test_sklearn_array_api_check_in_its_own_process():
    code = (
        "from sklearn.utils.estimator_checks import check_array_api_input as check\n"
        "from grufast.sklearn import GRUClassifier, GRURegressor\n"
        f"for est in (GRURegressor(**{TINY!r}), GRUClassifier(**{TINY!r})):\n"
        "    check(type(est).__name__, est, array_namespace='numpy', check_values=True)\n"
        "print('ran')\n")
    env = dict(os.environ, SCIPY_ARRAY_API="1")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, check=True,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "ran", out.stderr


def series(n=24, T=6, F=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, F)).astype(np.float32)
    y = X[:, :, 0].sum(axis=1) * 0.5 + X[:, -1, -1]
    return X, y


# -- input layouts and conversions ------------------------------------------------------------
def test_nft_layout_is_ntf_transposed():
    X, y = series()
    a = GRURegressor(**TINY).fit(X, y)
    b = GRURegressor(layout="nft", **TINY).fit(X.transpose(0, 2, 1), y)
    assert np.array_equal(a.predict(X), b.predict(X.transpose(0, 2, 1)))
    assert a.n_features_in_ == b.n_features_in_ == 3
    assert a.gru_.input_size == b.gru_.input_size == 3


def test_2d_is_univariate_series():
    X, y = series(F=1)
    a = GRURegressor(**TINY).fit(X[:, :, 0], y)
    b = GRURegressor(**TINY).fit(X, y)
    assert np.array_equal(a.predict(X[:, :, 0]), b.predict(X))
    assert a.gru_.input_size == 1
    assert a.n_features_in_ == 6 and b.n_features_in_ == 1  # columns vs features per step
    # A model fitted on 2-D also takes (n, T, 1) of any length, and vice versa.
    assert np.array_equal(a.predict(X), a.predict(X[:, :, 0]))
    assert a.predict(np.zeros((2, 9, 1))).shape == (2,)
    assert b.predict(np.zeros((2, 9))).shape == (2,)
    with pytest.raises(ValueError, match="X has 5 features, but GRURegressor is expecting 6"):
        a.predict(X[:, :5, 0])


@pytest.mark.parametrize("convert", ["float64", "int", "list", "readonly", "fortran", "memmap"])
def test_input_kinds_give_bitwise_equal_results(convert, tmp_path):
    X, y = series()
    X = np.round(X * 4)  # exactly representable as int too
    if convert == "float64":
        Xc = X.astype(np.float64)
    elif convert == "int":
        Xc = X.astype(np.int64)
    elif convert == "list":
        Xc = X.tolist()
    elif convert == "readonly":
        Xc = X.copy()
        Xc.flags.writeable = False
    elif convert == "fortran":
        Xc = np.asfortranarray(X)
    else:
        Xc = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=X.dtype,
                                       shape=X.shape)
        Xc[:] = X
        Xc.flush()
        Xc = np.load(tmp_path / "X.npy", mmap_mode="r")
    ref = GRURegressor(**TINY).fit(X, y)
    est = GRURegressor(**TINY).fit(Xc, y.tolist() if convert == "list" else y)
    assert np.array_equal(est.predict(Xc), ref.predict(X))
    assert np.array_equal(ref.predict(Xc), ref.predict(X))


def test_predictions_do_not_depend_on_the_batch(monkeypatch):
    import grufast.sklearn as gs

    X, y = series(n=23)
    # H=64: there the kernels' paths for 1 to 3 rows round differently from the tiled one
    est = GRUClassifier(**dict(TINY, hidden_size=64)).fit(X, y > 0)
    whole = est.predict_proba(X)
    # batches of one row's worth of bytes: 23 batches of 4 rows, the last one padded
    monkeypatch.setattr(gs, "_PREDICT_BATCH_BYTES", 1)
    assert np.array_equal(est.predict_proba(X), whole)
    for i in (0, 7, 22):  # one sample alone (padded to the kernels' 4-row path)
        assert np.array_equal(est.predict_proba(X[i:i + 1]), whole[i:i + 1])


def test_caller_arrays_are_not_written():
    X, y = series()
    X[3, 4:] = np.nan  # padding
    before = X.copy()
    est = GRURegressor(**TINY).fit(X, y)
    est.predict(X)
    assert np.array_equal(X, before, equal_nan=True)


# -- variable lengths: trailing all-NaN steps -------------------------------------------------
def test_trailing_nan_steps_are_padding():
    X, y = series(n=12, T=8)
    lengths = np.array([8, 3, 5, 8, 1, 7, 8, 2, 6, 8, 4, 8])
    Xp = X.copy()
    for i, L in enumerate(lengths):
        Xp[i, L:] = np.nan
    est = GRURegressor(**TINY).fit(Xp, y)
    pred = est.predict(Xp)
    # each padded sample predicts what its truncated sequence alone predicts
    for i, L in enumerate(lengths):
        assert pred[i] == est.predict(X[i:i + 1, :L])[0]
    # and the network saw the lengths: equal to running gru_ with them
    _, h_n = est.gru_(np.nan_to_num(Xp), lengths=lengths)
    manual = est.head_(h_n[-1])[:, 0]
    np.testing.assert_allclose(pred, manual, rtol=1e-5, atol=1e-6)


def test_all_nan_sample_has_length_zero():
    X, y = series(n=8)
    X[2] = np.nan
    est = GRURegressor(**TINY).fit(X, y)
    state = est.head_.state_dict()
    # zero steps: the state stays h0 = 0, so the prediction is the readout's bias
    assert est.predict(X[2:3])[0] == pytest.approx(float(state["bias"][0]), rel=1e-6)


@pytest.mark.parametrize("where", ["middle", "start", "partial-trailing"])
def test_nan_inside_a_sequence_is_an_error(where):
    X, y = series()
    if where == "middle":
        X[5, 2, :] = np.nan
        step = 2
    elif where == "start":
        X[5, 0, 1] = np.nan
        step = 0
    else:  # the last step is missing in one feature only: not padding
        X[5, -1, 0] = np.nan
        step = 5
    with pytest.raises(ValueError, match=f"NaN inside a sequence: sample 5, time step {step}"):
        GRURegressor(**TINY).fit(X, y)
    est = GRURegressor(**TINY).fit(series()[0], y)
    with pytest.raises(ValueError, match="NaN inside a sequence"):
        est.predict(X)


def test_infinity_is_an_error():
    X, y = series()
    X[1, 1, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        GRURegressor(**TINY).fit(X, y)


# -- bad input --------------------------------------------------------------------------------
def test_bad_shapes_and_layouts():
    X, y = series()
    with pytest.raises(ValueError, match="layout must be 'ntf'.*or 'nft'.*got 'tnf'"):
        GRURegressor(layout="tnf", **TINY).fit(X, y)
    with pytest.raises(ValueError, match="X must be 3-D .* got 4-D shape"):
        GRURegressor(**TINY).fit(X[:, :, :, None], y)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D"):
        GRURegressor(**TINY).fit(X[:, 0, 0], y)
    with pytest.raises(ValueError, match="X has 24 samples, y has 23"):
        GRURegressor(**TINY).fit(X, y[:-1])
    with pytest.raises(ValueError, match="X has 24 samples, y has 25"):
        GRUClassifier(**TINY).fit(X, np.arange(25) % 2)
    with pytest.raises(ValueError, match="at least one time step"):
        GRURegressor(**TINY).fit(X[:, :0], y)
    est = GRURegressor(**TINY).fit(X, y)
    with pytest.raises(ValueError, match="X has 2 features per time step, but GRURegressor "
                                         "was fitted with 3"):
        est.predict(X[:, :, :2])
    with pytest.raises(ValueError, match="y must be 1-D .* or 2-D"):
        GRURegressor(**TINY).fit(X, np.zeros((24, 2, 2)))


@pytest.mark.parametrize("name, value, exc", [
    ("hidden_size", 0, ValueError), ("hidden_size", 2.5, TypeError),
    ("num_layers", -1, ValueError), ("bidirectional", "yes", TypeError),
    ("max_iter", 0, ValueError), ("batch_size", None, TypeError),
    ("learning_rate", 0.0, ValueError), ("learning_rate", np.nan, ValueError),
    ("alpha", -1e-3, ValueError), ("early_stopping", 1, TypeError),
    ("validation_fraction", 1.0, ValueError), ("n_iter_no_change", 0, ValueError),
    ("tol", -1.0, ValueError), ("verbose", -2, ValueError), ("warm_start", None, TypeError),
    ("random_state", "seed", ValueError),
])
def test_bad_parameters_are_refused_in_fit(name, value, exc):
    X, y = series()
    est = GRURegressor(**dict(TINY, **{name: value}))
    assert est.get_params()[name] is value  # stored unchanged, checked only in fit
    with pytest.raises(exc, match=name if name != "random_state" else "seed"):
        est.fit(X, y)


def test_unfitted_estimator_refuses_predict():
    with pytest.raises(NotFittedError):
        GRUClassifier().predict_proba(np.zeros((2, 3, 1)))


# -- training options -------------------------------------------------------------------------
def test_random_state_makes_fit_bitwise_deterministic():
    X, y = series()
    params = dict(TINY, num_layers=2, bidirectional=True, max_iter=4)
    a = GRURegressor(**params).fit(X, y)
    b = GRURegressor(**params).fit(X, y)
    assert np.array_equal(a.predict(X), b.predict(X))
    assert a.loss_curve_ == b.loss_curve_
    c = GRURegressor(**dict(params, random_state=1)).fit(X, y)
    assert not np.array_equal(a.predict(X), c.predict(X))


def test_partial_fit_epochs_equal_fit_epochs():
    # fit(max_iter=3) and three partial_fit calls see the same seeds, shuffles and Adam state
    X, y = series()
    a = GRURegressor(**TINY).fit(X, y)
    b = GRURegressor(**TINY)
    for _ in range(3):
        b.partial_fit(X, y)
    assert np.array_equal(a.predict(X), b.predict(X))
    assert b.n_iter_ == 3 and len(b.loss_curve_) == 3


def test_warm_start_continues_training():
    X, y = series()
    est = GRURegressor(**dict(TINY, warm_start=True))
    est.fit(X, y)
    weights = est.gru_.state_dict()["weight_hh_l0"]
    est.fit(X, y)
    assert est.n_iter_ == 6 and len(est.loss_curve_) == 6
    assert not np.array_equal(est.gru_.state_dict()["weight_hh_l0"], weights)
    # more epochs bring the loss down from where the first fit left it
    assert est.loss_curve_[-1] < est.loss_curve_[2]
    cold = GRURegressor(**TINY).fit(X, y)
    cold.fit(X, y)
    assert cold.n_iter_ == 3
    est.set_params(hidden_size=5)
    with pytest.raises(ValueError, match="hidden_size 4 -> 5"):
        est.fit(X, y)


def test_early_stopping_keeps_the_best_weights():
    X, y = series(n=60)
    params = dict(TINY, max_iter=40, early_stopping=True, validation_fraction=0.25,
                  n_iter_no_change=3, tol=0.0, learning_rate=0.05)
    est = GRURegressor(**params).fit(X, y)
    scores = est.validation_scores_
    assert len(scores) == est.n_iter_ == len(est.loss_curve_)
    best = int(np.argmax(scores))
    assert est.best_validation_score_ == scores[best]
    if est.n_iter_ < 40:  # stopped: n_iter_no_change epochs without a better score
        assert est.n_iter_ == best + 1 + 3
    # The same run cut at the best epoch ends with the same weights.
    cut = GRURegressor(**dict(params, max_iter=best + 1)).fit(X, y)
    assert np.array_equal(est.predict(X), cut.predict(X))


def test_stopping_on_training_loss_without_early_stopping():
    X, y = series()
    est = GRURegressor(**dict(TINY, max_iter=100, tol=1e3, n_iter_no_change=2)).fit(X, y)
    # the first epoch improves on nothing; no later one improves by 1000: stop after 1 + 2
    assert est.n_iter_ == 3
    assert est.validation_scores_ is None
    assert est.best_loss_ == min(est.loss_curve_)
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        GRURegressor(**TINY).fit(X, y)


def test_verbose_prints_one_line_per_epoch(capsys):
    X, y = series()
    GRUClassifier(**dict(TINY, verbose=1, early_stopping=True, validation_fraction=0.3)).fit(
        X, y > 0)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Epoch")]
    assert len(lines) == 3
    assert "loss =" in lines[0] and "validation score =" in lines[0]


def test_fitted_network_can_be_taken_out(tmp_path):
    X, y = series()
    est = GRURegressor(**dict(TINY, bidirectional=True, num_layers=2)).fit(X, y)
    assert isinstance(est.gru_, grufast.GRU) and isinstance(est.head_, grufast.Linear)
    assert not est.gru_.training
    _, h_n = est.gru_(X)
    feat = np.concatenate([h_n[-2], h_n[-1]], axis=1)  # both directions' final states
    np.testing.assert_allclose(est.predict(X), est.head_(feat)[:, 0], rtol=1e-5, atol=1e-6)
    grufast.save(est.gru_, tmp_path / "gru.npz")
    assert np.array_equal(grufast.load(tmp_path / "gru.npz")(X)[1], h_n)
    est.gru_.to_onnx(tmp_path / "gru.onnx")
    np.testing.assert_allclose(grufast.GRU.from_onnx(tmp_path / "gru.onnx")(X)[1], h_n,
                               rtol=1e-6, atol=1e-7)


# -- regressor and classifier specifics -------------------------------------------------------
def test_regressor_multi_output_keeps_y_shape():
    X, y = series()
    Y = np.stack([y, -y], axis=1)
    assert GRURegressor(**TINY).fit(X, Y).predict(X).shape == (24, 2)
    assert GRURegressor(**TINY).fit(X, Y[:, :1]).predict(X).shape == (24, 1)
    est = GRURegressor(**TINY).fit(X, y)
    pred = est.predict(X)
    assert pred.shape == (24,) and pred.dtype == np.float64
    assert est.score(X, y) == pytest.approx(1 - ((y - pred) ** 2).sum()
                                            / ((y - y.mean()) ** 2).sum())


@pytest.mark.parametrize("labels", [["cat", "dog"], [-1, 7, 3], ["a", "b", "c", "d"]])
def test_classifier_labels_and_probabilities(labels):
    X, y = series(n=40)
    y = np.asarray(labels, dtype=object if isinstance(labels[0], str) else None)[
        np.arange(40) % len(labels)]
    est = GRUClassifier(**TINY).fit(X, y)
    assert list(est.classes_) == sorted(labels)
    proba = est.predict_proba(X)
    assert proba.shape == (40, len(labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_allclose(np.log(proba), est.predict_log_proba(X), rtol=1e-10, atol=1e-12)
    pred = est.predict(X)
    assert np.array_equal(pred, est.classes_[np.argmax(proba, axis=1)])
    assert est.score(X, y) == np.mean(pred == y)


def test_classifier_partial_fit_classes():
    X, y = series(n=30)
    y = np.arange(30) % 3
    est = GRUClassifier(**TINY)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        est.partial_fit(X, y)
    est.partial_fit(X[:10], y[:10] % 2, classes=[0, 1, 2])  # class 2 not seen yet: fine
    assert list(est.classes_) == [0, 1, 2]
    est.partial_fit(X, y)
    with pytest.raises(ValueError, match=r"labels unseen in the first call .*: \[5\]"):
        est.partial_fit(X[:2], [0, 5])
    with pytest.raises(ValueError, match="differs from the classes of the first call"):
        est.partial_fit(X, y, classes=[0, 1])
    warm = GRUClassifier(**dict(TINY, warm_start=True)).fit(X, y % 2)
    with pytest.raises(ValueError, match=r"unseen .*: \[2\]"):
        warm.fit(X, y)


def test_classifier_needs_two_classes():
    X, _ = series()
    with pytest.raises(ValueError, match="at least 2 classes, got 1 class"):
        GRUClassifier(**TINY).fit(X, np.ones(24))


# -- scikit-learn machinery -------------------------------------------------------------------
def test_params_and_clone():
    est = GRUClassifier(hidden_size=7, layout="nft", alpha=1e-4)
    params = est.get_params()
    assert params["hidden_size"] == 7 and params["layout"] == "nft"
    assert set(params) == {
        "hidden_size", "num_layers", "bidirectional", "layout", "max_iter", "batch_size",
        "learning_rate", "alpha", "early_stopping", "validation_fraction", "n_iter_no_change",
        "tol", "random_state", "verbose", "warm_start"}
    twin = clone(est.set_params(num_layers=2))
    assert twin.get_params() == est.get_params() and twin is not est


def test_pipeline_and_cross_val_score_on_2d():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 10)) * 5 + 3
    y = (X[:, 2] > 3).astype(int)
    pipe = make_pipeline(StandardScaler(), GRUClassifier(**dict(TINY, max_iter=5)))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and np.all((0 <= scores) & (scores <= 1))
    pipe.fit(X, y)
    assert pipe.predict(X).shape == (60,)


def test_grid_search_in_two_processes():
    X, y = series(n=30)
    grid = GridSearchCV(GRURegressor(**TINY), {"hidden_size": [3, 5]}, cv=2, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 2
    assert grid.best_estimator_.hidden_size in (3, 5)
    # the refitted best model equals a fit made here, bitwise
    here = GRURegressor(**dict(TINY, **grid.best_params_)).fit(X, y)
    assert np.array_equal(grid.predict(X), here.predict(X))


def test_import_grufast_does_not_import_sklearn_or_dask():
    code = ("import sys, grufast; bad = [m for m in ('sklearn', 'dask', 'distributed') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
