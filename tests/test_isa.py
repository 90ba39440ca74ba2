"""GRUFAST_ISA: valid values cap the kernels' build; an unknown one warns, naming the valid
values, and is ignored rather than stopping the import."""

import os
import pathlib
import subprocess
import sys
import warnings

import pytest

import grufast
from grufast import _isa, _kernels


@pytest.mark.parametrize("value", ["sse9", "AVX-512", "native"])
def test_unknown_value_warns_naming_the_valid_ones(monkeypatch, value):
    monkeypatch.setenv("GRUFAST_ISA", value)
    with pytest.warns(RuntimeWarning, match=r"GRUFAST_ISA=.*baseline, avx2, avx512") as rec:
        chosen = _isa.select()
    assert repr(value) in str(rec[0].message)
    monkeypatch.delenv("GRUFAST_ISA")
    assert chosen is _isa.select()  # ignored: the same build as with no cap


@pytest.mark.parametrize("value", ["", "baseline", "Baseline", " avx2 ", "avx512"])
def test_valid_values_do_not_warn(monkeypatch, value):
    monkeypatch.setenv("GRUFAST_ISA", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chosen = _isa.select()
    assert chosen in _isa.runnable()
    if value.strip().lower() == "baseline":
        assert chosen is _kernels


def test_cap_limits_the_build(monkeypatch):
    monkeypatch.setenv("GRUFAST_ISA", "avx2")
    features = _isa.cpu_features()
    has_avx2 = features.get("AVX2") and features.get("FMA3")
    expected = "grufast._kernels_avx2" if has_avx2 else "grufast._kernels"
    assert _isa.select().__name__ == expected


def test_import_with_unknown_value_warns_and_works():
    src = str(pathlib.Path(grufast.__file__).resolve().parents[1])
    env = dict(os.environ, GRUFAST_ISA="bogus", PYTHONPATH=src)
    out = subprocess.run(
        [sys.executable, "-c", "import grufast._isa as i; print(i.kernels.__name__)"],
        env=env, capture_output=True, text=True, timeout=120, check=True)
    assert "GRUFAST_ISA='bogus' is not one of baseline, avx2, avx512" in out.stderr
    assert out.stdout.strip().startswith("grufast._kernels")


@pytest.mark.parametrize("user", [{}, {"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "ACTIVE"}])
def test_libgomp_settings_are_set_only_while_loading_and_only_if_unset(user):
    """grufast loads libgomp with OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=10000 (a short
    spin, then sleep) unless the user set either; afterwards the environment is the user's
    again, for libraries loaded later. libgomp's own report (OMP_DISPLAY_ENV) shows what it
    read."""
    src = str(pathlib.Path(grufast.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(user, PYTHONPATH=src, OMP_DISPLAY_ENV="VERBOSE")
    code = ("import os, grufast._isa as i; print('AFTER', os.environ.get('GOMP_SPINCOUNT'), "
            "os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert f"AFTER {user.get('GOMP_SPINCOUNT')} {user.get('OMP_WAIT_POLICY')}" in out.stdout
    shown = out.stderr + out.stdout
    if not user:
        assert "GOMP_SPINCOUNT = '10000'" in shown and "OMP_WAIT_POLICY = 'PASSIVE'" in shown
    elif "GOMP_SPINCOUNT" in user:
        assert "GOMP_SPINCOUNT = '5'" in shown
    else:
        assert "OMP_WAIT_POLICY = 'ACTIVE'" in shown and "GOMP_SPINCOUNT = '10000'" not in shown
