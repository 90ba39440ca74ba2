"""GRU.from_keras on Keras's own GRU test cases and on the Keras models that import:
go_backwards, Bidirectional(GRU) (merge_mode="concat"), stacked GRUs in Sequential and
functional models, and masks (grufast's call-time ``mask``).

The literal expected values of Keras's own tests (keras-team/keras
``keras/src/layers/rnn/gru_test.py``: test_correctness, test_pass_initial_state,
test_masking) are transcribed in ``tests/fixtures/keras_gru_cases.json``, source named there.
Keras is used here with its torch backend, in float32.
"""

import json
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import initializers  # noqa: E402

import grufast  # noqa: E402

from .helpers import rel_err  # noqa: E402

RTOL = 1e-5


def close(actual, expected, what=""):
    err = rel_err(actual, expected)
    assert err <= RTOL, f"{what}: relative error {err:.2e} > {RTOL:.0e}"


def constant_gru(units, **kw):
    """The layer Keras's tests build: constant initialisers 0.01, 0.02, 0.03."""
    return keras.layers.GRU(units, kernel_initializer=initializers.Constant(0.01),
                            recurrent_initializer=initializers.Constant(0.02),
                            bias_initializer=initializers.Constant(0.03), **kw)


def last_output(y, go_backwards):
    """Keras's output without return_sequences: the last step it processed."""
    return y[:, 0] if go_backwards else y[:, -1]


KERAS = json.loads((pathlib.Path(__file__).parent / "fixtures" / "keras_gru_cases.json")
                   .read_text())


def keras_case(group, case):
    """Keras's test input and the layer its test builds, imported."""
    g = KERAS[group]
    shape = g["input_shape"]
    x = np.arange(np.prod(shape)).reshape(shape).astype("float32")
    layer = constant_gru(g["units"], **case["kwargs"])
    layer.build(x.shape)
    return x, grufast.GRU.from_keras(layer)


def test_keras_fixture_names_its_source():
    assert "keras/src/layers/rnn/gru_test.py" in KERAS["source"]


@pytest.mark.parametrize("case", KERAS["correctness"]["cases"],
                         ids=[str(c["kwargs"]) for c in KERAS["correctness"]["cases"]])
def test_keras_correctness_literals(case):
    x, gru = keras_case("correctness", case)
    assert gru.reverse == case["kwargs"].get("go_backwards", False)
    y, h_n = gru(x)
    close(last_output(y, gru.reverse), np.array(case["output"]), "output")
    close(h_n[0], np.array(case["output"]), "state")


@pytest.mark.parametrize("case", KERAS["initial_state"]["cases"],
                         ids=[str(c["kwargs"]) for c in KERAS["initial_state"]["cases"]])
def test_keras_initial_state_literals(case):
    x, gru = keras_case("initial_state", case)
    h0 = np.arange(4).reshape(KERAS["initial_state"]["initial_state_shape"]).astype("float32")
    y, h_n = gru(x, h0[None])
    close(h_n[0], np.array(case["output"]), "state")
    close(last_output(y, gru.reverse), np.array(case["output"]), "output")


MASK = np.array(KERAS["masking"]["mask"])


@pytest.mark.parametrize("case", KERAS["masking"]["cases"],
                         ids=[str(c["kwargs"]) for c in KERAS["masking"]["cases"]])
def test_keras_masking_literals(case):
    """A mask with holes in the middle: masked steps keep the state. Keras's
    zero_output_for_mask=True sequence is grufast's; its default repeats the last output."""
    x, gru = keras_case("masking", case)
    y, h_n = gru(x, mask=MASK)
    if "sequences" in case:
        close(y, np.array(case["sequences"]), "sequences")
    else:
        close(h_n[0], np.array(case["output"]), "state")


def keras_numpy(v):
    return keras.ops.convert_to_numpy(v)


@pytest.mark.parametrize("reset_after", [True, False])
def test_go_backwards_sequence_is_grufast_reversed(reset_after):
    keras.utils.set_random_seed(1)
    layer = keras.layers.GRU(4, go_backwards=True, return_sequences=True, return_state=True,
                             reset_after=reset_after, bias_initializer="random_normal")
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    h0 = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    seq, state = layer(x, initial_state=[h0])
    gru = grufast.GRU.from_keras(layer)
    y, h_n = gru(x, h0[None])
    close(y[:, ::-1], keras_numpy(seq), "sequence")
    close(h_n[0], keras_numpy(state), "state")


def bidirectional_model(stacked: bool, **kw):
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 3))
    out = keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True,
                                                      bias_initializer="random_normal", **kw))(inp)
    if stacked:
        out = keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True,
                                                          bias_initializer="random_normal",
                                                          **kw))(out)
    return keras.Model(inp, out)


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_bidirectional_and_stacks_match_keras(stacked, masked):
    model = bidirectional_model(stacked)
    x = np.random.default_rng(0).standard_normal((3, 6, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 1]], bool)
    gru = grufast.GRU.from_keras(model if stacked else model.layers[1])
    assert gru.bidirectional and gru.num_layers == (2 if stacked else 1)
    if masked:
        # Keras masks through the functional model when the layers get it at call time
        layers = model.layers[1:]
        out = keras.ops.convert_to_tensor(x)
        for lay in layers:
            out = lay(out, mask=keras.ops.convert_to_tensor(mask))
        expected = keras_numpy(out)
        y, _ = gru(x, mask=mask)
        # Keras repeats the last output of each direction at masked steps; compare the
        # valid steps, and check grufast's zeros at the others.
        close(y[mask], expected[mask], "valid steps")
        np.testing.assert_array_equal(y[~mask], 0)
    else:
        y, _ = gru(x)
        close(y, keras_numpy(model(x)), "y")


def test_sequential_stack_of_gru_layers():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5, 3)),
                              keras.layers.GRU(4, return_sequences=True, reset_after=False),
                              keras.layers.GRU(4, return_sequences=True, reset_after=False),
                              keras.layers.GRU(4, reset_after=False)])
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    gru = grufast.GRU.from_keras(model)
    assert gru.num_layers == 3 and not gru.linear_before_reset
    y, h_n = gru(x)
    close(y[:, -1], keras_numpy(model(x)), "last output")


def test_what_does_not_import_is_refused():
    keras.utils.set_random_seed(4)
    x = np.zeros((1, 5, 3), np.float32)
    for mode in ["sum", "mul", "ave", None]:
        bi = keras.layers.Bidirectional(keras.layers.GRU(2, return_sequences=True),
                                        merge_mode=mode)
        bi(x)
        with pytest.raises(ValueError, match=f"merge_mode={mode!r}"):
            grufast.GRU.from_keras(bi)
    masked = keras.Sequential([keras.Input((5, 3)), keras.layers.Masking(0.0),
                               keras.layers.GRU(2)])
    with pytest.raises(ValueError, match="Masking layer .* mask="):
        grufast.GRU.from_keras(masked)
    dense = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(2), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="Dense layer"):
        grufast.GRU.from_keras(dense)
    mixed = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(2, return_sequences=True),
                              keras.layers.GRU(3)])
    with pytest.raises(ValueError, match="differ in"):
        grufast.GRU.from_keras(mixed)
    directions = keras.Sequential([keras.Input((5, 3)),
                                   keras.layers.GRU(2, return_sequences=True),
                                   keras.layers.GRU(2, go_backwards=True)])
    with pytest.raises(ValueError, match="different directions"):
        grufast.GRU.from_keras(directions)
    # Each go_backwards layer hands the next its sequence in reversed time, so the second
    # runs forward over the input's steps; imported as reverse=True it was silently wrong.
    backwards = keras.Sequential([keras.Input((5, 3)),
                                  keras.layers.GRU(2, return_sequences=True, go_backwards=True),
                                  keras.layers.GRU(2, go_backwards=True)])
    with pytest.raises(ValueError, match="a stack of 2 go_backwards GRUs"):
        grufast.GRU.from_keras(backwards)
    with pytest.raises(TypeError, match="keras.layers.GRU"):
        grufast.GRU.from_keras(keras.layers.Dense(3))
    inp = keras.Input((5, 3))
    side = keras.layers.GRU(2, return_sequences=True)(inp)  # two GRUs on the same input
    out = keras.layers.GRU(2, return_sequences=True)(inp)
    branched = keras.Model(inp, [side, out])
    with pytest.raises(ValueError, match="not a plain chain"):
        grufast.GRU.from_keras(branched)


def test_mask_argument_is_checked():
    gru = grufast.GRU(3, 2, batch_first=True).eval()
    x = np.zeros((2, 4, 3), np.float32)
    with pytest.raises(ValueError, match="not both"):
        gru(x, lengths=[4, 4], mask=MASK)
    with pytest.raises(TypeError, match="mask must be an array of bools"):
        gru(x, mask=MASK.astype(int))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(2, 4\)"):
        gru(x, mask=MASK[:, :3])
    prefix = np.arange(4)[None, :] < np.array([[4], [2]])
    np.testing.assert_array_equal(gru(x + 1, mask=prefix)[0], gru(x + 1, lengths=[4, 2])[0])


def test_mask_backward_matches_the_packed_sequences():
    """Gradients through a masked forward equal those of the valid steps run alone."""
    gru = grufast.GRU(3, 4, 2, bidirectional=True, batch_first=True, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3))
    dy = rng.standard_normal((2, 4, 8))
    y, h_n = gru(x, mask=MASK)
    dx, dh0 = gru.backward(dy)
    grads = {k: v.copy() for k, v in gru.grads.items()}
    for b in range(2):
        gru.zero_grad()
        keep = MASK[b]
        yb, hb = gru(x[b:b + 1, keep])
        np.testing.assert_allclose(y[b, keep], yb[0], atol=1e-12)
        np.testing.assert_allclose(h_n[:, b], hb[:, 0], atol=1e-12)
        dxb, _ = gru.backward(dy[b:b + 1, keep])
        np.testing.assert_allclose(dx[b, keep], dxb[0], atol=1e-12)
        np.testing.assert_array_equal(dx[b, ~keep], 0)
        grads = {k: v - gru.grads[k] for k, v in grads.items()}
    for k, v in grads.items():
        np.testing.assert_allclose(v, 0, atol=1e-12, err_msg=k)
