# cython: language_level=3
"""The one fused floating type every kernel is specialised over."""

ctypedef fused real:
    float
    double
