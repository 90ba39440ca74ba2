"""Batches of time series as the estimators take them: the layouts, and NaN padding turned
into lengths. NumPy only; the estimators and the Dask front end share it.

Layouts of a 3-D X:
  "ntf"  (n_samples, T, n_features): PyTorch batch_first, Keras, tslearn
  "nft"  (n_cases, n_channels, n_timepoints): sktime, aeon
A 2-D X is a univariate series (n_samples, T) in either layout.

Variable lengths follow tslearn: a sample's trailing time steps that are NaN in every feature
are padding, so its length is the index of its last step with a number, plus one.
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("ntf", "nft")


def check_layout(layout) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be 'ntf' (n_samples, T, n_features) or 'nft' "
                         f"(n_cases, n_channels, n_timepoints), got {layout!r}")
    return layout


def as_ntf(X: np.ndarray, layout: str) -> np.ndarray:
    """A (n, T, F) view of a 2-D or 3-D array (no copy)."""
    if X.ndim == 2:
        return X[:, :, None]
    if X.ndim != 3:
        raise ValueError(f"X must be 3-D ({_spelled(layout)}) or 2-D univariate "
                         f"(n_samples, T) for layout={layout!r}, got {X.ndim}-D shape "
                         f"{X.shape}")
    return X if layout == "ntf" else X.transpose(0, 2, 1)


def _spelled(layout: str) -> str:
    return ("n_samples, T, n_features" if layout == "ntf"
            else "n_cases, n_channels, n_timepoints")


def padding_lengths(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths from trailing all-NaN steps of a (n, T, F) float array.

    Returns ``(X, lengths)``: X unchanged when it holds no NaN, otherwise a copy with the
    padding set to zero; lengths (n,) intp. A NaN anywhere but in padding raises ValueError
    naming the first such sample and step.
    """
    n, T, _ = X.shape
    if X.size == 0 or not np.isnan(np.min(X)):  # min propagates NaN: one pass, no copy
        return X, np.full(n, T, dtype=np.intp)
    isnan = np.isnan(X)
    step_all = isnan.all(axis=2)  # (n, T): the step is missing in every feature
    valid = ~step_all
    # Index of the last step with a number, counted from the end; argmax finds the first.
    lengths = np.where(valid.any(axis=1), T - np.argmax(valid[:, ::-1], axis=1), 0)
    inside = isnan.any(axis=2) & (np.arange(T)[None, :] < lengths[:, None])
    if inside.any():
        i, t = np.argwhere(inside)[0]
        raise ValueError(
            f"X contains NaN inside a sequence: sample {i}, time step {t} (of its length "
            f"{lengths[i]}). Only trailing time steps that are NaN in every feature are "
            "padding (variable lengths); impute or drop other missing values")
    return np.where(isnan, X.dtype.type(0), X), lengths.astype(np.intp)
