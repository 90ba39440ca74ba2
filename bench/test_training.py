"""Training step (forward + backward of all inputs and parameters) over the standard grid."""

import pytest

from .conftest import SHAPES
from .test_inference import PEERS, prepare


@pytest.mark.parametrize("problem", SHAPES, indirect=True)
@pytest.mark.parametrize("peer", [p for p in PEERS if p != "onnxruntime"])
def test_training(benchmark, problem, peer):
    _, train = prepare(benchmark, "training", problem, peer)
    benchmark(train)
