"""The bench's peers, each set up the way its own maintainers would run it.

Every peer gets the same problem (weights under PyTorch's names, input, output gradient) and
returns a :class:`PeerRun`: zero-argument callables for one inference call and one training
step, the context its timed calls run in, and converters that turn its raw results into
NumPy arrays (used by the tests that check every peer computes the same thing; never timed).

Why each configuration is that peer's best is written beside the code that makes it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The full-sequence peers, in the order the tables show them; "grufast" is always run.
PEERS = ("numpy-reference", "torch", "onnxruntime", "jax")
# What each peer needs importable (onnxruntime also needs onnx: the graph is built with it).
MODULES = {"numpy-reference": (), "torch": ("torch",), "onnxruntime": ("onnxruntime", "onnx"),
           "jax": ("jax",)}
INSTALL = {"torch": "pip install torch==2.13.0", "onnxruntime": "pip install onnx onnxruntime",
           "jax": 'pip install "jax[cpu]"'}


@dataclass(frozen=True)
class Case:
    """One benchmark cell's model: sizes, layers, directions, variant, dtype."""

    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    linear_before_reset: bool = True
    dtype: str = "float32"

    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.T, self.B, self.I, self.H)

    def suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

    def input_size(self, layer: int) -> int:
        return self.I if layer == 0 else self.D * self.H

    def gru_flops(self) -> float:
        """Multiply-adds x 2 of the forward's products (input and recurrent), all layers."""
        per_dir = [self.T * self.B * (self.input_size(k) + self.H) * 3 * self.H
                   for k in range(self.layers)]
        return 2.0 * self.D * sum(per_dir)


@dataclass
class Problem:
    """Weights (PyTorch names and layout), input x (T, B, I) and output gradient dy."""

    case: Case
    state_dict: dict[str, np.ndarray]
    x: np.ndarray
    dy: np.ndarray


def make_problem(case: Case, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(case.H)
    sd = {}
    for layer in range(case.layers):
        for s in case.suffixes(layer):
            for name, shape in (("weight_ih", (3 * case.H, case.input_size(layer))),
                                ("weight_hh", (3 * case.H, case.H)),
                                ("bias_ih", (3 * case.H,)), ("bias_hh", (3 * case.H,))):
                sd[name + s] = rng.uniform(-k, k, shape).astype(case.dtype)
    x = rng.standard_normal((case.T, case.B, case.I)).astype(case.dtype)
    dy = rng.standard_normal((case.T, case.B, case.D * case.H)).astype(case.dtype)
    return Problem(case, sd, x, dy)


class NotApplicable(Exception):
    """This peer cannot compute the asked variant; the message says why."""


@dataclass
class PeerRun:
    """One peer, ready for one case. ``infer``/``train`` are None with a reason in
    ``na[kind]`` when the peer cannot run that kind; ``context`` is entered once around a
    burst of timed calls (outside the timer); ``config`` records the choices made."""

    infer: Callable[[], Any] | None
    train: Callable[[], Any] | None
    y_of: Callable[[Any], np.ndarray] = np.asarray
    grads_of: Callable[[Any], dict[str, np.ndarray]] | None = None
    context: dict[str, Callable[[], Any]] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


# -- grufast ---------------------------------------------------------------------------------

def grufast_peer(p: Problem, threads: int) -> PeerRun:
    import grufast

    c = p.case
    kw = dict(num_layers=c.layers, bidirectional=c.bidirectional,
              linear_before_reset=c.linear_before_reset, dtype=c.dtype)
    inf = grufast.GRU(c.I, c.H, **kw).eval()
    inf.load_state_dict(p.state_dict)
    tr = grufast.GRU(c.I, c.H, **kw).train()
    tr.load_state_dict(p.state_dict)
    x, dy = p.x, p.dy

    def train():
        # A training step updates the weights, and grufast caches transposed copies of them
        # (rebuilt at the next forward): _weights_changed() is what an optimiser's step
        # triggers, so every timed step pays the rebuild, as real training does.
        tr._weights_changed()
        y, _ = tr(x)
        dx, dh0 = tr.backward(dy)
        return y, dx, dh0

    def grads_of(raw):
        _, dx, dh0 = raw
        return {"x": dx, "h0": dh0, **{k: v.copy() for k, v in tr.grads.items()}}

    return PeerRun(lambda: inf(x)[0], train, y_of=np.asarray,
                   grads_of=grads_of, config={"weights refreshed every training step": True})


# -- the NumPy reference (the specification, not a peer: one layer, one direction) ----------

def reference_peer(p: Problem, threads: int) -> PeerRun:
    from grufast import reference as R

    c = p.case
    if c.layers != 1 or c.bidirectional:
        raise NotApplicable("the reference is one layer, one direction")
    sd = p.state_dict
    w = [sd[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    lbr = c.linear_before_reset

    def train():
        y, _, cache = R.gru_forward(p.x, None, *w, linear_before_reset=lbr, training=True)
        return y, R.gru_backward(p.dy, None, cache)

    def grads_of(raw):
        g = raw[1]
        return {"x": g.x, "h0": g.h0[None], "weight_ih_l0": g.w_ih, "weight_hh_l0": g.w_hh,
                "bias_ih_l0": g.b_ih, "bias_hh_l0": g.b_hh}

    return PeerRun(lambda: R.gru_forward(p.x, None, *w, linear_before_reset=lbr)[0], train,
                   grads_of=grads_of)


# -- PyTorch ---------------------------------------------------------------------------------

def torch_peer(p: Problem, threads: int) -> PeerRun:
    import torch

    c = p.case
    if not c.linear_before_reset:
        raise NotApplicable("torch.nn.GRU has no linear_before_reset=False")
    dtype = getattr(torch, c.dtype)

    def module():
        m = torch.nn.GRU(c.I, c.H, c.layers, bidirectional=c.bidirectional, dtype=dtype)
        m.load_state_dict({k: torch.from_numpy(v) for k, v in p.state_dict.items()})
        return m

    # Inference: module in eval mode, called under torch.inference_mode(), which the timer
    # enters once around each burst of calls (as a serving loop would), not on every call.
    inf = module().eval()
    xt = torch.from_numpy(p.x)  # shares memory: no conversion inside the timed call

    def infer():
        return inf(xt)[0]

    # Training: forward and backward of all inputs (x, h0) and parameters; gradients
    # accumulate into .grad as in any torch training loop (grufast's accumulate too).
    tr = module().train()
    xg = torch.from_numpy(p.x.copy()).requires_grad_()
    h0 = torch.zeros(c.layers * c.D, c.B, c.H, dtype=dtype, requires_grad=True)
    dyt = torch.from_numpy(p.dy)

    def train():
        y, _ = tr(xg, h0)
        y.backward(dyt)
        return y

    def grads_of(raw):
        out = {"x": xg.grad.numpy(), "h0": h0.grad.numpy()}
        out.update({k: v.grad.numpy() for k, v in tr.named_parameters()})
        return out

    return PeerRun(infer, train, y_of=lambda y: y.detach().numpy(), grads_of=grads_of,
                   context={"infer": torch.inference_mode},
                   config={"num_threads": torch.get_num_threads(),
                           "num_interop_threads": torch.get_num_interop_threads(),
                           "inference": "eval(), inference_mode entered once per burst"})


# -- ONNX Runtime ----------------------------------------------------------------------------

def _onnx_gru_model(c: Case, sd: dict, *, T, with_state: bool, outputs_y: bool) -> bytes:
    """A model of GRU nodes only, from the weights: built directly, not exported.

    One layer is exactly one GRU node: no Slice/Concat/Transpose/Reshape around it, no
    initial_h input unless the state is carried (streaming), weights as initializers in
    ONNX's z, r, n gate order. Layers after the first need their input as (T, B, D*H), which
    ONNX's Y (T, D, B, H) is not: a Squeeze (one direction) or a Transpose + Reshape (two)
    between GRU nodes is the least glue ONNX allows. With T = 1 and one direction, a layer's
    Y_h (1, B, H) already has the next layer's input shape: no glue at all.
    """
    from onnx import TensorProto, helper, numpy_helper

    from grufast.interop import rzn_to_zrn
    from grufast.interop.onnx import make_model

    elem = TensorProto.FLOAT if c.dtype == "float32" else TensorProto.DOUBLE
    D, H = c.D, c.H
    inputs = [helper.make_tensor_value_info("x", elem, [T, c.B, c.I])]
    outputs, nodes, inits = [], [], []
    inp = "x"
    for k in range(c.layers):
        sfx = c.suffixes(k)
        w = np.stack([rzn_to_zrn(sd["weight_ih" + s]) for s in sfx])
        r = np.stack([rzn_to_zrn(sd["weight_hh" + s]) for s in sfx])
        b = np.stack([np.concatenate([rzn_to_zrn(sd["bias_ih" + s]),
                                      rzn_to_zrn(sd["bias_hh" + s])]) for s in sfx])
        inits += [numpy_helper.from_array(w, f"W{k}"), numpy_helper.from_array(r, f"R{k}"),
                  numpy_helper.from_array(b, f"B{k}")]
        h0 = ""
        if with_state:
            h0 = f"h0_{k}"
            inputs.append(helper.make_tensor_value_info(h0, elem, [D, c.B, H]))
        last = k == c.layers - 1
        y = f"Y{k}" if (not last or outputs_y) else ""
        nodes.append(helper.make_node(
            "GRU", [inp, f"W{k}", f"R{k}", f"B{k}", "", h0], [y, f"Y_h{k}"], hidden_size=H,
            direction="bidirectional" if c.bidirectional else "forward",
            linear_before_reset=int(c.linear_before_reset)))
        outputs.append(helper.make_tensor_value_info(f"Y_h{k}", elem, [D, c.B, H]))
        if last:
            if outputs_y:
                outputs.insert(0, helper.make_tensor_value_info(y, elem, [T, D, c.B, H]))
        elif T == 1 and D == 1:
            inp = f"Y_h{k}"
        elif D == 1:
            inits.append(numpy_helper.from_array(np.array([1], np.int64), f"axis1_{k}"))
            nodes.append(helper.make_node("Squeeze", [y, f"axis1_{k}"], [f"in{k + 1}"]))
            inp = f"in{k + 1}"
        else:
            inits.append(numpy_helper.from_array(np.array([T, c.B, D * H], np.int64),
                                                 f"tbdh_{k}"))
            nodes.append(helper.make_node("Transpose", [y], [f"Yt{k}"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"Yt{k}", f"tbdh_{k}"], [f"in{k + 1}"]))
            inp = f"in{k + 1}"
    graph = helper.make_graph(nodes, "gru", inputs, outputs, inits)
    model = make_model(graph, 14)
    return model.SerializeToString()


def ort_session(model: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # intra-op threads = the bench's thread count (ORT's GRU parallelises inside the op);
    # one inter-op thread and sequential execution: the graph has no parallel branches.
    # Spinning stays on (ORT's default; its GRU meets its threads at every step).
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # e.g. no kernel for this dtype
        raise NotApplicable(f"ONNX Runtime refuses the model: {str(e).splitlines()[0]}") from e


def _trial_run(run, io) -> None:
    """One run now: ORT reports some missing kernels (float64 GRU) only when run."""
    try:
        run(io)
    except Exception as e:
        why = str(e).split("Status Message:")[-1].strip().splitlines()[0]
        raise NotApplicable(f"ONNX Runtime cannot run it: {why}") from e


def onnxruntime_peer(p: Problem, threads: int) -> PeerRun:
    c = p.case
    model = _onnx_gru_model(c, p.state_dict, T=c.T, with_state=False, outputs_y=True)
    sess = ort_session(model, threads)
    # IOBinding: the input is bound in place and every output goes to a buffer allocated
    # once, so a call is the session's run and nothing else (no feed dict, no allocation).
    io = sess.io_binding()
    x = np.ascontiguousarray(p.x)
    io.bind_cpu_input("x", x)
    y = np.empty((c.T, c.D, c.B, c.H), c.dtype)
    hs = [np.empty((c.D, c.B, c.H), c.dtype) for _ in range(c.layers)]
    outputs = [(f"Y{c.layers - 1}", y)] + [(f"Y_h{k}", h) for k, h in enumerate(hs)]
    for name, buf in outputs:
        io.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)

    run, keep = sess.run_with_iobinding, (x, hs)  # the bound buffers live as long as infer

    def infer(_keep=keep):
        run(io)
        return y

    def y_of(raw):  # ONNX's Y (T, D, B, H) as (T, B, D*H); a view, outside the timing
        return raw.transpose(0, 2, 1, 3).reshape(c.T, c.B, c.D * c.H)

    _trial_run(run, io)
    import onnx

    ops = [n.op_type for n in onnx.load_from_string(model).graph.node]
    return PeerRun(infer, None, y_of=y_of, na={"train": "ONNX Runtime runs inference only"},
                   config={"intra_op_num_threads": threads, "nodes": ops,
                           "binding": "IOBinding, outputs preallocated"})


# -- JAX -------------------------------------------------------------------------------------

UNROLLS = (1, 2, 4, 8)
# (case, kind) -> the chosen unroll; the bench's workers share it through a file, so the
# sweep runs once per cell (in the first worker) and every thread count uses its choice.
unroll_cache: dict[str, int] = {}


def jax_params(c: Case, sd: dict) -> dict:
    """Parameters stored pre-transposed, (in, 3H), the layout the products use (Flax's
    convention): the step multiplies h (B, H) by w_hh_t (H, 3H) with no transpose inside the
    scan, and no transpose at all in a training loop that keeps this layout."""
    import jax.numpy as jnp

    out = {}
    for k in range(c.layers):
        for s in c.suffixes(k):
            out["w_ih_t" + s] = jnp.asarray(np.ascontiguousarray(sd["weight_ih" + s].T))
            out["w_hh_t" + s] = jnp.asarray(np.ascontiguousarray(sd["weight_hh" + s].T))
            out["b_ih" + s] = jnp.asarray(sd["bias_ih" + s])
            out["b_hh" + s] = jnp.asarray(sd["bias_hh" + s])
    return out


def jax_model(c: Case, unroll: int):
    """model(params, xs (T, B, I), h0 (L*D, B, H)) -> (y (T, B, D*H), h_n (L*D, B, H))."""
    import jax
    import jax.numpy as jnp

    H = c.H

    def direction(p, s, xs, h0, reverse):
        # Input projections of all steps: one GEMM before the scan.
        gi = xs @ p["w_ih_t" + s] + p["b_ih" + s]
        w_hh_t, b_hh = p["w_hh_t" + s], p["b_hh" + s]
        if c.linear_before_reset:
            def step(h, g):
                gh = h @ w_hh_t + b_hh
                r = jax.nn.sigmoid(g[:, :H] + gh[:, :H])
                z = jax.nn.sigmoid(g[:, H:2 * H] + gh[:, H:2 * H])
                n = jnp.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
                h = (1 - z) * n + z * h
                return h, h
        else:  # the original GRU: the reset gate scales h before its product
            w_rz, w_n = w_hh_t[:, :2 * H], w_hh_t[:, 2 * H:]  # sliced outside the scan
            b_rz, b_n = b_hh[:2 * H], b_hh[2 * H:]

            def step(h, g):
                gh = h @ w_rz + b_rz
                r = jax.nn.sigmoid(g[:, :H] + gh[:, :H])
                z = jax.nn.sigmoid(g[:, H:2 * H] + gh[:, H:])
                n = jnp.tanh(g[:, 2 * H:] + (r * h) @ w_n + b_n)
                h = (1 - z) * n + z * h
                return h, h
        h_n, ys = jax.lax.scan(step, h0, gi, reverse=reverse, unroll=unroll)
        return ys, h_n

    def model(p, xs, h0):
        hs = []
        for k in range(c.layers):
            outs = []
            for d, s in enumerate(c.suffixes(k)):
                ys, h_n = direction(p, s, xs, h0[k * c.D + d], reverse=d == 1)
                outs.append(ys)
                hs.append(h_n)
            xs = outs[0] if c.D == 1 else jnp.concatenate(outs, axis=-1)
        return xs, jnp.stack(hs)

    return model


@functools.lru_cache(maxsize=64)  # one compilation per (case, unroll) in a process
def jax_functions(c: Case, unroll: int):
    """(infer, train) jitted: infer(p, xs) -> y; train(p, xs, h0, dy) -> (y, grads).

    Gradients by jax.vjp of (params, xs, h0): every input and parameter, as the other peers
    compute them; the cotangent of h_n is zero (the loss reads y only, as everywhere)."""
    import jax
    import jax.numpy as jnp

    model = jax_model(c, unroll)

    def infer(p, xs):
        h0 = jnp.zeros((c.layers * c.D, xs.shape[1], c.H), xs.dtype)
        return model(p, xs, h0)[0]

    def train(p, xs, h0, dy):
        (y, h_n), vjp = jax.vjp(model, p, xs, h0)
        return y, vjp((dy, jnp.zeros_like(h_n)))

    return jax.jit(infer), jax.jit(train)


def _best_unroll(key, make_call, sweep_s: float) -> int:
    """The fastest scan unroll of UNROLLS for this shape and kind, measured once per process
    (compile, warm up, then the minimum of a few calls) and cached."""
    if key in unroll_cache:
        return unroll_cache[key]
    best, best_t = 1, float("inf")
    for u in UNROLLS:
        call = make_call(u)
        call()
        t_end = time.perf_counter() + sweep_s
        t = float("inf")
        for _ in range(50):
            t0 = time.perf_counter()
            call()
            t = min(t, time.perf_counter() - t0)
            if time.perf_counter() > t_end:
                break
        if t < best_t * 0.98:  # a larger unroll must win clearly (it costs compile time)
            best, best_t = u, t
    unroll_cache[key] = best
    return best


def jax_peer(p: Problem, threads: int, *, sweep_s: float = 0.2,
             unroll: dict[str, int] | None = None) -> PeerRun:
    import jax
    import jax.numpy as jnp

    c = p.case
    if c.dtype == "float64" and not jax.config.jax_enable_x64:
        raise NotApplicable("JAX runs float64 only with jax_enable_x64 set at start-up")
    params = jax_params(c, p.state_dict)
    xs, dy = jnp.asarray(p.x), jnp.asarray(p.dy)
    h0 = jnp.zeros((c.layers * c.D, c.B, c.H), c.dtype)

    def infer_call(u):
        f = jax_functions(c, u)[0]
        return lambda: f(params, xs).block_until_ready()

    def train_call(u):
        f = jax_functions(c, u)[1]
        return lambda: jax.block_until_ready(f(params, xs, h0, dy))

    unroll = dict(unroll or {})
    for kind, make in (("infer", infer_call), ("train", train_call)):
        if kind not in unroll:
            unroll[kind] = _best_unroll(f"{c}|{kind}", make, sweep_s)
    f_inf = jax_functions(c, unroll["infer"])[0]
    f_tr = jax_functions(c, unroll["train"])[1]

    def infer():
        return f_inf(params, xs).block_until_ready()

    def train():
        return jax.block_until_ready(f_tr(params, xs, h0, dy))

    def grads_of(raw):
        _, (gp, gx, gh0) = raw
        out = {"x": np.asarray(gx), "h0": np.asarray(gh0)}
        for k, v in gp.items():  # back to PyTorch's names and (3H, in) layout
            name = k.replace("w_ih_t", "weight_ih").replace("w_hh_t", "weight_hh")
            name = name.replace("b_ih", "bias_ih").replace("b_hh", "bias_hh")
            out[name] = np.asarray(v).T if k.startswith("w_") else np.asarray(v)
        return out

    return PeerRun(infer, train, y_of=np.asarray, grads_of=grads_of,
                   config={"unroll": unroll, "weights": "pre-transposed (in, 3H)",
                           "gradients": "jax.vjp of params, x and h0"})


# -- sgemm: one GEMM of the forward's FLOPs, no gate work ------------------------------------

def sgemm_call(c: Case) -> Callable[[], Any]:
    """SciPy's BLAS (the library grufast calls through scipy.linalg.cython_blas), with
    Fortran-ordered operands and a preallocated output written in place: no copies."""
    from scipy.linalg import blas

    K = int(round(c.gru_flops() / (2 * c.T * c.B * 3 * c.H)))
    gemm = blas.sgemm if c.dtype == "float32" else blas.dgemm
    a = np.asfortranarray(np.full((c.T * c.B, K), 0.01, c.dtype))
    b = np.asfortranarray(np.full((K, 3 * c.H), 0.01, c.dtype))
    out = np.asfortranarray(np.empty((c.T * c.B, 3 * c.H), c.dtype))

    def call():
        return gemm(1.0, a, b, beta=0.0, c=out, overwrite_c=True)

    assert call() is out or np.shares_memory(call(), out), "sgemm copied its output"
    return call


# -- streaming: one step per call, B = 1 -----------------------------------------------------

STREAM_STEPS = 64  # steps per timed sample: the timer's own cost stays below 1% of it


def stream_problem(c: Case, seed: int = 1):
    """State dict for a unidirectional c.layers-layer GRU and the STREAM_STEPS inputs."""
    p = make_problem(Case(STREAM_STEPS, 1, c.I, c.H, c.layers, False, c.linear_before_reset,
                          c.dtype), seed)
    return p.state_dict, p.x[:, 0]  # xs (steps, I)


def stream_peers(c: Case, threads: int, names: list[str]) -> dict[str, Callable[[], Any]]:
    """One sample = STREAM_STEPS calls feeding the state back, one input row per call.

    Every peer gets each step's input as a batch of one, (1, I), from a sequence prepared
    once in its own container (NumPy, torch tensor, JAX array, a bound ORT buffer); grufast
    is also shown with 1-D (I,) inputs, the form its GRUCell fast path takes.
    Returns name -> sample callable, or name -> NotApplicable reason (str).
    """
    import grufast

    sd, xs = stream_problem(c)
    L, H, dt = c.layers, c.H, c.dtype
    out: dict[str, Any] = {}
    gru = grufast.GRU(c.I, H, L, linear_before_reset=c.linear_before_reset, dtype=dt).eval()
    gru.load_state_dict(sd)
    rows1, rows2 = list(xs), [r[None] for r in xs]  # (I,) and (1, I) views
    if L == 1:
        cell = grufast.GRUCell(c.I, H, linear_before_reset=c.linear_before_reset, dtype=dt)
        cell.load_state_dict({k[:-3]: v for k, v in sd.items()})

        def cell_1d():
            h = np.zeros(H, dt)
            for x in rows1:
                h = cell(x, h)
            return h

        def cell_2d():
            h = np.zeros((1, H), dt)
            for x in rows2:
                h = cell(x, h)
            return h

        out["grufast GRUCell (1, H)"] = cell_2d
        out["grufast GRUCell (H,)"] = cell_1d
    else:
        out["grufast GRUCell (1, H)"] = out["grufast GRUCell (H,)"] = "GRUCell is one layer"

    def step_1d():
        h = np.zeros((L, H), dt)
        for x in rows1:
            _, h = gru.step(x, h)
        return h

    def step_2d():
        h = np.zeros((L, 1, H), dt)
        for x in rows2:
            _, h = gru.step(x, h)
        return h

    out["grufast GRU.step (1, H)"] = step_2d
    out["grufast GRU.step (H,)"] = step_1d
    for name in names:
        if name == "numpy-reference":
            continue
        try:
            out[name] = {"torch": _torch_stream, "onnxruntime": _ort_stream,
                         "jax": _jax_stream}[name](c, sd, xs, threads)
        except NotApplicable as e:
            out[name] = str(e)
    return out


def _torch_stream(c: Case, sd, xs, threads):
    import torch

    if not c.linear_before_reset:
        raise NotApplicable("torch has no linear_before_reset=False")
    # torch._VF.gru_cell is the kernel nn.GRUCell.forward calls after its Python-side
    # checks; calling it directly saves those checks (one process, interleaved, H = 128, one
    # pinned core of the loaded project machine: 172 us per step against 232 us for
    # nn.GRUCell and 229 us for nn.GRUCell with inference_mode entered on every call; read
    # the ratios). A 2-layer step is two calls. Each sample runs under one inference_mode.
    w = [[torch.from_numpy(sd[n + f"_l{k}"]) for n in ("weight_ih", "weight_hh", "bias_ih",
                                                        "bias_hh")] for k in range(c.layers)]
    rows = [torch.from_numpy(r[None].copy()) for r in xs]
    cell = torch._VF.gru_cell
    dtype = getattr(torch, c.dtype)

    def sample():
        with torch.inference_mode():
            hs = [torch.zeros(1, c.H, dtype=dtype) for _ in range(c.layers)]
            for x in rows:
                for k in range(c.layers):
                    x = hs[k] = cell(x, hs[k], *w[k])
        return hs[-1]

    return sample


def _ort_stream(c: Case, sd, xs, threads):
    sess = ort_session(_onnx_gru_model(Case(1, 1, c.I, c.H, c.layers, False,
                                            c.linear_before_reset, c.dtype), sd, T=1,
                                       with_state=True, outputs_y=False), threads)
    # The T = 1 graph: the state goes in as initial_h and comes out as Y_h. Two IOBindings
    # over two state buffers alternate (A -> B, then B -> A), so a step binds nothing: it
    # copies the step's input row into the bound input buffer and runs.
    L, H = c.layers, c.H
    x = np.zeros((1, 1, c.I), c.dtype)
    states = [[np.zeros((1, 1, H), c.dtype) for _ in range(L)] for _ in range(2)]
    bindings = []
    for src, dst in ((0, 1), (1, 0)):
        io = sess.io_binding()
        io.bind_cpu_input("x", x)
        for k in range(L):
            io.bind_cpu_input(f"h0_{k}", states[src][k])
            buf = states[dst][k]
            io.bind_output(f"Y_h{k}", "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        bindings.append(io)
    run = sess.run_with_iobinding
    _trial_run(run, bindings[0])
    rows = list(xs)

    def sample():
        for s in states[0]:
            s.fill(0)
        i = 0
        for r in rows:
            x[0, 0] = r
            run(bindings[i])
            i ^= 1
        return states[i][L - 1]

    return sample


def _jax_stream(c: Case, sd, xs, threads):
    import jax
    import jax.numpy as jnp

    if c.dtype == "float64" and not jax.config.jax_enable_x64:
        raise NotApplicable("JAX runs float64 only with jax_enable_x64 set at start-up")
    sc = Case(1, 1, c.I, c.H, c.layers, False, c.linear_before_reset, c.dtype)
    params = jax_params(sc, sd)
    model = jax_model(sc, 1)

    # One jitted call per step on device arrays prepared once (x rows split beforehand:
    # indexing a JAX array would be another dispatched op per step).
    @jax.jit
    def step(p, x, h):
        y, h = model(p, x[None], h)
        return h

    rows = [jnp.asarray(r[None]) for r in xs]
    h0 = jnp.zeros((c.layers, 1, c.H), c.dtype)
    step(params, rows[0], h0).block_until_ready()

    def sample():
        h = h0
        for r in rows:
            h = step(params, r, h)
        return h.block_until_ready()

    return sample


MAKERS = {"grufast": grufast_peer, "numpy-reference": reference_peer, "torch": torch_peer,
          "onnxruntime": onnxruntime_peer, "jax": jax_peer}


def make_peer(name: str, p: Problem, threads: int, **kw) -> PeerRun:
    """The peer's PeerRun, or one with both kinds n/a and the reason."""
    try:
        return MAKERS[name](p, threads, **kw)
    except NotApplicable as e:
        return PeerRun(None, None, na={"infer": str(e), "train": str(e)})
