"""No deadlock after fork or under oversubscription, and the same results as one thread.

These tests time nothing: they check that calls finish (a hang fails at a timeout instead of
stalling the suite) and what they return. The throughput under load is measured by
tools/load_test.py (docs/load_test.txt).
"""

import multiprocessing
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import grufast
from grufast._isa import kernels

# The two thread splits: by sequences (B = 64) and by hidden units (B = 1, H = 512).
SPLITS = [(64, 256), (1, 512)]
TIMEOUT = 120


def _run(B: int, H: int, threads: int | None = None) -> np.ndarray:
    model = grufast.GRU(H, H, seed=0).eval()
    x = np.random.default_rng(B).standard_normal((12, B, H)).astype(np.float32)
    if threads is None:
        return model(x)[0]
    with threadpool_limits(threads):
        return model(x)[0]


def _child(B: int, H: int) -> tuple[np.ndarray, int, bool]:
    # Even with OpenMP's count raised again, a forked child plans one thread.
    with threadpool_limits(4):
        y = _run(B, H)
        return y, kernels.openmp_threads(), kernels.serial_after_fork()


@pytest.mark.parametrize("B,H", SPLITS)
def test_forked_child_runs_serially(B, H):
    parent = _run(B, H, threads=2)  # the parent's OpenMP pool exists now
    assert not kernels.serial_after_fork()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:  # leaving the block terminates a hung child
        y, threads, serial = pool.apply_async(_child, (B, H)).get(timeout=TIMEOUT)
    assert serial and threads == 1
    np.testing.assert_allclose(y, _run(B, H, threads=1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(y, parent, rtol=0, atol=1e-5)


@pytest.mark.parametrize("B,H", SPLITS)
def test_oversubscribed_python_threads(B, H):
    """4 Python threads on this machine's cores, each model call asking for 2 OpenMP
    threads: every call finishes with the bits of one thread (which projects its inputs in
    the same tiles as a split, whichever way the calls split or fall back)."""
    serial = _run(B, H, threads=1)
    results: list = [None] * 4

    def work(i: int) -> None:
        with threadpool_limits(2):
            results[i] = [_run(B, H) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread is stuck in a model call"
    for runs in results:
        for y in runs:
            np.testing.assert_array_equal(y, serial)


CHILD = """
import numpy as np, grufast
from threadpoolctl import threadpool_limits
m = grufast.GRU({H}, {H}, seed=0).eval()
x = np.random.default_rng(0).standard_normal((40, {B}, {H})).astype(np.float32)
with threadpool_limits(2):
    for _ in range(3):
        y = m(x)[0]
print(float(np.abs(y).sum()))
"""


@pytest.mark.parametrize("B,H", SPLITS)
def test_two_processes_two_threads_each(B, H):
    """Two fresh processes, two threads each, on the same cores: both finish, alike."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD.format(B=B, H=H)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and float(outs[0]) > 0


def _wait_backoff_over() -> None:
    deadline = time.monotonic() + 5
    while kernels.serial_backoff_active() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
def test_backoff_changes_no_bit(lbr, dtype):
    """After a fallback (a partner thread found descheduled), calls split by hidden units
    run the same arithmetic on one thread for a while: inference and training give bitwise
    what two threads give."""
    model = grufast.GRU(16, 256, linear_before_reset=lbr, dtype=dtype, seed=3)
    x = np.random.default_rng(4).standard_normal((9, 1, 16)).astype(dtype)

    def run():
        model.zero_grad()
        y, h = model(x)
        dx, dh0 = model.backward(np.ones_like(y))
        return [y, h, dx, dh0] + [g.copy() for g in model.grads.values()]

    with threadpool_limits(2):
        _wait_backoff_over()
        two = run()
        kernels.start_serial_backoff()
        assert kernels.serial_backoff_active()
        one = run()
    for a, b in zip(two, one):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("I, H", [(8, 232), (1030, 230)])
def test_one_sequence_gives_the_same_bits_on_any_thread_count(lbr, dtype, I, H):
    """One sequence's recurrent GEMVs read W_hh packed in panels however the call runs: on
    one thread, split across two by hidden units, or on one thread running both shares after
    a fallback; each output is one chain of multiply-adds over k in every case, so the
    recurrence gives the same bits all three ways, on every build. H = 232: 14.5 panels per
    gate, so a share and each gate end in a partial panel. The split's input projections
    are windows of the packed W_ih^T, cut wherever a share's columns start and end (H = 230:
    inside a vector, so edge tiles too; I = 1030: two K blocks): every tile sums each
    element in one chain from k = 0, so they give one thread's bits too (zero inputs, then
    random ones)."""
    model = grufast.GRU(I, H, linear_before_reset=lbr, dtype=dtype, seed=5).eval()
    rng = np.random.default_rng(6)
    h0 = rng.standard_normal((1, 1, H)).astype(dtype)
    for x in (np.zeros((7, 1, I), dtype), rng.standard_normal((7, 1, I)).astype(dtype)):
        with threadpool_limits(1):
            one = model(x, h0)
        with threadpool_limits(2):
            _wait_backoff_over()
            two = model(x, h0)
            kernels.start_serial_backoff()
            alone = model(x, h0)
        for a, b, c in zip(one, two, alone):
            np.testing.assert_array_equal(b, c)
            np.testing.assert_array_equal(a, b)


@pytest.fixture
def batch_split():
    """kernels.force_batch_split and set_units_min_bytes, restored afterwards."""
    from grufast import _isa

    yield kernels
    kernels.force_batch_split("auto")
    kernels.set_units_min_bytes(_isa.L2_BYTES or (1 << 20))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("B, I, H, reverse", [(10, 20, 230, False), (16, 1030, 128, True)])
def test_a_batch_split_by_units_gives_the_bits_of_a_split_by_sequences(monkeypatch,
                                                                       batch_split, lbr,
                                                                       dtype, B, I, H,
                                                                       reverse):
    """An inference batch split by hidden units (each thread its units' columns of both
    products, for every sequence) computes every element as the split by sequences does:
    the same tiles on windows of the same packed weights, one chain of multiply-adds from
    k = 0 per element. So the two splits, and one thread running every share after a
    fallback, give the same bits. H = 230: shares cut inside a vector (edge tiles); B = 10:
    a partial tile of rows; I = 1030: two K blocks; padded lengths; T odd (the state ends
    in the scratch buffer); chunks of 3 steps (the projections chunk by chunk)."""
    from grufast import functional as F

    from .helpers import problem

    monkeypatch.setattr(F, "INFERENCE_CHUNK_BYTES", 3 * B * 3 * H * np.dtype(dtype).itemsize)
    rng = np.random.default_rng(7)
    x, h0, *w = problem(rng, 7, B, I, H, dtype)
    kw = dict(lengths=rng.integers(0, 8, B), reverse=reverse, linear_before_reset=lbr)
    out = {}
    with threadpool_limits(4):
        for split in ("sequences", "units", "alone"):
            batch_split.force_batch_split("units" if split == "alone" else split)
            _wait_backoff_over()
            if split == "alone":
                kernels.start_serial_backoff()
            assert kernels.recurrence_plan(B, H, False) == (
                True, "units" if split == "alone" else split)
            if split != "sequences":  # the packed W_hh^T's windows, not W_hh's panels
                assert kernels.forward_reads(B, H, False) == (True, False)
            out[split] = F.gru_forward(x, h0, *w, **kw)[:2]
    for split in ("units", "alone"):
        for a, b in zip(out["sequences"], out[split]):
            np.testing.assert_array_equal(a, b, err_msg=split)
    with threadpool_limits(1):  # one thread projects in the same tiles: the same bits
        for a, b in zip(out["sequences"], F.gru_forward(x, h0, *w, **kw)[:2]):
            np.testing.assert_array_equal(a, b)


def test_the_batch_split_rule(batch_split):
    """A batch of 8 or more splits by hidden units from 4 threads when that gets it more
    threads than by sequences (B / 4 against H / 32), or, in inference, when W_hh^T (12 H^2
    bytes) exceeds the L2 size the kernels were given; otherwise, and during a back-off, by
    sequences. 2 to 7 sequences split by units where one sequence would (H >= 224), from
    2 threads."""
    batch_split.set_units_min_bytes(1 << 20)
    _wait_backoff_over()  # an earlier test's fallback would still plan batches by sequences
    cases = [(16, 64, 512, False, "units"), (16, 64, 256, False, "sequences"),
             (16, 8, 512, False, "units"), (16, 16, 128, False, "sequences"),
             (16, 64, 512, True, "sequences"), (2, 64, 512, False, "sequences"),
             (3, 8, 512, False, "sequences"), (4, 8, 512, False, "units"),
             (4, 64, 256, False, "sequences"), (16, 8, 512, True, "units"),
             (2, 2, 256, False, "units"), (2, 7, 256, True, "units"),
             (2, 4, 128, False, "serial"), (2, 3, 128, True, "serial")]
    for threads, B, H, training, split in cases:
        with threadpool_limits(threads):
            got = kernels.recurrence_plan(B, H, training)[1]
            if training and split == "sequences":  # or serial where OpenBLAS serves it
                assert got in (split, "serial"), (threads, B, H)
            else:
                assert got == split, (threads, B, H)
    with threadpool_limits(16):  # a back-off (a loaded machine): no barriers for batches
        _wait_backoff_over()
        kernels.start_serial_backoff()
        assert kernels.recurrence_plan(64, 512, False)[1] == "sequences"
        batch_split.force_batch_split("units")
        assert kernels.recurrence_plan(64, 512, False)[1] == "units"
        batch_split.force_batch_split("auto")
        _wait_backoff_over()
    batch_split.set_units_min_bytes(0)
    with threadpool_limits(4):
        assert kernels.recurrence_plan(64, 256, False)[1] == "units"
        assert kernels.recurrence_plan(64, 256, True)[1] in ("sequences", "serial")
    with pytest.raises(ValueError, match="split must be one of"):
        kernels.force_batch_split("rows")
    with pytest.raises(ValueError, match="n must be >= 0"):
        kernels.set_units_min_bytes(-1)


@pytest.mark.parametrize("dtype, H", [(np.float32, 256), (np.float64, 240)])
@pytest.mark.parametrize("lbr", [True, False])
def test_small_batches_split_by_units(lbr, dtype, H):
    """2 to 7 sequences, too few for two threads by sequences, split by hidden units where
    one sequence would: in the tiles on windows of the packed weights (the serial tiles'
    bits). Inference gives one thread's
    bits on 2 and 3 threads (3 oversubscribe this machine: a back-off may run the shares on
    one thread, with the same bits); training agrees with one thread and meets the
    tolerances against the reference, with padded lengths (zero-length ones too) and both
    directions."""
    from grufast import functional as F
    from grufast import reference as R

    from .helpers import assert_close, problem, rel_err

    rng = np.random.default_rng(21)
    for B, reverse in ((2, False), (3, True), (5, False), (7, True)):
        x, h0, *w = problem(rng, 7, B, 33, H, dtype, scale=0.5)
        kw = dict(lengths=rng.integers(0, 8, B), reverse=reverse, linear_before_reset=lbr)
        as64 = [a.astype(np.float64) for a in (x, h0, *w)]
        yr, hr, cr = R.gru_forward(*as64, training=True, **kw)
        dy = rng.standard_normal(yr.shape)
        gr = R.gru_backward(dy, None, cr)
        runs = []
        for threads in (1, 2, 3):
            with threadpool_limits(threads):
                _wait_backoff_over()
                split = kernels.recurrence_plan(B, H, True)[1]
                assert split == ("serial" if threads == 1 else "units"), (B, threads)
                inf = F.gru_forward(x, h0, *w, **kw)[:2]
                y, h, cache = F.gru_forward(x, h0, *w, training=True, **kw)
                g = F.gru_backward(dy.astype(dtype), None, cache)
            where = f"B={B} lbr={lbr} threads={threads}"
            assert_close(y, yr, dtype, "fwd", where)
            for name, a, b in zip(g._fields, g, gr):
                assert_close(a, b, dtype, "grad", f"{where} {name}")
            runs.append((inf, (y, h, *g)))
        for inf, trained in runs[1:]:
            for a, b in zip(runs[0][0], inf):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(runs[0][1], trained):
                assert rel_err(a, b) <= (1e-5 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("lbr", [True, False])
def test_a_training_batch_split_by_units_agrees_with_one_thread(batch_split, lbr):
    """A training batch of 8 or more split by hidden units (where that gets it more threads
    than by sequences, from 4 threads; forced here on 2): the forward's cache and the
    backward's per-step products by each thread's units, the weight gradients after the
    loop, agree with one thread and meet the tolerances. H = 230: shares cut inside a
    vector; B = 10: a partial tile of rows; padded lengths."""
    from grufast import functional as F
    from grufast import reference as R

    from .helpers import assert_close, problem, rel_err

    rng = np.random.default_rng(22)
    for B, H in ((10, 230), (16, 128)):
        x, h0, *w = problem(rng, 6, B, 20, H, np.float32, scale=0.5)
        kw = dict(lengths=rng.integers(1, 7, B), linear_before_reset=lbr)
        yr, hr, cr = R.gru_forward(*[a.astype(np.float64) for a in (x, h0, *w)],
                                   training=True, **kw)
        gr = R.gru_backward(np.ones_like(yr), None, cr)
        runs = []
        for threads, split in ((1, "auto"), (2, "units")):
            batch_split.force_batch_split(split)
            with threadpool_limits(threads):
                _wait_backoff_over()
                if threads == 2:
                    assert kernels.recurrence_plan(B, H, True) == (True, "units")
                y, h, cache = F.gru_forward(x, h0, *w, training=True, **kw)
                g = F.gru_backward(np.ones_like(y), None, cache)
            for name, a, b in zip(g._fields, g, gr):
                assert_close(a, b, np.float32, "grad", f"B={B} threads={threads} {name}")
            runs.append((y, h, *g))
        for a, b in zip(*runs):
            assert rel_err(a, b) <= 1e-5
    with threadpool_limits(16):  # units get 16 threads where sequences get 2: units
        _wait_backoff_over()
        batch_split.force_batch_split("auto")
        assert kernels.recurrence_plan(8, 512, True) == (True, "units")


@pytest.mark.parametrize("weight_format", ["int8", "bf16"])
def test_quantized_batches_split_by_units_as_float_ones(batch_split, weight_format):
    """A quantized batch (from 4 sequences: the float kernels on the dequantised weights)
    split by hidden units gives what one thread gives."""
    q = grufast.GRU(24, 128, seed=2).quantized(weight_format)
    x = np.random.default_rng(3).standard_normal((6, 16, 24)).astype(np.float32)
    with threadpool_limits(1):
        one = q(x)
    batch_split.force_batch_split("units")
    with threadpool_limits(4):
        assert kernels.recurrence_plan(16, 128, False)[1] == "units"
        four = q(x)
    for a, b in zip(one, four):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("weight_format", ["int8", "bf16"])
@pytest.mark.parametrize("lbr", [True, False])
def test_quantized_backoff_changes_no_bit(lbr, weight_format):
    """The quantized models' one-sequence path splits by hidden units like the float one
    (projections included, on the team): after a fallback one thread runs every share in
    turn and returns bitwise what two threads return, close to the serial path's result
    (which projects through OpenBLAS or the whole-width tiled GEMM: other summation
    order)."""
    model = grufast.GRU(48, 256, num_layers=2, linear_before_reset=lbr, seed=5)
    q = model.quantized(weight_format)
    x = np.random.default_rng(6).standard_normal((11, 1, 48)).astype(np.float32)
    with threadpool_limits(1):
        serial = q(x)
    with threadpool_limits(2):
        if kernels.openmp_threads() < 2:
            pytest.fail("the kernels should get two OpenMP threads here")
        _wait_backoff_over()
        two = q(x)
        kernels.start_serial_backoff()
        one = q(x)
    for a, b, c in zip(two, one, serial):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)


_MASKS_SCRIPT = """
import os, time
import numpy as np
import grufast
from threadpoolctl import threadpool_limits
from grufast._isa import kernels

def masks():
    return {tid: os.sched_getaffinity(int(tid)) for tid in os.listdir("/proc/self/task")}

g = grufast.GRU(8, 256, seed=1).eval()
x = np.random.default_rng(2).standard_normal((20, 1, 8)).astype(np.float32)
with threadpool_limits(1):
    ref = g(x)[0]
with threadpool_limits(2):
    g(x)
    before = masks()
    for _ in range(25):
        time.sleep(0.01)
        assert np.array_equal(g(x)[0], ref)
    after = masks()
assert before == after, (before, after)
print(kernels.cpu_moves())
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs")
def test_pool_threads_get_their_cpu_mask_back():
    """A pool thread woken onto its caller's CPU takes that CPU out of its affinity mask for
    the call (on a VM the idle vCPU looks preempted, and wake-ups pile onto the running one)
    and puts the mask back at the end: after two-thread calls of one sequence with idle
    pauses between them (on this project's 2-vCPU VM the thread moved in most of them),
    every thread of the process has the mask it had before, and each result is one
    thread's, bitwise."""
    out = subprocess.run([sys.executable, "-c", _MASKS_SCRIPT], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) >= 0
