"""ONNX Runtime's GRU operator as an oracle for both linear_before_reset values, lengths
(sequence_lens) and both directions. ONNX Runtime's GRU runs float32 only."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from grufast import functional as F

from .helpers import assert_close, problem
from .oracles import run_onnx_gru


@given(T=st.integers(1, 8), B=st.integers(1, 5), I=st.integers(1, 9), H=st.integers(1, 9),
       lbr=st.booleans(), reverse=st.booleans(), bias=st.booleans(), use_lengths=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_matches_onnxruntime_gru(T, B, I, H, lbr, reverse, bias, use_lengths, seed):
    rng = np.random.default_rng(seed)
    x, h0, *w = problem(rng, T, B, I, H, np.float32, bias=bias)
    lengths = rng.integers(1, T + 1, B) if use_lengths else None
    y, h, _ = F.gru_forward(x, h0, *w, lengths=lengths, reverse=reverse,
                            linear_before_reset=lbr)
    oy, oh = run_onnx_gru(x, h0, *w, lengths, reverse, lbr)
    assert_close(y, oy, np.float32, "fwd", "y")
    assert_close(h, oh, np.float32, "fwd", "h_n")
