"""pytest-benchmark suites (run with ``pytest bench/ --benchmark-only``); separate from the
tests. They build every peer with the same helpers as ``python -m grufast bench``
(grufast._bench_peers) and apply the same thread limits (grufast._bench_env.ThreadLimits)
once the peers are imported, so PyTorch runs with the threads it is told.

Threads: GRUFAST_BENCH_THREADS (default 1). For the bench's one-core mode, pin the run as
well, before anything loads: ``OMP_NUM_THREADS=1 taskset -c 0 pytest bench/ --benchmark-only``.
Peers that are not installed are skipped here: benchmarks are not tests.
"""

import os

import pytest

from grufast import _bench_peers as P
from grufast._bench_env import ThreadLimits, available_peers
from grufast.bench import GRID

THREADS = int(os.environ.get("GRUFAST_BENCH_THREADS", "1"))
SHAPES = [pytest.param(s, id="T{}-B{}-I{}-H{}".format(*s)) for s in GRID]


@pytest.fixture(scope="session", autouse=True)
def thread_limits():
    limits = ThreadLimits(THREADS, available_peers(), "float32")
    yield limits


@pytest.fixture
def problem(request):
    return P.make_problem(P.Case(*request.param))


def prepare(benchmark, kind, problem, peer):
    """Skip a peer that is not installed, group by shape; the peer's PeerRun."""
    for module in P.MODULES.get(peer, ()):
        pytest.importorskip(module)
    c = problem.case
    benchmark.group = f"{kind} T, B, I, H = {c.T}, {c.B}, {c.I}, {c.H}"
    return P.make_peer(peer, problem, THREADS)
