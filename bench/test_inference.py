"""Inference (eval forward) over the standard grid: grufast and its peers."""

import contextlib

import pytest

from grufast._bench_peers import PEERS

from .conftest import SHAPES, prepare


@pytest.mark.parametrize("problem", SHAPES, indirect=True)
@pytest.mark.parametrize("peer", ["grufast", *PEERS])
def test_inference(benchmark, problem, peer):
    run = prepare(benchmark, "inference", problem, peer)
    if run.infer is None:
        pytest.skip(run.na["infer"])
    with run.context.get("infer", contextlib.nullcontext)():  # entered once, as the bench does
        benchmark(run.infer)
