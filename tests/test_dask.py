"""grufast.dask on a real distributed.LocalCluster (two worker processes, no mocks):
predictions equal local ones bitwise, the model is scattered once, tasks cap their threads;
dask_ml's ParallelPostFit and GridSearchCV under joblib's dask backend."""

import pickle
import warnings

import dask
import dask.array as da
import joblib
import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

import grufast
import grufast.dask
from grufast.sklearn import GRUClassifier, GRURegressor
from tests.helpers import assert_equal_bits_in_release

TINY = dict(hidden_size=6, max_iter=3, batch_size=8, learning_rate=0.01, random_state=0)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def client():
    # One cluster for the module: starting worker processes is the slow part.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def series(n=40, T=7, F=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, F)).astype(np.float32)
    return X, X[:, :, 0].sum(axis=1)


@pytest.fixture(scope="module")
def regressor():
    X, y = series()
    return GRURegressor(**dict(TINY, bidirectional=True)).fit(X, y)


# -- local scheduler (no client) --------------------------------------------------------------
def test_local_scheduler_matches_numpy_bitwise(regressor):
    X, _ = series(n=33)
    X[3, 5:] = np.nan  # padding travels through chunks like any value
    dX = da.from_array(X, chunks=(7, -1, -1))
    Y = grufast.dask.predict(regressor, dX)
    assert isinstance(Y, da.Array) and Y.shape == (33,) and Y.chunks == (dX.chunks[0],)
    assert Y.npartitions == dX.npartitions  # one task per chunk
    with dask.config.set(scheduler="threads"):
        assert np.array_equal(Y.compute(), regressor.predict(X))


def test_univariate_2d_and_multi_output():
    X, y = series(F=1)
    X2 = X[:, :, 0]
    est = GRURegressor(**TINY).fit(X2, np.stack([y, -y], axis=1))
    Y = grufast.dask.predict(est, da.from_array(X2, chunks=(6, 3)))  # time axis split
    assert Y.shape == (40, 2) and Y.chunks[1] == (2,)
    assert np.array_equal(Y.compute(scheduler="sync"), est.predict(X2))


def test_classifier_methods_and_shapes():
    X, y = series()
    est = GRUClassifier(**TINY).fit(X, np.where(y > 0, "up", "down"))
    dX = da.from_array(X, chunks=(9, -1, -1))
    labels = grufast.dask.predict(est, dX)
    assert labels.dtype == est.classes_.dtype
    assert np.array_equal(labels.compute(scheduler="sync"), est.predict(X))
    proba = grufast.dask.predict(est, dX, method="predict_proba")
    assert proba.shape == (40, 2) and proba.chunks[1] == (2,)
    assert np.array_equal(proba.compute(scheduler="sync"), est.predict_proba(X))


def test_layer_outputs_time_major_and_batch_first():
    X, _ = series(n=12)
    gru = grufast.GRU(3, 5, num_layers=2, bidirectional=True, seed=0)  # train mode is fine
    tm = np.ascontiguousarray(X.transpose(1, 0, 2))
    Y = grufast.dask.predict(gru, da.from_array(tm, chunks=(-1, 5, -1)))
    assert Y.shape == (7, 12, 10) and Y.chunks[1] == (5, 5, 2)
    # Chunks of 5, 5 and 2 sequences take other kernel paths than one batch of 12 (a GEMV
    # per sequence below 4): equal to float32 rounding, bitwise only with some BLAS kernels.
    np.testing.assert_allclose(Y.compute(scheduler="sync"), gru.eval()(tm)[0], rtol=0,
                               atol=1e-6)
    bf = grufast.GRU(3, 5, batch_first=True, seed=0).eval()
    Y = grufast.dask.predict(bf, da.from_array(X, chunks=(4, -1, -1)))
    assert_equal_bits_in_release(Y.compute(scheduler="sync"), bf(X)[0])


def test_per_sequence_defaults_are_refused_and_a_shared_state_kept():
    """default_lengths or a default_h0 of batch > 1 belong to one batch; each task used to
    apply them to its own chunk's first sequences (silently wrong). A default_h0 of batch 1
    is every sequence's: the chunks give the direct call's result."""
    X, _ = series(n=8)
    dX = da.from_array(X, chunks=(4, -1, -1))
    gru = grufast.GRU(3, 5, batch_first=True, seed=1).eval()
    gru.default_lengths = np.array([5, 4, 3, 2])
    with pytest.raises(ValueError, match="default_lengths hold one entry per sequence"):
        grufast.dask.predict(gru, dX)
    gru.default_lengths = None
    gru.default_h0 = np.random.default_rng(2).standard_normal((1, 4, 5))
    with pytest.raises(ValueError, match="default_h0 hold one entry per sequence"):
        grufast.dask.predict(gru, dX)
    gru.default_h0 = np.random.default_rng(3).standard_normal((1, 1, 5))
    assert_equal_bits_in_release(grufast.dask.predict(gru, dX).compute(scheduler="sync"),
                                 gru(X)[0])
    gru.default_lengths = np.arange(8) % 7 + 1  # one chunk of sequences: they match
    one = da.from_array(X, chunks=(-1, -1, -1))
    assert_equal_bits_in_release(grufast.dask.predict(gru, one).compute(scheduler="sync"),
                                 gru(X)[0])


def test_other_axes_split_are_merged_or_refused(regressor):
    X, _ = series(n=20)
    dX = da.from_array(X, chunks=(10, 3, 2))  # time and features split
    Y = grufast.dask.predict(regressor, dX)
    assert Y.chunks == ((10, 10),)
    assert np.array_equal(Y.compute(scheduler="sync"), regressor.predict(X))
    # a bound of two samples per chunk splits the samples axis finer
    two = 2 * 7 * 3 * 4
    Y = grufast.dask.predict(regressor, dX, max_chunk_bytes=two)
    assert Y.chunks == ((2,) * 10,)
    assert np.array_equal(Y.compute(scheduler="sync"), regressor.predict(X))
    with pytest.raises(ValueError, match=r"one sample of shape \(7, 3\) takes 84 bytes, more "
                                         r"than the bound of 80 bytes"):
        grufast.dask.predict(regressor, dX, max_chunk_bytes=80)


def test_bad_arguments(regressor):
    X, _ = series()
    with pytest.raises(TypeError, match="X must be a dask.array.Array"):
        grufast.dask.predict(regressor, X)
    dX = da.from_array(X, chunks=(10, -1, -1))
    with pytest.raises(TypeError, match="fitted grufast.sklearn estimator or a grufast.GRU"):
        grufast.dask.predict(object(), dX)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        grufast.dask.predict(GRURegressor(), dX)
    with pytest.raises(ValueError, match="method must be one of \\['predict'\\]"):
        grufast.dask.predict(regressor, dX, method="predict_proba")
    with pytest.raises(ValueError, match="4-D"):
        grufast.dask.predict(regressor, dX[..., None])
    with pytest.raises(ValueError, match="input_size = 4"):
        grufast.dask.predict(grufast.GRU(4, 2), dX)


def test_local_threads_share_the_cores():
    cores = grufast.dask._machine_cores()
    with dask.config.set(num_workers=2):
        assert grufast.dask.task_threads({}) == max(1, cores // 2)
    with dask.config.set(num_workers=1):
        assert grufast.dask.task_threads({}) == cores


# -- distributed ------------------------------------------------------------------------------
def test_cluster_predictions_equal_local_bitwise(client, regressor):
    X, _ = series(n=50, seed=3)
    dX = da.from_array(X, chunks=(8, -1, -1))
    Y = grufast.dask.predict(regressor, dX)
    # the model is in the graph as one scattered future, never inside the tasks
    graph = dict(Y.__dask_graph__())
    model_bytes = len(pickle.dumps(regressor))
    task_bytes = [len(pickle.dumps(v)) for k, v in graph.items()
                  if isinstance(k, tuple) and k[0] == Y.name]
    assert len(task_bytes) == dX.npartitions and max(task_bytes) < model_bytes / 4
    futures = [v for v in Y.__dask_graph__().values() if type(v).__name__ == "Future"]
    assert len({f.key for f in futures}) <= 1
    assert np.array_equal(Y.compute(), regressor.predict(X))
    assert set(client.who_has(Y.persist()).values())  # ran on the cluster's workers


def test_tasks_cap_their_threads(client):
    limits = grufast.dask._thread_limits()
    info = client.scheduler_info()["workers"]
    assert set(limits) == set(info)
    cores = client.run(grufast.dask._machine_cores)
    for addr, threads in limits.items():
        # two single-thread workers on one machine: cores // 2 threads each, at least one
        assert threads == max(1, cores[addr] // 2)

    def probe(limits):
        from threadpoolctl import threadpool_info

        import grufast.dask as gd

        with gd._ThreadBudget(gd.task_threads(limits)):
            return gd.task_threads(limits), [p["num_threads"] for p in threadpool_info()]

    for fut in client.map(probe, [limits] * 4, pure=False):
        budget, inside = fut.result()
        assert budget == max(1, max(cores.values()) // 2), (budget, cores, limits)
        assert inside and all(n == budget for n in inside), (budget, inside)


_LATE_RUNTIME = """
from threadpoolctl import threadpool_info
import grufast.dask as gd

def pools():
    return [(lib["filepath"], lib["num_threads"]) for lib in threadpool_info()]

with gd._ThreadBudget(1):  # a task running: the pools were found when it started
    before = {path for path, _ in pools()}
    import sklearn.ensemble  # loads scikit-learn's own OpenMP runtime (its wheels vendor one)
    late = sorted({path for path, _ in pools()} - before)
    with gd._ThreadBudget(1):  # a second task starts beside it
        inside = pools()
    between = pools()
print(repr((late, inside, between, pools())))
"""


def test_a_runtime_loaded_while_tasks_run_is_capped_and_restored():
    """An import while a task runs loads another OpenMP runtime: the next task caps it as
    well (a budget that kept the pools it found first left it at one thread per core, which
    fails test_tasks_cap_their_threads on a worker that loaded scikit-learn's runtime after
    its first task: the likely cause of that test's one unexplained failure), and once the
    last task leaves every pool has its own limit back."""
    import ast
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _LATE_RUNTIME], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    late, inside, between, after = ast.literal_eval(out.strip().splitlines()[-1])
    assert late, "importing sklearn.ensemble loaded no new thread pool: nothing was tested"
    assert set(late) <= {path for path, _ in inside}
    assert inside and all(n == 1 for _, n in inside), inside
    # The first task still runs: BLAS (process-wide) stays capped until it leaves.
    assert all(n == 1 for path, n in between if "blas" in path), between
    assert after and all(n == 2 for _, n in after), after


def test_parallel_post_fit_on_2d(client):
    from dask_ml.wrappers import ParallelPostFit

    X, y = series(F=1)
    X2 = X[:, :, 0]
    clf = ParallelPostFit(GRUClassifier(**TINY)).fit(X2, y > 0)
    dX = da.from_array(X2, chunks=(10, -1))
    assert np.array_equal(clf.predict(dX).compute(), clf.estimator.predict(X2))
    assert np.array_equal(clf.predict_proba(dX).compute(), clf.estimator.predict_proba(X2))


def test_grid_search_across_the_cluster(client):
    X, y = series(n=30)
    grid = GridSearchCV(GRURegressor(**TINY), {"hidden_size": [3, 5]}, cv=2)
    with joblib.parallel_backend("dask"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 2
    here = GRURegressor(**dict(TINY, **grid.best_params_)).fit(X, y)
    assert np.array_equal(grid.predict(X), here.predict(X))
