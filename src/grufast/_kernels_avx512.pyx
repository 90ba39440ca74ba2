# cython: language_level=3
"""grufast._kernels built for AVX-512 (F, VL, BW, DQ) + FMA: the same source
(_kernels_impl.pxi), imported by grufast._isa only on CPUs that have these instructions.
See grufast._kernels."""

include "_kernels_impl.pxi"
