"""pytest-benchmark suites (run with ``pytest bench/ --benchmark-only``); separate from the
tests. Peers that are not installed are skipped here: benchmarks are not tests."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from grufast.bench import GRID, _weights

SHAPES = [pytest.param(s, id="T{}-B{}-I{}-H{}".format(*s)) for s in GRID]


@pytest.fixture(scope="session", autouse=True)
def one_blas_thread():
    """Like the bench's one-thread mode: set GRUFAST_BENCH_THREADS to change."""
    import os

    with threadpool_limits(int(os.environ.get("GRUFAST_BENCH_THREADS", "1"))):
        yield


@pytest.fixture
def problem(request):
    T, B, I, H = request.param
    rng = np.random.default_rng(0)
    sd = _weights(rng, I, H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    return sd, x, dy
