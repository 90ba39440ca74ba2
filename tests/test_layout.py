"""The shared call-layout objects (grufast._layout): built once, never writable."""

import numpy as np
import pytest

from grufast._layout import SequenceLayout, full_lengths, layout_of


@pytest.mark.parametrize("B, T", [(1, 1), (3, 100), (1024, 7), (1025, 7)])
def test_full_lengths_are_all_T_and_cannot_be_written(B, T):
    lens = full_lengths(B, T)
    assert lens.dtype == np.intp and lens.shape == (B,) and np.all(lens == T)
    with pytest.raises(ValueError, match="read-only"):
        lens[0] = 0  # a shared array written by one call would change the next call's
    assert (full_lengths(B, T) is lens) == (B <= 1024)


def test_layouts_are_shared_and_equal_to_new_ones():
    for bf in (False, True):
        for ub in (False, True):
            assert layout_of(bf, ub) is layout_of(bf, ub)
            assert layout_of(bf, ub) == SequenceLayout(bf, ub)
