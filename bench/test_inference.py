"""Inference (eval forward) over the standard grid: grufast and its peers."""

import pytest

from grufast import bench

from .conftest import SHAPES

PEERS = {"grufast": bench._grufast, "numpy-reference": bench._reference, "torch": bench._torch,
         "jax": bench._jax,
         "onnxruntime": lambda sd, x, dy: bench._onnxruntime(sd, x, dy, threads=1)}
MODULES = {"torch": "torch", "jax": "jax", "onnxruntime": "onnxruntime"}


@pytest.mark.parametrize("problem", SHAPES, indirect=True)
@pytest.mark.parametrize("peer", list(PEERS))
def test_inference(benchmark, problem, peer):
    infer, _ = prepare(benchmark, "inference", problem, peer)
    benchmark(infer)


def prepare(benchmark, kind, problem, peer):
    """Skip a peer that is not installed, group by shape, and build its (infer, train)."""
    if peer in MODULES:
        pytest.importorskip(MODULES[peer])
    sd, x, _ = problem
    H = sd["weight_hh_l0"].shape[1]
    benchmark.group = "{} T, B, I, H = {}, {}, {}, {}".format(kind, *x.shape, H)
    return PEERS[peer](*problem)
