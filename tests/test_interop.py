"""ONNX export run by ONNX Runtime, ONNX import (ours and torch.onnx.export's), Keras import,
and save/load."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import itertools  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from onnx import helper  # noqa: E402

import grufast  # noqa: E402

from .helpers import assert_close  # noqa: E402


def ort_run(path, **feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("layers,bidirectional,lbr,batch_first,bias,lengths", list(
    itertools.product([1, 3], [False, True], [False, True], [False, True], [True, False],
                      [False, True])))
def test_to_onnx_runs_in_onnxruntime(tmp_path, layers, bidirectional, lbr, batch_first, bias,
                                     lengths):
    gru = grufast.GRU(5, 6, layers, bias, batch_first, bidirectional=bidirectional,
                      linear_before_reset=lbr, seed=layers).eval()
    path = tmp_path / "gru.onnx"
    gru.to_onnx(path, lengths=lengths)
    rng = np.random.default_rng(0)
    T, B = 7, 3
    x = rng.standard_normal((B, T, 5) if batch_first else (T, B, 5)).astype(np.float32)
    h0 = rng.standard_normal((layers * (1 + bidirectional), B, 6)).astype(np.float32)
    lens = np.array([7, 2, 5])
    feeds = dict(x=x, h0=h0)
    if lengths:
        feeds["lengths"] = lens.astype(np.int32)
    oy, oh = ort_run(path, **feeds)
    y, h = gru(x, h0, lengths=lens if lengths else None)
    assert_close(oy, y, np.float32, "fwd", "y")
    assert_close(oh, h, np.float32, "fwd", "h_n")
    back = grufast.GRU.from_onnx(path)
    assert back.config() == gru.config()
    for k, v in gru.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)


@pytest.mark.parametrize("opset", [14, 22])
def test_to_onnx_writes_the_lowest_ir_version_its_opset_allows(tmp_path, opset):
    """onnx writes its own newest IR version by default (1.23: IR 14), which runtimes older
    than the onnx package refuse (ONNX Runtime 1.30 reads up to IR 13): the exported model
    and the bench's models carry the lowest IR version that can hold their opset."""
    import onnx
    from onnx import helper

    from grufast import _bench_peers as P

    want = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    assert want < onnx.IR_VERSION or onnx.IR_VERSION <= 10
    path = tmp_path / "gru.onnx"
    grufast.GRU(3, 4, seed=0).to_onnx(path, opset=opset)
    assert onnx.load(str(path)).ir_version == want
    case = P.Case(5, 2, 3, 4, 1, False, True, "float32")
    sd = grufast.GRU(3, 4, seed=0).state_dict()
    bench_model = onnx.load_from_string(P._onnx_gru_model(case, sd, T=5, with_state=False,
                                                          outputs_y=True))
    assert bench_model.ir_version == helper.find_min_ir_version_for(
        [helper.make_opsetid("", 14)])


@pytest.mark.parametrize("layers,bidirectional,batch_first", [(1, False, False), (2, True, False),
                                                              (3, True, True), (2, False, True)])
def test_from_onnx_reads_torch_export(tmp_path, layers, bidirectional, batch_first):
    torch.manual_seed(0)
    m = torch.nn.GRU(4, 5, layers, bidirectional=bidirectional, batch_first=batch_first).eval()
    D = 1 + bidirectional
    x = torch.randn((2, 6, 4) if batch_first else (6, 2, 4))
    h0 = torch.randn(layers * D, 2, 5)
    path = tmp_path / "torch.onnx"
    torch.onnx.export(m, (x, h0), str(path), dynamo=False, input_names=["x", "h0"])
    gru = grufast.GRU.from_onnx(path)
    assert (gru.num_layers, gru.bidirectional, gru.batch_first) == (layers, bidirectional,
                                                                    batch_first)
    y, h = gru(x.numpy(), h0.numpy())
    with torch.no_grad():
        ty, th = m(x, h0)
    assert_close(y, ty.numpy(), np.float32)
    assert_close(h, th.numpy(), np.float32)


def _single_gru_model(tmp_path, extra_nodes=(), **attrs):
    H, I = 3, 2
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((1, 3 * H, I)).astype(np.float32),
                                          "W"),
             onnx.numpy_helper.from_array(rng.standard_normal((1, 3 * H, H)).astype(np.float32),
                                          "R")]
    x_name = "x"
    nodes = list(extra_nodes)
    if nodes:
        x_name = nodes[-1].output[0]
    nodes.append(helper.make_node("GRU", [x_name, "W", "R"], ["Y", "Y_h"], hidden_size=H,
                                  **attrs))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 1, I])],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("attrs,match", [
    (dict(clip=1.0), "clip"),
    (dict(activations=["Relu", "Tanh"]), "activations"),
    (dict(direction="sideways"), "direction='sideways'"),
])
def test_from_onnx_refuses_what_it_cannot_represent(tmp_path, attrs, match):
    with pytest.raises(ValueError, match=match):
        grufast.GRU.from_onnx(_single_gru_model(tmp_path, **attrs))


def test_from_onnx_refuses_computation_between_layers(tmp_path):
    relu = helper.make_node("Relu", ["x"], ["x_relu"])
    with pytest.raises(ValueError, match=r"operators other than GRU.*Relu"):
        grufast.GRU.from_onnx(_single_gru_model(tmp_path, [relu]))
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        grufast.GRU.from_onnx(path)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
def test_from_keras_matches_keras(reset_after, use_bias):
    keras.utils.set_random_seed(0)
    layer = keras.layers.GRU(6, reset_after=reset_after, use_bias=use_bias,
                             return_sequences=True, return_state=True,
                             bias_initializer="random_normal")
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    h0 = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    seq, state = layer(x, initial_state=[h0])
    gru = grufast.GRU.from_keras(layer)
    assert gru.batch_first and gru.linear_before_reset == reset_after and not gru.training
    y, h = gru(x, h0[None])
    assert_close(y, keras.ops.convert_to_numpy(seq), np.float32)
    assert_close(h[0], keras.ops.convert_to_numpy(state), np.float32)


def test_from_keras_refuses_unsupported():
    layer = keras.layers.GRU(3, activation="relu")
    layer.build((1, 2, 4))
    with pytest.raises(ValueError, match="activation='relu'"):
        grufast.GRU.from_keras(layer)

    def tanh(v):  # named like Keras's, computes something else: refused, not imported
        return keras.ops.relu(v)

    for kw in (dict(activation=tanh), dict(recurrent_activation=keras.activations.hard_sigmoid)):
        impostor = keras.layers.GRU(3, **kw)
        impostor.build((1, 2, 4))
        with pytest.raises(ValueError, match="only tanh and sigmoid"):
            grufast.GRU.from_keras(impostor)
    # Other objects computing tanh and sigmoid (keras.ops', a backend's): the same layer.
    ops = keras.layers.GRU(3, activation=keras.ops.tanh,
                           recurrent_activation=lambda v: torch.sigmoid(v))
    ops.build((1, 2, 4))
    grufast.GRU.from_keras(ops)
    with pytest.raises(TypeError, match="keras.layers.GRU"):
        grufast.GRU.from_keras(keras.layers.Dense(3))


@pytest.mark.parametrize("model", [
    grufast.GRU(3, 4, 2, bias=False, batch_first=True, dropout=0.25, bidirectional=True,
                linear_before_reset=False, dtype=np.float64, seed=0),
    grufast.GRU(5, 2, seed=1),
    grufast.GRUCell(3, 7, dtype=np.float64, seed=2),
])
def test_save_load_round_trip_is_bit_exact(tmp_path, model):
    path = tmp_path / "model.npz"
    grufast.save(model, path)
    back = grufast.load(path)
    assert type(back) is type(model) and back.config() == model.config()
    for k, v in model.state_dict().items():
        assert back.state_dict()[k].dtype == v.dtype
        np.testing.assert_array_equal(back.state_dict()[k], v)


def test_load_refuses_hostile_files(tmp_path):
    path = tmp_path / "m.npz"
    grufast.save(grufast.GRU(2, 3), path)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a grufast model file"):
        grufast.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "pickled.npz", __grufast_config__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a grufast model file"):
        grufast.load(tmp_path / "pickled.npz")
    np.savez(tmp_path / "noconf.npz", weight_ih_l0=np.zeros((9, 2)))
    with pytest.raises(ValueError, match="not written by grufast.save"):
        grufast.load(tmp_path / "noconf.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(tmp_path / "badshape.npz", **dict(arrays, weight_hh_l0=np.zeros((9, 2))))
    with pytest.raises(ValueError, match="weight_hh_l0"):
        grufast.load(tmp_path / "badshape.npz")
    np.savez(tmp_path / "badconf.npz", **dict(arrays, __grufast_config__=np.array("{nope")))
    with pytest.raises(ValueError, match="malformed configuration"):
        grufast.load(tmp_path / "badconf.npz")


def _tampered(tmp_path, model, *, config=None, arrays=None):
    """A save of ``model`` with its configuration entries and arrays replaced."""
    import json

    path = tmp_path / "orig.npz"
    grufast.save(model, path)
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    conf = json.loads(str(entries["__grufast_config__"]))
    conf.update(config or {})
    entries["__grufast_config__"] = np.array(json.dumps(conf))
    entries.update(arrays or {})
    out = tmp_path / "tampered.npz"
    np.savez(out, **entries)
    return out


@pytest.mark.parametrize("make", [lambda: grufast.GRU(2, 3, seed=0),
                                  lambda: grufast.GRUCell(2, 3, seed=0),
                                  lambda: grufast.Linear(2, 3, seed=0)],
                         ids=["GRU", "GRUCell", "Linear"])
def test_load_refuses_an_edited_configuration_or_dtype(tmp_path, make):
    """Each of these loaded before: an array of another dtype silently converted (float64
    downcast, int64 rounded, float16 widened), an unhashable class a raw TypeError, a bad
    size the constructor's error without the file, an extra key (a seed) ignored, and
    JSON's true taken for format 1."""
    model = make()
    name = next(iter(model.state_dict()))
    w = model.state_dict()[name]
    for dtype in (np.float64, np.int64, np.float16):
        with pytest.raises(ValueError, match=f"another dtype.*{name}: {np.dtype(dtype)}"):
            grufast.load(_tampered(tmp_path, model, arrays={name: w.astype(dtype)}))
    size = "in_features" if isinstance(model, grufast.Linear) else "hidden_size"
    for config, match in (({"class": ["GRU"]}, "unknown model class"),
                          ({"format": True}, "unknown model class"),
                          ({size: -4}, "tampered.npz.*does not fit"),
                          ({"seed": 3}, r"keys \['seed'\] are not")):
        with pytest.raises(ValueError, match=match):
            grufast.load(_tampered(tmp_path, model, config=config))
    again = grufast.load(_tampered(tmp_path, model))  # untouched: loads, same weights
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)
