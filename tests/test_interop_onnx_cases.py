"""GRU.from_onnx on cases no one here wrote, and on every input and attribute of a GRU node.

- ONNX's own GRU cases: the generator the onnx package ships
  (``onnx.backend.test.case.node.gru``), with the expected outputs it computes.
- ONNX Runtime's GRU operator tests: literal vectors transcribed in
  ``tests/fixtures/onnxruntime_gru_cases.json`` (source named in the file).
- One file per GRU input and attribute: each is honoured (matches ONNX Runtime) or refused
  with an error naming it; a schema check proves the list covers the operator.
- The glue between GRU nodes is checked, not trusted; the layer options the imports need
  (``reverse``, ``default_h0``, ``default_lengths``) against oracles and through round trips.

Every match is within 1e-5 relative to the largest magnitude of the expected values.
"""

import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import grufast

from .helpers import rel_err

RTOL = 1e-5
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GRU_OPSET = onnx.defs.get_schema("GRU").since_version


def ort_run(path, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def close(actual, expected, what=""):
    err = rel_err(actual, expected)
    assert err <= RTOL, f"{what}: relative error {err:.2e} > {RTOL:.0e}"


def onnx_y_to_grufast(Y, layout):
    """ONNX Y (T, D, B, H), or (B, T, D, H) with layout=1 -> grufast y (T or B, ..., D*H)."""
    if layout:
        return Y.reshape(Y.shape[0], Y.shape[1], -1)
    return Y.transpose(0, 2, 1, 3).reshape(Y.shape[0], Y.shape[2], -1)


def onnx_yh_to_grufast(Y_h, layout):
    """ONNX Y_h (D, B, H), or (B, D, H) with layout=1 -> grufast h_n (D, B, H)."""
    return Y_h.transpose(1, 0, 2) if layout else Y_h


def single_node(path, node, arrays, constants, *, opset=GRU_OPSET):
    """Write a model of one GRU node: ``arrays`` by input name; names in ``constants`` become
    initializers, the others graph inputs."""
    inputs, inits = [], []
    for name, value in arrays.items():
        if name in constants:
            inits.append(numpy_helper.from_array(value, name))
        else:
            inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
               for o in node.output if o]
    graph = helper.make_graph([node], "gru_case", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


# -- ONNX's reference cases ---------------------------------------------------------------
def onnx_reference_cases():
    """The GRU cases of onnx.backend.test.case.node.gru, collected by running its exporters
    with ``expect`` recording instead of writing (its full collect_testcases runs every
    operator's generator, about 30 s)."""
    import onnx.backend.test.case.node.gru as gen

    recorded = []
    saved = gen.expect
    gen.expect = lambda node, inputs, outputs, name, **kw: recorded.append(
        (name, node, inputs, outputs))
    try:
        np.random.seed(0)  # noqa: NPY002 (the generator draws from the global state)
        for attr in sorted(dir(gen.GRU)):
            if attr.startswith("export"):
                getattr(gen.GRU, attr)()
    finally:
        gen.expect = saved
    return recorded


ONNX_CASES = onnx_reference_cases()


def test_onnx_reference_cases_are_all_collected():
    assert sorted(c[0] for c in ONNX_CASES) == [
        "test_gru_batchwise", "test_gru_bidirectional", "test_gru_defaults",
        "test_gru_reverse", "test_gru_seq_length", "test_gru_with_initial_bias"]


@pytest.mark.parametrize("case", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_reference_case(tmp_path, case):
    name, node, inputs, outputs = case
    present = [i for i in node.input if i]
    arrays = dict(zip(present, inputs))
    # As the case ships it, W, R (and B) are graph inputs: refused, saying why.
    shipped = single_node(tmp_path / "shipped.onnx", node, arrays, constants=set())
    with pytest.raises(ValueError, match="W .* must be a constant of the model"):
        grufast.GRU.from_onnx(shipped)
    # With the weights stored as initializers, it imports and matches the expected outputs.
    path = single_node(tmp_path / "m.onnx", node, arrays, constants=set(present) - {"X"})
    gru = grufast.GRU.from_onnx(path)
    layout = helper.get_attribute_value(
        next((a for a in node.attribute if a.name == "layout"), helper.make_attribute("l", 0)))
    assert gru.batch_first == bool(layout)
    y, h_n = gru(arrays["X"])
    for out_name, expected in zip([o for o in node.output if o], outputs):
        if out_name == node.output[0]:
            close(y, onnx_y_to_grufast(expected, layout), f"{name} Y")
        else:
            close(h_n, onnx_yh_to_grufast(expected, layout), f"{name} Y_h")


# -- ONNX Runtime's operator test vectors ---------------------------------------------------
ORT = json.loads((FIXTURES / "onnxruntime_gru_cases.json").read_text())
ORT_CASES = ORT["cases"]


def test_onnxruntime_fixture_names_its_source():
    assert "microsoft/onnxruntime" in ORT["source"]
    assert "deep_cpu_gru_op_test.cc" in ORT["source"]
    assert len(ORT_CASES) >= 20


def ort_case_arrays(c):
    D = 2 if c["direction"] == "bidirectional" else 1
    T, B, I, H = c["T"], c["batch"], c["I"], c["H"]
    f32 = np.float32
    arrays = {"X": np.array(c["X"], f32).reshape(T, B, I),
              "W": np.array(c["W"], f32).reshape(D, 3 * H, I),
              "R": np.array(c["R"], f32).reshape(D, 3 * H, H)}
    if c["B"] is not None:
        arrays["B"] = np.array(c["B"], f32).reshape(D, 6 * H)
    if c["sequence_lens"] is not None:
        arrays["sequence_lens"] = np.array(c["sequence_lens"], np.int32)
    if c["initial_h"] is not None:
        arrays["initial_h"] = np.array(c["initial_h"], f32).reshape(D, B, H)
    return arrays, D


@pytest.mark.parametrize("where", ["inputs", "constants"])
@pytest.mark.parametrize("c", ORT_CASES, ids=[c["test"] for c in ORT_CASES])
def test_onnxruntime_case(tmp_path, c, where):
    """initial_h and sequence_lens as graph inputs (fed at the call) or as constants of the
    model (the layer's default_h0 and default_lengths)."""
    arrays, D = ort_case_arrays(c)
    attrs = dict(hidden_size=c["H"], direction=c["direction"],
                 linear_before_reset=c["linear_before_reset"])
    if "activations" in c:
        attrs["activations"] = c["activations"] * D
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h"]
    node = helper.make_node("GRU", [n if n in arrays else "" for n in names], ["Y", "Y_h"],
                            **attrs)
    consts = {"W", "R", "B"} | ({"sequence_lens", "initial_h"} if where == "constants" else set())
    path = single_node(tmp_path / "m.onnx", node, arrays, consts & set(arrays))
    if "activations" in c:
        with pytest.raises(ValueError, match="activations"):
            grufast.GRU.from_onnx(path)
        return
    gru = grufast.GRU.from_onnx(path)
    assert gru.reverse == (c["direction"] == "reverse")
    if where == "inputs":
        y, h_n = gru(arrays["X"], arrays.get("initial_h"), lengths=arrays.get("sequence_lens"))
    else:
        y, h_n = gru(arrays["X"])
    T, B, H = c["T"], c["batch"], c["H"]
    close(y, onnx_y_to_grufast(np.array(c["Y"]).reshape(T, D, B, H), 0), c["test"] + " Y")
    if c["Y_h"] is not None:
        close(h_n, np.array(c["Y_h"]).reshape(D, B, H), c["test"] + " Y_h")


def test_constant_zero_lengths_keep_the_constant_initial_state(tmp_path):
    """The issue's case: every length 0 and a constant initial_h: the state stays at h0."""
    rng = np.random.default_rng(0)
    H, I, T, B = 3, 2, 4, 2
    arrays = {"X": rng.standard_normal((T, B, I)).astype(np.float32),
              "W": rng.standard_normal((1, 3 * H, I)).astype(np.float32),
              "R": rng.standard_normal((1, 3 * H, H)).astype(np.float32),
              "sequence_lens": np.zeros(B, np.int32),
              "initial_h": rng.standard_normal((1, B, H)).astype(np.float32)}
    node = helper.make_node("GRU", ["X", "W", "R", "", "sequence_lens", "initial_h"],
                            ["Y", "Y_h"], hidden_size=H)
    path = single_node(tmp_path / "m.onnx", node, arrays, {"W", "R", "sequence_lens",
                                                           "initial_h"})
    gru = grufast.GRU.from_onnx(path)
    y, h_n = gru(arrays["X"])
    np.testing.assert_array_equal(h_n, arrays["initial_h"])
    np.testing.assert_array_equal(y, 0)
    # (ONNX Runtime 1.32 returns Y_h = 0 here, ignoring initial_h; the operator's text does
    # not say, and grufast keeps PyTorch's packed-sequence rule: the state stays at h0.)


# -- every input and attribute, one at a time -------------------------------------------------
T_, B_, I_, H_ = 4, 3, 2, 3


def base_arrays(D=1, seed=0):
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((T_, B_, I_)).astype(np.float32),
            "W": rng.uniform(-0.6, 0.6, (D, 3 * H_, I_)).astype(np.float32),
            "R": rng.uniform(-0.6, 0.6, (D, 3 * H_, H_)).astype(np.float32)}


def extra_arrays(D, layout=0, seed=1):
    rng = np.random.default_rng(seed)
    h0 = rng.standard_normal((D, B_, H_)).astype(np.float32)
    return {"B": rng.uniform(-0.5, 0.5, (D, 6 * H_)).astype(np.float32),
            "sequence_lens": np.array([4, 1, 3], np.int32),
            "initial_h": h0.transpose(1, 0, 2).copy() if layout else h0}


# (case id, attributes, inputs beyond X/W/R, which of those are constants, refusal pattern)
VARIANTS = [
    ("plain", {}, [], set(), None),
    ("B", {}, ["B"], {"B"}, None),
    ("B as a graph input", {}, ["B"], set(), "B .* must be a constant of the model"),
    ("W as a graph input", {}, [], "W-input", "W .* must be a constant of the model"),
    ("sequence_lens input", {}, ["sequence_lens"], set(), None),
    ("sequence_lens constant", {}, ["sequence_lens"], {"sequence_lens"}, None),
    ("initial_h input", {}, ["initial_h"], set(), None),
    ("initial_h constant", {}, ["initial_h"], {"initial_h"}, None),
    ("direction forward", dict(direction="forward"), [], set(), None),
    ("direction reverse", dict(direction="reverse"), ["sequence_lens"], set(), None),
    ("direction bidirectional", dict(direction="bidirectional"), ["sequence_lens", "initial_h"],
     set(), None),
    ("hidden_size", dict(hidden_size=H_), [], set(), None),
    ("hidden_size wrong", dict(hidden_size=H_ + 1), [], set(), "hidden_size=4"),
    ("layout 0", dict(layout=0), [], set(), None),
    ("layout 1", dict(layout=1), ["initial_h"], set(), None),
    ("layout 1 constants", dict(layout=1), ["initial_h", "sequence_lens"],
     {"initial_h", "sequence_lens"}, None),
    ("linear_before_reset 0", dict(linear_before_reset=0), ["B"], {"B"}, None),
    ("linear_before_reset 1", dict(linear_before_reset=1), ["B"], {"B"}, None),
    ("activations default", dict(activations=["Sigmoid", "Tanh"]), [], set(), None),
    ("activations other", dict(activations=["HardSigmoid", "Tanh"]), [], set(), "activations"),
    ("activation_alpha", dict(activation_alpha=[0.5]), [], set(), "activation_alpha"),
    ("activation_beta", dict(activation_beta=[0.5]), [], set(), "activation_beta"),
    ("clip", dict(clip=1.0), [], set(), "clip"),
]


def test_variants_cover_every_input_and_attribute_of_the_operator():
    schema = onnx.defs.get_schema("GRU")
    attrs = {k for v in VARIANTS for k in v[1]}
    inputs = {"X", "W", "R"} | {k for v in VARIANTS for k in v[2]}
    assert set(schema.attributes) <= attrs, set(schema.attributes) - attrs
    assert {i.name for i in schema.inputs} <= inputs


@pytest.mark.parametrize("vid,attrs,extra,consts,refused", VARIANTS,
                         ids=[v[0] for v in VARIANTS])
def test_each_input_and_attribute_is_honoured_or_refused(tmp_path, vid, attrs, extra, consts,
                                                         refused):
    D = 2 if attrs.get("direction") == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    arrays = base_arrays(D)
    if layout:
        arrays["X"] = arrays["X"].transpose(1, 0, 2).copy()
    more = extra_arrays(D, layout)
    arrays.update({k: more[k] for k in extra})
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h"]
    # ONNX Runtime needs hidden_size (the schema makes it optional; grufast reads R's).
    node = helper.make_node("GRU", [n if n in arrays else "" for n in names], ["Y", "Y_h"],
                            **dict(dict(hidden_size=H_), **attrs))
    constants = {"R"} if consts == "W-input" else {"W", "R"} | consts
    path = single_node(tmp_path / "m.onnx", node, arrays, constants)
    if refused:
        with pytest.raises(ValueError, match=refused):
            grufast.GRU.from_onnx(path)
        return
    gru = grufast.GRU.from_onnx(path)
    feeds = {k: v for k, v in arrays.items() if k not in constants}
    h0 = feeds.get("initial_h")
    if h0 is not None and layout:
        h0 = h0.transpose(1, 0, 2)  # grufast's h0 is (D, B, H) whatever the layout
    y, h_n = gru(arrays["X"], h0, lengths=feeds.get("sequence_lens"))
    if layout:
        # ONNX Runtime does not run layout=1: the oracle is the same node in layout 0 on
        # time-major inputs, and grufast's batch-major outputs are compared transposed.
        assert gru.batch_first
        arrays = {k: v.transpose(1, 0, 2).copy() if k in ("X", "initial_h") else v
                  for k, v in arrays.items()}
        node = helper.make_node(node.op_type, node.input, node.output,
                                **dict(dict(hidden_size=H_), **attrs) | {"layout": 0})
        path = single_node(tmp_path / "layout0.onnx", node, arrays, constants)
        feeds = {k: v for k, v in arrays.items() if k not in constants}
        y = y.transpose(1, 0, 2)
    oy, oh = ort_run(path, feeds)
    close(y, onnx_y_to_grufast(oy, 0), vid + " Y")
    close(h_n, oh, vid + " Y_h")


def test_unknown_attribute_is_refused(tmp_path):
    arrays = base_arrays()
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y"], output_sequence=1)
    path = tmp_path / "m.onnx"
    inits = [numpy_helper.from_array(arrays[k], k) for k in ("W", "R")]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, [T_, B_, I_])], [helper.make_tensor_value_info(
            "Y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    with pytest.raises(ValueError, match="output_sequence"):
        grufast.GRU.from_onnx(path)


# -- the glue is checked, not trusted -------------------------------------------------------
def _edit_initializer(path, name, value):
    model = onnx.load(str(path))
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value, name))
    onnx.save(model, str(path))


def test_glue_that_feeds_the_wrong_state_or_layout_is_refused(tmp_path):
    gru = grufast.GRU(3, 4, 2, bidirectional=True, seed=0).eval()
    path = tmp_path / "m.onnx"
    gru.to_onnx(path)
    grufast.GRU.from_onnx(path)  # as written: accepted
    _edit_initializer(path, "h0_start_1", np.array([0], np.int64))  # layer 1 gets layer 0's h0
    _edit_initializer(path, "h0_end_1", np.array([2], np.int64))
    with pytest.raises(ValueError, match="initial_h is not rows 2:4 of h0"):
        grufast.GRU.from_onnx(path)
    gru.to_onnx(path)
    model = onnx.load(str(path))
    for n in model.graph.node:  # directions interleaved wrongly between the layers
        if n.op_type == "Transpose" and n.input[0] == "Y_0":
            n.attribute[0].CopyFrom(helper.make_attribute("perm", [0, 2, 3, 1]))
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="X is not the previous layer's output"):
        grufast.GRU.from_onnx(path)


def test_computation_on_the_state_is_refused(tmp_path):
    """Glue may build a state from shapes, but it must be zero."""
    arrays = base_arrays()
    nodes = [helper.make_node("Shape", ["X"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["batch"]),
             helper.make_node("Concat", ["d", "batch", "h"], ["h0_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["h0_shape"], ["h0"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("GRU", ["X", "W", "R", "", "", "h0"], ["Y", "Y_h"],
                              hidden_size=H_)]
    inits = [numpy_helper.from_array(arrays["W"], "W"), numpy_helper.from_array(arrays["R"], "R"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([1], np.int64), "d"),
             numpy_helper.from_array(np.array([H_], np.int64), "h")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, ["T", "B", I_])], [helper.make_tensor_value_info(
            "Y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    with pytest.raises(ValueError, match="initial_h is not zero"):
        grufast.GRU.from_onnx(path)
    nodes[3] = helper.make_node("ConstantOfShape", ["h0_shape"], ["h0"])  # zeros: accepted
    graph = helper.make_graph(nodes, "g", list(graph.input), list(graph.output), inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    gru = grufast.GRU.from_onnx(path)
    assert gru.default_h0 is None
    close(gru(arrays["X"])[0], onnx_y_to_grufast(ort_run(path, {"X": arrays["X"]})[0], 0))


@pytest.mark.parametrize("axis, start, end, refused", [
    (0, 0, 6, "X is not the input x"), (1, 0, 4, "X is not the input x"),
    (0, 0, 40, "X is not the input x"), (0, 0, 100, "Slice node"), (1, 0, 50, "Slice node"),
    (0, -100, 2**62, "Slice node"), (0, 0, 2**62, None), (0, 0, 2**31 - 1, None),
    (0, -2**62, 2**62, None)],
    ids=["time-6", "batch-4", "time-40", "time-100", "batch-50", "time-last-100",
         "time-to-the-end", "time-to-int32-max", "time-from-int64-min"])
def test_glue_that_is_the_identity_at_one_size_only_is_refused(tmp_path, axis, start, end,
                                                               refused):
    """A Slice of the time or batch axis is the identity on inputs shorter than its end
    only; it used to pass the one probe size and then be dropped (grufast ran every step
    where the ONNX model ran the first 6). Two probe sizes catch ends below the larger one;
    ends past it (100 steps, 50 sequences, the last 100 steps) are refused by their
    values. A slice from the start to the end is the identity: accepted."""
    arrays = base_arrays()
    inits = [numpy_helper.from_array(arrays["W"], "W"), numpy_helper.from_array(arrays["R"], "R"),
             numpy_helper.from_array(np.array([start], np.int64), "start"),
             numpy_helper.from_array(np.array([end], np.int64), "end"),
             numpy_helper.from_array(np.array([axis], np.int64), "axis")]
    nodes = [helper.make_node("Slice", ["X", "start", "end", "axis"], ["Xs"]),
             helper.make_node("GRU", ["Xs", "W", "R"], ["Y", "Y_h"], hidden_size=H_)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, ["T", "B", I_])], [helper.make_tensor_value_info(
            "Y_h", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    if refused:
        with pytest.raises(ValueError, match=refused):
            grufast.GRU.from_onnx(path)
        return
    gru = grufast.GRU.from_onnx(path)
    x = np.random.default_rng(5).standard_normal((130, 2, I_)).astype(np.float32)
    close(gru(x)[1][0], ort_run(path, {"X": x})[0][0])


def _sliced_model(tmp_path, slice_inputs, nodes_before=(), inits_extra=(), h0=None):
    """X -> [nodes_before] -> Slice(*slice_inputs) -> GRU, the GRU's Y_h the output; h0: a
    constant initial_h."""
    arrays = base_arrays()
    inits = [numpy_helper.from_array(arrays["W"], "W"),
             numpy_helper.from_array(arrays["R"], "R"), *inits_extra]
    gru_in = ["Xs", "W", "R"]
    if h0 is not None:
        inits.append(numpy_helper.from_array(h0, "h0"))
        gru_in += ["", "", "h0"]
    nodes = [*nodes_before, helper.make_node("Slice", list(slice_inputs), ["Xs"]),
             helper.make_node("GRU", gru_in, ["Y", "Y_h"], hidden_size=H_)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, ["T", "B", I_])], [helper.make_tensor_value_info(
            "Y_h", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    return path


def _i64(name, *values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def test_a_slice_with_a_bounded_start_is_refused_whatever_its_end(tmp_path):
    """The last 100 steps, the end taken from X's shape: the end follows the size, the
    start does not (ONNX Runtime ran 100 of 130 steps where grufast ran all 130)."""
    shape_end = [helper.make_node("Shape", ["X"], ["shape"]),
                 helper.make_node("Gather", ["shape", "zero"], ["T_end"])]
    path = _sliced_model(tmp_path, ["X", "start", "T_end", "axis0"], shape_end,
                         [_i64("start", -100), _i64("zero", 0), _i64("axis0", 0)])
    with pytest.raises(ValueError, match="Slice node"):
        grufast.GRU.from_onnx(path)


def test_a_batch_slice_ending_at_the_number_of_steps_is_refused(tmp_path):
    """The batch cut to X's number of steps: the identity wherever there are more steps
    than sequences, which the probe with 29 sequences and 7 steps is not (ONNX Runtime
    returned 2 sequences of 10 at T = 2, grufast 10)."""
    shape_end = [helper.make_node("Shape", ["X"], ["shape"]),
                 helper.make_node("Gather", ["shape", "zero"], ["T_end"])]
    path = _sliced_model(tmp_path, ["X", "start", "T_end", "axis1"], shape_end,
                         [_i64("start", 0), _i64("zero", 0), _i64("axis1", 1)])
    with pytest.raises(ValueError, match="X is not the input x"):
        grufast.GRU.from_onnx(path)


def test_a_batch_cut_to_one_beside_a_constant_state_of_batch_one_is_refused(tmp_path):
    """A constant initial_h of batch 1 broadcasts in grufast's import, so the batch stays
    free in the probes: glue that keeps only the first sequence is caught (it passed when
    the probes ran at batch 1 and then computed every sequence where ONNX Runtime computed
    one). Without that glue the model imports, and agrees with ONNX Runtime at batch 1."""
    h0 = np.random.default_rng(3).standard_normal((1, 1, H_)).astype(np.float32)
    path = _sliced_model(tmp_path, ["X", "start", "one", "axis1"],
                         inits_extra=[_i64("start", 0), _i64("one", 1), _i64("axis1", 1)],
                         h0=h0)
    with pytest.raises(ValueError, match="X is not the input x"):
        grufast.GRU.from_onnx(path)
    whole = _sliced_model(tmp_path, ["X", "start", "end", "axis1"],
                          inits_extra=[_i64("start", 0), _i64("end", 2**62), _i64("axis1", 1)],
                          h0=h0)
    gru = grufast.GRU.from_onnx(whole)
    x = np.random.default_rng(4).standard_normal((6, 1, I_)).astype(np.float32)
    close(gru(x)[1][0], ort_run(whole, {"X": x})[0][0])


@pytest.mark.parametrize("outputs", [["Yh0"], ["Y0"], ["Y1", "Xc"], ["Y1"], ["Y1", "Yh0"]],
                         ids=["last-node-unused", "earlier-layer-y", "input-passed-through",
                              "stack", "stack-h"])
def test_outputs_must_be_what_the_layer_stack_returns(tmp_path, outputs):
    """A GRU node no output depends on, or an output taken from the input or an earlier
    layer's Y, would import as a model computing something else (a 2-layer GRU whose y
    differed from ONNX Runtime's by 1.4)."""
    rng = np.random.default_rng(6)
    w = {"W0": rng.uniform(-0.6, 0.6, (1, 3 * H_, I_)),
         "R0": rng.uniform(-0.6, 0.6, (1, 3 * H_, H_)),
         "W1": rng.uniform(-0.6, 0.6, (1, 3 * H_, H_)),
         "R1": rng.uniform(-0.6, 0.6, (1, 3 * H_, H_))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes = [helper.make_node("GRU", ["X", "W0", "R0"], ["Y0", "Yh0"], hidden_size=H_),
             helper.make_node("Squeeze", ["Y0", "axis1"], ["Y0s"]),
             helper.make_node("GRU", ["Y0s", "W1", "R1"], ["Y1", "Yh1"], hidden_size=H_),
             helper.make_node("Identity", ["X"], ["Xc"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, ["T", "B", I_])], [helper.make_tensor_value_info(
            o, TensorProto.FLOAT, None) for o in outputs], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    if outputs == ["Yh0"]:
        with pytest.raises(ValueError, match="no graph output depends on the last GRU node"):
            grufast.GRU.from_onnx(path)
    elif outputs == ["Y0"]:
        with pytest.raises(ValueError, match="'Y0' is computed from output 0 of GRU node 0"):
            grufast.GRU.from_onnx(path)
    elif "Xc" in outputs:
        with pytest.raises(ValueError, match="'Xc' is computed from graph input 'X'"):
            grufast.GRU.from_onnx(path)
    else:
        gru = grufast.GRU.from_onnx(path)
        x = np.random.default_rng(7).standard_normal((6, 2, I_)).astype(np.float32)
        close(gru(x)[0], onnx_y_to_grufast(ort_run(path, {"X": x})[0], 0))


@pytest.mark.parametrize("to", [TensorProto.UINT8, TensorProto.INT16, TensorProto.FLOAT16])
def test_a_narrowing_cast_in_the_glue_is_refused(tmp_path, to):
    """sequence_lens through Cast(uint8) and back: exact at the probes' lengths (< 61), so it
    passed them, and a length of 300 became 44 in the ONNX model but not in grufast."""
    arrays = base_arrays()
    inits = [numpy_helper.from_array(arrays["W"], "W"), numpy_helper.from_array(arrays["R"], "R")]
    nodes = [helper.make_node("Cast", ["L"], ["L8"], to=to),
             helper.make_node("Cast", ["L8"], ["L32"], to=TensorProto.INT32),
             helper.make_node("GRU", ["X", "W", "R", "", "L32"], ["Y", "Y_h"], hidden_size=H_)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I_]),
                     helper.make_tensor_value_info("L", TensorProto.INT32, ["B"])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    with pytest.raises(ValueError, match=f"casts to {TensorProto.DataType.Name(to)}"):
        grufast.GRU.from_onnx(path)


# -- the layer options the imports need -----------------------------------------------------
@pytest.mark.parametrize("batch_first", [False, True])
def test_reverse_layer_is_torch_on_the_flipped_sequence(batch_first):
    """A reverse-only layer = torch.nn.GRU on the time-flipped input, outputs flipped back;
    forward, gradients and packed lengths."""
    gru = grufast.GRU(3, 4, 2, batch_first=batch_first, reverse=True, dtype=np.float64, seed=0)
    m = torch.nn.GRU(3, 4, 2, batch_first=batch_first, dtype=torch.float64)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in gru.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3) if batch_first else (5, 2, 3))
    h0 = rng.standard_normal((2, 2, 4))
    t_axis = 1 if batch_first else 0
    y, h_n = gru(x, h0)
    xt = torch.tensor(np.flip(x, t_axis).copy(), requires_grad=True)
    ty, th = m(xt, torch.tensor(h0))
    np.testing.assert_allclose(y, np.flip(ty.detach().numpy(), t_axis), atol=1e-12)
    np.testing.assert_allclose(h_n, th.detach().numpy(), atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, _ = gru.backward(dy)
    (ty * torch.tensor(np.flip(dy, t_axis).copy())).sum().backward()
    np.testing.assert_allclose(dx, np.flip(xt.grad.numpy(), t_axis), atol=1e-12)
    np.testing.assert_allclose(gru.grads["weight_hh_l1"], m.weight_hh_l1.grad.numpy(),
                               atol=1e-12)
    # lengths: sequence b runs t = L_b - 1 ... 0, as torch on each sequence's own flip
    gru.eval()
    lens = [5, 2]
    y, h_n = gru(x, h0, lengths=lens)
    for b, n in enumerate(lens):
        xb = (x[b:b + 1, :n] if batch_first else x[:n, b:b + 1])
        ty, th = m(torch.tensor(np.flip(xb, t_axis).copy()), torch.tensor(h0[:, b:b + 1]))
        yb = y[b:b + 1, :n] if batch_first else y[:n, b:b + 1]
        np.testing.assert_allclose(yb, np.flip(ty.detach().numpy(), t_axis), atol=1e-12)
        np.testing.assert_allclose(h_n[:, b:b + 1], th.detach().numpy(), atol=1e-12)


def test_reverse_option_is_checked_and_carried(tmp_path):
    with pytest.raises(ValueError, match="needs bidirectional=False"):
        grufast.GRU(2, 3, bidirectional=True, reverse=True)
    with pytest.raises(TypeError, match="reverse must be a bool"):
        grufast.GRU(2, 3, reverse=1)
    gru = grufast.GRU(2, 3, 2, reverse=True, seed=0).eval()
    with pytest.raises(ValueError, match="step needs a unidirectional, forward GRU"):
        gru.step(np.zeros(2))
    assert gru.config()["reverse"] and "reverse=True" in repr(gru)
    grufast.save(gru, tmp_path / "m.npz")
    back = grufast.load(tmp_path / "m.npz")
    assert back.config() == gru.config()
    path = tmp_path / "m.onnx"
    gru.to_onnx(path, lengths=True)
    x = np.random.default_rng(0).standard_normal((5, 2, 2)).astype(np.float32)
    h0 = np.zeros((2, 2, 3), np.float32)
    lens = np.array([5, 3], np.int32)
    oy, oh = ort_run(path, dict(x=x, h0=h0, lengths=lens))
    y, h_n = gru(x, h0, lengths=lens)
    close(oy, y)
    close(oh, h_n)
    again = grufast.GRU.from_onnx(path)
    assert again.config() == gru.config()


def test_default_state_and_lengths_are_used_checked_and_carried(tmp_path):
    gru = grufast.GRU(2, 3, 2, bidirectional=True, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((5, 4, 2)).astype(np.float32)
    h0 = np.random.default_rng(1).standard_normal((4, 1, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"default_h0 must have shape"):
        gru.default_h0 = np.zeros((2, 1, 3))
    gru.default_h0 = h0
    gru.default_lengths = [5, 2, 0, 3]
    y, h_n = gru(x)
    y2, h2 = gru(x, np.broadcast_to(h0, (4, 4, 3)), lengths=[5, 2, 0, 3])
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(h_n, h2)
    np.testing.assert_array_equal(h_n[:, 2], h0[:, 0])  # length 0: the state stays at h0
    with pytest.raises(ValueError, match="default_lengths .* batch of 4"):
        gru(x[:, :2])
    # state_dict, save/load, to_onnx carry them
    d = gru.state_dict()
    np.testing.assert_array_equal(d["default_h0"], h0)
    fresh = grufast.GRU(2, 3, 2, bidirectional=True).eval()
    fresh.load_state_dict(d)
    np.testing.assert_array_equal(fresh(x)[1], h_n)
    with pytest.raises(ValueError, match="missing keys \\['default_h0', 'default_lengths'\\]"):
        fresh.load_state_dict({k: v for k, v in d.items() if not k.startswith("default")})
    with pytest.raises(RuntimeError, match="default_h0"):  # torch refuses, never drops them
        torch.nn.GRU(2, 3, 2, bidirectional=True).load_state_dict(
            {k: torch.from_numpy(v) for k, v in d.items()})
    grufast.save(gru, tmp_path / "m.npz")
    back = grufast.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back(x)[0], y)
    path = tmp_path / "m.onnx"
    # (no length 0 here: ONNX Runtime zeroes such a sequence's Y_h instead of keeping h0)
    gru.default_lengths = [5, 2, 1, 3]
    y, h_n = gru(x)
    gru.to_onnx(path)  # the default lengths become a constant of the file
    oy, oh = ort_run(path, {"x": x})  # h0 not fed: its initializer, expanded to the batch
    close(oy, y)
    close(oh, h_n)
    imported = grufast.GRU.from_onnx(path)
    np.testing.assert_array_equal(imported.default_h0, h0)
    np.testing.assert_array_equal(imported.default_lengths, [5, 2, 1, 3])
    other = np.random.default_rng(2).standard_normal((4, 4, 3)).astype(np.float32)
    oy, oh = ort_run(path, {"x": x, "h0": other})  # and h0 can still be fed
    close(oh, imported(x, other)[1])
    gru.default_lengths = None
    gru.to_onnx(path, lengths=True)
    lens = np.array([1, 2, 3, 4], np.int32)
    oy, oh = ort_run(path, {"x": x, "lengths": lens})
    close(oh, gru(x, lengths=lens)[1])
    gru.default_h0 = np.zeros((4, 3, 3))
    with pytest.raises(ValueError, match="batch 3 cannot serve a batch of 4"):
        gru(x)


def test_stack_of_batch_major_nodes(tmp_path):
    """Two bidirectional layout=1 GRU nodes joined by a Reshape, h0 a batch-major graph input
    (B, L * D, H) sliced per layer. ONNX Runtime does not run layout=1: the oracle is onnx's
    reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    I, H, D = 3, 4, 2
    inits = [numpy_helper.from_array(np.array([0, 0, -1]), "merge"),
             numpy_helper.from_array(np.array([1]), "axis1")]
    nodes, inp = [], "X"
    for k in range(2):
        size = I if k == 0 else D * H
        inits += [numpy_helper.from_array(rng.uniform(-.5, .5, shape).astype(np.float32), name)
                  for name, shape in ((f"W{k}", (D, 3 * H, size)), (f"R{k}", (D, 3 * H, H)),
                                      (f"B{k}", (D, 6 * H)))]
        inits += [numpy_helper.from_array(np.array([k * D]), f"start{k}"),
                  numpy_helper.from_array(np.array([(k + 1) * D]), f"end{k}")]
        nodes += [helper.make_node("Slice", ["h0", f"start{k}", f"end{k}", "axis1"],
                                   [f"state{k}"]),
                  helper.make_node("GRU", [inp, f"W{k}", f"R{k}", f"B{k}", "", f"state{k}"],
                                   [f"Y{k}", f"Yh{k}"], hidden_size=H, layout=1,
                                   direction="bidirectional", linear_before_reset=1),
                  helper.make_node("Reshape", [f"Y{k}", "merge"], [f"out{k}"])]
        inp = f"out{k}"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", "T", I]),
                     helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["B", 2 * D, H])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("out1", "Yh0",
                                                                             "Yh1")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", GRU_OPSET)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    gru = grufast.GRU.from_onnx(path)
    assert (gru.batch_first, gru.bidirectional, gru.num_layers) == (True, True, 2)
    x = rng.standard_normal((2, 5, I)).astype(np.float32)
    h0 = rng.standard_normal((2, 2 * D, H)).astype(np.float32)
    out, yh0, yh1 = ReferenceEvaluator(model).run(None, {"X": x, "h0": h0})
    y, h_n = gru(x, h0.transpose(1, 0, 2))
    close(y, out, "y")
    close(h_n, np.concatenate([yh0, yh1], axis=1).transpose(1, 0, 2), "h_n")


def test_a_tensor_defined_twice_is_refused(tmp_path):
    arrays = base_arrays()
    node = helper.make_node("Identity", ["X"], ["W"])  # shadows the initializer W
    gru = helper.make_node("GRU", ["W", "W", "R"], ["Y"], hidden_size=H_)
    graph = helper.make_graph(
        [node, gru], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T_, B_, I_])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(arrays[k], k) for k in ("W", "R")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    with pytest.raises(ValueError, match="'W' is defined twice"):
        grufast.GRU.from_onnx(path)


@pytest.mark.parametrize("attr,value,name", [("direction", "reverse", "direction"),
                                             ("linear_before_reset", 0, "linear_before_reset"),
                                             ("layout", 1, "layout")])
def test_layers_that_differ_are_refused(tmp_path, attr, value, name):
    path = tmp_path / "m.onnx"
    grufast.GRU(3, 4, 2, seed=0).to_onnx(path)
    model = onnx.load(str(path))
    second = [n for n in model.graph.node if n.op_type == "GRU"][1]
    kept = [a for a in second.attribute if a.name != attr]
    del second.attribute[:]
    second.attribute.extend(kept + [helper.make_attribute(attr, value)])
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match=f"GRU nodes differ in {name}"):
        grufast.GRU.from_onnx(path)
