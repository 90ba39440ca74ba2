"""Streaming: one GRUCell step (B = 1, I = H = 128) per call, from Python."""

import numpy as np
import pytest

import grufast
from grufast.bench import STREAM_H


def test_streaming_grufast(benchmark):
    benchmark.group = "streaming"
    cell = grufast.GRUCell(STREAM_H, STREAM_H, seed=0)
    x, h = np.ones(STREAM_H, np.float32), np.zeros(STREAM_H, np.float32)
    benchmark(cell, x, h)


def test_streaming_torch(benchmark):
    torch = pytest.importorskip("torch")
    benchmark.group = "streaming"
    cell = torch.nn.GRUCell(STREAM_H, STREAM_H)
    x, h = torch.ones(1, STREAM_H), torch.zeros(1, STREAM_H)

    def step():
        with torch.inference_mode():
            cell(x, h)

    benchmark(step)
