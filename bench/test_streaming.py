"""Streaming: one step per call from Python, B = 1, I = H = 128, 1 and 2 layers; each
benchmarked call is one sample of STREAM_STEPS steps (divide by it for a step)."""

import pytest

from grufast import _bench_peers as P
from grufast.bench import STREAM_H

from .conftest import THREADS

NAMES = ["grufast GRUCell (1, H)", "grufast GRUCell (H,)", "grufast GRU.step (1, H)",
         "grufast GRU.step (H,)", "torch", "onnxruntime", "jax"]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_streaming(benchmark, name, layers):
    for module in P.MODULES.get(name, ()):
        pytest.importorskip(module)
    benchmark.group = f"streaming, {layers} layer(s), {P.STREAM_STEPS} steps per call"
    peers = [name] if name in P.PEERS else []
    sample = P.stream_peers(P.Case(1, 1, STREAM_H, STREAM_H, layers), THREADS, peers)[name]
    if isinstance(sample, str):
        pytest.skip(sample)
    benchmark(sample)
