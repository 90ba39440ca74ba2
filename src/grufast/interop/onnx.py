"""grufast.GRU <-> ONNX models made of standard ``GRU`` operators (the ``onnx`` package).

Export writes one GRU node per layer (both directions in one node), with the layout glue
ONNX needs between them. Import reads any graph of GRU nodes joined by glue that only moves
data or builds shapes and zero states (``to_onnx``'s files, ``torch.onnx.export``'s, single
GRU nodes) and honours every input and attribute of a GRU node, or refuses the model with an
error naming what grufast cannot represent. Nothing is accepted and ignored:

- ``direction`` forward, reverse (``GRU(reverse=True)``) and bidirectional; ``layout`` 0 and
  1 (1: batch_first=True, used by every node); ``linear_before_reset`` 0 and 1;
  ``hidden_size`` must match R; ``activations`` must be the defaults (Sigmoid, Tanh);
  ``clip``, ``activation_alpha``/``activation_beta`` and unknown attributes are refused.
- W, R, B must be constants of the model (initializers, or glue over them).
- ``initial_h``: absent or zero (zeros), a graph input (the call's ``h0``), or a constant
  (the layer's ``default_h0``); ``sequence_lens``: absent, a graph input (``lengths``) or a
  constant (``default_lengths``). A graph input with an initializer is an input with a
  default value: both apply.
- The glue is not trusted: the graph is run on probe inputs and each GRU node's inputs must
  equal what the imported grufast layer stack feeds that layer.
"""

from __future__ import annotations

import os

import numpy as np

from grufast.interop import rzn_to_zrn, zrn_to_rzn
from grufast.interop._onnx_graph import (
    GLUE_OPS,
    Graph,
    OnnxImportError,
    attributes,
    slice_params,
)

DEFAULT_ACTIVATIONS = ["sigmoid", "tanh"]
GRU_ATTRIBUTES = {"activation_alpha", "activation_beta", "activations", "clip", "direction",
                  "hidden_size", "layout", "linear_before_reset"}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


# -- export ---------------------------------------------------------------------------------
def make_model(graph, opset: int, **kw):
    """An ONNX model of ``graph`` at ``opset``, with the lowest IR version that can carry that
    opset rather than the onnx package's newest: runtimes older than the package refuse a
    newer IR (onnx 1.23 writes IR 14 by default, which ONNX Runtime 1.30 refuses)."""
    from onnx import helper

    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets,
                             ir_version=helper.find_min_ir_version_for(opsets), **kw)


def gru_to_onnx(gru, path, *, lengths: bool, opset: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 14:
        raise ValueError(f"opset must be an int >= 14, got {opset!r}")
    if not isinstance(lengths, (bool, np.bool_)):
        raise TypeError(f"lengths must be a bool, got {lengths!r}")
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
    h0 = "h0"
    default_h0, default_lengths = gru.default_h0, gru.default_lengths
    if default_h0 is not None:
        # An initializer named like a graph input is that input's default value (ONNX IR 4+):
        # h0 may still be fed. A default of batch 1 is expanded to the input's batch, as
        # grufast broadcasts it.
        inits.append(numpy_helper.from_array(default_h0, "h0"))
        if default_h0.shape[1] == 1:
            inits += [numpy_helper.from_array(np.array([0 if gru.batch_first else 1],
                                                       np.int64),
                                              "batch_axis"),
                      numpy_helper.from_array(np.array([L * D], np.int64), "h0_layers"),
                      numpy_helper.from_array(np.array([H], np.int64), "h0_units")]
            nodes += [helper.make_node("Shape", ["x"], ["x_shape"]),
                      helper.make_node("Gather", ["x_shape", "batch_axis"], ["x_batch"]),
                      helper.make_node("Concat", ["h0_layers", "x_batch", "h0_units"],
                                       ["h0_shape"], axis=0),
                      helper.make_node("Expand", ["h0", "h0_shape"], ["h0_batch"])]
            h0 = "h0_batch"
    lens = "lengths" if lengths else ""
    if default_lengths is not None:
        name = "lengths" if lengths else "default_lengths"
        inits.append(numpy_helper.from_array(default_lengths.astype(np.int32), name))
        lens = name
    inp = "x"
    if gru.batch_first:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2]))
        inp = "x_time_major"
    params = gru.state_dict()
    direction = "bidirectional" if gru.bidirectional else (
        "reverse" if gru.reverse else "forward")
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
        nodes.append(helper.make_node("Slice", [h0, f"h0_start_{k}", f"h0_end_{k}", "axis0"],
                                      [f"h0_{k}"]))
        nodes.append(helper.make_node(
            "GRU", [inp, f"W_{k}", f"R_{k}", b_name, lens, f"h0_{k}"],
            [f"Y_{k}", f"h_n_{k}"], hidden_size=H, direction=direction,
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
    model = make_model(graph, opset, producer_name="grufast")
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))


# -- import: one GRU node -------------------------------------------------------------------
def _label(node, k: int) -> str:
    return f"ONNX GRU node {node.name or f'#{k}'!r}"


def _weight(graph: Graph, node, k: int, idx: int, what: str):
    """W, R or B: a constant of the model, or None when the input is absent."""
    name = node.input[idx] if len(node.input) > idx else ""
    if name == "":
        return None
    variable = sorted(key for key in graph.deps(name)
                      if key[0] != "input" or key[1] not in graph.overridable)
    if variable:
        src = "it is the graph input" if name in graph.inputs else "it is computed from"
        raise OnnxImportError(
            f"{_label(node, k)}: {what} ({name!r}) must be a constant of the model (an "
            f"initializer), but {src} {_describe(graph, variable)}; store the weights as "
            "initializers")
    return np.asarray(graph.constant(name))


def _describe(graph: Graph, keys) -> str:
    parts = []
    for key in keys:
        if key[0] == "input":
            parts.append(f"graph input {key[1]!r}")
        else:
            parts.append(f"output {key[2]} of GRU node {graph.nodes[key[1]].name or key[1]!r}")
    return ", ".join(parts)


def _node_config(graph: Graph, node, k: int) -> dict:
    """Validated attributes and weights of one GRU node; refuses what grufast lacks."""
    a = attributes(node)
    label = _label(node, k)
    unknown = sorted(set(a) - GRU_ATTRIBUTES)
    if unknown:
        raise OnnxImportError(f"{label} has attributes {unknown} that grufast does not know")
    for bad in ("clip", "activation_alpha", "activation_beta"):
        if bad in a:
            raise OnnxImportError(f"{label} sets {bad}={a[bad]!r}, which grufast does not "
                                  "support (it computes unclipped Sigmoid and Tanh gates)")
    direction = a.get("direction", "forward")
    if direction not in DIRECTIONS:
        raise OnnxImportError(f"{label} has direction={direction!r}; ONNX allows 'forward', "
                              "'reverse' and 'bidirectional'")
    D = DIRECTIONS[direction]
    acts = [str(s).lower() for s in a.get("activations", DEFAULT_ACTIVATIONS * D)]
    if acts != DEFAULT_ACTIVATIONS * D:
        raise OnnxImportError(f"{label} has activations {a['activations']}; grufast supports "
                              f"only the defaults {['Sigmoid', 'Tanh'] * D}")
    layout, lbr = a.get("layout", 0), a.get("linear_before_reset", 0)
    if layout not in (0, 1):
        raise OnnxImportError(f"{label} has layout={layout}; ONNX defines 0 and 1")
    if lbr not in (0, 1):
        raise OnnxImportError(f"{label} has linear_before_reset={lbr}; ONNX defines 0 and 1")
    if len(node.input) > 6 or len(node.output) > 2:
        raise OnnxImportError(f"{label} has {len(node.input)} inputs and {len(node.output)} "
                              "outputs; the ONNX GRU has at most 6 and 2")
    W, R, B = (_weight(graph, node, k, i, w) for i, w in enumerate("WRB", 1))
    if W is None or R is None:
        raise OnnxImportError(f"{label} lacks W or R")
    if W.dtype not in (np.float32, np.float64) or R.dtype != W.dtype or (
            B is not None and B.dtype != W.dtype):
        raise OnnxImportError(f"{label}: W, R, B must all be float32 or all float64, got "
                              f"{W.dtype}, {R.dtype}, {None if B is None else B.dtype}")
    if R.ndim != 3 or R.shape[0] != D or R.shape[1] != 3 * R.shape[2]:
        raise OnnxImportError(f"{label}: R must have shape (num_directions, 3 * hidden_size, "
                              f"hidden_size) with num_directions = {D}, got {R.shape}")
    H = R.shape[2]
    if "hidden_size" in a and a["hidden_size"] != H:
        raise OnnxImportError(f"{label} has hidden_size={a['hidden_size']} but R of shape "
                              f"{R.shape} (hidden_size {H})")
    if W.ndim != 3 or W.shape[:2] != (D, 3 * H) or (B is not None and B.shape != (D, 6 * H)):
        raise OnnxImportError(f"{label}: inconsistent shapes W {W.shape}, R {R.shape}, B "
                              f"{None if B is None else B.shape} for hidden_size={H}, "
                              f"direction={direction}")
    return dict(direction=direction, D=D, H=H, layout=layout, lbr=bool(lbr), W=W, R=R, B=B)


def _role(graph: Graph, node, k: int, idx: int, what: str):
    """Where initial_h (idx 5) or sequence_lens (idx 4) comes from: ("none",),
    ("const", value), ("shape",) (built from shapes only), or ("input", name)."""
    name = node.input[idx] if len(node.input) > idx else ""
    if name == "":
        return ("none",)
    data = graph.data_deps(name)
    if any(key[0] == "gru" for key in data):
        raise OnnxImportError(f"{_label(node, k)}: {what} is computed from "
                              f"{_describe(graph, sorted(data))}; grufast.GRU cannot feed one "
                              "GRU's output to another's initial state or lengths")
    if len(data) > 1:
        raise OnnxImportError(f"{_label(node, k)}: {what} is computed from several inputs "
                              f"({_describe(graph, sorted(data))}); grufast.GRU takes one")
    if data:
        return ("input", next(iter(data))[1])
    if graph.deps(name):
        return ("shape",)
    return ("const", np.asarray(graph.constant(name)))


# -- import: the graph ----------------------------------------------------------------------
def _load(path):
    import onnx

    try:
        return onnx.load(os.fspath(path))
    except Exception as exc:  # onnx raises several types for unreadable files
        raise OnnxImportError(f"path {os.fspath(path)!r} is not a readable ONNX model: "
                              f"{exc}") from None


def _same_source(roles: list, what: str) -> tuple:
    """The one source shared by every layer's initial_h (what="initial_h") or sequence_lens:
    ("none",), ("const",) or ("input", name)."""
    kinds = {r[0] for r in roles}
    if kinds == {"input"} and len({r[1] for r in roles}) == 1:
        return roles[0]
    if what == "initial_h" and "input" not in kinds:  # zeros and constants combine
        return ("const",) if "const" in kinds else ("none",)
    if what == "lengths" and len(kinds) == 1 and kinds < {"none", "const"}:
        return (next(iter(kinds)),)
    sources = [r[1] if r[0] == "input" else r[0] for r in roles]
    raise OnnxImportError(f"ONNX model: the GRU nodes take their {what} from {sources} "
                          "(none: absent, const: a constant, shape: computed from shapes); "
                          f"grufast.GRU gives every layer the same {what}: all absent, all "
                          "one graph input" + (", or constants" if what == "initial_h" else
                                               ", or all one constant"))


def _declared_shape(value_info) -> list:
    """Dims of a graph input: ints where fixed, None where symbolic or unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in t.shape.dim]


def _elem_dtype(value_info) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type))


def _fill(declared: list, wanted: list, name: str) -> tuple:
    if declared and len(declared) != len(wanted):
        raise OnnxImportError(f"ONNX model: graph input {name!r} has rank {len(declared)}, "
                              f"expected {len(wanted)}")
    declared = declared or [None] * len(wanted)
    return tuple(w if d is None else d for d, w in zip(declared, wanted))


def gru_from_onnx(cls, path):
    graph = Graph(_load(path))
    others = sorted({n.op_type for n in graph.nodes if n.op_type != "GRU"} - GLUE_OPS)
    if others:
        raise OnnxImportError(f"ONNX model has operators other than GRU and glue that only "
                              f"moves data or builds shapes: {others}; grufast.GRU cannot "
                              "represent that computation")
    _check_casts(graph)
    idx = [k for k, n in enumerate(graph.nodes) if n.op_type == "GRU"]
    if not idx:
        raise OnnxImportError("ONNX model has no GRU node")
    nodes = [graph.nodes[k] for k in idx]
    layers = [_node_config(graph, n, k) for k, n in zip(idx, nodes)]
    first = layers[0]
    for key in ("direction", "H", "lbr", "layout"):
        values = [lay[key] for lay in layers]
        if len(set(values)) > 1:
            name = dict(H="hidden_size", lbr="linear_before_reset").get(key, key)
            raise OnnxImportError(f"ONNX GRU nodes differ in {name} ({values}); grufast.GRU "
                                  "needs every layer equal")
    D, H, dtype = first["D"], first["H"], first["W"].dtype
    for k, lay in enumerate(layers[1:], 1):
        if lay["W"].shape[2] != D * H or lay["W"].dtype != dtype:
            raise OnnxImportError(f"{_label(nodes[k], k)}: W of shape {lay['W'].shape} and "
                                  f"dtype {lay['W'].dtype} cannot take the previous layer's "
                                  f"{D * H} outputs in {dtype}")

    # Roles: which graph input is x, h0, lengths; each layer's X is the previous layer's Y.
    x_deps = graph.data_deps(nodes[0].input[0])
    if len(x_deps) != 1 or next(iter(x_deps))[0] != "input":
        raise OnnxImportError(f"{_label(nodes[0], 0)}: its input X must come from one graph "
                              f"input, got {_describe(graph, sorted(x_deps)) or 'constants'}")
    x_name = next(iter(x_deps))[1]
    for k in range(1, len(nodes)):
        want = {("gru", idx[k - 1], 0)}
        got = graph.data_deps(nodes[k].input[0])
        if got != want:
            raise OnnxImportError(f"{_label(nodes[k], k)}: its input X must be computed from "
                                  f"the previous GRU node's Y alone, got "
                                  f"{_describe(graph, sorted(got))}; only a stack of GRU "
                                  "layers can be represented")
    _check_outputs(graph, nodes, idx)
    h_roles = [_role(graph, n, k, 5, "initial_h") for k, n in enumerate(nodes)]
    l_roles = [_role(graph, n, k, 4, "sequence_lens") for k, n in enumerate(nodes)]
    h_src, l_src = _same_source(h_roles, "initial_h"), _same_source(l_roles, "lengths")
    if l_src[0] == "const" and any(not np.array_equal(r[1], l_roles[0][1]) for r in l_roles):
        raise OnnxImportError("ONNX model: the GRU nodes have different constant "
                              "sequence_lens; grufast.GRU gives every layer the same lengths")
    roles = {x_name: "x"}
    for src, role in ((h_src, "h0"), (l_src, "lengths")):
        if src[0] == "input":
            if src[1] in roles:
                raise OnnxImportError(f"ONNX model: graph input {src[1]!r} feeds both "
                                      f"{roles[src[1]]} and {role}")
            roles[src[1]] = role
    extra = sorted(set(graph.inputs) - set(roles) - graph.overridable)
    if extra:
        raise OnnxImportError(f"ONNX model has graph inputs {extra} that feed no GRU node as "
                              "X, initial_h or sequence_lens; grufast.GRU takes x, h0 and "
                              "lengths only")
    if x_name in graph.overridable:
        raise OnnxImportError(f"ONNX model: the input X ({x_name!r}) has an initializer; "
                              "grufast cannot hold a default input sequence")

    layout = first["layout"]
    gru_kw = dict(layers=layers, nodes=nodes, idx=idx, roles=roles, h_roles=h_roles,
                  l_roles=l_roles, D=D, H=H)
    constants_batch = _constants_batch(h_roles, l_roles, layout)
    errors = []
    for batch_first in ([True, False] if layout else [False, True]):
        for h0_batch_major in ([True, False] if layout else [False, True]):
            if "h0" not in roles.values() and h0_batch_major:
                continue
            try:
                _verify(graph, batch_first, h0_batch_major, constants_batch, **gru_kw)
            except (OnnxImportError, ValueError, TypeError, IndexError, KeyError) as exc:
                errors.append(f"batch_first={batch_first}: {exc}")
                continue
            return _build(cls, graph, batch_first, h0_batch_major, h_src, l_src, **gru_kw)
    raise OnnxImportError("ONNX model: the glue between the graph inputs and the GRU nodes "
                          "does not feed each node what a grufast layer stack would (inputs "
                          "x, h0 (num_layers * num_directions, B, hidden_size) and lengths "
                          "(B,)): " + "; ".join(errors))


# The Cast targets glue may use: types that hold the data and every length exactly. A
# narrower one (8- or 16-bit, bool) is lossy beyond some size, and the probes, whose
# lengths stay below 61, do not reach it: Cast(uint8) on sequence_lens passed them, then
# turned a length of 300 into 44 in the ONNX model but not in grufast's import.
CAST_TARGETS = {"FLOAT": 1, "INT32": 6, "INT64": 7, "DOUBLE": 11, "UINT32": 12, "UINT64": 13}


def _check_casts(graph) -> None:
    for k, node in enumerate(graph.nodes):
        if node.op_type != "Cast":
            continue
        to = attributes(node).get("to")
        if to not in CAST_TARGETS.values():
            from onnx import TensorProto

            name = TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() \
                else repr(to)
            raise OnnxImportError(f"ONNX model: node {node.name or k!r} casts to {name}, "
                                  "which cannot hold every value or length exactly; glue "
                                  f"may cast to {sorted(CAST_TARGETS)} only")


def _check_outputs(graph, nodes, idx) -> None:
    """The file's outputs must be what the layer stack returns: computed from the last GRU
    node's Y or Y_h, or any node's Y_h (h_n gathers them), and the last node must reach one.
    A stack whose last node feeds no output, or an output taken from an earlier layer's Y
    or from the input, would import as a model that computes something else."""
    last = idx[-1]
    allowed = {("gru", last, 0)} | {("gru", k, 1) for k in idx}
    reached = False
    for name in graph.outputs:
        deps = graph.data_deps(name)
        other = sorted(deps - allowed)
        if other:
            raise OnnxImportError(f"ONNX model: graph output {name!r} is computed from "
                                  f"{_describe(graph, other)}, not from the last GRU node's "
                                  "Y or the nodes' Y_h; grufast.GRU returns only y and h_n")
        reached = reached or any(key[1] == last for key in deps)
    if not reached:
        raise OnnxImportError(f"ONNX model: no graph output depends on the last GRU node "
                              f"({_label(nodes[-1], len(nodes) - 1)}); imported as a layer, "
                              "it would change what the model computes")


def _node_layout_state(value: np.ndarray, layout: int) -> np.ndarray:
    """An initial_h value as (D, B, H), whatever the node's layout."""
    return value.transpose(1, 0, 2) if layout else value


def _constants_batch(h_roles, l_roles, layout) -> int | None:
    """The batch a constant initial_h or sequence_lens fixes (None if none does). A
    constant state of batch 1 fixes none: grufast broadcasts it to any batch, so the
    probes keep their batch sizes (and glue that cuts the batch to 1 is caught)."""
    sizes = {_node_layout_state(r[1], layout).shape[1] for r in h_roles
             if r[0] == "const" and r[1].ndim == 3}
    lengths = {r[1].shape[0] for r in l_roles if r[0] == "const" and r[1].ndim == 1}
    sizes |= lengths
    if len(sizes) > 1 or 1 not in lengths:
        sizes.discard(1)  # grufast broadcasts a constant state of batch 1
    return max(sizes) if sizes else None


# The probe sizes (T, B) _verify runs the graph at. Glue that is the identity at one size
# only (a Slice of the time or batch axis ending past it) passed with one probe and then
# cut longer inputs in the ONNX model but not in grufast's import: sizes far apart, one
# with more sequences than steps (an end taken from the time axis cuts the batch there).
PROBES = ((5, 3), (61, 13), (7, 29))


def _probe_feeds(graph, roles, batch_first, h0_batch_major, constants_batch, layers, D, H,
                 probe):
    rng = np.random.default_rng(1234 + probe[0])
    L, I = len(layers), layers[0]["W"].shape[2]
    by_role = {role: name for name, role in roles.items()}
    xi = graph.inputs[by_role["x"]]
    T, B = probe[0], constants_batch or probe[1]
    declared = _declared_shape(xi)
    shape = _fill(declared, [B, T, I] if batch_first else [T, B, I], by_role["x"])
    B, T = (shape[0], shape[1]) if batch_first else (shape[1], shape[0])
    feeds = {by_role["x"]: rng.standard_normal(shape).astype(_elem_dtype(xi))}
    if "lengths" in by_role:
        li = graph.inputs[by_role["lengths"]]
        _fill(_declared_shape(li), [B], by_role["lengths"])
        feeds[by_role["lengths"]] = np.maximum(T - np.arange(B), 1).astype(_elem_dtype(li))
    if "h0" in by_role:
        hi = graph.inputs[by_role["h0"]]
        want = [B, L * D, H] if h0_batch_major else [L * D, B, H]
        shape = _fill(_declared_shape(hi), want, by_role["h0"])
        feeds[by_role["h0"]] = rng.standard_normal(shape).astype(_elem_dtype(hi))
    return feeds, T, B


def _verify(graph, batch_first, h0_batch_major, constants_batch, *, layers, nodes, idx, roles,
            h_roles, l_roles, D, H) -> None:
    """Run the graph on probe inputs of each PROBES size; every GRU node must get what
    grufast feeds it."""
    runs = [_verify_at(graph, batch_first, h0_batch_major, constants_batch, probe,
                       layers=layers, nodes=nodes, idx=idx, roles=roles, h_roles=h_roles,
                       l_roles=l_roles, D=D, H=H) for probe in PROBES]
    _check_slices(graph, idx[-1] + 1, runs)


# Where a Slice runs to the end (or from the start) of an axis, exporters write INT64's
# extreme (PyTorch) or INT32's; anything nearer is a size.
SLICE_UNBOUNDED = 2**31 - 1


def _check_slices(graph, upto, runs) -> None:
    """Each Slice on the way to the GRU nodes must be the identity, at any size, on every
    axis whose extent follows the input's (time, batch: the axes whose size differs
    between the probes): from 0 or an unbounded start, to an unbounded end, step 1. The
    probes only show a slice to be the identity up to their sizes; one ending at 100 would
    pass both and then cut longer inputs in the ONNX model but not in grufast's import.
    Ends computed from the input's shape (Shape, Gather) differ between the probes and are
    judged by the probes' values (one probe has more sequences than steps, so an end
    taken from the other axis's size cuts it)."""
    for k, node in enumerate(graph.nodes[:upto]):
        if node.op_type != "Slice":
            continue
        shapes = [values[node.input[0]].shape for values in runs]
        dynamic = {i for i in range(len(shapes[0])) if len({s[i] for s in shapes}) > 1}
        params = [slice_params(node, [values[i] if i else None for i in node.input],
                               graph.opset) for values in runs]
        for j, (ax, start, end, step) in enumerate(params[0]):
            if ax not in dynamic:
                continue
            # Each of start, end and step that is the same at every probe is a constant of
            # the model and must be the whole axis's; one that follows the sizes (computed
            # from Shape) is judged by the probes' values.
            fixed = [all(p[j][i] == params[0][j][i] for p in params[1:]) for i in (1, 2, 3)]
            if (fixed[0] and not (start == 0 or start <= -SLICE_UNBOUNDED)
                    or fixed[1] and end < SLICE_UNBOUNDED or fixed[2] and step != 1):
                raise OnnxImportError(
                    f"ONNX model: Slice node {node.name or f'#{k}'!r} takes [{start}:{end}:"
                    f"{step}] of axis {ax}, whose size follows the input's (time or batch): "
                    "the identity only on inputs that fit it, which grufast's import cannot "
                    "represent; glue may slice such an axis only whole (start 0, end "
                    f">= {SLICE_UNBOUNDED}, step 1)")


def _verify_at(graph, batch_first, h0_batch_major, constants_batch, probe, *, layers, nodes,
               idx, roles, h_roles, l_roles, D, H) -> dict:
    """One probe's run; returns every value computed, by name."""
    feeds, T, B = _probe_feeds(graph, roles, batch_first, h0_batch_major, constants_batch,
                               layers, D, H, probe)
    values = graph.run(feeds, upto=idx[-1] + 1)
    by_role = {role: name for name, role in roles.items()}
    layout = layers[0]["layout"]
    x = feeds[by_role["x"]]
    expected_x = x.transpose(1, 0, 2) if batch_first else x  # (T, B, I)
    h0 = None
    if "h0" in by_role:
        h0 = feeds[by_role["h0"]]
        h0 = h0.transpose(1, 0, 2) if h0_batch_major else h0  # (L * D, B, H)
    for k, node in enumerate(nodes):
        label = _label(node, k)
        X = values[node.input[0]]
        if k:
            Y = values[nodes[k - 1].output[0]]  # (T, D, B, H) or (B, T, D, H)
            Y = Y.transpose(1, 0, 2, 3) if layout else Y.transpose(0, 2, 1, 3)  # (T, B, D, H)
            expected_x = Y.reshape(Y.shape[0], Y.shape[1], -1)
        want = expected_x.transpose(1, 0, 2) if layout else expected_x
        if X.shape != want.shape or not np.array_equal(X, want.astype(X.dtype)):
            source = "input x" if k == 0 else "previous layer's output"
            raise OnnxImportError(f"{label}: X is not the {source} in the layout grufast "
                                  "gives it")
        role = h_roles[k]
        if role[0] in ("input", "shape"):
            got = _node_layout_state(values[node.input[5]], layout)
            want = (np.zeros((D, B, H)) if role[0] == "shape" else h0[k * D:(k + 1) * D])
            if got.shape != want.shape or not np.array_equal(got, want.astype(got.dtype)):
                raise OnnxImportError(
                    f"{label}: initial_h is not " + ("zero" if role[0] == "shape" else
                                                     f"rows {k * D}:{(k + 1) * D} of h0"))
        if l_roles[k][0] == "input":
            got = values[node.input[4]]
            if not np.array_equal(got, feeds[by_role["lengths"]]):
                raise OnnxImportError(f"{label}: sequence_lens is not the lengths input")
    return values


def _build(cls, graph, batch_first, h0_batch_major, h_src, l_src, *, layers, nodes, idx,
           roles, h_roles, l_roles, D, H):
    first = layers[0]
    L, layout = len(layers), first["layout"]
    bias = any(lay["B"] is not None for lay in layers)
    gru = cls(first["W"].shape[2], H, L, bias, batch_first, 0.0, D == 2,
              linear_before_reset=first["lbr"], dtype=first["W"].dtype,
              reverse=first["direction"] == "reverse")
    state = {}
    for k, lay in enumerate(layers):
        for d, sfx in enumerate(gru._suffixes(k)):
            state["weight_ih" + sfx] = zrn_to_rzn(lay["W"][d])
            state["weight_hh" + sfx] = zrn_to_rzn(lay["R"][d])
            if bias:
                b = np.zeros(6 * H) if lay["B"] is None else lay["B"][d]
                state["bias_ih" + sfx] = zrn_to_rzn(b[:3 * H])
                state["bias_hh" + sfx] = zrn_to_rzn(b[3 * H:])
    gru.load_state_dict(state)
    by_role = {role: name for name, role in roles.items()}
    if h_src[0] == "const":
        gru.default_h0 = _constant_h0(h_roles, nodes, layout, D, H)
    elif h_src[0] == "input" and by_role["h0"] in graph.overridable:
        value = graph.initializers[by_role["h0"]]
        if value.ndim != 3:
            raise OnnxImportError(f"ONNX model: the default of input {by_role['h0']!r} must "
                                  f"be 3-D, got shape {value.shape}")
        gru.default_h0 = value.transpose(1, 0, 2) if h0_batch_major else value
    if l_src[0] == "const":
        gru.default_lengths = l_roles[0][1]
    elif l_src[0] == "input" and by_role["lengths"] in graph.overridable:
        gru.default_lengths = graph.initializers[by_role["lengths"]]
    return gru.eval()


def _constant_h0(h_roles, nodes, layout, D, H) -> np.ndarray | None:
    """default_h0 from the layers' constant initial_h (zeros where a layer has none); None
    when every one is zero, which is what h0=None gives anyway."""
    parts = []
    for k, role in enumerate(h_roles):
        if role[0] == "const":
            value = role[1]
            if value.ndim != 3:
                raise OnnxImportError(f"{_label(nodes[k], k)}: initial_h must be 3-D, got "
                                      f"shape {value.shape}")
            value = _node_layout_state(value, layout)
            if value.shape[0] != D or value.shape[2] != H:
                raise OnnxImportError(f"{_label(nodes[k], k)}: initial_h of shape "
                                      f"{role[1].shape} does not fit {D} direction(s) of "
                                      f"hidden_size {H} (layout={layout})")
            parts.append(value)
        else:
            parts.append(np.zeros((D, 1, H), np.float64))
    batch = max(p.shape[1] for p in parts)
    if any(p.shape[1] not in (1, batch) for p in parts):
        raise OnnxImportError(f"ONNX model: constant initial_h of different batches "
                              f"{[p.shape[1] for p in parts]}")
    h0 = np.concatenate([np.broadcast_to(p, (D, batch, H)) for p in parts])
    return None if not np.any(h0) else h0
