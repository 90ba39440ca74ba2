"""GRU.from_onnx on the files torch.onnx.export writes for torch.nn.GRU (the TorchScript-based
exporter, ``dynamo=False``): with and without h0, batch_first, 1-3 layers, bidirectional,
with dynamic or fixed sizes. The zero initial state torch builds from the input's batch size
(Shape, Gather, Unsqueeze, Concat, ConstantOfShape or Expand) is followed; computation on the
data is refused.

The dynamo exporter needs the onnxscript package, which the test dependencies do not
include, so it is not run here (see the README's ONNX section for the manual check).
"""

import itertools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import grufast

from .helpers import rel_err

RTOL = 1e-5


def export(m, args, path, dynamic: bool) -> None:
    names = ["x", "h0"][:len(args)]
    axes = None
    if dynamic:
        batch, time = (0, 1) if getattr(m, "batch_first", False) else (1, 0)
        axes = {"x": {batch: "B", time: "T"}}
        if len(args) == 2:
            axes["h0"] = {1: "B"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about batch sizes and tracing
        torch.onnx.export(m, args, str(path), dynamo=False, input_names=names,
                          output_names=["y", "h_n"], dynamic_axes=axes)


MATRIX = [(h0, bf, L, bi, True) for h0, bf, L, bi in
          itertools.product([False, True], [False, True], [1, 2, 3], [False, True])]
MATRIX += [(False, False, 1, False, False), (False, True, 2, True, False),
           (True, False, 3, True, False), (True, True, 2, False, False)]


@pytest.mark.parametrize("with_h0,batch_first,layers,bidirectional,dynamic", MATRIX,
                         ids=[f"h0={a}-bf={b}-L={c}-bi={d}-dyn={e}" for a, b, c, d, e in MATRIX])
def test_torch_export_imports_exactly(tmp_path, with_h0, batch_first, layers, bidirectional,
                                      dynamic):
    torch.manual_seed(layers)
    m = torch.nn.GRU(4, 5, layers, batch_first=batch_first, bidirectional=bidirectional).eval()
    D = 1 + bidirectional
    x = torch.randn((3, 6, 4) if batch_first else (6, 3, 4))
    h0 = torch.randn(layers * D, 3, 5)
    args = (x, h0) if with_h0 else (x,)
    path = tmp_path / "torch.onnx"
    export(m, args, path, dynamic)
    gru = grufast.GRU.from_onnx(path)
    assert (gru.num_layers, gru.bidirectional, gru.batch_first, gru.linear_before_reset,
            gru.reverse) == (layers, bidirectional, batch_first, True, False)
    assert gru.default_h0 is None and gru.default_lengths is None
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(gru.state_dict()[k], v.numpy(), err_msg=k)
    # other sizes than the export's when the file allows them
    if dynamic:
        x = torch.randn((2, 9, 4) if batch_first else (9, 2, 4))
        h0 = torch.randn(layers * D, 2, 5)
        args = (x, h0) if with_h0 else (x,)
    y, h_n = gru(*(a.numpy() for a in args))
    with torch.no_grad():
        ty, th = m(*args)
    assert rel_err(y, ty.numpy()) <= RTOL
    assert rel_err(h_n, th.numpy()) <= RTOL
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    oy, oh = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})
    assert rel_err(y, oy) <= RTOL and rel_err(h_n, oh) <= RTOL


def test_torch_export_of_a_model_computing_on_the_data_is_refused(tmp_path):
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 5)

        def forward(self, x):
            return self.gru(2 * x)

    path = tmp_path / "scaled.onnx"
    export(Scaled().eval(), (torch.randn(6, 3, 4),), path, dynamic=True)
    with pytest.raises(ValueError, match=r"operators other than GRU .*\['Mul'\]"):
        grufast.GRU.from_onnx(path)


def test_torch_export_with_a_learned_initial_state(tmp_path):
    """A module whose initial state is a parameter: torch writes it as a constant feeding
    initial_h, which becomes the layer's default_h0 (batch 1, broadcast)."""
    class Learned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 5, 2)
            self.h0 = torch.nn.Parameter(torch.randn(2, 1, 5))

        def forward(self, x):
            return self.gru(x, self.h0)

    m = Learned().eval()
    path = tmp_path / "learned.onnx"
    export(m, (torch.randn(6, 1, 4),), path, dynamic=False)
    model = onnx.load(str(path))
    assert {n.op_type for n in model.graph.node} <= {"GRU", "Slice", "Constant", "Concat",
                                                      "Transpose", "Reshape", "Squeeze"}
    gru = grufast.GRU.from_onnx(path)
    np.testing.assert_array_equal(gru.default_h0, m.h0.detach().numpy())
    x = torch.randn(6, 3, 4)
    y, h_n = gru(x.numpy())  # batch 3: the batch-1 state is broadcast
    with torch.no_grad():
        ty, th = m.gru(x, m.h0.expand(2, 3, 5).contiguous())
    assert rel_err(y, ty.numpy()) <= RTOL and rel_err(h_n, th.numpy()) <= RTOL
