"""grufast.GRU <-> ONNX models made of standard ``GRU`` operators (the ``onnx`` package).

Export writes one GRU node per layer (both directions in one node), with the layout glue
ONNX needs between them; import reads such graphs, including those of
``torch.onnx.export(torch.nn.GRU(...), dynamo=False)``, and refuses anything it cannot
represent exactly: other activations, clip, reverse-only layers, or computation other than
layout glue between the GRU nodes.
"""

from __future__ import annotations

import os

import numpy as np

from grufast.interop import rzn_to_zrn, zrn_to_rzn

# Operators that only move, slice or reshape tensors: allowed between GRU nodes.
LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split",
              "Constant", "Identity", "Shape", "Gather", "Cast"}
DEFAULT_ACTIVATIONS = ["sigmoid", "tanh"]


def gru_to_onnx(gru, path, *, lengths: bool, opset: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset must be an int >= 14, got {opset!r}")
    elem = TensorProto.FLOAT if gru.dtype == np.float32 else TensorProto.DOUBLE
    D, H, L = gru.num_directions, gru.hidden_size, gru.num_layers
    x_dims = ["B", "T", gru.input_size] if gru.batch_first else ["T", "B", gru.input_size]
    y_dims = ["B", "T", D * H] if gru.batch_first else ["T", "B", D * H]
    inputs = [helper.make_tensor_value_info("x", elem, x_dims),
              helper.make_tensor_value_info("h0", elem, [L * D, "B", H])]
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]))
    outputs = [helper.make_tensor_value_info("y", elem, y_dims),
               helper.make_tensor_value_info("h_n", elem, [L * D, "B", H])]
    inits = [numpy_helper.from_array(np.array([0, 0, -1], np.int64), "merge_directions"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = []
    inp = "x"
    if gru.batch_first:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2]))
        inp = "x_time_major"
    params = gru.state_dict()
    h_outs = []
    for k in range(L):
        sfx = gru._suffixes(k)
        w = np.stack([rzn_to_zrn(params["weight_ih" + s]) for s in sfx])
        r = np.stack([rzn_to_zrn(params["weight_hh" + s]) for s in sfx])
        inits += [numpy_helper.from_array(w, f"W_{k}"), numpy_helper.from_array(r, f"R_{k}"),
                  numpy_helper.from_array(np.array([k * D], np.int64), f"h0_start_{k}"),
                  numpy_helper.from_array(np.array([(k + 1) * D], np.int64), f"h0_end_{k}")]
        b_name = ""
        if gru.bias:
            b = np.stack([np.concatenate([rzn_to_zrn(params["bias_ih" + s]),
                                          rzn_to_zrn(params["bias_hh" + s])]) for s in sfx])
            inits.append(numpy_helper.from_array(b, f"B_{k}"))
            b_name = f"B_{k}"
        nodes.append(helper.make_node("Slice", ["h0", f"h0_start_{k}", f"h0_end_{k}", "axis0"],
                                      [f"h0_{k}"]))
        nodes.append(helper.make_node(
            "GRU", [inp, f"W_{k}", f"R_{k}", b_name, "lengths" if lengths else "", f"h0_{k}"],
            [f"Y_{k}", f"h_n_{k}"], hidden_size=H,
            direction="bidirectional" if gru.bidirectional else "forward",
            linear_before_reset=int(gru.linear_before_reset), name=f"gru_layer_{k}"))
        # Y (T, D, B, H) -> (T, B, D * H): the next layer's input, directions side by side.
        nodes.append(helper.make_node("Transpose", [f"Y_{k}"], [f"Y_{k}_tbdh"],
                                      perm=[0, 2, 1, 3]))
        inp = f"out_{k}"
        nodes.append(helper.make_node("Reshape", [f"Y_{k}_tbdh", "merge_directions"], [inp]))
        h_outs.append(f"h_n_{k}")
    if gru.batch_first:
        nodes.append(helper.make_node("Transpose", [inp], ["y"], perm=[1, 0, 2]))
    else:
        nodes.append(helper.make_node("Identity", [inp], ["y"]))
    nodes.append(helper.make_node("Concat", h_outs, ["h_n"], axis=0))
    graph = helper.make_graph(nodes, "grufast_gru", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="grufast")
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))


def _attrs(node) -> dict:
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


def gru_from_onnx(cls, path):
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(os.fspath(path))
    except Exception as exc:  # onnx raises several types for unreadable files
        raise ValueError(f"path {os.fspath(path)!r} is not a readable ONNX model: "
                         f"{exc}") from None
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {}
    for node in graph.node:
        for o in node.output:
            producer[o] = node
        if node.op_type == "Constant":
            a = _attrs(node)
            if "value" in a:
                consts[node.output[0]] = numpy_helper.to_array(a["value"])
    others = sorted({n.op_type for n in graph.node if n.op_type != "GRU"} - LAYOUT_OPS)
    if others:
        raise ValueError(f"ONNX model has operators other than GRU and layout glue: {others}; "
                         "grufast.GRU cannot represent that computation")
    grus = [n for n in graph.node if n.op_type == "GRU"]
    if not grus:
        raise ValueError("ONNX model has no GRU node")
    graph_inputs = {i.name for i in graph.input} - set(consts)

    def sources(name, seen=None):
        """GRU nodes (by index) and graph inputs that a tensor is computed from."""
        seen = set() if seen is None else seen
        if name in seen or name in consts or name == "":
            return set()
        seen.add(name)
        if name in graph_inputs:
            return {("input", name)}
        node = producer.get(name)
        if node is None:
            raise ValueError(f"ONNX model: tensor {name!r} has no producer")
        if node.op_type == "GRU":
            return {("gru", grus.index(node))}
        out = set()
        for i in node.input:
            out |= sources(i, seen)
        return out

    def const(node, idx, what):
        name = node.input[idx] if len(node.input) > idx else ""
        if name == "":
            return None
        if name not in consts:
            raise ValueError(f"ONNX GRU node {node.name!r}: {what} must be a constant "
                             "(initializer), got a computed tensor")
        return consts[name]

    layers = []
    for k, node in enumerate(grus):
        a = _attrs(node)
        for bad in ("clip", "activation_alpha", "activation_beta"):
            if bad in a:
                raise ValueError(f"ONNX GRU node {node.name!r} sets {bad}={a[bad]!r}, which "
                                 "grufast does not support")
        direction = a.get("direction", "forward")
        if direction not in ("forward", "bidirectional"):
            raise ValueError(f"ONNX GRU node {node.name!r} has direction={direction!r}; "
                             "grufast.GRU supports 'forward' and 'bidirectional'")
        D = 2 if direction == "bidirectional" else 1
        acts = [s.lower() for s in a.get("activations", DEFAULT_ACTIVATIONS * D)]
        if acts != DEFAULT_ACTIVATIONS * D:
            raise ValueError(f"ONNX GRU node {node.name!r} has activations {acts}; grufast "
                             "supports only Sigmoid and Tanh")
        if a.get("layout", 0) != 0:
            raise ValueError(f"ONNX GRU node {node.name!r} has layout={a['layout']}; only 0 "
                             "(time-major) is supported")
        W, R, B = const(node, 1, "W"), const(node, 2, "R"), const(node, 3, "B")
        if W is None or R is None:
            raise ValueError(f"ONNX GRU node {node.name!r} lacks W or R")
        H = int(a.get("hidden_size", R.shape[-1]))
        if W.ndim != 3 or W.shape[:2] != (D, 3 * H) or R.shape != (D, 3 * H, H) or (
                B is not None and B.shape != (D, 6 * H)):
            raise ValueError(f"ONNX GRU node {node.name!r}: inconsistent shapes W "
                             f"{W.shape}, R {R.shape}, B {None if B is None else B.shape} "
                             f"for hidden_size={H}, direction={direction}")
        want = {("gru", k - 1)} if k else None
        src = sources(node.input[0])
        if (k and src != want) or (not k and (len(src) != 1 or next(iter(src))[0] != "input")):
            raise ValueError(f"ONNX GRU node {node.name!r}: its input X is not the previous "
                             f"GRU layer's output (it comes from {sorted(src)}); only a stack "
                             "of GRU layers can be represented")
        layers.append(dict(D=D, H=H, lbr=bool(a.get("linear_before_reset", 0)), W=W, R=R,
                           B=B))
    first = layers[0]
    if any((lay["D"], lay["H"], lay["lbr"]) != (first["D"], first["H"], first["lbr"])
           for lay in layers):
        raise ValueError("ONNX GRU nodes differ in direction, hidden_size or "
                         "linear_before_reset; grufast.GRU needs them equal")
    x_producer = producer.get(grus[0].input[0])
    batch_first = (x_producer is not None and x_producer.op_type == "Transpose"
                   and _attrs(x_producer).get("perm") == [1, 0, 2])
    dtype = first["W"].dtype if first["W"].dtype in (np.float32, np.float64) else np.float32
    bias = any(lay["B"] is not None for lay in layers)
    gru = cls(first["W"].shape[2], first["H"], len(layers), bias, batch_first, 0.0,
              first["D"] == 2, linear_before_reset=first["lbr"], dtype=dtype)
    state = {}
    for k, lay in enumerate(layers):
        H = lay["H"]
        for d, sfx in enumerate(gru._suffixes(k)):
            state["weight_ih" + sfx] = zrn_to_rzn(lay["W"][d])
            state["weight_hh" + sfx] = zrn_to_rzn(lay["R"][d])
            if bias:
                b = np.zeros(6 * H) if lay["B"] is None else lay["B"][d]
                state["bias_ih" + sfx] = zrn_to_rzn(b[:3 * H])
                state["bias_hh" + sfx] = zrn_to_rzn(b[3 * H:])
    gru.load_state_dict(state)
    return gru.eval()
