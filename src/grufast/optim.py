"""Optimisers over grufast modules (GRU, GRUCell, Linear, in any mix), with torch.optim's
update formulas and defaults, and gradient clipping by norm.

Each module holds its parameters and their gradients in dicts of the same names (its
state-dict keys). An optimiser updates the parameters in place, then tells each module its
weights changed, so that what the module derived from them (transposed copies, cell plans)
is rebuilt: a forward after ``step()`` computes with the new weights.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from grufast._parameters import _Parameters
from grufast._validate import describe, flag, real_array

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "clip_grad_norm"]


def _modules(modules) -> list[_Parameters]:
    """The modules as a list: each a grufast module, at least one, none twice."""
    if isinstance(modules, _Parameters):
        raise TypeError(f"modules must be a list of grufast modules, got one module "
                        f"({type(modules).__name__}); pass [module]")
    try:
        mods = list(modules)
    except TypeError:
        raise TypeError(f"modules must be a list of grufast modules (GRU, GRUCell, Linear), "
                        f"got {describe(modules)}") from None
    if not mods:
        raise ValueError("modules must hold at least one module, got an empty list")
    for i, m in enumerate(mods):
        if not isinstance(m, _Parameters):
            raise TypeError(f"modules[{i}] must be a grufast GRU, GRUCell or Linear, got "
                            f"{describe(m)}")
    for i, m in enumerate(mods):
        for j in range(i):
            if mods[j] is m:
                raise ValueError(f"modules must not repeat a module: modules[{j}] and "
                                 f"modules[{i}] are the same {type(m).__name__}")
    return mods


def _number(name: str, value, *, low: float = 0.0, high: float | None = None,
            high_open: bool = False) -> float:
    """A finite real number in [low, high] (or [low, high) when high_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    v = float(value)
    if not math.isfinite(v) or v < low or (high is not None and (
            v >= high if high_open else v > high)):
        rng = f"[{low}, {high})" if high_open else f"[{low}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must lie in {rng}, got {value}")
    return v


class Optimizer:
    """Base class: the modules, their parameters in a fixed order, per-parameter state."""

    def __init__(self, modules, defaults: dict[str, Any]) -> None:
        self.modules = _modules(modules)
        self.defaults = defaults
        self.state: list[dict[str, dict[str, Any]]] = [{} for _ in self.modules]

    def __getattr__(self, name: str):
        # The hyper-parameters read as attributes (opt.lr) and can be set (opt.lr = 1e-4).
        defaults = self.__dict__.get("defaults")
        if defaults is not None and name in defaults:
            return defaults[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        defaults = self.__dict__.get("defaults")
        if defaults is not None and name in defaults:
            defaults[name] = self._check(dict(defaults, **{name: value}))[name]
        else:
            super().__setattr__(name, value)

    def _check(self, hp: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        mods = ", ".join(type(m).__name__ for m in self.modules)
        return f"{type(self).__name__}([{mods}], {args})"

    def zero_grad(self) -> None:
        """Reset every module's accumulated gradients to zero."""
        for m in self.modules:
            m.zero_grad()

    def step(self) -> None:
        """Update every parameter from its gradient, in place; then refresh what each module
        derived from its weights."""
        for m, state in zip(self.modules, self.state):
            for name, p in m._params.items():
                st = state.get(name)
                if st is None:
                    st = state[name] = {"step": 0}
                self._update(p, m.grads[name], st)
            m._weights_changed()

    def _update(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def _buffers(self, hp: dict[str, Any]) -> tuple[set[str], set[str] | None]:
        """The per-parameter buffers: those a parameter that has taken a step needs under
        hyper-parameters ``hp``, and all those it may hold, for load_state_dict's check
        (None: any; the default, for a subclass that does not say)."""
        return set(), None

    # -- resuming ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The hyper-parameters and a copy of the per-parameter state (step counts and
        moment buffers), keyed by module position and parameter name."""
        return {
            "type": type(self).__name__,
            "hyperparameters": dict(self.defaults),
            "state": [{name: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                              for k, v in st.items()} for name, st in state.items()}
                      for state in self.state],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, for the same modules in the same order
        (hyper-parameters included, as torch.optim does)."""
        if not isinstance(state_dict, dict) or not {"type", "hyperparameters",
                                                      "state"} <= set(state_dict):
            raise TypeError("state_dict must be a dict from Optimizer.state_dict() with keys "
                            f"'type', 'hyperparameters', 'state', got {describe(state_dict)}")
        if state_dict["type"] != type(self).__name__:
            raise ValueError(f"state_dict is for a {state_dict['type']} optimiser, this one "
                             f"is {type(self).__name__}")
        hp = dict(state_dict["hyperparameters"])
        if set(hp) != set(self.defaults):
            raise ValueError(f"state_dict's hyperparameters {sorted(hp)} do not match "
                             f"{sorted(self.defaults)}")
        hp = self._check(hp)
        saved = state_dict["state"]
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.modules):
            raise ValueError(f"state_dict holds state for {describe(saved)}, expected a list "
                             f"for {len(self.modules)} modules")
        required, allowed = self._buffers(hp)
        new: list[dict[str, dict[str, Any]]] = []
        for i, (m, st) in enumerate(zip(self.modules, saved)):
            if not isinstance(st, dict):
                raise TypeError(f"state_dict['state'][{i}] must be a dict of parameter "
                                f"names, got {describe(st)}")
            unknown = sorted(set(st) - set(m._params))
            if unknown:
                raise ValueError(f"state_dict['state'][{i}] has parameters {unknown} that "
                                 f"{type(m).__name__} modules[{i}] does not")
            mod_state = {}
            for name, entry in st.items():
                p = m._params[name]
                where = f"state_dict['state'][{i}][{name!r}]"
                if not isinstance(entry, dict):
                    raise TypeError(f"{where} must be a dict, got {describe(entry)}")
                step = entry.get("step")
                if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
                    raise ValueError(f"{where}['step'] must be a non-negative int, got "
                                     f"{describe(step)}")
                # Nothing accepted and ignored: an unknown buffer is refused, and so is a
                # stepped parameter without one its next step reads (the moments would
                # restart at zero under the old step count's bias correction).
                extra = [] if allowed is None else sorted(set(entry) - {"step"} - allowed)
                missing = sorted(required - set(entry)) if step > 0 else []
                if extra or missing:
                    raise ValueError(f"{where} does not match {type(self).__name__}'s state "
                                     f"under these hyper-parameters: unexpected {extra}, "
                                     f"missing {missing}")
                copy = {"step": int(step)}
                for k in sorted(set(entry) - {"step"}):
                    v = real_array(f"{where}[{k!r}]", entry[k], p.dtype)
                    if v.shape != p.shape:
                        raise ValueError(f"{where}[{k!r}] must have shape {p.shape}, got "
                                         f"{v.shape}")
                    copy[k] = np.array(v, dtype=p.dtype)  # owned, never the caller's array
                mod_state[name] = copy
            new.append(mod_state)
        self.defaults.update(hp)
        self.state = new


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as torch.optim.SGD.

    With g the gradient (plus weight_decay * p), b the momentum buffer:
    b = g at the first step, then b = momentum * b + (1 - dampening) * g; the step uses
    g + momentum * b (nesterov) or b; p -= lr * step (+= when maximize).
    """

    def __init__(self, modules, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 *, maximize: bool = False) -> None:
        hp = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                  nesterov=nesterov, maximize=maximize)
        super().__init__(modules, self._check(hp))

    def _check(self, hp: dict[str, Any]) -> dict[str, Any]:
        hp = dict(hp, lr=_number("lr", hp["lr"]), momentum=_number("momentum", hp["momentum"]),
                  dampening=_number("dampening", hp["dampening"]),
                  weight_decay=_number("weight_decay", hp["weight_decay"]),
                  nesterov=flag("nesterov", hp["nesterov"]),
                  maximize=flag("maximize", hp["maximize"]))
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError(f"nesterov needs momentum > 0 and dampening = 0, got momentum "
                             f"{hp['momentum']} and dampening {hp['dampening']}")
        return hp

    def _buffers(self, hp):
        # The buffer starts at the first step with momentum (b = g), so it may be absent;
        # one kept from steps with momentum is carried (it serves again if momentum does).
        return set(), {"momentum_buffer"}

    def _update(self, p, g, st):
        hp = self.defaults
        wd, mom = hp["weight_decay"], hp["momentum"]
        if hp["maximize"]:
            g = -g
        if wd:
            g = g + p.dtype.type(wd) * p
        if mom:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = g.copy()
            else:
                buf *= p.dtype.type(mom)
                buf += p.dtype.type(1 - hp["dampening"]) * g
            g = g + p.dtype.type(mom) * buf if hp["nesterov"] else buf
        st["step"] += 1
        p -= p.dtype.type(hp["lr"]) * g


class Adam(Optimizer):
    """Adam (Kingma & Ba), as torch.optim.Adam: L2 weight decay added to the gradient.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  (amsgrad: v_max = max(v_max, v))
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    _decoupled = False

    def __init__(self, modules, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        hp = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                  maximize=maximize)
        super().__init__(modules, self._check(hp))

    def _check(self, hp: dict[str, Any]) -> dict[str, Any]:
        betas = hp["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers in [0, 1), got "
                            f"{describe(betas)}")
        b1 = _number("betas[0]", betas[0], high=1.0, high_open=True)
        b2 = _number("betas[1]", betas[1], high=1.0, high_open=True)
        return dict(hp, lr=_number("lr", hp["lr"]), betas=(b1, b2), eps=_number("eps", hp["eps"]),
                    weight_decay=_number("weight_decay", hp["weight_decay"]),
                    amsgrad=flag("amsgrad", hp["amsgrad"]),
                    maximize=flag("maximize", hp["maximize"]))

    def _buffers(self, hp):
        # max_exp_avg_sq starts at the first step with amsgrad (which may be switched on
        # mid-training), so it may be absent; kept when amsgrad is off, as the steps keep it.
        return {"exp_avg", "exp_avg_sq"}, {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}

    def _update(self, p, g, st):
        hp = self.defaults
        lr, wd, (b1, b2) = hp["lr"], hp["weight_decay"], hp["betas"]
        f = p.dtype.type
        if hp["maximize"]:
            g = -g
        if wd:
            if self._decoupled:
                p *= f(1 - lr * wd)
            else:
                g = g + f(wd) * p
        if "exp_avg" not in st:
            st["exp_avg"] = np.zeros_like(p)
            st["exp_avg_sq"] = np.zeros_like(p)
        if hp["amsgrad"] and "max_exp_avg_sq" not in st:
            # From the first step, or from the step at which amsgrad was switched on: the
            # running maximum starts there (max(0, v) = v).
            st["max_exp_avg_sq"] = np.zeros_like(p)
        st["step"] += 1
        t = st["step"]
        m, v = st["exp_avg"], st["exp_avg_sq"]
        # torch: m.lerp_(g, 1 - b1), i.e. m + (1 - b1) (g - m)
        m += f(1 - b1) * (g - m)
        v *= f(b2)
        v += f(1 - b2) * g * g
        if hp["amsgrad"]:
            vmax = st["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            v = vmax
        step_size = lr / (1 - b1 ** t)
        denom = np.sqrt(v)
        denom /= f(math.sqrt(1 - b2 ** t))
        denom += f(hp["eps"])
        np.divide(m, denom, out=denom)
        denom *= f(step_size)
        p -= denom


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter), as torch.optim.AdamW: decoupled weight decay,
    p *= 1 - lr * weight_decay before the Adam step; weight_decay defaults to 0.01."""

    _decoupled = True

    def __init__(self, modules, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(modules, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


def clip_grad_norm(modules, max_norm: float, norm_type: float = 2.0, *,
                   error_if_nonfinite: bool = False) -> float:
    """Scale all the modules' gradients together so that their joint norm is at most
    ``max_norm``, as torch.nn.utils.clip_grad_norm_.

    The total norm is the ``norm_type``-norm of all gradients seen as one vector (``inf``:
    the largest magnitude). Gradients are multiplied by min(1, max_norm / (total + 1e-6)).

    Returns
    -------
    float
        The total norm before clipping.
    """
    mods = _modules(modules)
    max_norm = _number("max_norm", max_norm)
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or \
            math.isnan(norm_type) or norm_type <= 0:
        raise ValueError(f"norm_type must be a positive number or inf, got {norm_type!r}")
    norm_type = float(norm_type)
    grads = [g for m in mods for g in m.grads.values()]
    if norm_type == math.inf:
        # np.max, not Python's max: a NaN is the result whichever module holds it (Python's
        # max keeps its first argument when a comparison with NaN is false).
        total = float(np.max([np.abs(g).max() if g.size else 0.0 for g in grads] or [0.0]))
    elif norm_type == 2.0:
        # Sums of squares in float64 (no overflow or loss from float32 gradients), by einsum:
        # BLAS's dot would wake its threads for this little work.
        total = math.sqrt(sum(float(np.einsum("i,i->", r, r)) for r in
                              (g.ravel().astype(np.float64, copy=False) for g in grads)))
    else:
        total = sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type))
                    for g in grads) ** (1 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"{total}: non-finite, so clip_grad_norm cannot clip them "
                           "(error_if_nonfinite=False scales them anyway)")
    coef = min(max_norm / (total + 1e-6), 1.0) if not math.isnan(total) else math.nan
    if coef != 1.0:
        with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as in torch
            for g in grads:
                g *= g.dtype.type(coef)
    return total
