"""save / load a GRU or GRUCell as .npz: the state dict plus the configuration as JSON text.
No pickle: load uses allow_pickle=False and refuses anything but this layout."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from grufast._validate import describe
from grufast.layers import GRU, GRUCell
from grufast.quantized import QuantizedGRU, QuantizedGRUCell

# Quantized models keep their storage dtypes (int8 or bfloat16 bits as uint16) in the file.
_MODELS = (GRU, GRUCell, QuantizedGRU, QuantizedGRUCell)

CONFIG_KEY = "__grufast_config__"
FORMAT = 1


def save(model: GRU | GRUCell | QuantizedGRU | QuantizedGRUCell, path) -> None:
    """Write ``model`` to ``path`` (.npz): its configuration and its parameters (a quantized
    model's in their storage format)."""
    if not isinstance(model, _MODELS):
        raise TypeError(f"model must be a grufast GRU or GRUCell (float or quantized), got "
                        f"{describe(model)}")
    config = dict(model.config(), **{"class": type(model).__name__, "format": FORMAT})
    arrays = model.state_dict()
    arrays[CONFIG_KEY] = np.array(json.dumps(config, sort_keys=True))
    with open(os.fspath(path), "wb") as f:
        np.savez(f, **arrays)


def load(path) -> GRU | GRUCell | QuantizedGRU | QuantizedGRUCell:
    """Read a model written by :func:`save`; the model comes back in eval mode."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"path {os.fspath(path)!r} is not a readable grufast .npz file: "
                         f"{exc}") from None
    if CONFIG_KEY not in arrays:
        raise ValueError(f"path {os.fspath(path)!r} has no {CONFIG_KEY} entry: not written "
                         "by grufast.save")
    try:
        config = json.loads(str(arrays.pop(CONFIG_KEY)))
        kind = config.pop("class")
        fmt = config.pop("format")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"path {os.fspath(path)!r}: malformed configuration: {exc}") from None
    classes = {cls.__name__: cls for cls in _MODELS}
    if kind not in classes or fmt != FORMAT:
        raise ValueError(f"path {os.fspath(path)!r}: unknown model class {kind!r} or format "
                         f"{fmt!r} (expected one of {sorted(classes)}, format {FORMAT})")
    try:
        model = classes[kind](**config)
    except TypeError as exc:
        raise ValueError(f"path {os.fspath(path)!r}: configuration does not fit {kind}: "
                         f"{exc}") from None
    model.load_state_dict(arrays)
    return model.eval() if isinstance(model, (GRU, QuantizedGRU)) else model
