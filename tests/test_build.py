"""Which build of grufast the suite runs against. CI sets GRUFAST_EXPECT_DEBUG=1 for its
debug-build run and GRUFAST_EXPECT_INSTALLED=1 for its run against the installed wheel; these
tests then prove the run saw that build (a stale release build, or the source tree, fails
them). Without the variables they check only what holds for every build."""

import os
import sysconfig

import numpy as np
import pytest

import grufast
from grufast import _isa

EXPECT_DEBUG = os.environ.get("GRUFAST_EXPECT_DEBUG") == "1"
EXPECT_INSTALLED = os.environ.get("GRUFAST_EXPECT_INSTALLED") == "1"


def _forward_args(b_ih_size: int):
    """A one-step problem (T = B = I = H = 1) for the raw kernel, with b_ih of the given size
    (3 is right; 0 makes the kernel's &b_ih[0] an out-of-range access)."""
    f = np.float64
    return (np.zeros((1, 1, 1), f), np.zeros((3, 1), f), np.zeros(3, f),
            np.zeros((3, 1), f), np.zeros(3, f), np.zeros(48, f), np.zeros(b_ih_size, f),
            np.zeros(3, f),
            np.ones(1, np.intp), False, True, np.zeros((1, 1, 1), f), 0, np.zeros((1, 1), f),
            np.zeros((1, 1, 3), f), False, None, None, np.zeros((1, 3), f),
            np.zeros((1, 1), f), np.zeros((3, 1), f))


def test_every_runnable_build_accepts_the_well_formed_call():
    for build in _isa.runnable():
        build.forward(*_forward_args(3))


def test_every_build_refuses_input_weights_that_disagree_with_x_and_h():
    """The projections read W_ih^T packed with x's input count and h's units, so a w_ih of
    another shape (its packed copy sized to match it) is refused, not read out of bounds."""
    for build in _isa.runnable():
        for shape in ((3, 2), (6, 1)):  # I = 2 for x's 1 input; 3H = 6 for h's 1 unit
            args = list(_forward_args(3))
            args[1], args[2] = np.zeros(shape), np.zeros(shape[0] * shape[1])
            with pytest.raises(ValueError, match=r"w_ih must have shape \(3, 1\)"):
                build.forward(*args)


@pytest.mark.skipif(not EXPECT_DEBUG, reason="runs only on a debug build (CI sets "
                    "GRUFAST_EXPECT_DEBUG=1 after installing one)")
def test_debug_build_is_the_one_running_and_checks_bounds():
    from grufast import _build_info

    assert _build_info.DEBUG is True
    for build in _isa.runnable():  # every ISA build was compiled with boundscheck on
        with pytest.raises(IndexError, match="Out of bounds"):
            build.forward(*_forward_args(0))


@pytest.mark.skipif(not EXPECT_INSTALLED, reason="runs only against an installed package "
                    "(CI sets GRUFAST_EXPECT_INSTALLED=1 for its wheel test)")
def test_installed_package_is_the_one_running():
    site = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    where = os.path.realpath(os.path.dirname(grufast.__file__))
    assert os.path.dirname(where) in site, (where, site)
    from grufast import _build_info

    assert _build_info.DEBUG is False and _build_info.SANITIZE == ""
