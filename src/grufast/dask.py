"""Scale-out inference on Dask (``pip install grufast[dask]``; ``import grufast`` never
imports this): ``predict(model, X)`` maps a fitted estimator or a GRU over a dask array
chunked along samples, one task per chunk.

On an active ``dask.distributed`` Client the model travels to the workers once (scattered,
broadcast) and each task refers to it; without one, the model is a single node of the graph
that every task depends on. Either way no task carries its own copy. Each task caps grufast's
and BLAS's threads so that the threads running tasks side by side on a machine, times the
threads each of them uses, never exceed that machine's cores.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from typing import Any

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.utils import parse_bytes
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("grufast.dask needs dask[array]: pip install 'grufast[dask]'") from exc

from grufast._validate import describe
from grufast.layers import GRU

__all__ = ["predict"]

_METHODS = ("predict", "predict_proba", "predict_log_proba")


def predict(model, X, *, method: str = "predict", max_chunk_bytes: int | str | None = None):
    """Lazy predictions of ``model`` over the dask array ``X``, one task per chunk.

    Parameters
    ----------
    model : a fitted grufast.sklearn estimator, or a grufast.GRU
        An estimator takes X as its ``predict`` does: (n_samples, T, n_features) for
        layout="ntf", (n_cases, n_channels, n_timepoints) for "nft", (n_samples, T)
        univariate; trailing all-NaN steps are padding. A GRU takes (T, B, input_size), or
        (B, T, input_size) if batch_first, and gives its outputs y.
    X : dask.array.Array
        Chunked along the samples axis. Chunks split along another axis are merged
        (rechunked), splitting the samples axis finer where needed to keep each chunk within
        ``max_chunk_bytes``; if even one sample exceeds it, a ValueError says so.
    method : {"predict", "predict_proba", "predict_log_proba"}
        The estimator's method to map (estimators only).
    max_chunk_bytes : int or str, optional
        The bound on a rechunked input chunk; by default dask's ``array.chunk-size``.

    Returns
    -------
    dask.array.Array
        Estimator: predictions (n_samples,) or (n_samples, n_outputs) / (n_samples,
        n_classes), chunked as X's samples. GRU: y, (T, B, D * hidden_size) or batch-first.
    """
    if not isinstance(X, da.Array):
        raise TypeError(f"X must be a dask.array.Array chunked along samples, got "
                        f"{describe(X)}; wrap a NumPy array with dask.array.from_array(X, "
                        "chunks=...)")
    if isinstance(model, GRU):
        if method != "predict":
            raise ValueError(f"method applies to estimators only; a GRU gives its outputs y, "
                             f"got method={method!r}")
        axis, out_meta = _gru_spec(model, X)
    else:
        axis, out_meta = _estimator_spec(model, X, method)
    X = _merge_other_axes(X, axis, max_chunk_bytes)
    if isinstance(model, GRU):
        _check_per_sequence_defaults(model, len(X.chunks[axis]))
    ref = _model_reference(model)
    limits = _thread_limits()
    out_shape, dtype = out_meta
    if isinstance(model, GRU):
        chunks = tuple(X.chunks[i] if i < 2 else (out_shape[i],) for i in range(3))
        return da.map_blocks(_gru_chunk, X, ref, limits, chunks=chunks, dtype=dtype,
                             meta=np.empty((0,) * 3, dtype))
    ndim_out = len(out_shape)
    chunks = (X.chunks[0],) + tuple((s,) for s in out_shape[1:])
    drop = tuple(range(ndim_out, X.ndim))
    new = tuple(range(X.ndim, ndim_out))
    return da.map_blocks(_estimator_chunk, X, ref, method, limits, chunks=chunks, dtype=dtype,
                         drop_axis=drop, new_axis=new, meta=np.empty((0,) * ndim_out, dtype))


# -- what comes out -----------------------------------------------------------------------
def _gru_spec(gru: GRU, X) -> tuple[int, tuple[tuple[int, ...], np.dtype]]:
    if X.ndim != 3:
        raise ValueError(f"X must be 3-D, (T, B, input_size) or (B, T, input_size) with "
                         f"batch_first, for a GRU, got {X.ndim}-D shape {X.shape}")
    if X.shape[2] != gru.input_size:
        raise ValueError(f"X must have input_size = {gru.input_size} features in its last "
                         f"axis, got shape {X.shape}")
    axis = 0 if gru.batch_first else 1
    out = (*X.shape[:2], gru.num_directions * gru.hidden_size)
    return axis, (out, gru.dtype)


def _check_per_sequence_defaults(gru: GRU, chunks: int) -> None:
    """Per-sequence defaults belong to one batch; with X's sequences in several chunks,
    each task would apply them to its own chunk's first sequences (a direct call of another
    batch size refuses them). A default_h0 of batch 1 is every sequence's: kept."""
    per_sequence = [name for name, v in (("default_lengths", gru.default_lengths),
                                         ("default_h0", gru.default_h0))
                    if v is not None and (name == "default_lengths" or v.shape[1] > 1)]
    if per_sequence and chunks > 1:
        raise ValueError(f"the GRU's {' and '.join(per_sequence)} hold one entry per "
                         f"sequence of a fixed batch, which predict cannot match to X's "
                         f"{chunks} chunks of sequences; set them to None (pass lengths or a "
                         "mask to the model directly for such a batch), or give X one chunk "
                         "of sequences")


def _estimator_spec(model, X, method: str):
    try:
        from sklearn.utils.validation import check_is_fitted

        from grufast.sklearn import _GRUEstimator
    except ImportError:  # without scikit-learn there are no estimators to take
        _GRUEstimator = ()
    if not isinstance(model, _GRUEstimator):
        raise TypeError(f"model must be a fitted grufast.sklearn estimator or a grufast.GRU, "
                        f"got {describe(model)}")
    check_is_fitted(model, "gru_")
    if method not in _METHODS or not hasattr(model, method):
        raise ValueError(f"method must be one of {[m for m in _METHODS if hasattr(model, m)]}"
                         f" for {type(model).__name__}, got {method!r}")
    if X.ndim not in (2, 3):
        raise ValueError(f"X must be 3-D (layout={model.layout!r}) or 2-D univariate "
                         f"(n_samples, T), got {X.ndim}-D shape {X.shape}")
    n = X.shape[0]
    if hasattr(model, "classes_"):
        if method == "predict":
            return 0, ((n,), model.classes_.dtype)
        return 0, ((n, len(model.classes_)), np.dtype(np.float64))
    out = (n,) if model._y_ndim == 1 else (n, model.n_outputs_)
    return 0, (out, np.dtype(np.float64))


# -- chunking -----------------------------------------------------------------------------
def _merge_other_axes(X, axis: int, max_chunk_bytes):
    """X with every axis but the samples axis in one chunk, within max_chunk_bytes."""
    others = [i for i in range(X.ndim) if i != axis]
    if all(len(X.chunks[i]) == 1 for i in others):
        return X
    bound = parse_bytes(max_chunk_bytes if max_chunk_bytes is not None
                        else dask.config.get("array.chunk-size"))
    sample_bytes = int(np.prod([X.shape[i] for i in others])) * X.dtype.itemsize
    if sample_bytes > bound:
        raise ValueError(
            f"X is chunked along axes other than its samples axis ({axis}), chunks "
            f"{X.chunks}; each task needs whole samples, and one sample of shape "
            f"{tuple(X.shape[i] for i in others)} takes {sample_bytes} bytes, more than the "
            f"bound of {bound} bytes per chunk (max_chunk_bytes or dask's array.chunk-size). "
            "Raise the bound if the workers have the memory, or split the series "
            "differently")
    rows = max(1, min(max(X.chunks[axis]), bound // sample_bytes))
    return X.rechunk({axis: rows, **{i: -1 for i in others}})


# -- the model on the workers -------------------------------------------------------------
def _active_client():
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client
        return None


def _model_reference(model):
    client = _active_client()
    if client is not None:
        # In a list: scatter would spread a dict-like or sequence model over many keys.
        return client.scatter([model], broadcast=True, hash=False)[0]
    return dask.delayed(model, name=f"grufast-model-{uuid.uuid4().hex}")


def _thread_limits() -> dict[str, Any]:
    """grufast/BLAS threads per task on each worker of the active client: the cores of its
    machine over the task threads all its workers run there."""
    client = _active_client()
    if client is None:
        return {}
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(_machine_cores)
    threads_on_host: dict[str, int] = {}
    for info in workers.values():
        threads_on_host[info["host"]] = threads_on_host.get(info["host"], 0) + info["nthreads"]
    return {addr: max(1, cores.get(addr, 1) // threads_on_host[info["host"]])
            for addr, info in workers.items()}


def _machine_cores() -> int:
    """The cores this process may use: dask's count (cgroup quota and affinity at import),
    narrowed by the affinity now (a worker pinned after it started)."""
    cores = int(dask.system.CPU_COUNT)
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, cores)


_limit_lock = threading.Lock()
_limit_state: dict[str, Any] = {"active": 0, "blas": [], "controller": None, "modules": -1}


class _ThreadBudget:
    """Cap grufast's (OpenMP) and BLAS threads while a task runs.

    OpenMP's limit belongs to the calling thread, so each task sets and restores its own.
    BLAS's is process-wide, shared by tasks running side by side: the first to enter sets it,
    the last to leave restores what was there before.

    The thread pools are found once (a ThreadpoolController: 2.4 ms to make) and found again
    whenever ``sys.modules`` has changed size since: an import can load another OpenMP or
    BLAS runtime (scikit-learn's vendored libgomp), which a stale controller would leave
    uncapped, running as many threads as cores beside the task's.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> _ThreadBudget:
        from threadpoolctl import ThreadpoolController

        with _limit_lock:
            st = _limit_state
            fresh = st["controller"] is None or st["modules"] != len(sys.modules)
            if fresh:
                st["controller"] = ThreadpoolController()
                st["modules"] = len(sys.modules)
            if st["active"] == 0 or fresh:
                # Tasks running now keep the limits they set; a runtime found since gets
                # capped too, and every limit set is undone, last first, when the last leaves.
                st["blas"].append(st["controller"].limit(limits=self.threads, user_api="blas"))
            st["active"] += 1
            self._openmp = st["controller"].limit(limits=self.threads, user_api="openmp")
        return self

    def __exit__(self, *exc) -> None:
        with _limit_lock:
            self._openmp.restore_original_limits()
            st = _limit_state
            st["active"] -= 1
            if st["active"] == 0:
                while st["blas"]:
                    st["blas"].pop().restore_original_limits()


def task_threads(limits: dict[str, Any]) -> int:
    """The grufast/BLAS threads a task may use where it runs (a distributed worker: from
    ``limits``; the local threaded scheduler: the cores over its pool's threads)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        return int(limits.get(worker.address, 1))
    cores = _machine_cores()
    pool = dask.config.get("num_workers", None) or cores
    return max(1, cores // pool)


def _estimator_chunk(block: np.ndarray, model, method: str, limits) -> np.ndarray:
    with _ThreadBudget(task_threads(limits)):
        return getattr(model, method)(block)


def _gru_chunk(block: np.ndarray, gru: GRU, limits) -> np.ndarray:
    with _ThreadBudget(task_threads(limits)):
        if gru.training:  # a train-mode model would record a tape: run a copy in eval mode
            import copy

            gru = copy.copy(gru)
            gru.training = False
        return gru(block)[0]

