"""The independent oracles, as adapters with one calling convention, shared by the tests and
tools/oracle_errors.py: PyTorch (nn.GRU, and autograd of the linear_before_reset=False
equations), ONNX Runtime's GRU operator, and Keras' GRU (torch backend).

Each takes one layer and direction in grufast's layout (x (T, B, I), weights (3H, ...) with
gate blocks r, z, n) and returns y, h_n and, where the oracle differentiates, the gradients of
sum(y * dy) + sum(h_n * dh). Imports of the heavy peers happen inside the adapters, so that
importing this module costs nothing.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras needs a backend; no TensorFlow here

# Every combination the layer-vs-torch test runs: layers, bidirectional, batch_first, bias,
# lengths, dtype.
LAYER_CASES = list(itertools.product([1, 2, 3], [False, True], [False, True], [False, True],
                                     [False, True], [np.float32, np.float64]))


def _torch_dtype(dtype):
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(dtype)]


def rzn_to_zrn(w):
    """Gate blocks r, z, n (grufast, PyTorch) -> z, r, n (ONNX, Keras), along axis 0."""
    r, z, n = np.split(w, 3)
    return np.concatenate([z, r, n])


def zrn_to_rzn(w):
    z, r, n = np.split(w, 3)
    return np.concatenate([r, z, n])


# -- PyTorch ------------------------------------------------------------------------------

def torch_gru(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, dy, dh):
    """torch.nn.GRU (linear_before_reset=True): y, h_n and the autograd gradients
    [dx, dh0, dw_ih, dw_hh(, db_ih, db_hh)] of sum(y dy + h_n dh)."""
    import torch

    T, B, I = x.shape
    H = w_hh.shape[1]
    gru = torch.nn.GRU(I, H, bias=b_ih is not None, bidirectional=reverse,
                       dtype=_torch_dtype(x.dtype))
    sfx = "_reverse" if reverse else ""
    params = {f"weight_ih_l0{sfx}": w_ih, f"weight_hh_l0{sfx}": w_hh}
    if b_ih is not None:
        params.update({f"bias_ih_l0{sfx}": b_ih, f"bias_hh_l0{sfx}": b_hh})
    with torch.no_grad():
        for name, value in params.items():
            getattr(gru, name).copy_(torch.from_numpy(value))
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(np.stack([h0] * (2 if reverse else 1)), requires_grad=True)
    if lengths is None:
        out, hn = gru(xt, ht)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.from_numpy(np.asarray(lengths, np.int64)), enforce_sorted=False)
        out, hn = gru(packed, ht)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    if reverse:  # the reverse half of a bidirectional GRU is the reverse direction alone
        out, hn = out[..., H:], hn[1:]
    loss = (out * torch.from_numpy(dy)).sum() + (hn[0] * torch.from_numpy(dh)).sum()
    loss.backward()
    grads = [xt.grad, ht.grad[-1]] + [getattr(gru, name).grad for name in params]
    return out.detach().numpy(), hn[0].detach().numpy(), [g.numpy() for g in grads]


def torch_recurrence(xt, h, wi, wh, bi, bh, lens, reverse, linear_before_reset):
    """One layer and direction of the GRU equations in torch ops (autograd follows them):
    xt (T, B, I), h (B, H) the initial state, lens (B,) valid steps (outputs past them are
    zero, the state is kept). Returns y (T, B, H) and the final state."""
    import torch

    T, B = xt.shape[:2]
    H = wh.shape[1]
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        gi = xt[t] @ wi.T + bi
        r = torch.sigmoid(gi[:, :H] + h @ wh[:H].T + bh[:H])
        z = torch.sigmoid(gi[:, H:2 * H] + h @ wh[H:2 * H].T + bh[H:2 * H])
        if linear_before_reset:
            n = torch.tanh(gi[:, 2 * H:] + r * (h @ wh[2 * H:].T + bh[2 * H:]))
        else:
            n = torch.tanh(gi[:, 2 * H:] + (r * h) @ wh[2 * H:].T + bh[2 * H:])
        valid = (t < lens)[:, None]
        new = (1 - z) * n + z * h
        ys[t] = torch.where(valid, new, torch.zeros_like(new))
        h = torch.where(valid, new, h)
    return (torch.stack(ys) if T else torch.zeros((0, B, H), dtype=xt.dtype)), h


def torch_autograd_gru(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, dy, dh,
                       linear_before_reset=False):
    """The GRU equations written in torch ops, either variant; autograd supplies the
    gradients that torch.nn.GRU cannot give for linear_before_reset=False. Returns y, h_n and
    [dx, dh0, dw_ih, dw_hh(, db_ih, db_hh)]."""
    import torch

    T, B, _ = x.shape
    H = w_hh.shape[1]
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, h0, w_ih, w_hh)]
    xt, h, wi, wh = leaves
    if b_ih is not None:
        leaves += [torch.tensor(b_ih, requires_grad=True), torch.tensor(b_hh, requires_grad=True)]
        bi, bh = leaves[4:]
    else:
        bi = bh = torch.zeros(3 * H, dtype=xt.dtype)
    lens = torch.from_numpy(np.full(B, T) if lengths is None else np.asarray(lengths))
    y, h = torch_recurrence(xt, h, wi, wh, bi, bh, lens, reverse, linear_before_reset)
    ((y * torch.from_numpy(dy)).sum() + (h * torch.from_numpy(dh)).sum()).backward()
    # A leaf the loss does not reach (x when T = 0) has no grad: its gradient is zero.
    return y.detach().numpy(), h.detach().numpy(), [
        np.zeros(tuple(a.shape), x.dtype) if a.grad is None else a.grad.numpy() for a in leaves]


def torch_autograd_gru_no_lbr(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, dy, dh):
    return torch_autograd_gru(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, dy, dh, False)


def torch_layer(m, x, h0, lengths, dy, dh):
    """A torch.nn.GRU module m on x (its layout) with packed sequences for lengths: y, h_n,
    dx, dh0 and the parameter gradients by name, of sum(y dy + h_n dh)."""
    import torch

    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    if lengths is None:
        y, hn = m(xt, ht)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.from_numpy(np.asarray(lengths, np.int64)), batch_first=m.batch_first,
            enforce_sorted=False)
        y, hn = m(packed, ht)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(
            y, batch_first=m.batch_first, total_length=x.shape[1 if m.batch_first else 0])
    ((y * torch.from_numpy(dy)).sum() + (hn * torch.from_numpy(dh)).sum()).backward()
    grads = {name: p.grad.numpy() for name, p in m.named_parameters()}
    return y.detach().numpy(), hn.detach().numpy(), xt.grad.numpy(), ht.grad.numpy(), grads


def layer_and_torch(rng, layers, bidirectional, batch_first, bias, use_lengths, dtype,
                    seed=0):
    """One random problem (T, B, I, H = 6, 4, 5, 7) through grufast.GRU.from_torch(m) and
    through torch.nn.GRU m with autograd: (gru, ours, theirs), each of ours and theirs being
    (y, h_n, dx, dh0, parameter gradients by name)."""
    import torch

    import grufast

    T, B, I, H = 6, 4, 5, 7
    D = 2 if bidirectional else 1
    torch.manual_seed(seed)
    m = torch.nn.GRU(I, H, layers, bias=bias, batch_first=batch_first,
                     bidirectional=bidirectional, dtype=_torch_dtype(dtype))
    gru = grufast.GRU.from_torch(m)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    lengths = np.array([T, 1, 4, T - 1]) if use_lengths else None
    y, hn = gru(x, h0, lengths=lengths)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(hn.shape).astype(dtype)
    dx, dh0 = gru.backward(dy, dh)
    return gru, (y, hn, dx, dh0, gru.grads), torch_layer(m, x, h0, lengths, dy, dh)


# -- ONNX Runtime -------------------------------------------------------------------------

def run_onnx_gru(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, linear_before_reset):
    """One ONNX GRU node (opset 14, gate order z, r, h) run by ONNX Runtime: y, h_n."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    onnx_dtype = {np.dtype(np.float32): TensorProto.FLOAT,
                  np.dtype(np.float64): TensorProto.DOUBLE}
    T, B, I = x.shape
    H = w_hh.shape[1]
    dt = onnx_dtype[x.dtype]
    inputs = [
        helper.make_tensor_value_info("X", dt, [T, B, I]),
        helper.make_tensor_value_info("W", dt, [1, 3 * H, I]),
        helper.make_tensor_value_info("R", dt, [1, 3 * H, H]),
        helper.make_tensor_value_info("B", dt, [1, 6 * H]),
        helper.make_tensor_value_info("L", TensorProto.INT32, [B]),
        helper.make_tensor_value_info("H0", dt, [1, B, H]),
    ]
    outputs = [helper.make_tensor_value_info("Y", dt, [T, 1, B, H]),
               helper.make_tensor_value_info("Y_h", dt, [1, B, H])]
    node = helper.make_node(
        "GRU", ["X", "W", "R", "B", "L", "H0"], ["Y", "Y_h"], hidden_size=H,
        direction="reverse" if reverse else "forward",
        linear_before_reset=int(linear_before_reset))
    graph = helper.make_graph([node], "gru", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    zeros = np.zeros(3 * H, x.dtype)
    bias = np.concatenate([rzn_to_zrn(zeros if b_ih is None else b_ih),
                           rzn_to_zrn(zeros if b_hh is None else b_hh)])
    feeds = {
        "X": x, "W": rzn_to_zrn(w_ih)[None], "R": rzn_to_zrn(w_hh)[None], "B": bias[None],
        "L": (np.full(B, T) if lengths is None else np.asarray(lengths)).astype(np.int32),
        "H0": h0[None],
    }
    y, yh = sess.run(None, feeds)
    return y[:, 0], yh[0]


# -- Keras --------------------------------------------------------------------------------

def keras_gru(x, h0, w_ih, w_hh, b_ih, b_hh, reverse, lbr, dy, dh, lengths=None):
    """keras.layers.GRU (torch backend; reset_after = lbr): y (T, B, H) in grufast's time
    order, h_n and the gradients by grufast's names (x, h0, w_ih, w_hh, b_ih, b_hh).

    lengths: right padding as a Keras mask. Keras then carries the previous output through
    masked steps instead of zeros: compare y only at valid steps (``valid_steps``)."""
    import keras
    import torch

    assert keras.backend.backend() == "torch"
    T, B, I = x.shape
    H = w_hh.shape[1]
    layer = keras.layers.GRU(H, reset_after=lbr, use_bias=b_ih is not None,
                             return_sequences=True, return_state=True, go_backwards=reverse,
                             dtype=str(x.dtype))
    layer.build((B, T, I))
    weights = [rzn_to_zrn(w_ih).T, rzn_to_zrn(w_hh).T]
    if b_ih is not None:
        weights.append(np.stack([rzn_to_zrn(b_ih), rzn_to_zrn(b_hh)]) if lbr
                       else rzn_to_zrn(b_ih + b_hh))
    layer.set_weights(weights)
    xt = torch.tensor(x.transpose(1, 0, 2).copy(), requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    kwargs = {}
    if lengths is not None:
        kwargs["mask"] = torch.from_numpy(valid_steps(lengths, T).T.copy())
    seq, state = layer(xt, initial_state=[ht], **kwargs)
    seq = seq.transpose(0, 1)
    if reverse:  # go_backwards lists the outputs in the order it visited them
        seq = seq.flip(0)
    loss = (seq * torch.from_numpy(dy)).sum() + (state * torch.from_numpy(dh)).sum()
    loss.backward()
    g = [w.value.grad.detach().numpy() for w in layer.weights]
    grads = {"x": xt.grad.numpy().transpose(1, 0, 2), "h0": ht.grad.numpy(),
             "w_ih": zrn_to_rzn(g[0].T), "w_hh": zrn_to_rzn(g[1].T)}
    if b_ih is not None:
        if lbr:
            grads["b_ih"], grads["b_hh"] = zrn_to_rzn(g[2][0]), zrn_to_rzn(g[2][1])
        else:  # one bias b_ih + b_hh: both get its gradient
            grads["b_ih"] = grads["b_hh"] = zrn_to_rzn(g[2])
    return seq.detach().numpy(), state.detach().numpy(), grads


def valid_steps(lengths, T: int) -> np.ndarray:
    """(T, B) bool: step t of sequence b is within its length."""
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]
