"""The kernel buffer pool (grufast._buffers): reuse only what nothing else refers to."""

import threading

import numpy as np
import pytest

from grufast import _buffers

SHAPE = (64, 1024)  # 256 KiB of float32: pooled


@pytest.fixture(autouse=True)
def fresh_pool():
    _buffers.clear()
    yield
    _buffers.clear()


def test_a_dropped_buffer_is_reused():
    a = _buffers.empty(SHAPE, np.float32)
    address = a.ctypes.data
    del a
    b = _buffers.empty(SHAPE, np.float32)
    assert b.ctypes.data == address
    assert b.shape == SHAPE and b.dtype == np.float32 and b.flags.c_contiguous


def test_a_buffer_still_referenced_is_never_handed_out_again():
    a = _buffers.empty(SHAPE, np.float32)
    view = a[3:5]  # a view alone keeps it alive
    del a
    b = _buffers.empty(SHAPE, np.float32)
    assert not np.shares_memory(b, view)
    b[...] = 1
    c = _buffers.empty(SHAPE, np.float32)
    assert not np.shares_memory(c, b) and not np.shares_memory(c, view)


def test_same_bytes_other_shape_and_dtype_reuse_the_memory():
    a = _buffers.empty((128, 512), np.float32)
    address = a.ctypes.data
    del a
    b = _buffers.empty((256, 128), np.float64)
    assert b.ctypes.data == address and b.shape == (256, 128) and b.dtype == np.float64


def test_small_requests_are_fresh_arrays():
    a = _buffers.empty((4, 4), np.float64)
    assert a.shape == (4, 4) and a.flags.c_contiguous
    assert not getattr(_buffers._local, "pool", [])  # not pooled
    del a
    b = _buffers.empty((4, 4), np.float64)
    c = _buffers.empty((4, 4), np.float64)
    assert not np.shares_memory(b, c)


@pytest.mark.parametrize("shape", [(4, 4), (3,), SHAPE, (1, 7, 9)])
@pytest.mark.parametrize("make", [_buffers.empty, _buffers.aligned])
def test_buffers_start_on_a_cache_line(make, shape):
    # NumPy's allocator gives 16 bytes; the kernels' vector loads want the line.
    arrays = [make(shape, dt) for dt in (np.float32, np.float64, np.float32)]
    for a in arrays:
        assert a.ctypes.data % 64 == 0
        assert a.shape == shape and a.flags.c_contiguous and a.flags.writeable


def test_idle_buffers_are_dropped_past_the_budget(monkeypatch):
    monkeypatch.setattr(_buffers, "IDLE_BYTES", 900_000)
    kept = [_buffers.empty((64, 1024 + k), np.float32) for k in range(6)]  # distinct sizes
    del kept
    _buffers.empty((8, 1 << 15), np.float32)  # a new size triggers the trim
    idle = [b for b in _buffers._local.pool if b.nbytes != (8 << 17) + _buffers.ALIGN_BYTES]
    assert sum(b.nbytes for b in idle) <= _buffers.IDLE_BYTES
    assert len(idle) == 3


def test_each_thread_has_its_own_pool():
    a = _buffers.empty(SHAPE, np.float32)
    address = a.ctypes.data
    del a
    seen = []
    t = threading.Thread(target=lambda: seen.append(_buffers.empty(SHAPE, np.float32)
                                                    .ctypes.data))
    t.start()
    t.join()
    assert seen[0] != address


def test_training_forward_reuses_the_cache_buffers_it_dropped():
    import grufast

    rng = np.random.default_rng(0)
    gru = grufast.GRU(2, 32, seed=0).train()
    x = rng.random((40, 8, 2)).astype(np.float32)  # gates: 123 KB, pooled
    gru(x)
    gates = gru._tape["caches"][0][0].gates.ctypes.data
    gru.backward(None, np.ones((1, 8, 32), np.float32))
    y1 = gru(x)[0].copy()
    assert gru._tape["caches"][0][0].gates.ctypes.data == gates
    # A forward whose cache is still alive gets fresh buffers, and the same results.
    first = gru._tape["caches"][0][0]
    y2 = gru(x)[0]
    assert gru._tape["caches"][0][0].gates.ctypes.data != first.gates.ctypes.data
    np.testing.assert_array_equal(y1, y2)


def test_packed_weights_and_outputs_start_on_a_cache_line():
    # A packed W_hh 16 bytes off made one sequence at H = 64 1.12-1.19x slower in the
    # processes where NumPy's allocator put it there (docs/design.md, Buffers).
    from grufast import GRU
    from grufast._isa import kernels

    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for H in (5, 16, 33):
            w_hh = rng.standard_normal((3 * H, H)).astype(dt)
            for packed in (kernels.pack_weight_panels(w_hh), kernels.pack_weight_columns(w_hh),
                           kernels.pack_gemm_panels(w_hh, transposed=True),
                           kernels.aligned_empty(H, dt)):
                assert packed.ctypes.data % 64 == 0 and packed.dtype == dt
    m = GRU(3, 7).eval()
    y, h = m(rng.standard_normal((4, 2, 3)).astype(np.float32))
    assert y.ctypes.data % 64 == 0
