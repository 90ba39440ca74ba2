"""Mutation check of the Python layer: plant plausible bugs one at a time and see which the
tests catch.

Each mutation is a named (file, exact old snippet, new snippet) triple. For each, the script
copies the tree's src/ and tests/ into a temporary directory once, rewrites the one file,
runs the test files that cover it (``pytest -x -q``, hypothesis profile "mutation": fixed
examples, so the counts repeat), and restores the file. A mutation whose snippet is gone
(the code moved on) is reported "not applicable" rather than failing the run: update it.

Usage:
    python tools/mutate.py               all mutations; exit status 1 if any survives
    python tools/mutate.py --list        names and descriptions
    python tools/mutate.py --only NAME   one mutation (repeatable)
    python tools/mutate.py --tests DIR   run another tests/ directory (e.g. an older one)

Needs the test dependencies and built kernels in src/grufast (the copy keeps the .so files).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutation(NamedTuple):
    name: str
    file: str  # relative to src/grufast
    old: str
    new: str
    what: str
    equivalent: str = ""  # why the behaviour is unchanged, for an equivalent mutant


# Test files per mutated module, the quickest likely killer first.
TESTS = {
    "layers.py": ["test_layer_behaviour.py", "test_layer_torch.py", "test_robustness.py",
                  "test_interop.py", "test_fuzz.py"],
    "functional.py": ["test_layer_behaviour.py", "test_functional_validation.py",
                      "test_kernels.py", "test_robustness.py", "test_oracle_torch.py",
                      "test_fuzz.py"],
    "io.py": ["test_layer_behaviour.py", "test_interop.py"],
    "interop/torch.py": ["test_layer_behaviour.py", "test_layer_torch.py", "test_interop.py"],
    "interop/onnx.py": ["test_interop.py", "test_layer_behaviour.py"],
    "interop/keras.py": ["test_interop.py", "test_layer_behaviour.py"],
    "_validate.py": ["test_layer_behaviour.py", "test_functional_validation.py",
                     "test_robustness.py", "test_fuzz.py"],
}

# Slow tests that watch the kernels, not the Python layer: no mutation here can reach them.
DESELECT = ["--deselect", "tests/test_robustness.py::test_repeated_calls_do_not_grow_memory",
            "--deselect",
            "tests/test_robustness.py::test_long_sequence_float32_stays_close_to_float64"]

MUTATIONS = [
    # -- the eight survivors of the audit --------------------------------------
    Mutation("dropout_never_drops", "layers.py",
             "keep = self._rng.random(out.shape) >= self.dropout",
             "keep = self._rng.random(out.shape) >= 0.0",
             "dropout keeps every unit"),
    Mutation("dropout_no_rescale", "layers.py",
             "mask = keep.astype(self.dtype) / self.dtype.type(1 - self.dropout)",
             "mask = keep.astype(self.dtype)",
             "dropout without the 1/(1-p) rescale of kept units"),
    Mutation("stale_weights_after_load", "_parameters.py",
             "self._prepared.clear()", "pass",
             "load_state_dict keeps the transposed copies of the old weights"),
    Mutation("from_torch_ignores_eval", "interop/torch.py",
             "return gru.train(module.training)", "return gru",
             "from_torch returns train mode for a module in eval mode"),
    Mutation("load_returns_train_mode", "io.py",
             "return model.eval() if isinstance(model, GRU) else model", "return model",
             "load() returns a GRU in train mode"),
    Mutation("layer_nan_padding_kept", "layers.py",
             "                x = x.copy()\n"
             "                x[np.arange(T)[:, None] >= lens[None, :]] = 0",
             "                pass",
             "the layer no longer zeroes padding before a training forward"),
    Mutation("init_one_over_h", "layers.py",
             "k = 1.0 / np.sqrt(hidden_size)", "k = 1.0 / hidden_size",
             "initialisation in +-1/H instead of +-1/sqrt(H)"),
    Mutation("integer_x_rejected", "_validate.py",
             'if arr.dtype.kind not in "fiu":', 'if arr.dtype.kind not in "f":',
             "integer arrays refused as inputs"),
    # -- more plausible bugs -------------------------------------------------------------
    Mutation("functional_nan_padding_kept", "functional.py",
             "            x = x.copy()\n"
             "            x[np.arange(T)[:, None] >= lens[None, :]] = 0",
             "            pass",
             "gru_forward no longer zeroes padding before a training forward"),
    Mutation("dropout_in_eval", "layers.py",
             "if self.training and self.dropout > 0 and k < self.num_layers - 1:",
             "if self.dropout > 0 and k < self.num_layers - 1:",
             "dropout applied in eval mode too"),
    Mutation("dropout_after_last_layer", "layers.py",
             "if self.training and self.dropout > 0 and k < self.num_layers - 1:",
             "if self.training and self.dropout > 0:",
             "dropout on the last layer's output too"),
    Mutation("dropout_mask_not_in_backward", "layers.py",
             'dx *= tape["masks"][k - 1]', "pass",
             "backward ignores the dropout masks"),
    Mutation("batch_first_output_not_transposed", "layers.py",
             "            y = np.ascontiguousarray(y.transpose(1, 0, 2))\n        return y, h_n",
             "            y = np.ascontiguousarray(y)\n        return y, h_n",
             "batch_first output returned time-major"),
    Mutation("reverse_dx_overwrites", "layers.py",
             'backward_into(caches[d], dy, d * H, dh[k * D + d], dx, d == 1,',
             'backward_into(caches[d], dy, d * H, dh[k * D + d], dx, False,',
             "the reverse direction's dx overwrites the forward direction's"),
    Mutation("grads_do_not_accumulate", "layers.py",
             'g.get("bias_ih" + sfx), g.get("bias_hh" + sfx), accumulate=True)',
             'g.get("bias_ih" + sfx), g.get("bias_hh" + sfx), accumulate=False)',
             "parameter gradients overwritten by each backward"),
    Mutation("zero_grad_noop", "layers.py", "g.fill(0)", "pass",
             "zero_grad leaves the gradients"),
    Mutation("eval_stays_training", "layers.py",
             "return self.train(False)", "return self.train(True)",
             "eval() leaves train mode on"),
    Mutation("step_ignores_lbr", "layers.py",
             "forward_into(inp, self._layer_weights(f\"_l{k}\"), state[k], lens, False,\n"
             "                         self.linear_before_reset, False, out, 0)",
             "forward_into(inp, self._layer_weights(f\"_l{k}\"), state[k], lens, False,\n"
             "                         True, False, out, 0)",
             "GRU.step always uses linear_before_reset=True"),
    Mutation("cell_plan_ignores_lbr", "layers.py",
             "w.b_ih, w.b_hh,\n                                      self.linear_before_reset)",
             "w.b_ih, w.b_hh,\n                                      True)",
             "GRUCell's fast path always uses linear_before_reset=True"),
    Mutation("cell_slow_path_ignores_lbr", "layers.py",
             "False, self.linear_before_reset, False, out, 0)\n"
             "        return state[0] if unbatched else state",
             "False, True, False, out, 0)\n"
             "        return state[0] if unbatched else state",
             "GRUCell's general path always uses linear_before_reset=True"),
    Mutation("state_dict_returns_references", "layers.py",
             "return {name: p.copy() for name, p in self._params.items()}",
             "return {name: p for name, p in self._params.items()}",
             "state_dict hands out the live parameters"),
    Mutation("dropout_upper_bound_open", "layers.py",
             "if not 0 <= dropout < 1:", "if not 0 <= dropout <= 1:",
             "dropout=1 accepted (every unit dropped, division by zero)"),
    Mutation("eval_zeroes_padding_too", "layers.py",
             "if self.training and np.any(lens < T):", "if np.any(lens < T):",
             "padding zeroed in inference too",
             equivalent="padding never reaches inference outputs; only a copy is saved"),
    Mutation("functional_bias_grads_without_bias", "functional.py",
             "db_ih = np.empty(3 * H, dtype) if c.has_bias else None",
             "db_ih = np.empty(3 * H, dtype)",
             "gru_backward returns a b_ih gradient for a forward without biases"),
    Mutation("functional_h0_aliased", "functional.py",
             'h = np.array(shaped("h0", real_array("h0", h0, dtype), (B, H), "(B, H)"), '
             'order="C")',
             'h = shaped("h0", real_array("h0", h0, dtype), (B, H), "(B, H)")',
             "gru_forward writes h_n into the caller's h0"),
    Mutation("functional_lengths_default_short", "functional.py",
             "lens = np.full(B, T, dtype=np.intp)\n    else:\n        lens = lengths_array("
             "lengths, B, T)\n        if training",
             "lens = np.full(B, max(T - 1, 0), dtype=np.intp)\n    else:\n        lens = "
             "lengths_array(lengths, B, T)\n        if training",
             "without lengths, the last step is dropped"),
    Mutation("io_load_skips_weights", "io.py",
             "    model.load_state_dict(arrays)\n", "",
             "load() returns freshly initialised weights"),
    Mutation("io_allow_pickle", "io.py",
             "os.fspath(path), allow_pickle=False)", "os.fspath(path), allow_pickle=True)",
             "load() unpickles object arrays"),
    Mutation("torch_ignores_batch_first", "interop/torch.py",
             "module.batch_first, float(module.dropout)", "False, float(module.dropout)",
             "from_torch drops batch_first"),
    Mutation("torch_ignores_dropout", "interop/torch.py",
             "module.batch_first, float(module.dropout)", "module.batch_first, 0.0",
             "from_torch drops dropout"),
    Mutation("onnx_lbr_default_one", "interop/onnx.py",
             'lbr=bool(a.get("linear_before_reset", 0))',
             'lbr=bool(a.get("linear_before_reset", 1))',
             "from_onnx reads a node without linear_before_reset as lbr=1 (ONNX's default 0)"),
    Mutation("onnx_bias_halves_swapped", "interop/onnx.py",
             'state["bias_ih" + sfx] = zrn_to_rzn(b[:3 * H])\n'
             '                state["bias_hh" + sfx] = zrn_to_rzn(b[3 * H:])',
             'state["bias_ih" + sfx] = zrn_to_rzn(b[3 * H:])\n'
             '                state["bias_hh" + sfx] = zrn_to_rzn(b[:3 * H])',
             "from_onnx swaps Wb and Rb"),
    Mutation("keras_bias_on_recurrent_side", "interop/keras.py",
             'state["bias_ih_l0"], state["bias_hh_l0"] = zrn_to_rzn(bias), np.zeros(3 * H)',
             'state["bias_ih_l0"], state["bias_hh_l0"] = np.zeros(3 * H), zrn_to_rzn(bias)',
             "Keras reset_after=False bias put on the recurrent side",
             equivalent="with linear_before_reset=False every bias adds outside the reset "
                        "product: b_ih + b_hh is all that matters"),
    Mutation("lengths_past_t_accepted", "_validate.py",
             "arr.max() > steps", "arr.max() > steps + 1",
             "lengths of T + 1 accepted"),
    Mutation("fractional_lengths_accepted", "_validate.py",
             "np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))",
             "np.all(np.isfinite(arr))",
             "lengths of 2.5 accepted (truncated)"),
    Mutation("zero_size_accepted", "_validate.py",
             "if value <= 0:", "if value < 0:",
             "hidden_size=0 accepted"),
]


def _copy_tree(tests_dir: str, dst: str) -> None:
    shutil.copytree(os.path.join(ROOT, "src"), os.path.join(dst, "src"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    shutil.copytree(tests_dir, os.path.join(dst, "tests"),
                    ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), dst)


def run_one(m: Mutation, work: str) -> tuple[str, str, float]:
    """(status, detail, seconds): status killed, survived or not applicable."""
    path = os.path.join(work, "src", "grufast", m.file)
    with open(path) as f:
        original = f.read()
    count = original.count(m.old)
    if count != 1:
        return "not applicable", f"snippet found {count} times in {m.file}", 0.0
    tests = [os.path.join("tests", t) for t in TESTS[m.file]
             if os.path.exists(os.path.join(work, "tests", t))]
    env = dict(os.environ, PYTHONPATH=os.path.join(work, "src"),
               HYPOTHESIS_PROFILE="mutation", KERAS_BACKEND="torch")
    start = time.perf_counter()
    try:
        with open(path, "w") as f:
            f.write(original.replace(m.old, m.new))
        # One pytest per test file, the likeliest killer first, until one fails: collecting
        # every file first would import every oracle (torch, keras, onnx) for each mutant.
        for test in tests:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                 "-W", "ignore", *DESELECT, test], cwd=work, env=env, capture_output=True,
                text=True)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0:
                failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
                detail = failed[0] if failed else (lines[-1] if lines else proc.stderr[-200:])
                return "killed", detail, time.perf_counter() - start
    finally:
        with open(path, "w") as f:
            f.write(original)
    return "survived", f"{len(tests)} test files pass", time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only these")
    ap.add_argument("--tests", default=os.path.join(ROOT, "tests"),
                    help="the tests directory to run (default: the repository's)")
    args = ap.parse_args(argv)
    if args.list:
        for m in MUTATIONS:
            note = f"  [equivalent: {m.equivalent}]" if m.equivalent else ""
            print(f"{m.name:38} {m.file:18} {m.what}{note}")
        return 0
    chosen = MUTATIONS
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTATIONS}
        if unknown:
            ap.error(f"unknown mutation(s) {sorted(unknown)}; see --list")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    results = []
    with tempfile.TemporaryDirectory() as work:
        _copy_tree(args.tests, work)
        for m in chosen:
            status, detail, seconds = run_one(m, work)
            label = status + (" (equivalent)" if m.equivalent and status == "survived" else "")
            print(f"{m.name:38} {label:22} {seconds:6.1f} s  {detail}", flush=True)
            results.append((m, status))
    survived = [m for m, s in results if s == "survived"]
    plausible = [m for m in survived if not m.equivalent]
    missing = [m for m, s in results if s == "not applicable"]
    print(f"\n{len(results)} mutations: {sum(s == 'killed' for _, s in results)} killed, "
          f"{len(survived)} survived ({len(survived) - len(plausible)} equivalent), "
          f"{len(missing)} not applicable")
    for m in plausible:
        print(f"SURVIVOR {m.name}: {m.what}")
    return 1 if plausible else 0


if __name__ == "__main__":
    sys.exit(main())
