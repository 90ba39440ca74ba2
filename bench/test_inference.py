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
    if peer in MODULES:
        pytest.importorskip(MODULES[peer])
    sd, x, _ = problem
    H = sd["weight_hh_l0"].shape[1]
    benchmark.group = "inference T, B, I, H = {}, {}, {}, {}".format(*x.shape, H)
    infer, _ = PEERS[peer](*problem)
    benchmark(infer)
