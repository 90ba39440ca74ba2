"""torch.nn.GRU / GRUCell -> grufast. Same gate order and parameter names: a state-dict copy."""

from __future__ import annotations

import numpy as np

from grufast._validate import describe


def _dtype(module) -> np.dtype:
    import torch

    dtype = next(module.parameters()).dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"module parameters must be float32 or float64, got {dtype}")
    return np.dtype(np.float32 if dtype == torch.float32 else np.float64)


def gru_from_torch(cls, module):
    import torch

    if not isinstance(module, torch.nn.GRU):
        raise TypeError(f"module must be a torch.nn.GRU, got {describe(module)}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"torch GRU with proj_size={module.proj_size} is not supported")
    gru = cls(module.input_size, module.hidden_size, module.num_layers, module.bias,
              module.batch_first, float(module.dropout), module.bidirectional,
              dtype=_dtype(module))
    gru.load_state_dict(module.state_dict())
    return gru.train(module.training)


def cell_from_torch(cls, module):
    import torch

    if not isinstance(module, torch.nn.GRUCell):
        raise TypeError(f"module must be a torch.nn.GRUCell, got {describe(module)}")
    cell = cls(module.input_size, module.hidden_size, module.bias, dtype=_dtype(module))
    cell.load_state_dict(module.state_dict())
    return cell
