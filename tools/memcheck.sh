#!/usr/bin/env bash
# Run the kernel-level tests under valgrind memcheck and report the errors valgrind counts in
# grufast's own code (frames in _kernels*.so). CPython, NumPy and OpenBLAS are built without
# valgrind annotations; their reports are listed separately and do not fail the run.
# Usage: tools/memcheck.sh [pytest arguments]   (needs valgrind and the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
tests=(tests/test_kernels.py tests/test_functional_validation.py tests/test_activations.py
       "tests/test_robustness.py::test_empty_and_unit_sizes_behave_as_documented"
       "tests/test_robustness.py::test_nan_stays_in_its_sequence"
       tests/test_layer_torch.py::test_step_equals_full_forward)
[ $# -gt 0 ] && tests=("$@")
# The tests' own verdict is kept, reported after valgrind's, and fails the run too.
status=0
PYTHONMALLOC=malloc OPENBLAS_NUM_THREADS=1 HYPOTHESIS_PROFILE=dev \
  valgrind --tool=memcheck --num-callers=30 --track-origins=no --leak-check=no \
  --log-file="$log" \
  "$(python -c "import sys; print(sys.executable)")" -m pytest -q -p no:cacheprovider -W ignore \
    "${tests[@]}" || status=$?
total=$(grep -c "^==[0-9]*== [A-Z][a-z].*\(Invalid\|uninitialised\|Mismatched\|overlap\)" "$log" || true)
ours=$(awk '/^==[0-9]+== [A-Z]/{inerr=1; hit=0} inerr && /_kernels/{hit=1} /^==[0-9]+== $/{if(inerr && hit) n++; inerr=0} END{print n+0}' "$log")
echo "valgrind memcheck: $(grep 'ERROR SUMMARY' "$log" | tail -1 | sed 's/^==[0-9]*== //')"
echo "errors with a grufast kernel frame: $ours (all memcheck error reports: $total)"
if [ "$ours" -gt 0 ]; then  # the first report with a grufast frame
  awk '/^==[0-9]+== [A-Z]/{blk=""; inerr=1; hit=0} inerr{blk=blk $0 "\n"} inerr && /_kernels/{hit=1}
       /^==[0-9]+== $/{if(inerr && hit){printf "%s", blk; exit} inerr=0}' "$log" | head -25
fi
if [ -n "${MEMCHECK_LOG:-}" ]; then cp "$log" "$MEMCHECK_LOG"; fi
rm -f "$log"
echo "pytest under valgrind: exit status $status"
[ "$ours" -eq 0 ]
[ "$status" -eq 0 ]
