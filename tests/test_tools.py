"""tools/tile_rate.c, the C micro-benchmark that measures the register tiles against the
core's FMA rate: it compiles against the installed _tiles.h (so a change to the tiles'
interface cannot leave it behind) and, where the CPU runs AVX2, prints both rates; bad
arguments are refused. No timing is asserted."""

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

import grufast
from grufast import _isa
from grufast._bench_hold import cannot_hold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="tile_rate.c is x86-64 code (AVX2 / AVX-512 intrinsics)")
def test_tile_rate_builds_and_runs(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler (the one that builds the kernels) is needed"
    exe = tmp_path / "tile_rate"
    subprocess.run([cc, "-O2", "-mavx2", "-mfma",
                    "-I", os.path.dirname(grufast.__file__),
                    os.path.join(ROOT, "tools", "tile_rate.c"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    features = _isa.cpu_features()
    if not (features.get("AVX2") and features.get("FMA3")):
        return  # built; this CPU cannot run its AVX2 instructions
    out = subprocess.run([str(exe), "16", "48", "8", "0.01"], check=True,
                         capture_output=True, text=True).stdout
    rates = re.findall(r"([0-9.]+) GFLOP/s", out)
    assert len(rates) == 2 and all(float(r) > 0 for r in rates), out
    bad = subprocess.run([str(exe), "15", "48", "8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "multiple of 4" in bad.stderr


@pytest.mark.skipif(cannot_hold() is not None,
                    reason="holding ONNX Runtime needs objdump and a CPU with AVX-512")
def test_ort_hold_check_runs_the_three_products():
    """tools/ort_hold_check.py: the held copy made, and a rate for each of the three (no
    rate asserted: the hold's effect is a measurement, docs/ort_hold_check.txt)."""
    pytest.importorskip("onnxruntime")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ort_hold_check.py"),
                          "--n", "64", "--rounds", "1"], check=True, capture_output=True,
                         text=True).stdout
    assert "FMA3 kernels" in out
    for name in ("onnxruntime as installed", "onnxruntime held", "OpenBLAS, Haswell kernels"):
        (line,) = [ln for ln in out.splitlines() if name in ln]
        assert float(line.split()[-2]) > 0, out
