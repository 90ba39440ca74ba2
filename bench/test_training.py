"""Training step (forward + backward of all inputs and parameters) over the standard grid."""

import pytest

from .conftest import SHAPES
from .test_inference import MODULES, PEERS


@pytest.mark.parametrize("problem", SHAPES, indirect=True)
@pytest.mark.parametrize("peer", [p for p in PEERS if p != "onnxruntime"])
def test_training(benchmark, problem, peer):
    if peer in MODULES:
        pytest.importorskip(MODULES[peer])
    sd, x, _ = problem
    H = sd["weight_hh_l0"].shape[1]
    benchmark.group = "training T, B, I, H = {}, {}, {}, {}".format(*x.shape, H)
    _, train = PEERS[peer](*problem)
    benchmark(train)
