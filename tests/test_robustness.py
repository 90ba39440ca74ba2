"""Bad input, layouts, numerical edges, concurrency and memory: the public API must give the
right answer or a clear ValueError/TypeError, never a crash or a silently wrong result."""

import concurrent.futures
import gc

import numpy as np
import pytest

import grufast
from grufast import functional as F
from grufast import reference as R

from .helpers import assert_close, problem

# -- constructor arguments ---------------------------------------------------------------

BAD_GRU_ARGS = [
    (dict(input_size=0), ValueError, "input_size must be positive, got 0"),
    (dict(hidden_size=-3), ValueError, "hidden_size must be positive, got -3"),
    (dict(input_size=2.5), TypeError, "input_size must be an int"),
    (dict(hidden_size=True), TypeError, "hidden_size must be an int"),
    (dict(num_layers=0), ValueError, "num_layers must be positive"),
    (dict(dropout=1.0), ValueError, r"dropout must lie in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), ValueError, r"dropout must lie in \[0, 1\)"),
    (dict(dropout="0.1"), TypeError, "dropout must be a number"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64, got int32"),
    (dict(dtype=np.float16), TypeError, "dtype must be float32 or float64"),
    (dict(dtype="complex"), TypeError, "dtype must be float32 or float64"),
    (dict(dtype="nonsense"), TypeError, "dtype must be float32 or float64"),
    (dict(bidirectional="yes"), TypeError, "bidirectional must be a bool"),
    (dict(batch_first=1), TypeError, "batch_first must be a bool"),
    (dict(linear_before_reset=None), TypeError, "linear_before_reset must be a bool"),
]


@pytest.mark.parametrize("change,exc,match", BAD_GRU_ARGS)
def test_gru_constructor_rejects(change, exc, match):
    kw = dict(input_size=3, hidden_size=4)
    kw.update(change)
    with pytest.raises(exc, match=match):
        grufast.GRU(**kw)


@pytest.mark.parametrize("change,exc,match", [c for c in BAD_GRU_ARGS if not set(c[0]) & {
    "num_layers", "dropout", "bidirectional", "batch_first"}])
def test_cell_constructor_rejects(change, exc, match):
    kw = dict(input_size=3, hidden_size=4)
    kw.update(change)
    with pytest.raises(exc, match=match):
        grufast.GRUCell(**kw)


# -- calls -------------------------------------------------------------------------------

@pytest.fixture
def gru():
    return grufast.GRU(3, 4, 2, seed=0)


BAD_CALLS = [
    (dict(x=np.zeros((2, 3, 3, 1))), ValueError, "x must be 3-D"),
    (dict(x=np.zeros(3)), ValueError, "x must be 3-D"),
    (dict(x=np.zeros((5, 2, 4))), ValueError, "input_size = 3 features"),
    (dict(x=np.zeros((5, 2, 3), complex)), TypeError, "x must hold real numbers"),
    (dict(x=np.zeros((5, 2, 3), object)), TypeError, "x must hold real numbers"),
    (dict(x=np.zeros((5, 2, 3), bool)), TypeError, "x must hold real numbers"),
    (dict(x=[[1, 2], [3]]), TypeError, "x must be an array of real numbers"),
    (dict(x="abc"), TypeError, "x must hold real numbers"),
    (dict(h0=np.zeros((2, 2, 5))), ValueError, r"h0 must have shape .* = \(2, 2, 4\)"),
    (dict(h0=np.zeros((1, 2, 4))), ValueError, r"h0 must have shape"),
    (dict(h0=np.zeros((2, 2, 4), complex)), TypeError, "h0 must hold real numbers"),
    (dict(lengths=[5]), ValueError, r"lengths must have shape \(B,\) = \(2,\)"),
    (dict(lengths=[6, 1]), ValueError, r"lengths must lie in \[0, T\] = \[0, 5\]"),
    (dict(lengths=[-1, 1]), ValueError, r"lengths must lie in"),
    (dict(lengths=[1.5, 1]), ValueError, "lengths must be whole numbers"),
    (dict(lengths=[True, False]), TypeError, "lengths must be integers"),
]


@pytest.mark.parametrize("change,exc,match", BAD_CALLS)
def test_gru_call_rejects(gru, change, exc, match):
    kw = dict(x=np.zeros((5, 2, 3)), h0=None, lengths=None)
    kw.update(change)
    with pytest.raises(exc, match=match):
        gru(kw["x"], kw["h0"], lengths=kw["lengths"])


def test_backward_step_and_cell_reject(gru):
    y, h = gru(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"dy must have the shape of y, \(5, 2, 4\), got"):
        gru.backward(np.zeros((5, 2, 5)))
    y, h = gru(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"dh_n must have the shape of h_n, "):
        gru.backward(None, np.zeros((2, 4)))
    with pytest.raises(TypeError, match="dy must hold real numbers"):
        gru.backward(np.zeros((5, 2, 4), complex))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, input_size\)"):
        gru.step(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"h must have shape"):
        gru.step(np.zeros((2, 3)), np.zeros((2, 4)))
    cell = grufast.GRUCell(3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, input_size\)"):
        cell(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"h must have shape"):
        cell(np.zeros((2, 3)), np.zeros((3, 4)))
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        cell.load_state_dict([1, 2])
    with pytest.raises(TypeError, match="model must be a grufast GRU"):
        grufast.save("not a model", "x.npz")
    with pytest.raises(TypeError, match="torch.nn.GRU"):
        grufast.GRU.from_torch(cell)


def test_sizes_beyond_blas_integers_are_refused_before_any_work(gru):
    # A broadcast view: 2**31 rows of time x batch without the memory behind them.
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.float32), (2**16, 2**15 + 1, 3))
    with pytest.raises(ValueError, match=r"T\*B = 2147549184 exceeds the BLAS integer limit"):
        gru(huge)
    w = problem(np.random.default_rng(0), 1, 1, 3, 4, np.float32)[2:]
    with pytest.raises(ValueError, match="exceeds the BLAS integer limit"):
        F.gru_forward(huge, None, *w)


# -- layouts and caller arrays -----------------------------------------------------------

def _readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def test_no_caller_array_is_modified_by_any_call(tmp_path):
    """Every input is read-only (a write would raise) and compared with a copy afterwards."""
    rng = np.random.default_rng(1)
    x, h0, *w = (_readonly(a) for a in problem(rng, 6, 3, 4, 5, np.float32))
    inputs = [x, h0, *w]
    copies = [a.copy() for a in inputs]
    lengths = _readonly([6, 2, 0])
    y, h, cache = F.gru_forward(x, h0, *w, lengths=lengths, training=True)
    F.gru_backward(_readonly(y), _readonly(h), cache)
    gru = grufast.GRU(4, 5, 2, bidirectional=True, seed=0)
    h0_2 = _readonly(rng.standard_normal((4, 3, 5)))
    y, h = gru(x, h0_2, lengths=lengths)
    gru.backward(_readonly(y), _readonly(h))
    uni = grufast.GRU(4, 5, 2, seed=0).eval()
    h_s = _readonly(np.zeros((2, 3, 5)))
    uni.step(x[0], h_s)
    cell = grufast.GRUCell(4, 5)
    cell(x[0], h0)
    sd = {k: _readonly(v) for k, v in gru.state_dict().items()}
    gru.load_state_dict(sd)
    grufast.save(gru, tmp_path / "m.npz")
    for a, b in zip(inputs + [lengths, h0_2, h_s], copies + [[6, 2, 0], h0_2, h_s]):
        np.testing.assert_array_equal(a, b)
    assert not h_s.any()


def test_any_layout_gives_the_contiguous_answer():
    gru = grufast.GRU(4, 5, 2, batch_first=True, bidirectional=True, seed=2).eval()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    h0 = rng.standard_normal((4, 3, 5)).astype(np.float32)
    y, h = gru(x, h0, lengths=[6, 3, 1])
    variants = [
        (np.asfortranarray(x), np.asfortranarray(h0)),
        (np.repeat(x, 2, axis=2)[:, :, ::2], h0[:, ::-1][:, ::-1]),       # strided views
        (x.tolist(), h0.tolist()),                                        # lists
        (x.astype(np.float64), h0.astype(np.float64)),  # float64 data into a float32 model
        (_readonly(x), _readonly(h0)),
    ]
    for xv, hv in variants:
        yv, hv_out = gru(xv, hv, lengths=np.array([6.0, 3.0, 1.0]))
        assert yv.dtype == np.float32 and yv.flags.c_contiguous
        np.testing.assert_array_equal(yv, y)
        np.testing.assert_array_equal(hv_out, h)


def test_empty_and_unit_sizes_behave_as_documented():
    gru = grufast.GRU(1, 1, 2, bidirectional=True, seed=0)
    h0 = np.ones((4, 2, 1), np.float32)
    y, h = gru(np.zeros((0, 2, 1)), h0)                      # T = 0: h_n = h0
    assert y.shape == (0, 2, 2)
    np.testing.assert_array_equal(h, h0)
    dx, dh0 = gru.backward(None, np.ones_like(h))
    assert dx.shape == (0, 2, 1)
    np.testing.assert_array_equal(dh0, np.ones_like(h))
    y, h = gru(np.zeros((3, 0, 1)))                          # B = 0: empty outputs
    assert y.shape == (3, 0, 2) and h.shape == (4, 0, 1)
    dx, dh0 = gru.backward(np.zeros((3, 0, 2)))
    assert dx.shape == (3, 0, 1) and dh0.shape == (4, 0, 1)
    y, h = gru(np.ones((1, 1, 1)), h0[:, :1])                 # all sizes 1
    assert y.shape == (1, 1, 2) and h.shape == (4, 1, 1)
    dx, dh0 = gru.backward(np.ones_like(y), np.ones_like(h))
    _check_against_stacked_reference(gru, np.ones((1, 1, 1)), h0[:, :1], y, h, dx, dh0)


def _check_against_stacked_reference(gru, x, h0, y, h, dx, dh0):
    """A 2-layer bidirectional GRU's outputs and input gradients (for dy = dh = ones) against
    the reference run layer by layer in float64."""
    sd = {k: v.astype(np.float64) for k, v in gru.state_dict().items()}
    inp, caches, hs = x.astype(np.float64), [], []
    for k in range(2):
        outs = []
        for d, sfx in enumerate([f"_l{k}", f"_l{k}_reverse"]):
            o, hn, c = R.gru_forward(inp, h0[2 * k + d].astype(np.float64),
                                     sd["weight_ih" + sfx], sd["weight_hh" + sfx],
                                     sd["bias_ih" + sfx], sd["bias_hh" + sfx], reverse=d == 1,
                                     training=True)
            outs.append(o)
            hs.append(hn)
            caches.append(c)
        inp = np.concatenate(outs, axis=-1)
    assert_close(y, inp, np.float32, "fwd", "y")
    assert_close(h, np.stack(hs), np.float32, "fwd", "h_n")
    H = h.shape[-1]
    dout, dh0_ref = np.ones(inp.shape), [None] * 4
    for k in (1, 0):
        din = 0
        for d in range(2):
            g = R.gru_backward(dout[..., d * H:(d + 1) * H], np.ones(h.shape[1:]),
                               caches[2 * k + d])
            din = din + g.x
            dh0_ref[2 * k + d] = g.h0
        dout = din
    assert_close(dx, dout, np.float32, "grad", "dx")
    assert_close(dh0, np.stack(dh0_ref), np.float32, "grad", "dh0")


# -- numerical edges ---------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e4, 1e30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lbr", [True, False])
def test_huge_inputs_saturate_the_gates(scale, dtype, lbr):
    rng = np.random.default_rng(3)
    x, h0, *w = problem(rng, 8, 4, 3, 5, dtype)
    x = (np.sign(x) * scale).astype(dtype)
    h0 = np.tanh(h0)  # a state a GRU can reach: within [-1, 1]
    y, h, cache = F.gru_forward(x, h0, *w, linear_before_reset=lbr, training=True)
    assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= 1) and np.all(np.abs(h) <= 1)
    with np.errstate(over="ignore"):
        yr, hr, _ = R.gru_forward(*(a.astype(np.float64) for a in (x, h0, *w)),
                                  linear_before_reset=lbr)
    assert_close(y, yr, dtype)
    g = F.gru_backward(np.ones_like(y), None, cache)
    with np.errstate(over="ignore"):
        _, _, cr = R.gru_forward(*(a.astype(np.float64) for a in (x, h0, *w)),
                                 linear_before_reset=lbr, training=True)
        gr = R.gru_backward(np.ones(y.shape), None, cr)
    # Saturated gates pass no gradient back to the inputs that saturated them: finite, and
    # the reference's values.
    assert len(g) == len(gr)
    for name, a, b in zip(g._fields, g, gr):
        assert np.all(np.isfinite(a)), name
        assert_close(a, b, dtype, "grad", name)


def test_nan_stays_in_its_sequence():
    rng = np.random.default_rng(4)
    x, h0, *w = problem(rng, 6, 4, 3, 5, np.float32)
    x[2, 1, 0] = np.nan
    gru = grufast.GRU(3, 5, 2, bidirectional=True, seed=0).eval()
    y, h = gru(x)
    assert np.all(np.isnan(y[:, 1])) and np.all(np.isnan(h[:, 1]))
    keep = [0, 2, 3]
    assert np.all(np.isfinite(y[:, keep])) and np.all(np.isfinite(h[:, keep]))
    y_clean, _ = gru(x[:, keep])
    np.testing.assert_allclose(y[:, keep], y_clean, rtol=1e-5, atol=1e-6)


def test_long_sequence_float32_stays_close_to_float64():
    """T = 100 000 steps in float32 against the float64 reference: the GRU's state is
    bounded and its error does not grow with T (documented bound 5e-5)."""
    rng = np.random.default_rng(5)
    T, B, I, H = 100_000, 2, 4, 8
    x, h0, *w = problem(rng, T, B, I, H, np.float32)
    y, h, _ = F.gru_forward(x, h0, *w)
    yr, hr, _ = R.gru_forward(*(a.astype(np.float64) for a in (x, h0, *w)))
    err = np.abs(y - yr).max()
    assert err <= 5e-5, err
    assert np.abs(h - hr).max() <= 5e-5


# -- concurrency and determinism ---------------------------------------------------------

def test_eight_threads_on_one_model_match_serial_bitwise():
    gru = grufast.GRU(16, 32, 2, bidirectional=True, seed=6).eval()
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((50, 4, 16)).astype(np.float32) for _ in range(16)]
    serial = [gru(x) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(gru, xs))
    for (y1, h1), (y2, h2) in zip(serial, parallel):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(h1, h2)
    y_again, _ = gru(xs[0])
    np.testing.assert_array_equal(y_again, serial[0][0])


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4


def test_repeated_calls_do_not_grow_memory():
    gru = grufast.GRU(8, 8, seed=0)
    cell = grufast.GRUCell(8, 8)
    x = np.ones((3, 2, 8), np.float32)
    for _ in range(2000):
        gru(x)
        gru.backward(np.ones((3, 2, 8), np.float32))
    gru.eval()
    gc.collect()
    before = _rss_kib()
    for _ in range(100_000):
        gru(x)
        cell(x[0, 0])
    gc.collect()
    growth = _rss_kib() - before
    assert growth < 2048, f"resident memory grew by {growth} KiB over 100 000 calls"


@pytest.mark.parametrize("call", [
    lambda v: grufast.GRUCell(1, 3)(v),
    lambda v: grufast.GRUCell(1, 3).quantized("int8")(v),
    lambda v: grufast.GRU(1, 3).eval().step(v),
    lambda v: grufast.Linear(1, 2)(v),
    lambda v: grufast.GRU(1, 3).eval()(v),
], ids=["GRUCell", "QuantizedGRUCell", "GRU.step", "Linear", "GRU"])
@pytest.mark.parametrize("value", [0.5, np.float32(0.5), np.array(0.5)],
                         ids=["float", "np-scalar", "0-d"])
def test_a_scalar_input_is_refused_with_its_shape(call, value):
    """A 0-d x is not a one-element input (as torch refuses it): the error names shape ()
    (np.ascontiguousarray had made it (1,), so a one-input model ran on it)."""
    with pytest.raises(ValueError, match=r"got (0-D shape )?\(\)"):
        call(value)
