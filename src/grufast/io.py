"""save / load a GRU, GRUCell or Linear as .npz: the state dict plus the configuration as
JSON text.
No pickle: load uses allow_pickle=False and refuses anything but this layout."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from grufast._validate import describe
from grufast.layers import GRU, GRUCell
from grufast.linear import Linear
from grufast.quantized import QuantizedGRU, QuantizedGRUCell

# The model classes save/load know; quantized models keep their storage dtypes (int8, or
# bfloat16 bits as uint16) in the file.
_MODELS = (GRU, GRUCell, Linear, QuantizedGRU, QuantizedGRUCell)

CONFIG_KEY = "__grufast_config__"
FORMAT = 1


def save(model: GRU | GRUCell | Linear | QuantizedGRU | QuantizedGRUCell, path) -> None:
    """Write ``model`` to ``path`` (.npz): its configuration and its parameters."""
    if not isinstance(model, _MODELS):
        raise TypeError(f"model must be a grufast GRU, GRUCell or Linear (or a quantized GRU "
                        f"or GRUCell), got "
                        f"{describe(model)}")
    config = dict(model.config(), **{"class": type(model).__name__, "format": FORMAT})
    arrays = model.state_dict()
    arrays[CONFIG_KEY] = np.array(json.dumps(config, sort_keys=True))
    with open(os.fspath(path), "wb") as f:
        np.savez(f, **arrays)


def _not_a_model(path: str, why: str) -> ValueError:
    return ValueError(f"{path!r} is not a grufast model file (an .npz written by "
                      f"grufast.save): {why}")


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz, numeric and string arrays only. NumPy's own errors are not
    passed on: for a foreign file they talk about the wrong format or invite the caller to
    enable unsafe loading, which is never the remedy here."""
    with open(path, "rb") as f:  # a missing file: FileNotFoundError naming the path
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        kind = "an .npy array" if magic == b"\x93NUM" else "not a zip archive"
        raise _not_a_model(path, f"the file is {kind}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {}
            for k in f.files:
                try:
                    v = f[k]
                except ValueError:  # an object array: NumPy refuses it without pickle
                    raise _not_a_model(path, f"entry {k!r} is not a plain array of numbers "
                                             "or text") from None
                if not isinstance(v, np.ndarray):  # a zip member that is not an .npy
                    raise _not_a_model(path, f"entry {k!r} is not an array")
                arrays[k] = v
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise _not_a_model(path, f"the archive is damaged or truncated "
                                 f"({type(exc).__name__})") from None
    except ValueError as exc:
        if "not a grufast model file" in str(exc):
            raise
        raise _not_a_model(path, "an entry is damaged or not an .npy array") from None
    return arrays


def load(path) -> GRU | GRUCell | Linear | QuantizedGRU | QuantizedGRUCell:
    """Read a model written by :func:`save`; the model comes back in eval mode (GRU,
    Linear; a GRUCell has no modes).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is not a file written by :func:`save` (another format, a damaged archive, an
        .npz without grufast's configuration, or one whose weights do not fit it).
    """
    path = os.fspath(path)
    arrays = _read_arrays(path)
    if CONFIG_KEY not in arrays:
        raise _not_a_model(path, f"it has no {CONFIG_KEY} entry, so it was not "
                                 f"written by grufast.save (its entries: {sorted(arrays)[:6]})")
    try:
        config = json.loads(str(arrays.pop(CONFIG_KEY)))
        kind = config.pop("class")
        fmt = config.pop("format")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _not_a_model(path, f"malformed configuration ({exc})") from None
    classes = {cls.__name__: cls for cls in _MODELS}
    # type() checks: a list or dict class is unhashable, and JSON's true equals 1.
    if type(kind) is not str or kind not in classes or type(fmt) is not int or fmt != FORMAT:
        raise ValueError(f"{path!r}: unknown model class {kind!r} or format {fmt!r} "
                         f"(expected one of {sorted(classes)}, format {FORMAT})")
    try:
        model = classes[kind](**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path!r}: the configuration does not fit {kind}: {exc}") from None
    # Nothing accepted and ignored: save writes exactly config(); another key (a seed,
    # say) would change nothing once the weights are loaded.
    extra = sorted(set(config) - set(model.config()))
    if extra:
        raise ValueError(f"{path!r}: configuration keys {extra} are not {kind}'s (save writes "
                         f"{sorted(model.config())})")
    # The weights in the dtypes save wrote: load_state_dict would convert (it takes torch
    # tensors and float64 arrays on purpose), which here would hide a damaged or edited file.
    want = model.state_dict()
    wrong = sorted(f"{k}: {arrays[k].dtype}" for k in set(want) & set(arrays)
                   if arrays[k].dtype != want[k].dtype)
    if wrong:
        raise ValueError(f"{path!r}: arrays of another dtype than the model's "
                         f"{_describe_dtypes(want)}: {wrong}")
    model.load_state_dict(arrays)
    return model.eval() if isinstance(model, (GRU, Linear, QuantizedGRU)) else model


def _describe_dtypes(arrays: dict[str, np.ndarray]) -> str:
    return "/".join(sorted({str(a.dtype) for a in arrays.values()}))
