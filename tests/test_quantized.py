"""Quantized inference models (grufast.quantized): the number formats, the models' outputs
against the float model they came from and against the float model of their own widened
weights, the API, persistence and the errors."""

import copy
import pickle

import numpy as np
import pytest
import torch

import grufast
from grufast.quantized import (
    QuantizedGRU,
    QuantizedGRUCell,
    dequantize_int8,
    from_bf16,
    quantize_int8,
    to_bf16,
)

FORMATS = ["int8", "bf16"]
# Largest output error relative to the largest output magnitude, against the float32 model.
TARGET = {"int8": 1e-2, "bf16": 5e-3}
# The quantized model against the float32 model built from its widened weights: the same
# function; the kernels may sum in another order.
SAME = 1e-6


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-2))


def seq(T, B, I, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)


# -- the number formats ----------------------------------------------------------------------

def test_int8_rows_scales_and_zero_rows():
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.3, 0.3, (6, 40)).astype(np.float32)
    w[2] = 0
    w[4, 7] = -5.0  # the largest magnitude of its row maps to -127 exactly
    q, s = quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (6,)
    assert s[2] == 1 and not q[2].any()
    assert q[4, 7] == -127 and np.abs(q).max() == 127
    np.testing.assert_allclose(s[[0, 1, 3, 4, 5]], np.abs(w[[0, 1, 3, 4, 5]]).max(1) / 127,
                               rtol=1e-7)
    err = np.abs(dequantize_int8(q, s) - w)
    assert np.all(err <= s[:, None] * 0.5000001)  # round to nearest


def test_int8_refuses_non_finite_weights():
    with pytest.raises(ValueError, match="finite"):
        quantize_int8(np.array([[1.0, np.nan]], np.float32), "weight_hh_l0")


def test_bf16_rounds_like_torch():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    special = np.array([1.0, 1.00390625, 1.01171875, -1.00390625, 3.4e38, -3.4e38, np.inf,
                        -np.inf, 1e-40, -1e-45, 0.0, -0.0, np.finfo(np.float32).max],
                       np.float32)
    w = np.concatenate([bits.view(np.float32), special])
    w = w[~np.isnan(w)]
    ours = from_bf16(to_bf16(w))
    theirs = torch.from_numpy(w).to(torch.bfloat16).float().numpy()
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_bf16_keeps_nan():
    w = np.array([np.nan, -np.nan, np.float32(1)], np.float32)
    w[0:1].view(np.uint32)[:] = 0x7F800001  # a signalling NaN whose payload sits low
    out = from_bf16(to_bf16(w))
    assert np.isnan(out[:2]).all() and out[2] == 1


# -- outputs ---------------------------------------------------------------------------------

CONFIGS = [
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=1, bias=False, linear_before_reset=False),
    dict(num_layers=2, batch_first=True),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_gru_is_its_dequantized_float_model(fmt, cfg):
    g = grufast.GRU(12, 24, seed=3, **cfg).eval()
    q = g.quantized(fmt)
    f = q.dequantized()
    assert f.dtype == np.float32 and not f.training
    x = seq(30, 5, 12, 1)
    if cfg.get("batch_first"):
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    LD = g.num_layers * g.num_directions
    h0 = np.random.default_rng(2).standard_normal((LD, 5, 24)).astype(np.float32) * 0.5
    lengths = [30, 17, 0, 1, 29]
    for args in [(x,), (x, h0)]:
        yq, hq = q(*args, lengths=lengths)
        yf, hf = f(*args, lengths=lengths)
        assert rel(yq, yf) <= SAME and rel(hq, hf) <= SAME
    # unbatched
    yq, hq = q(x[0] if cfg.get("batch_first") else x[:, 0])
    yf, hf = f(x[0] if cfg.get("batch_first") else x[:, 0])
    assert yq.ndim == 2 and hq.shape == (LD, 24)
    assert rel(yq, yf) <= SAME and rel(hq, hf) <= SAME


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("T", [100, 1000])
def test_gru_within_target_of_the_float_model(fmt, T):
    g = grufast.GRU(48, 64, num_layers=2, bidirectional=True, seed=5).eval()
    q = g.quantized(fmt)
    x = seq(T, 4, 48, 7)
    lengths = [T, T // 2, 1, T - 3]
    yq, hq = q(x, lengths=lengths)
    y, h = g(x, lengths=lengths)
    assert rel(yq, y) <= TARGET[fmt] and rel(hq, h) <= TARGET[fmt]
    assert rel(yq, y) > 1e-6  # the weights really are narrower
    assert not yq[T // 2:, 1].any()  # past a sequence's length: zeros


@pytest.mark.parametrize("fmt", FORMATS)
def test_step_runs_the_sequence(fmt):
    g = grufast.GRU(10, 20, num_layers=2, seed=1).eval()
    q = g.quantized(fmt)
    x = seq(6, 3, 10, 4)
    y, h_n = q(x)
    h = None
    for t in range(6):
        y_t, h = q.step(x[t], h)
        assert rel(y_t, y[t]) <= SAME
    assert rel(h, h_n) <= SAME
    y_t, h1 = q.step(x[0, 0])  # unbatched
    assert y_t.shape == (20,) and h1.shape == (2, 20)
    with pytest.raises(ValueError, match="unidirectional"):
        grufast.GRU(3, 4, bidirectional=True).quantized(fmt).step(np.zeros(3))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("lbr", [True, False])
def test_cell(fmt, lbr):
    c = grufast.GRUCell(32, 48, linear_before_reset=lbr, seed=2)
    q = c.quantized(fmt)
    f = q.dequantized()
    x = seq(1, 5, 32, 3)[0]
    h = np.random.default_rng(0).standard_normal((5, 48)).astype(np.float32)
    assert rel(q(x, h), f(x, h)) <= SAME
    assert rel(q(x, h), c(x, h)) <= TARGET[fmt]
    assert rel(q(x[0], h[0]), f(x[0], h[0])) <= SAME  # one sequence (the streaming path)
    assert rel(q(x[0]), f(x[0])) <= SAME
    assert q(x[0]).shape == (48,)


# -- the model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_original_untouched_and_still_trainable(fmt):
    g = grufast.GRU(8, 16, num_layers=2, seed=0)  # train mode
    before = g.state_dict()
    q = g.quantized(fmt)
    assert g.training and q.training is False
    for k, v in g.state_dict().items():
        assert np.array_equal(v, before[k])
    y, _ = g(seq(5, 2, 8))
    g.backward(np.ones_like(y))
    # the copy shares nothing with the original
    for p in g._params.values():
        for a in q._store.values():
            assert not np.shares_memory(p, a)


@pytest.mark.parametrize("fmt,ratio", [("int8", 4), ("bf16", 2)])
def test_memory_footprint(fmt, ratio):
    g = grufast.GRU(256, 256, num_layers=2, seed=0)
    q = g.quantized(fmt)
    sd, qd = g.state_dict(), q.state_dict()
    weights = [k for k in sd if k.startswith("weight_")]
    for k in weights:
        assert qd[k].nbytes * ratio == sd[k].nbytes
    float_bytes = sum(a.nbytes for a in sd.values())
    bias_bytes = sum(a.nbytes for k, a in sd.items() if k.startswith("bias_"))
    scale_bytes = sum(a.nbytes for k, a in qd.items() if k.endswith("_scale"))
    assert q.nbytes == (float_bytes - bias_bytes) // ratio + bias_bytes + scale_bytes
    # float32 biases and scales add one float per row to K narrow weights (K = 256 here)
    assert q.nbytes < float_bytes / ratio * 1.05
    assert not any(a.dtype == np.float32 and a.ndim == 2 for a in q.__dict__.values()
                   if isinstance(a, np.ndarray))


@pytest.mark.parametrize("fmt", FORMATS)
def test_save_load_keeps_the_format(fmt, tmp_path):
    g = grufast.GRU(6, 10, num_layers=2, bidirectional=True, batch_first=True, seed=1)
    q = g.quantized(fmt)
    grufast.save(q, tmp_path / "q.npz")
    r = grufast.load(tmp_path / "q.npz")
    assert isinstance(r, QuantizedGRU) and r.config() == q.config()
    for k, v in q.state_dict().items():
        got = r.state_dict()[k]
        assert got.dtype == v.dtype and np.array_equal(got, v)
    x = seq(2, 7, 6)
    assert np.array_equal(r(x)[0], q(x)[0])
    c = grufast.GRUCell(4, 5, seed=0).quantized(fmt)
    grufast.save(c, tmp_path / "c.npz")
    rc = grufast.load(tmp_path / "c.npz")
    assert isinstance(rc, QuantizedGRUCell) and rc.weight_format == fmt
    assert np.array_equal(rc(np.ones(4)), c(np.ones(4)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickle_and_deepcopy(fmt):
    for m, x in [(grufast.GRU(5, 7, seed=0).quantized(fmt), seq(3, 2, 5)),
                 (grufast.GRUCell(5, 7, seed=0).quantized(fmt), np.ones(5, np.float32))]:
        want = m(x)
        for other in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
            got = other(x)
            for a, b in zip(got if isinstance(got, tuple) else [got],
                            want if isinstance(want, tuple) else [want]):
                assert np.array_equal(a, b)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stored_arrays_start_on_a_cache_line(fmt):
    """The kernels read the narrow weights in place: every stored array starts on a cache
    line however it came (quantized, loaded from a state dict, unpickled or deep-copied,
    restored from a state whose arrays lie 16 bytes past a line), and stays equal to what
    was stored."""
    def aligned(m):
        return all(a.ctypes.data % 64 == 0 for a in m._store.values())

    def off_a_line(a):  # a copy whose data starts 16 bytes past a line
        raw = np.empty(a.nbytes + 80, np.uint8)
        start = (-raw.ctypes.data) % 64 + 16
        out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
        out[...] = a
        return out

    for m in (grufast.GRU(5, 7, num_layers=2, seed=0).quantized(fmt),
              grufast.GRUCell(5, 7, seed=0).quantized(fmt)):
        assert aligned(m)
        sd = m.state_dict()
        m.load_state_dict({k: off_a_line(v) for k, v in sd.items()})
        assert aligned(m)
        assert all(np.array_equal(m.state_dict()[k], v) for k, v in sd.items())
        assert aligned(pickle.loads(pickle.dumps(m))) and aligned(copy.deepcopy(m))
        # __setstate__ takes the arrays as given (load_state_dict copies them first)
        state = m.__getstate__()
        state["_store"] = {k: off_a_line(v) for k, v in state["_store"].items()}
        restored = type(m).__new__(type(m))
        restored.__setstate__(state)
        assert aligned(restored)
        assert all(np.array_equal(restored.state_dict()[k], v) for k, v in sd.items())


def test_load_state_dict_is_strict():
    q = grufast.GRU(3, 4, seed=0).quantized("int8")
    sd = q.state_dict()
    with pytest.raises(TypeError, match=r"weight_ih_l0.*int8.*float32"):
        q.load_state_dict({**sd, "weight_ih_l0": sd["weight_ih_l0"].astype(np.float32)})
    with pytest.raises(ValueError, match="missing keys"):
        q.load_state_dict({k: v for k, v in sd.items() if k != "weight_hh_l0_scale"})
    with pytest.raises(ValueError, match="positive"):
        q.load_state_dict({**sd, "weight_hh_l0_scale": -sd["weight_hh_l0_scale"]})
    sd["bias_ih_l0"] = sd["bias_ih_l0"] + 1
    q.load_state_dict(sd)
    assert np.array_equal(q.state_dict()["bias_ih_l0"], sd["bias_ih_l0"])


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: grufast.GRU(3, 4), lambda: grufast.GRUCell(3, 4)])
def test_inference_only(make):
    q = make().quantized("int8")
    with pytest.raises(RuntimeError, match="inference-only.*train the float model"):
        q.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        q.backward(np.zeros((2, 1, 4)))
    assert q.eval() is q and q.train(False) is q and q.training is False


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['int8', 'bf16'\].*'fp8'"):
        grufast.GRU(3, 4).quantized("fp8")
    with pytest.raises(TypeError, match="weight_format must be a str"):
        grufast.GRUCell(3, 4).quantized(8)


@pytest.mark.parametrize("cls", [grufast.GRU, grufast.GRUCell])
def test_float64_model_says_convert_first(cls):
    with pytest.raises(TypeError, match=r"float32 model, got a float64.*convert it first"):
        cls(3, 4, dtype=np.float64).quantized("bf16")


def test_bad_input_has_the_float_models_errors():
    q = grufast.GRU(3, 4).quantized("int8")
    with pytest.raises(ValueError, match="input_size = 3"):
        q(np.zeros((2, 1, 5)))
    with pytest.raises(ValueError, match="lengths must lie in"):
        q(np.zeros((2, 1, 3)), lengths=[3])
    with pytest.raises(ValueError, match="h0 must have shape"):
        q(np.zeros((2, 1, 3)), np.zeros((1, 2, 4)))


# -- the kernels of every build this CPU runs ------------------------------------------------

@pytest.mark.parametrize("kernels", grufast._isa.runnable(), ids=lambda k: k.__name__)
@pytest.mark.parametrize("fmt", FORMATS)
# tails of vectors and rows; several whole blocks of bfloat16 pairs (K = 97: 3 blocks of 32
# on AVX-512, 6 of 16 on AVX2, and a tail); rows longer than the pair path's stack copy of v
# (I = 4100 > 4096) take the zero-extending path
@pytest.mark.parametrize("I,H", [(5, 3), (19, 21), (40, 48), (70, 97), (4100, 5)])
@pytest.mark.parametrize("lbr", [True, False])
def test_kernels_match_the_float_kernels(kernels, fmt, I, H, lbr, monkeypatch):
    import grufast.quantized as Q

    monkeypatch.setattr(Q, "_kernels", kernels)
    monkeypatch.setattr(grufast.functional, "_kernels", kernels)
    g = grufast.GRU(I, H, linear_before_reset=lbr, bidirectional=True, seed=I).eval()
    q = g.quantized(fmt)
    f = q.dequantized()
    x = seq(9, 2, I, H)  # B = 2: the quantized kernels' path
    lengths = [9, 4]
    # 4100 products summed in another order than the float kernels' differ by ~1e-5 relative
    # (the baseline build's too): the bound grows with the length of the sums
    same = SAME if I < 4096 else 5e-5
    for a, b in zip(q(x, lengths=lengths), f(x, lengths=lengths)):
        assert rel(a, b) <= same
    cell = grufast.GRUCell(I, H, linear_before_reset=lbr, seed=H)
    qc = cell.quantized(fmt)  # its plan comes from the patched build
    fc = qc.dequantized()
    h = np.random.default_rng(1).standard_normal(H).astype(np.float32)
    assert rel(qc(x[0, 0], h), fc(x[0, 0], h)) <= same


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("I", [8, 1030])  # 1030: the projections' panels in two K blocks
def test_one_sequence_split_across_threads(fmt, lbr, I):
    from threadpoolctl import threadpool_limits

    g = grufast.GRU(I, 256, linear_before_reset=lbr, bidirectional=True, seed=2).eval()
    q = g.quantized(fmt)
    f = q.dequantized()
    x = seq(7, 1, I, 3)  # B = 1, H = 256: split by hidden units on two threads
    with threadpool_limits(2):
        for lengths in (None, [4]):
            for a, b in zip(q(x, lengths=lengths), f(x, lengths=lengths)):
                assert rel(a, b) <= SAME


@pytest.mark.parametrize("fmt", FORMATS)
def test_gates(fmt):
    g = grufast.GRU(6, 10, num_layers=2, bidirectional=True, batch_first=True, seed=0)
    c = grufast.GRUCell(6, 10, seed=0)
    q, qc = g.quantized(fmt), c.quantized(fmt)
    x = seq(4, 7, 6)
    for a, b in zip(q.gates(x, lengths=[7, 3, 0, 1]),
                    q.dequantized().gates(x, lengths=[7, 3, 0, 1])):
        assert a.shape == (4, 4, 7, 10) and rel(a, b) <= SAME
    for a, b in zip(qc.gates(x[0]), qc.dequantized().gates(x[0])):
        assert a.shape == (7, 10) and rel(a, b) <= SAME
    assert rel(q.gates(x).z, g.gates(x).z) <= TARGET[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_reverse_mask_and_default_state(fmt, tmp_path):
    g = grufast.GRU(5, 8, num_layers=2, reverse=True, seed=4).eval()
    g.default_h0 = np.full((2, 1, 8), 0.3, np.float32)
    q = g.quantized(fmt)
    f = q.dequantized()
    assert q.reverse and np.array_equal(q.default_h0, g.default_h0)
    x = seq(6, 3, 5, 1)
    mask = np.array([[1, 0, 1, 1, 0, 1], [1] * 6, [0] * 6], bool)
    for kw in ({}, {"lengths": [6, 2, 0]}, {"mask": mask}):
        for a, b in zip(q(x, **kw), f(x, **kw)):
            assert rel(a, b) <= SAME
        assert rel(q(x, **kw)[0], g(x, **kw)[0]) <= TARGET[fmt]
    with pytest.raises(ValueError, match="reverse"):
        q.step(x[0])
    grufast.save(q, tmp_path / "r.npz")
    r = grufast.load(tmp_path / "r.npz")
    assert r.reverse and np.array_equal(r.default_h0, g.default_h0)
    assert np.array_equal(r(x)[0], q(x)[0])


@pytest.mark.parametrize("kernels", grufast._isa.runnable(), ids=lambda k: k.__name__)
@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (7, 37), (48, 130)])
def test_widen_is_the_numpy_dequantization_bit_for_bit(kernels, shape):
    import grufast.quantized as Q

    w = np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32) * 3
    q, scale = Q.quantize_int8(w)
    out = np.full(shape, np.nan, np.float32)
    kernels.quantized_widen(q, scale, out)
    assert np.array_equal(out.view(np.uint32), Q.dequantize_int8(q, scale).view(np.uint32))
    bits = Q.to_bf16(w)
    out[...] = np.nan
    kernels.quantized_widen(bits, np.empty(0, np.float32), out)
    assert np.array_equal(out.view(np.uint32), Q.from_bf16(bits).view(np.uint32))


def test_widen_checks_its_arguments():
    k = grufast._isa.kernels
    out = np.empty((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        k.quantized_widen(np.zeros((5, 4), np.int8), np.ones(4, np.float32), out)
    with pytest.raises(ValueError, match="scale must have 4"):
        k.quantized_widen(np.zeros((4, 5), np.int8), np.ones(3, np.float32), out)
    with pytest.raises(TypeError, match="int8 or uint16"):
        k.quantized_widen(np.zeros((4, 5), np.int16), np.ones(4, np.float32), out)
