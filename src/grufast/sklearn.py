"""scikit-learn estimators: a GRU, then a linear readout of its last state, trained with Adam
on minibatches (``pip install grufast[sklearn]``; ``import grufast`` never imports this).

    GRURegressor   y (n,) or (n, k); score is R^2
    GRUClassifier  any hashable labels, binary or multi-class; score is accuracy

X is 3-D, (n_samples, T, n_features) for ``layout="ntf"`` or (n_cases, n_channels,
n_timepoints) for ``layout="nft"``, or 2-D, a univariate series (n_samples, T). Trailing time
steps that are NaN in every feature are padding (variable lengths); see grufast._series.
"""

from __future__ import annotations

import numbers
import time
import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import (
        check_array,
        check_is_fitted,
        column_or_1d,
        validate_data,
    )
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("grufast.sklearn needs scikit-learn >= 1.6: "
                      "pip install 'grufast[sklearn]'") from exc

from grufast._series import as_ntf, check_layout, padding_lengths
from grufast._validate import describe
from grufast.layers import GRU

__all__ = ["GRUClassifier", "GRURegressor"]

# Prediction runs the GRU on batches whose per-layer output stays under this many bytes, so
# memory does not grow with the number of samples.
_PREDICT_BATCH_BYTES = 32 * 2**20
# The kernels take one path (register tiles, each row summed in one fixed order) for every
# batch of 4 sequences and more, and other paths below. Prediction pads smaller batches to 4
# rows, so a sample's prediction is bitwise the same whatever batch or Dask chunk it is in.
_MIN_BATCH = 4


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {low}, got {describe(value)}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")


def _check_real(name: str, value, low: float, *, open_low: bool, high: float | None = None,
                ) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    bad = not np.isfinite(value) or value < low or (open_low and value == low)
    if high is not None:
        bad = bad or value >= high
    if bad:
        interval = f"{'(' if open_low else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")


class _GRUEstimator(BaseEstimator):
    """What the regressor and the classifier share: parameters, input handling, the
    training loop and the forward pass. Subclasses say how y becomes targets and logits
    become predictions."""

    def __init__(self, hidden_size: int = 64, num_layers: int = 1, bidirectional: bool = False,
                 layout: str = "ntf", max_iter: int = 200, batch_size: int = 32,
                 learning_rate: float = 1e-3, alpha: float = 0.0, early_stopping: bool = False,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-4, random_state=None, verbose: int = 0,
                 warm_start: bool = False) -> None:
        # scikit-learn's rule: store the parameters unchanged, validate them in fit.
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.layout = layout
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.alpha = alpha
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    # -- parameters -----------------------------------------------------------------------
    def _check_params(self) -> None:
        _check_int("hidden_size", self.hidden_size, 1)
        _check_int("num_layers", self.num_layers, 1)
        _check_bool("bidirectional", self.bidirectional)
        check_layout(self.layout)
        _check_int("max_iter", self.max_iter, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_real("learning_rate", self.learning_rate, 0.0, open_low=True)
        _check_real("alpha", self.alpha, 0.0, open_low=False)
        _check_bool("early_stopping", self.early_stopping)
        _check_real("validation_fraction", self.validation_fraction, 0.0, open_low=True,
                    high=1.0)
        _check_int("n_iter_no_change", self.n_iter_no_change, 1)
        _check_real("tol", self.tol, 0.0, open_low=False)
        if not isinstance(self.verbose, (bool, np.bool_)):
            _check_int("verbose", self.verbose, 0)
        _check_bool("warm_start", self.warm_start)
        check_random_state(self.random_state)  # its own clear error

    def _architecture(self) -> dict[str, Any]:
        return dict(hidden_size=self.hidden_size, num_layers=self.num_layers,
                    bidirectional=bool(self.bidirectional))

    def _check_continuable(self) -> None:
        """warm_start and partial_fit continue the fitted network: it must still fit."""
        fitted = self._fitted_architecture
        now = self._architecture()
        changed = {k: (fitted[k], now[k]) for k in now if fitted[k] != now[k]}
        if changed:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"cannot continue training ({type(self).__name__} with "
                             f"warm_start or partial_fit): the network was fitted with other "
                             f"parameters ({what}); fit it anew with warm_start=False")

    # -- input ----------------------------------------------------------------------------
    def _validate_X(self, X, *, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        """X as float32 (n, T, F) with padding zeroed, and lengths (n,).

        2-D X follows scikit-learn to the letter (its columns are n_features_in_ and
        feature_names_in_); a 3-D X's n_features_in_ is its number of features per step.
        """
        if X is None:
            raise ValueError(f"{type(self).__name__} needs X, an array of shape "
                             f"(n_samples, T, n_features) or (n_samples, T); got None")
        nd = getattr(X, "ndim", None)
        if nd is None and not hasattr(X, "tocsr"):
            try:
                nd = np.asarray(X).ndim
            except (ValueError, TypeError):  # ragged: check_array explains below
                nd = 2
        if nd is not None and nd > 3:
            raise ValueError(f"X must be 3-D (layout={self.layout!r}) or 2-D univariate "
                             f"(n_samples, T), got {nd}-D shape {np.shape(X)}")
        if nd != 3:
            if reset or self._fitted_2d:
                X = validate_data(self, X, reset=reset, dtype=np.float32,
                                  ensure_all_finite="allow-nan")
            else:
                X = check_array(X, dtype=np.float32, ensure_all_finite="allow-nan")
            if reset:
                self._fitted_2d = True
            X = as_ntf(X, self.layout)
        else:
            X = check_array(X, allow_nd=True, dtype=np.float32, ensure_all_finite="allow-nan")
            X = as_ntf(X, self.layout)
            if X.shape[1] == 0 or X.shape[2] == 0:
                raise ValueError(f"X must have at least one time step and one feature, got "
                                 f"shape {X.shape} in layout (n_samples, T, n_features)")
            if reset:
                self.n_features_in_ = X.shape[2]
                self._fitted_2d = False
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
        if not reset and X.shape[2] != self.gru_.input_size:
            raise ValueError(f"X has {X.shape[2]} features per time step, but "
                             f"{type(self).__name__} was fitted with "
                             f"{self.gru_.input_size} (X of shape {X.shape} in layout "
                             "(n_samples, T, n_features))")
        return padding_lengths(X)

    @staticmethod
    def _check_length(y: np.ndarray, n: int) -> None:
        if y.shape[0] != n:
            raise ValueError(f"y must have one entry per sample of X: X has {n} samples, "
                             f"y has {y.shape[0]}")

    # -- fitting --------------------------------------------------------------------------
    def fit(self, X: ArrayLike, y: ArrayLike) -> _GRUEstimator:
        """Train the network on X, y for up to ``max_iter`` epochs.

        With ``warm_start=True`` and a fitted network, training continues from its weights
        (with a new optimiser); otherwise the network is built anew from ``random_state``.

        Parameters
        ----------
        X : array_like, shape (n_samples, T, n_features) ("ntf"), (n_cases, n_channels,
            n_timepoints) ("nft") or (n_samples, T) (univariate)
        y : array_like, shape (n_samples,) or (n_samples, n_outputs) (regressor)

        Returns
        -------
        self
        """
        self._check_params()
        cont = bool(self.warm_start) and hasattr(self, "gru_")
        if cont:
            self._check_continuable()
        X, lengths = self._validate_X(X, reset=not cont)
        targets = self._validate_y(y, X.shape[0], reset=not cont)
        if not cont:
            self._initialize(X.shape[2], targets)
        self._train(X, lengths, targets, incremental=False)
        return self

    def _partial_fit(self, X, y, classes=None) -> _GRUEstimator:
        self._check_params()
        first = not hasattr(self, "gru_")
        if not first:
            self._check_continuable()
        X, lengths = self._validate_X(X, reset=first)
        targets = self._validate_y(y, X.shape[0], reset=first, classes=classes,
                                   partial=True)
        if first:
            self._initialize(X.shape[2], targets)
        self._train(X, lengths, targets, incremental=True)
        return self

    def _initialize(self, n_features: int, targets: np.ndarray) -> None:
        from grufast import Linear

        rng = check_random_state(self.random_state)
        gru_seed, head_seed, shuffle_seed = (int(s) for s in rng.randint(0, 2**31 - 1, 3))
        self.gru_ = GRU(n_features, self.hidden_size, self.num_layers, batch_first=True,
                        bidirectional=bool(self.bidirectional), dtype=np.float32,
                        seed=gru_seed)
        D = 2 if self.bidirectional else 1
        self.head_ = Linear(D * self.hidden_size, self._n_logits(targets), dtype=np.float32,
                            seed=head_seed)
        self._shuffle_rng = np.random.default_rng(shuffle_seed)
        self._fitted_architecture = self._architecture()
        self._optimizer = None
        self.loss_curve_: list[float] = []
        self.validation_scores_: list[float] | None = None
        self.best_validation_score_: float | None = None
        self.best_loss_ = np.inf
        self.n_iter_ = 0

    def _new_optimizer(self):
        from grufast.optim import Adam

        return Adam([self.gru_, self.head_], lr=float(self.learning_rate),
                    weight_decay=float(self.alpha))

    def _train(self, X: np.ndarray, lengths: np.ndarray, targets: np.ndarray, *,
               incremental: bool) -> None:
        """Epochs of shuffled minibatches; fit() runs up to max_iter of them with the
        stopping rules, partial_fit() one, keeping the optimiser's state between calls."""
        if not incremental or self._optimizer is None:
            self._optimizer = self._new_optimizer()
        early = bool(self.early_stopping) and not incremental
        if early:
            X, lengths, targets, val = self._split_validation(X, lengths, targets)
            if self.validation_scores_ is None or not self.warm_start:
                self.validation_scores_ = []
            best_score, best_state = -np.inf, None
        n = X.shape[0]
        batch = min(int(self.batch_size), n)
        epochs = 1 if incremental else int(self.max_iter)
        stale = 0  # epochs in a row without an improvement by tol
        self.gru_.train()
        self.head_.train()
        try:
            for _ in range(epochs):
                start = time.perf_counter()
                order = self._shuffle_rng.permutation(n)
                total = 0.0
                for lo in range(0, n, batch):
                    idx = np.sort(order[lo:lo + batch])
                    total += self._step(X[idx], lengths[idx], targets[idx]) * len(idx)
                loss = total / n
                self.loss_curve_.append(loss)
                self.n_iter_ += 1
                line = f"Epoch {self.n_iter_}: loss = {loss:.6g}"
                if early:
                    score = self._score_arrays(*val)
                    self.validation_scores_.append(score)
                    stale = 0 if score > best_score + self.tol else stale + 1
                    if score > best_score:
                        best_score, best_state = score, self._state()
                    line += f", validation score = {score:.6g}"
                elif not incremental:
                    stale = 0 if loss < self.best_loss_ - self.tol else stale + 1
                self.best_loss_ = min(self.best_loss_, loss)
                if self.verbose:
                    print(f"{line} ({time.perf_counter() - start:.2f} s)", flush=True)
                if not incremental and stale >= self.n_iter_no_change:
                    if self.verbose:
                        what = "validation score" if early else "training loss"
                        print(f"{what} did not improve by more than tol={self.tol} for "
                              f"{self.n_iter_no_change} epochs: stopping", flush=True)
                    break
            else:
                if not incremental and epochs > 1:
                    warnings.warn(f"{type(self).__name__}: max_iter={self.max_iter} epochs "
                                  "reached and the optimisation has not converged yet",
                                  ConvergenceWarning, stacklevel=3)
        finally:
            self.gru_.eval()
            self.head_.eval()
        if early and best_state is not None:  # None only if every score was NaN
            self._load_state(best_state)
            self.best_validation_score_ = best_score

    def _split_validation(self, X, lengths, targets):
        n = X.shape[0]
        n_val = int(np.ceil(self.validation_fraction * n))
        if n_val < 1 or n - n_val < 1:
            raise ValueError(f"early_stopping holds out validation_fraction="
                             f"{self.validation_fraction} of the {n} samples: need at least "
                             "one sample on each side")
        seed = int(self._shuffle_rng.integers(2**31 - 1))
        stratify = targets if isinstance(self, ClassifierMixin) else None
        tr, va = train_test_split(np.arange(n), test_size=n_val, random_state=seed,
                                  stratify=stratify)
        tr.sort()
        va.sort()
        return X[tr], lengths[tr], targets[tr], (X[va], lengths[va], targets[va])

    def _state(self) -> tuple[dict, dict]:
        return self.gru_.state_dict(), self.head_.state_dict()

    def _load_state(self, state: tuple[dict, dict]) -> None:
        self.gru_.load_state_dict(state[0])
        self.head_.load_state_dict(state[1])

    def _features(self, h_n: np.ndarray) -> np.ndarray:
        """The last layer's final states, (B, D * H): forward then reverse direction."""
        D = 2 if self.gru_.bidirectional else 1
        return np.concatenate(list(h_n[-D:]), axis=1)

    def _step(self, X: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> float:
        """One minibatch: forward, loss, backward, Adam step. Returns the batch loss."""
        _, h_n = self.gru_(X, lengths=lengths)
        logits = self.head_(self._features(h_n))
        loss, dlogits = self._loss(logits, targets)
        self._optimizer.zero_grad()
        dfeat = self.head_.backward(dlogits)
        D, H = (2 if self.gru_.bidirectional else 1), self.gru_.hidden_size
        dh_n = np.zeros_like(h_n)
        dh_n[-D:] = dfeat.reshape(-1, D, H).transpose(1, 0, 2)
        self.gru_.backward(None, dh_n)
        self._optimizer.step()
        return float(loss)

    # -- prediction -----------------------------------------------------------------------
    def _decision(self, X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The readout, (n, n_logits) float64, computed in bounded batches.

        The GRU runs in float32; the readout is computed in float64 row by row (a product
        and a sum per row, no BLAS call whose blocking depends on the batch), so that each
        sample's output is bitwise independent of the batch it comes in.
        """
        n, T, _ = X.shape
        state = self.head_.state_dict()
        w = state["weight"].astype(np.float64)
        b = state["bias"].astype(np.float64) if "bias" in state else 0.0
        D = 2 if self.gru_.bidirectional else 1
        row_bytes = T * D * self.gru_.hidden_size * 4 + w.size * 8
        rows = max(_MIN_BATCH, _PREDICT_BATCH_BYTES // row_bytes)
        out = np.empty((n, w.shape[0]), np.float64)
        for lo in range(0, n, rows):
            xb, lb = X[lo:lo + rows], lengths[lo:lo + rows]
            m = xb.shape[0]
            if m < _MIN_BATCH:  # pad with copies of its first sample; see _MIN_BATCH
                xb = np.concatenate([xb, np.repeat(xb[:1], _MIN_BATCH - m, axis=0)])
                lb = np.concatenate([lb, np.repeat(lb[:1], _MIN_BATCH - m)])
            _, h_n = self.gru_(xb, lengths=lb)
            feat = self._features(h_n)[:m].astype(np.float64)
            out[lo:lo + m] = (feat[:, None, :] * w[None, :, :]).sum(axis=2) + b
        return out

    def _forward(self, X) -> np.ndarray:
        check_is_fitted(self, "gru_")
        X, lengths = self._validate_X(X, reset=False)
        return self._decision(X, lengths)


class GRURegressor(RegressorMixin, _GRUEstimator):
    """A GRU with a linear readout of its last state, for regression on time series.

    Parameters
    ----------
    hidden_size : int, default 64
    num_layers : int, default 1
    bidirectional : bool, default False
        The readout sees both directions' final states.
    layout : {"ntf", "nft"}, default "ntf"
        3-D X is (n_samples, T, n_features) for "ntf" (PyTorch batch_first, Keras, tslearn),
        (n_cases, n_channels, n_timepoints) for "nft" (sktime, aeon). 2-D X is univariate
        (n_samples, T) either way.
    max_iter : int, default 200
        Epochs (passes over the training data).
    batch_size : int, default 32
        Minibatch size (the whole set when larger).
    learning_rate : float, default 1e-3
        Adam's step size.
    alpha : float, default 0.0
        L2 penalty, as Adam's weight_decay.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data, stop when its score (R^2)
        has not improved by ``tol`` for ``n_iter_no_change`` epochs, keep the best weights.
        Without it, training stops when the training loss has not improved by ``tol`` for
        ``n_iter_no_change`` epochs.
    validation_fraction : float in (0, 1), default 0.1
    n_iter_no_change : int, default 10
    tol : float, default 1e-4
    random_state : int, RandomState or None
        Fixes the initialisation, the shuffling and the validation split: two fits give
        bitwise equal predictions.
    verbose : int, default 0
        Print one line per epoch.
    warm_start : bool, default False
        ``fit`` continues from the fitted weights.

    Attributes
    ----------
    gru_ : grufast.GRU (batch_first=True, float32, eval mode)
    head_ : grufast.Linear
    loss_curve_ : list of float
        Mean training loss (MSE) per epoch.
    validation_scores_ : list of float or None
        R^2 on the held-out set per epoch, with early stopping.
    best_validation_score_ : float or None
    best_loss_ : float
        Lowest training loss reached.
    n_iter_ : int
        Epochs run (over all calls).
    n_outputs_ : int
    n_features_in_ : int
        Features per time step of a 3-D X; columns of a 2-D X (scikit-learn's meaning).
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _validate_y(self, y, n: int, *, reset: bool, classes=None, partial=False):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None")
        y = check_array(y, ensure_2d=False, allow_nd=True, dtype=np.float64, input_name="y")
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D (n_samples,) or 2-D (n_samples, n_outputs), "
                             f"got {y.ndim}-D shape {y.shape}")
        self._check_length(y, n)
        targets = np.ascontiguousarray(y.reshape(n, -1), dtype=np.float32)
        if reset:
            self._y_ndim = y.ndim
            self.n_outputs_ = targets.shape[1]
        elif targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} outputs, but {type(self).__name__} "
                             f"was fitted with {self.n_outputs_}")
        return targets

    @staticmethod
    def _n_logits(targets: np.ndarray) -> int:
        return targets.shape[1]

    def _loss(self, out, targets):
        from grufast.losses import mse

        return mse(out, targets)

    def _score_arrays(self, X, lengths, targets) -> float:
        from sklearn.metrics import r2_score

        return float(r2_score(targets, self._decision(X, lengths)))

    def partial_fit(self, X: ArrayLike, y: ArrayLike) -> GRURegressor:
        """One epoch over X, y, continuing from the current weights and optimiser state
        (the network is built on the first call). Early stopping does not apply."""
        return self._partial_fit(X, y)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predictions, float64, shape (n_samples,) or (n_samples, n_outputs) like y."""
        out = self._forward(X)
        return out[:, 0] if self._y_ndim == 1 else out


class GRUClassifier(ClassifierMixin, _GRUEstimator):
    """A GRU with a linear readout of its last state, for classification of time series
    (softmax over the classes, cross-entropy loss).

    Parameters are those of :class:`GRURegressor`; early stopping scores accuracy.

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
        The labels, sorted.
    gru_, head_, loss_curve_, validation_scores_, best_validation_score_, best_loss_,
    n_iter_, n_features_in_ : as for GRURegressor (the loss is cross-entropy)
    """

    def _validate_y(self, y, n: int, *, reset: bool, classes=None, partial=False):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None")
        y = check_array(y, ensure_2d=False, dtype=None, input_name="y")
        y = column_or_1d(y, warn=True)
        self._check_length(y, n)
        check_classification_targets(y)
        if reset:
            if partial:
                if classes is None:
                    raise ValueError("classes must be passed on the first call to "
                                     "partial_fit: all labels that will ever appear")
                self.classes_ = np.unique(column_or_1d(np.asarray(classes)))
            else:
                self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError(f"{type(self).__name__} needs at least 2 classes, got "
                                 f"{len(self.classes_)} class: {self.classes_.tolist()}")
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={np.unique(classes).tolist()} differs from the classes "
                             f"of the first call, {self.classes_.tolist()}")
        unseen = np.setdiff1d(y, self.classes_)
        if unseen.size:
            raise ValueError(f"y contains labels unseen in the first call (classes_ = "
                             f"{self.classes_.tolist()}): {unseen.tolist()[:10]}")
        return np.searchsorted(self.classes_, y).astype(np.intp)

    def _n_logits(self, targets) -> int:
        return len(self.classes_)

    def _loss(self, logits, labels):
        from grufast.losses import cross_entropy

        return cross_entropy(logits, labels)

    def _score_arrays(self, X, lengths, labels) -> float:
        return float(np.mean(np.argmax(self._decision(X, lengths), axis=1) == labels))

    def partial_fit(self, X: ArrayLike, y: ArrayLike, classes: ArrayLike | None = None
                    ) -> GRUClassifier:
        """One epoch over X, y, continuing from the current weights and optimiser state.

        ``classes`` (every label that will appear) is required on the first call; labels
        outside it raise ValueError later. Early stopping does not apply."""
        return self._partial_fit(X, y, classes)

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Log class probabilities, float64 (n_samples, n_classes), columns as classes_."""
        logits = self._forward(X)
        shifted = logits - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities (softmax), float64 (n_samples, n_classes)."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The most probable label for each sample, (n_samples,)."""
        logits = self._forward(X)
        return self.classes_[np.argmax(logits, axis=1)]
