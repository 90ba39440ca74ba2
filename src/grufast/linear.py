"""Linear: an affine readout with torch.nn.Linear's constructor, initialisation, names and
shapes, plus the backward pass that training without a framework needs."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from grufast._parameters import _Parameters
from grufast._validate import (
    describe,
    flag,
    model_dtype,
    positive_int,
    private_copy,
    real_array,
)


class Linear(_Parameters):
    """y = x W^T + b over the last axis of x, as torch.nn.Linear.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    dtype : float32 or float64
    seed : int, optional
        Seeds the initialisation.

    Parameters are ``weight`` (out_features, in_features) and ``bias`` (out_features,),
    both uniform in +-1/sqrt(in_features) as PyTorch initialises them. A new layer is in
    train mode: a forward keeps its input for ``backward``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype: DTypeLike = np.float32, seed: int | None = None) -> None:
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.bias = flag("bias", bias)
        self.dtype = model_dtype(dtype)
        self.training = True
        self._x: np.ndarray | None = None  # the last train-mode input, (N, in_features)
        self._lead: tuple[int, ...] | None = None  # its leading dimensions
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        # torch.nn.Linear: kaiming_uniform_(a=sqrt(5)) on the weight, which is uniform in
        # +-1/sqrt(fan_in), and the bias uniform in the same range.
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(self.in_features)
        self._params = {n: rng.uniform(-k, k, s).astype(self.dtype) for n, s in shapes.items()}
        self.grads = {n: np.zeros(s, self.dtype) for n, s in shapes.items()}
        self._rng = rng
        self._prepared = {}

    def config(self) -> dict[str, Any]:
        """The constructor arguments (dtype as a name), as save() stores them."""
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias, dtype=self.dtype.name)

    def __repr__(self) -> str:
        return "Linear(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    @property
    def weight(self) -> np.ndarray:
        """The weight (out_features, in_features), the array the layer computes with."""
        return self._params["weight"]

    def _entry_shape(self, name: str, arr: np.ndarray, want: tuple) -> np.ndarray:
        if arr.shape != tuple(want):
            raise ValueError(f"state_dict[{name!r}] has shape {arr.shape}, but this Linear has "
                             f"in_features {self.in_features} and out_features "
                             f"{self.out_features}: shape {tuple(want)} expected")
        return arr

    def train(self, mode: bool = True) -> Linear:
        self.training = flag("mode", mode)
        self._x = self._lead = None
        return self

    def eval(self) -> Linear:
        return self.train(False)

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Apply the layer.

        Parameters
        ----------
        x : array_like, shape (..., in_features)

        Returns
        -------
        ndarray, shape (..., out_features), the layer's dtype
        """
        given = x
        x = real_array("x", x, self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., in_features) with in_features = "
                             f"{self.in_features}, got {x.shape}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self._params["weight"].T
        if self.bias:
            y += self._params["bias"]
        if self.training:
            # Kept until backward: a copy when it is the caller's array, which the caller may
            # reuse in between (the GRU keeps its input the same way).
            x2 = private_copy(x, given).reshape(-1, self.in_features)
            self._x, self._lead = x2, lead
            self._x_version = self._weights_version
        return y.reshape(*lead, self.out_features)

    def backward(self, dy: ArrayLike) -> np.ndarray:
        """Back-propagate through the last train-mode forward.

        Parameter gradients are added into ``grads`` ("weight", "bias") until
        ``zero_grad()``.

        Parameters
        ----------
        dy : array_like, shape (..., out_features), shaped like that forward's output

        Returns
        -------
        dx : ndarray shaped like that forward's input
        """
        if self._x is None:
            raise ValueError("backward needs a forward in train mode first (call train(), "
                             "then the layer, then backward); got none since the last "
                             "backward, train() or eval()")
        self._check_weights_since(self._x_version)
        lead, x2 = self._lead, self._x
        want = (*lead, self.out_features)
        dy = real_array("dy", dy, self.dtype)
        if dy.shape != want:
            raise ValueError(f"dy must have the shape of the forward's output {want}, got "
                             f"{dy.shape}")
        self._x = self._lead = None
        dy2 = dy.reshape(-1, self.out_features)
        self.grads["weight"] += dy2.T @ x2
        if self.bias:
            self.grads["bias"] += dy2.sum(axis=0)
        return (dy2 @ self._params["weight"]).reshape(*lead, self.in_features)

    @classmethod
    def from_torch(cls, module) -> Linear:
        """A Linear with the configuration, weights and train/eval mode of a torch.nn.Linear
        (float32 or float64)."""
        import torch

        if not isinstance(module, torch.nn.Linear):
            raise TypeError(f"module must be a torch.nn.Linear, got {describe(module)}")
        from grufast.interop.torch import check_plain_module, module_dtype

        check_plain_module(module, torch.nn.Linear)
        dtype = module_dtype(module)
        lin = cls(module.in_features, module.out_features, module.bias is not None,
                  dtype=dtype)
        lin.load_state_dict(module.state_dict())
        return lin.train(module.training)
