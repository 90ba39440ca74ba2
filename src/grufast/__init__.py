"""grufast: a fast, exact GRU for CPUs, with NumPy in and NumPy out."""

from grufast.functional import GRUGrads, gru_backward, gru_forward

__all__ = ["GRUGrads", "gru_backward", "gru_forward"]
__version__ = "0.1.0"
