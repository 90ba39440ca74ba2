"""grufast: a fast, exact GRU for CPUs, with NumPy in and NumPy out."""

from grufast.functional import GRUGrads, gru_backward, gru_forward
from grufast.io import load, save
from grufast.layers import GRU, GRUCell

__all__ = ["GRU", "GRUCell", "GRUGrads", "gru_backward", "gru_forward", "load", "save"]
__version__ = "0.1.0"  # the package version: pyproject.toml reads it from here
