"""Reading an ONNX graph for ``GRU.from_onnx``: its constants, what each tensor depends on,
and a small NumPy interpreter for the glue that only moves data or builds shapes.

The interpreter lets the importer check the glue instead of trusting it: the graph is run on
probe inputs, and every GRU node's inputs must equal, value for value, what a grufast layer
stack would feed it. A Transpose with the wrong permutation or a Slice of the wrong layer's
state therefore cannot slip through.
"""

from __future__ import annotations

import numpy as np

from grufast.interop import zrn_to_rzn

# Operators that only move, slice, reshape or cast tensors, or build shapes and constant
# tensors (the zero initial state torch.onnx.export builds from the input's batch size).
GLUE_OPS = frozenset({"Identity", "Constant", "Shape", "Gather", "Unsqueeze", "Squeeze",
                      "Concat", "Expand", "ConstantOfShape", "Cast", "Transpose", "Reshape",
                      "Slice", "Split"})
ONNX_DOMAINS = ("", "ai.onnx")


class OnnxImportError(ValueError):
    """An ONNX model that grufast.GRU cannot represent exactly."""


def attributes(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [e.decode() if isinstance(e, bytes) else e for e in v]
        out[a.name] = v
    return out


class Graph:
    """The main graph of a model: constants, producers, graph inputs, dependencies."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.nodes = list(g.node)
        self.opset = next((o.version for o in model.opset_import
                           if o.domain in ONNX_DOMAINS), 1)
        self.initializers = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        # A graph input that also has an initializer is an input with a default value.
        self.overridable = {i.name for i in g.input} & set(self.initializers)
        self.inputs = {i.name: i for i in g.input}
        self.outputs = [o.name for o in g.output]
        self.producer: dict[str, tuple[int, int]] = {}
        for k, node in enumerate(self.nodes):
            if node.domain not in ONNX_DOMAINS:
                raise OnnxImportError(f"ONNX model: node {node.name!r} is operator "
                                      f"{node.domain}.{node.op_type}, outside the standard "
                                      "ONNX domain; grufast cannot represent it")
            for j, o in enumerate(node.output):
                if o in self.producer or o in self.inputs or o in self.initializers:
                    raise OnnxImportError(f"ONNX model: tensor {o!r} is defined twice (output "
                                          f"of node {node.name or k!r}); not a valid graph")
                if o:
                    self.producer[o] = (k, j)
        self._deps: dict[str, dict] = {}

    def deps(self, name: str) -> dict:
        """What a tensor depends on: {("input", name) or ("gru", node index, output index):
        "data" or "shape"}. "shape" means only through a Shape operator (its size, never its
        values). Initializers that are not graph inputs are constants and do not appear."""
        if name == "":
            return {}
        if name in self._deps:
            return self._deps[name]
        if name in self.inputs:
            out = {("input", name): "data"}
        elif name in self.initializers:
            out = {}
        elif name in self.producer:
            k, j = self.producer[name]
            node = self.nodes[k]
            if node.op_type == "GRU":
                out = {("gru", k, j): "data"}
            else:
                out = {}
                for i in node.input:
                    for key, kind in self.deps(i).items():
                        kind = "shape" if node.op_type == "Shape" else kind
                        if out.get(key) != "data":
                            out[key] = kind
        else:
            raise OnnxImportError(f"ONNX model: tensor {name!r} is neither a graph input, "
                                  "an initializer nor a node's output")
        self._deps[name] = out
        return out

    def constant(self, name: str) -> np.ndarray:
        """The value of a tensor computed from initializers alone (deps(name) holds at most
        inputs that have an initializer, whose stored value is used)."""
        if name in self.initializers:
            return self.initializers[name]
        k, j = self.producer[name]
        node = self.nodes[k]
        ins = [self.constant(i) if i else None for i in node.input]
        return run_glue(node, ins, self.opset)[j]

    def data_deps(self, name: str) -> set:
        return {key for key, kind in self.deps(name).items() if kind == "data"}

    def run(self, feeds: dict, upto: int | None = None) -> dict:
        """Evaluate the graph (nodes [0, upto)) on ``feeds``; GRU nodes run on grufast's
        functional kernels. Initializers serve as defaults for inputs not fed."""
        values = dict(self.initializers)
        values.update(feeds)
        for node in self.nodes[:upto]:
            ins = [values[i] if i else None for i in node.input]
            outs = run_gru(node, ins) if node.op_type == "GRU" else run_glue(node, ins,
                                                                               self.opset)
            for o, v in zip(node.output, outs):
                if o:
                    values[o] = v
        return values


def _axes(node, ins, opset, since):
    """Axes given as an attribute before opset ``since`` and as input 1 from it on."""
    if opset < since:
        return attributes(node).get("axes")
    return None if len(ins) < 2 or ins[1] is None else [int(a) for a in ins[1]]


def slice_params(node, ins: list, opset: int) -> list[tuple[int, int, int, int]]:
    """A Slice node's (axis, start, end, step) per sliced axis, from its attributes before
    opset 10 and its inputs from then on (``ins``: the input values, the data first)."""
    a = attributes(node)
    if opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 and ins[3] is not None else None
        steps = ins[4] if len(ins) > 4 and ins[4] is not None else None
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    ndim = ins[0].ndim
    return [(int(ax) % ndim if -ndim <= int(ax) < ndim else int(ax), int(s), int(e), int(st))
            for ax, s, e, st in zip(axes, starts, ends, steps)]


def run_glue(node, ins: list, opset: int) -> list:
    """One glue operator in NumPy (ONNX semantics)."""
    from onnx import helper, numpy_helper

    a = attributes(node)
    op = node.op_type
    x = ins[0] if ins else None
    if op == "Identity":
        return [x]
    if op == "Constant":
        if "value" in a:
            return [numpy_helper.to_array(a["value"])]
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in a:
                return [np.array(a[key], dtype)]
        raise OnnxImportError(f"ONNX Constant node {node.name!r} uses {sorted(a)}; grufast "
                              "reads only value, value_float(s) and value_int(s)")
    if op == "Shape":
        shape = np.array(x.shape, np.int64)
        return [shape[a.get("start", 0):a.get("end", len(shape))]]
    if op == "Gather":
        return [np.take(x, ins[1].astype(np.int64), axis=a.get("axis", 0))]
    if op == "Unsqueeze":
        axes = _axes(node, ins, opset, 13)
        return [np.expand_dims(x, tuple(axes))]
    if op == "Squeeze":
        axes = _axes(node, ins, opset, 13)
        return [np.squeeze(x) if axes is None else np.squeeze(x, tuple(axes))]
    if op == "Concat":
        return [np.concatenate(ins, axis=a["axis"])]
    if op == "Expand":
        shape = np.broadcast_shapes(x.shape, tuple(int(s) for s in ins[1]))
        return [np.array(np.broadcast_to(x, shape))]
    if op == "ConstantOfShape":
        value = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
        return [np.full(tuple(int(s) for s in x), value.reshape(-1)[0], value.dtype)]
    if op == "Cast":
        return [x.astype(helper.tensor_dtype_to_np_dtype(a["to"]))]
    if op == "Transpose":
        return [np.transpose(x, a.get("perm"))]
    if op == "Reshape":
        shape = [int(s) for s in ins[1]]
        if not a.get("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return [x.reshape(shape)]
    if op == "Slice":
        index = [slice(None)] * x.ndim
        for ax, s, e, st in slice_params(node, ins, opset):
            index[ax] = slice(s, e, st)
        return [x[tuple(index)]]
    if op == "Split":
        axis = a.get("axis", 0)
        split = a.get("split") if opset < 13 else (
            [int(s) for s in ins[1]] if len(ins) > 1 and ins[1] is not None else None)
        if split is None:
            n = a.get("num_outputs", len(node.output))
            size = -(-x.shape[axis] // n)
            split = [min(size, x.shape[axis] - i * size) for i in range(n)]
        return np.split(x, np.cumsum(split)[:-1], axis=axis)
    raise OnnxImportError(f"ONNX operator {op} is not glue grufast can follow")


def run_gru(node, ins: list) -> list:
    """An ONNX GRU node (attributes already validated) on grufast's functional kernels."""
    from grufast.functional import gru_forward

    a = attributes(node)
    X, W, R = ins[0], ins[1], ins[2]
    B = ins[3] if len(ins) > 3 else None
    lens = ins[4] if len(ins) > 4 else None
    h0 = ins[5] if len(ins) > 5 else None
    layout = a.get("layout", 0)
    if layout:
        X = X.transpose(1, 0, 2)
        h0 = None if h0 is None else h0.transpose(1, 0, 2)
    D, H = W.shape[0], R.shape[-1]
    if h0 is not None and h0.shape[1] == 1 < X.shape[1]:
        h0 = np.broadcast_to(h0, (h0.shape[0], X.shape[1], h0.shape[2]))  # as grufast does
    direction = a.get("direction", "forward")
    ys, hs = [], []
    for d in range(D):
        b = (None, None) if B is None else (zrn_to_rzn(B[d][:3 * H]), zrn_to_rzn(B[d][3 * H:]))
        y, h, _ = gru_forward(X, None if h0 is None else h0[d], zrn_to_rzn(W[d]),
                              zrn_to_rzn(R[d]), *b, lengths=lens,
                              reverse=direction == "reverse" or d == 1,
                              linear_before_reset=bool(a.get("linear_before_reset", 0)))
        ys.append(y)
        hs.append(h)
    Y, Y_h = np.stack(ys, 1), np.stack(hs, 0)  # (T, D, B, H), (D, B, H)
    if layout:
        return [Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2)]
    return [Y, Y_h]
