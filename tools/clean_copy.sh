#!/usr/bin/env bash
# Copy a source tree without its build artefacts (build/, generated .c, compiled .so, venvs,
# caches), so that a build in the copy compiles everything afresh: setuptools and Cython
# decide what to rebuild by timestamps alone, not by the flags a file was compiled with.
# Usage: tools/clean_copy.sh SRC DST   (DST is created; it must not exist yet)
set -euo pipefail
src=$1
dst=$2
[ ! -e "$dst" ]
mkdir -p "$dst"
tar -C "$src" -cf - --exclude=.git --exclude='.venv*' --exclude=build --exclude=dist \
  --exclude='*.egg-info' --exclude='*.so' --exclude='*.c' --exclude=__pycache__ \
  --exclude=.hypothesis --exclude=.pytest_cache --exclude=.benchmarks \
  --exclude=src/grufast/_build_info.py . | tar -C "$dst" -xf -
