"""Build and run a single ONNX GRU node with ONNX Runtime (gate order z, r, h)."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ONNX_DTYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def rzn_to_zrn(w):
    r, z, n = np.split(w, 3)
    return np.concatenate([z, r, n])


def run_onnx_gru(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, linear_before_reset):
    T, B, I = x.shape
    H = w_hh.shape[1]
    dt = ONNX_DTYPE[x.dtype]
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
        "L": (np.full(B, T) if lengths is None else lengths).astype(np.int32),
        "H0": h0[None],
    }
    y, yh = sess.run(None, feeds)
    return y[:, 0], yh[0]
