"""grufast: a fast, exact GRU for CPUs, with NumPy in and NumPy out."""

from grufast import losses, optim
from grufast._gates import GRUGates
from grufast.functional import GRUGrads, gru_backward, gru_forward
from grufast.io import load, save
from grufast.layers import GRU, GRUCell
from grufast.linear import Linear

__all__ = ["GRU", "GRUCell", "GRUGates", "GRUGrads", "Linear", "gru_backward", "gru_forward",
           "load", "losses", "optim", "save"]
__version__ = "0.1.0"  # the package version: pyproject.toml reads it from here
