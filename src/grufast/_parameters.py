"""The parameter container shared by GRU, GRUCell and Linear: named parameters in PyTorch's
state-dict layout, gradients of the same names, strict loading, and the weights prepared for
the kernels (transposed copies), rebuilt whenever the parameters change."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from grufast._validate import describe, real_array, state_dict_shape
from grufast.functional import Weights


class _Parameters:
    """Named parameters in PyTorch's state-dict layout, with gradients of the same names."""

    dtype: np.dtype
    _params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    # Counts weight changes (_weights_changed); the class's 0 until the first one.
    _weights_version: int = 0

    def _init_params(self, shapes: dict[str, tuple[int, ...]], hidden_size: int, seed) -> None:
        # PyTorch's initialisation: every parameter uniform in +-1/sqrt(hidden_size).
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(hidden_size)
        self._params = {name: rng.uniform(-k, k, shape).astype(self.dtype)
                        for name, shape in shapes.items()}
        self.grads = {name: np.zeros(shape, self.dtype) for name, shape in shapes.items()}
        self._rng = rng
        self._prepared: dict[str, Weights] = {}  # per layer and direction; see _layer_weights

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters under PyTorch's names (weight_ih_l0, bias_hh_l1_reverse...)."""
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load parameters by name, strictly: every key present, none unexpected, exact shapes.
        Values may be anything ``np.asarray`` takes (torch tensors included)."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {describe(state_dict)}")
        keys = set(state_dict.keys())
        missing = sorted(set(self._params) - keys)
        unexpected = sorted(keys - set(self._params))
        if missing or unexpected:
            raise ValueError(f"state_dict does not match the model: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        converted = {}
        for name, target in self._params.items():
            value = state_dict[name]
            if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
                value = value.detach().cpu()
            arr = real_array(f"state_dict[{name!r}]", value, self.dtype)
            converted[name] = self._entry_shape(name, arr, target.shape)
        for name, arr in converted.items():  # all checked before anything changes
            np.copyto(self._params[name], arr)
        self._weights_changed()

    def _entry_shape(self, name: str, arr: np.ndarray, want: tuple) -> np.ndarray:
        """Check a state-dict entry's shape, naming the sizes it implies on a mismatch."""
        return state_dict_shape(name, arr, want, input_size=self.input_size,
                                hidden_size=self.hidden_size)

    def _weights_changed(self) -> None:
        """Drop what was prepared from the old weights (transposed copies, plans), and count
        the change: a train-mode forward records the count, and backward refuses to run
        through weights changed since (an optimiser step or load_state_dict in between
        would otherwise give the gradient of neither the old weights nor the new)."""
        self._prepared.clear()
        self._weights_version += 1

    def _check_weights_since(self, version: int) -> None:
        """Raise if the weights changed after the train-mode forward that saw ``version``."""
        if self._weights_version != version:
            raise ValueError("the weights changed between the train-mode forward and "
                             "backward (an optimiser step or load_state_dict in between): "
                             "backward would mix the two; run the forward again, then "
                             "backward, then step")

    # Pickle and deepcopy carry the parameters, gradients, mode and random state. What is
    # derived from the weights (prepared copies, the cell's and step's plans) is rebuilt on
    # arrival, and what a train-mode forward recorded for backward (GRU's tape, Linear's
    # input) is left behind: a copy never holds stale weights or a tape of another object's
    # activations.
    _TRANSIENT = ("_tape", "_x", "_lead")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_prepared"] = {}
        state.pop("_plan", None)  # GRUCell's plan
        state.pop("_step_plan_list", None)  # GRU.step's plans, one per layer
        for name in self._TRANSIENT:
            if name in state:
                state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._weights_changed()

    def __copy__(self) -> _Parameters:
        # A shallow copy would share the parameter arrays (load_state_dict and the
        # optimisers write into them in place) but not the weights prepared from them, so
        # an update through one object left the other computing with neither the old
        # weights nor the new. copy.copy gives an independent model, as copy.deepcopy.
        return copy.deepcopy(self)

    def zero_grad(self) -> None:
        """Reset the accumulated parameter gradients to zero."""
        for g in self.grads.values():
            g.fill(0)

    def _layer_weights(self, sfx: str) -> Weights:
        """The kernels' view of one layer and direction, prepared once per weight update."""
        w = self._prepared.get(sfx)
        if w is None:
            p = self._params
            zeros = np.zeros(p["weight_hh" + sfx].shape[0], self.dtype)
            w = Weights(p["weight_ih" + sfx], p["weight_hh" + sfx],
                        p.get("bias_ih" + sfx, zeros), p.get("bias_hh" + sfx, zeros),
                        "bias_ih" + sfx in p)
            self._prepared[sfx] = w
        return w
