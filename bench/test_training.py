"""Training step (forward + backward of all inputs and parameters) over the standard grid;
grufast's step includes the refresh of what it caches from the weights."""

import pytest

from grufast._bench_peers import PEERS

from .conftest import SHAPES, prepare


@pytest.mark.parametrize("problem", SHAPES, indirect=True)
@pytest.mark.parametrize("peer", ["grufast", *[p for p in PEERS if p != "onnxruntime"]])
def test_training(benchmark, problem, peer):
    run = prepare(benchmark, "training", problem, peer)
    benchmark(run.train)
