"""Whole training runs in grufast against the same runs in PyTorch: from the same initial
weights and data, after 50 steps the parameters agree (1e-5 float32, 1e-10 float64,
relative to the largest parameter)."""

import numpy as np
import pytest
import torch

import grufast
from grufast import losses, optim
from tests.training_helpers import (
    OPTIMISERS,
    TOL,
    assert_same_parameters,
    grufast_step,
    models,
    torch_step,
    training_data,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny problems: torch's thread pool only adds overhead (10x on a loaded machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("which", sorted(OPTIMISERS))
def test_fifty_steps_match_torch(which, dtype):
    """2-layer bidirectional GRU + Linear, MSE, clip_grad_norm, each optimiser."""
    ours, theirs, kw = OPTIMISERS[which]
    tg, th, gru, head = models(dtype)
    opt = ours([gru, head], **kw)
    topt = theirs([*tg.parameters(), *th.parameters()], **kw)
    clipped = 0
    for x, target in training_data(dtype, 50):
        # max_norm 0.5 clips some steps and not others
        loss, total = grufast_step(gru, head, opt, x, target, 0.5)
        tloss, ttotal = torch_step(tg, th, topt, x, target, 0.5)
        assert abs(loss - tloss) <= 1e3 * TOL[dtype] * abs(tloss)
        assert abs(total - ttotal) <= 1e3 * TOL[dtype] * ttotal
        clipped += total > 0.5
    assert 0 < clipped < 50
    assert_same_parameters(gru, head, tg, th, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classifier_with_cross_entropy_and_lengths_matches_torch(dtype):
    """A GRU classifier of variable-length sequences (readout of h_n), cross-entropy, AdamW,
    against torch's packed sequences."""
    T, B, I, H, C = 7, 4, 3, 6, 5
    tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    torch.manual_seed(0)
    tg = torch.nn.GRU(I, H, dtype=tdt)
    th = torch.nn.Linear(H, C, dtype=tdt)
    gru, head = grufast.GRU.from_torch(tg).train(), grufast.Linear.from_torch(th)
    opt = optim.AdamW([gru, head], lr=1e-2)
    topt = torch.optim.AdamW([*tg.parameters(), *th.parameters()], lr=1e-2)
    rng = np.random.default_rng(3)
    for _ in range(30):
        x = rng.standard_normal((T, B, I)).astype(dtype)
        lengths = rng.integers(1, T + 1, B)
        labels = rng.integers(0, C, B)
        opt.zero_grad()
        _, h_n = gru(x, lengths=lengths)
        loss, dlogits = losses.cross_entropy(head(h_n[-1]), labels)
        gru.backward(None, head.backward(dlogits)[None])
        opt.step()
        topt.zero_grad()
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            torch.tensor(x), torch.tensor(lengths), enforce_sorted=False)
        tloss = torch.nn.functional.cross_entropy(th(tg(packed)[1][-1]), torch.tensor(labels))
        tloss.backward()
        topt.step()
        tloss = float(tloss.detach())
        assert abs(loss - tloss) <= 1e3 * TOL[dtype] * abs(tloss)
    scale = max(float(p.detach().abs().max()) for p in [*tg.parameters(), *th.parameters()])
    for mod, ref in ((gru, tg), (head, th)):
        for name, p in ref.state_dict().items():
            assert np.abs(mod.state_dict()[name] - p.numpy()).max() <= TOL[dtype] * scale, name
