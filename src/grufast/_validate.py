"""Argument checks shared by the public entry points. Every error names the argument, what
was expected and what came."""

from __future__ import annotations

import numbers
import re

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# BLAS integers are 32-bit in the common LP64 builds: no dimension or leading dimension a
# kernel passes may exceed this.
BLAS_INT_MAX = 2**31 - 1


def describe(value) -> str:
    """A short description of a value for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    return f"{type(value).__name__} {value!r}"[:200]


def detached(value):
    """A torch tensor as a plain CPU tensor NumPy can read: detached from autograd (an input
    is data here, as in ``tensor.numpy()`` after ``detach()``) and moved off any device.
    Anything else is returned as it is."""
    if hasattr(value, "requires_grad") and callable(getattr(value, "detach", None)):
        value = value.detach()
        if callable(getattr(value, "cpu", None)):
            value = value.cpu()
    return value


def real_values(name: str, value) -> np.ndarray:
    """``np.asarray(value)`` if it holds real numbers (float or integer), without copying.

    Refuses None, complex, bool, string, object and other non-real data. Torch tensors are
    accepted, also when they require grad (see :func:`detached`).
    """
    if value is None:
        raise TypeError(f"{name} must be an array of real numbers, got None")
    value = detached(value)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be an array of real numbers, got {describe(value)}: "
                        f"{exc}") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float or integer), got dtype "
                        f"{arr.dtype}")
    return arr


def real_array(name: str, value, dtype: np.dtype | None = None) -> np.ndarray:
    """Convert an array-like of real numbers to a C-contiguous array of ``dtype``.

    Returns the caller's own array when it is already C-contiguous with that dtype (callers
    never write into it).
    """
    arr = real_values(name, value)
    if arr.ndim == 0:
        # np.ascontiguousarray makes a 0-d value 1-d: a scalar x then passed as a one-element
        # input, and a shape error reported (1,) where the caller gave ().
        return np.asarray(arr, dtype=arr.dtype if dtype is None else dtype)
    return c_array(arr, arr.dtype if dtype is None else dtype)


def c_array(a, dtype=None) -> np.ndarray:
    """``a`` as a C-contiguous, aligned ndarray (of ``dtype`` if given): the same array when
    it is one already, else a copy. The kernels read such arrays in place, and through an
    unaligned float pointer that is undefined behaviour in C (UBSan reports it; np.
    ascontiguousarray passes an unaligned array through)."""
    arr = np.ascontiguousarray(a, dtype=dtype)  # (np.require: ~1 us more per call)
    return arr if arr.flags.aligned else arr.copy()


def private_copy(arr: np.ndarray, given) -> np.ndarray:
    """``arr`` (converted from the caller's ``given``), or a copy of it when it may be the
    caller's memory: ``given`` itself, or a view (of a caller's array, a torch tensor...).
    For what a train-mode forward keeps until backward."""
    return arr.copy() if arr is given or not arr.flags.owndata else arr


def weight_dtype(name: str, value) -> np.dtype:
    """The dtype a weight array fixes for a computation: float32 or float64."""
    arr = value if isinstance(value, np.ndarray) else real_array(name, value)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    return arr.dtype


def shaped(name: str, arr: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    """Check an exact shape; ``what`` spells the expected shape symbolically, e.g. (T, B, I)."""
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {what} = {tuple(shape)}, got {arr.shape}")
    return arr


def shaped_like(name: str, arr: np.ndarray, shape: tuple, of: str) -> np.ndarray:
    """Check that a gradient has the shape of the value ``of`` names (e.g. dy and y)."""
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have the shape of {of}, {tuple(shape)}, got "
                         f"{arr.shape}")
    return arr


def state_dict_shape(key: str, arr: np.ndarray, want: tuple, *, input_size: int,
                     hidden_size: int) -> np.ndarray:
    """Check a state-dict entry's shape; on a mismatch, say which sizes the entry implies
    and which the model has (a dict saved from another configuration is the usual cause)."""
    want, got = tuple(want), arr.shape
    if got == want:
        return arr
    name = f"state_dict[{key!r}]"
    if len(got) != len(want):
        raise ValueError(f"{name} must be {len(want)}-D with shape {want}, got shape {got}")
    implied: list[str] = []
    model: list[str] = []

    def differs(says: str, has: str) -> None:
        if says not in implied:
            implied.append(says)
        if has not in model:
            model.append(has)

    if got[0] != want[0]:  # every entry stacks the three gates: 3 * hidden_size rows
        says = (f"hidden_size {got[0] // 3}" if got[0] % 3 == 0 else
                f"{got[0]} gate rows, which is not 3 * hidden_size for any hidden_size")
        differs(says, f"hidden_size {hidden_size}")
    if len(got) == 2 and got[1] != want[1]:
        layer = re.search(r"_l(\d+)", key)
        if key.startswith("weight_hh"):
            differs(f"hidden_size {got[1]}", f"hidden_size {hidden_size}")
        elif layer is None or layer.group(1) == "0":
            differs(f"input_size {got[1]}", f"input_size {input_size}")
        else:  # a deeper layer reads the previous layer's output
            what = f"layer {layer.group(1)}'s input size (num_directions * hidden_size)"
            differs(f"{what} {got[1]}", f"{what} {want[1]}")
    raise ValueError(f"{name} has shape {got}, i.e. {' and '.join(implied)}, but this model "
                     f"has {' and '.join(model)}: shape {want} expected")


def ndim(name: str, arr: np.ndarray, n: int, what: str) -> np.ndarray:
    if arr.ndim != n:
        raise ValueError(f"{name} must be {n}-D {what}, got {arr.ndim}-D shape {arr.shape}")
    return arr


def lengths_array(value, batch: int, steps: int) -> np.ndarray:
    """Per-sequence lengths: B integers in [0, T], as a C-contiguous intp array."""
    value = detached(value)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"lengths must be a 1-D array of integers, got {describe(value)}: "
                        f"{exc}") from None
    if arr.dtype.kind == "f":
        if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"lengths must be whole numbers, got {arr.tolist()[:8]}")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"lengths must have shape (B,) = ({batch},), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > steps):
        raise ValueError(f"lengths must lie in [0, T] = [0, {steps}], got min {arr.min()} "
                         f"and max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.intp)


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def blas_sized(**dims: int) -> None:
    """Refuse sizes that would overflow 32-bit BLAS integers before any kernel runs."""
    for name, value in dims.items():
        if value > BLAS_INT_MAX:
            raise ValueError(f"{name} = {value} exceeds the BLAS integer limit {BLAS_INT_MAX}")


def flag(name: str, value) -> bool:
    """A bool argument: bools only (1, "yes" and None are refused, not interpreted)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return bool(value)


def model_dtype(dtype) -> np.dtype:
    """A model's dtype: float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt
