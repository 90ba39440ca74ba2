"""torch.nn.GRU / GRUCell -> grufast. Same gate order and parameter names: a state-dict copy."""

from __future__ import annotations

import numpy as np

from grufast._validate import describe


def module_dtype(module) -> np.dtype:
    """The one dtype of a torch module's parameters, float32 or float64, as NumPy's."""
    import torch

    dtypes = sorted({str(p.dtype) for p in module.parameters()})
    if len(dtypes) > 1:  # torch itself refuses to run such a module
        raise TypeError(f"module parameters must share one dtype, got {dtypes}")
    dtype = next(module.parameters()).dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"module parameters must be float32 or float64, got {dtype}")
    return np.dtype(np.float32 if dtype == torch.float32 else np.float64)


def check_plain_module(module, base) -> None:
    """Refuse what a state-dict copy would drop: a subclass's or the instance's own forward,
    the module's forward hooks (any of which may change what it computes; grufast cannot
    tell an observing one from a changing one), parameters without values (the meta
    device). Global hooks, which profilers register for every module, are not the
    module's."""
    if type(module).forward is not base.forward or "forward" in vars(module):
        raise TypeError(f"module is a {type(module).__name__} with its own forward: grufast "
                        f"copies the weights of a plain {base.__name__} and cannot represent "
                        "that computation")
    hooks = [name for name, found in (("forward hooks", module._forward_hooks),
                                      ("forward pre-hooks", module._forward_pre_hooks))
             if found]
    if hooks:
        raise ValueError(f"module has {' and '.join(hooks)}, which may change what it "
                         "computes; grufast copies the weights only: remove them first")
    meta = [name for name, p in module.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(f"module parameters {meta} are on the meta device (shapes without "
                         "values); materialise them first (module.to_empty(...) and load "
                         "the weights)")


def gru_from_torch(cls, module):
    import torch

    if not isinstance(module, torch.nn.GRU):
        raise TypeError(f"module must be a torch.nn.GRU, got {describe(module)}")
    check_plain_module(module, torch.nn.GRU)
    if getattr(module, "proj_size", 0):
        raise ValueError(f"torch GRU with proj_size={module.proj_size} is not supported")
    gru = cls(module.input_size, module.hidden_size, module.num_layers, module.bias,
              module.batch_first, float(module.dropout), module.bidirectional,
              dtype=module_dtype(module))
    gru.load_state_dict(module.state_dict())
    return gru.train(module.training)


def cell_from_torch(cls, module):
    import torch

    if not isinstance(module, torch.nn.GRUCell):
        raise TypeError(f"module must be a torch.nn.GRUCell, got {describe(module)}")
    check_plain_module(module, torch.nn.GRUCell)
    cell = cls(module.input_size, module.hidden_size, module.bias, dtype=module_dtype(module))
    cell.load_state_dict(module.state_dict())
    return cell
