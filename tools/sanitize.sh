#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the kernels, the AVX-512 build
# included (valgrind cannot run AVX-512 code, so tools/memcheck.sh only sees the AVX2 and
# baseline builds there). Builds the extensions with GRUFAST_SANITIZE=address,undefined in a
# clean temporary copy of the tree (the caller's tree is left alone), then runs the
# kernel-level tests with the sanitizer runtimes preloaded into the uninstrumented Python.
# Any sanitizer report aborts the run and fails it.
# Usage: tools/sanitize.sh [pytest arguments]   (needs gcc, the build and test dependencies)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash "$root/tools/clean_copy.sh" "$root" "$work/tree"
cd "$work/tree"
GRUFAST_SANITIZE=address,undefined python setup.py -q build_ext --inplace >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
# (Read, not imported: importing grufast loads the sanitized kernels, which need the runtime.)
grep -qx "SANITIZE = 'address,undefined'" src/grufast/_build_info.py
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# CPython and NumPy keep memory alive until exit by design: leak reports would be noise.
# Reports go to files: pytest captures stderr, and an aborting process never prints it. Not
# every report honours log_path (gcc 12's UBSan printed a misaligned load to stderr and
# exited 1), so pytest captures at the Python level only (--capture=sys): whatever the
# runtimes write to file descriptor 2 reaches the log.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path=$work/asan
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$work/ubsan
tests=(tests/test_kernels.py tests/test_functional_validation.py tests/test_activations.py
       "tests/test_robustness.py::test_empty_and_unit_sizes_behave_as_documented"
       "tests/test_robustness.py::test_nan_stays_in_its_sequence"
       "tests/test_robustness.py::test_huge_inputs_saturate_the_gates"
       tests/test_layer_torch.py::test_step_equals_full_forward
       tests/test_streaming.py tests/test_quantized.py)
[ $# -gt 0 ] && tests=("$@")
# The CPU's own build runs (AVX-512 where present); test_every_build_matches_the_reference
# also runs every other build the CPU can.
status=0
LD_PRELOAD="$preload" PYTHONPATH=src OPENBLAS_NUM_THREADS=1 \
  python -m pytest -q -p no:cacheprovider -W ignore --capture=sys "${tests[@]}" || status=$?
if compgen -G "$work/*san.*" >/dev/null; then
  echo "sanitizer reports:"
  head -40 "$work"/*san.*
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "pytest under the sanitizers exited with status $status (a report, if any, is above)"
  exit 1
fi
LD_PRELOAD="$preload" PYTHONPATH=src python -c "from grufast import _isa; print('sanitizers \
(address, undefined): no report; builds run:', [m.__name__ for m in _isa.runnable()], \
'(default:', _isa.kernels.__name__ + ')')"
