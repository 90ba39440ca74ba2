"""Training runs in grufast and in PyTorch from the same weights and data: a 2-layer
bidirectional GRU with a Linear readout of every step, MSE, clipping, an optimiser."""

import numpy as np
import torch

import grufast
from grufast import losses, optim

TORCH = {np.float32: torch.float32, np.float64: torch.float64}
TOL = {np.float32: 1e-5, np.float64: 1e-10}
T, B, I, H, OUT = 6, 3, 4, 5, 2

OPTIMISERS = {
    "sgd-nesterov": (optim.SGD, torch.optim.SGD,
                     dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "sgd-dampening": (optim.SGD, torch.optim.SGD,
                      dict(lr=0.05, momentum=0.5, dampening=0.3)),
    "adam": (optim.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3)),
    "adam-amsgrad-maximize": (optim.Adam, torch.optim.Adam,
                              dict(lr=1e-3, amsgrad=True, maximize=True)),
    "adamw": (optim.AdamW, torch.optim.AdamW, dict(lr=1e-2)),
}


def models(dtype, seed=0):
    torch.manual_seed(seed)
    tg = torch.nn.GRU(I, H, num_layers=2, bidirectional=True, dtype=TORCH[dtype])
    th = torch.nn.Linear(2 * H, OUT, dtype=TORCH[dtype])
    return tg, th, grufast.GRU.from_torch(tg).train(), grufast.Linear.from_torch(th)


def training_data(dtype, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((T, B, I)).astype(dtype),
             rng.standard_normal((T, B, OUT)).astype(dtype)) for _ in range(steps)]


def grufast_step(gru, head, opt, x, target, max_norm):
    opt.zero_grad()
    y, _ = gru(x)
    loss, dpred = losses.mse(head(y), target)
    gru.backward(head.backward(dpred))
    total = optim.clip_grad_norm([gru, head], max_norm)
    opt.step()
    return loss, total


def torch_step(tg, th, opt, x, target, max_norm):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(th(tg(torch.tensor(x))[0]), torch.tensor(target))
    loss.backward()
    total = torch.nn.utils.clip_grad_norm_([*tg.parameters(), *th.parameters()], max_norm)
    opt.step()
    return float(loss.detach()), float(total)


def assert_same_parameters(gru, head, tg, th, dtype):
    scale = max(np.abs(p.detach().numpy()).max() for p in [*tg.parameters(),
                                                             *th.parameters()])
    for mod, ref in ((gru, tg), (head, th)):
        for name, p in ref.state_dict().items():
            err = np.abs(mod.state_dict()[name] - p.numpy()).max() / scale
            assert err <= TOL[dtype], f"{name}: {err:.2e} relative to the largest parameter"
