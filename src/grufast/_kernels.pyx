# cython: language_level=3
"""The GRU recurrence for one layer and one direction: forward and backward loops.

Kernels trust their inputs: shapes, dtypes and contiguity are checked once by the Python
callers (grufast.functional, grufast.layers). Every buffer, scratch included, is allocated by
the caller, so the loops allocate nothing and run without the GIL.

Layout: row-major, time-major. Gate blocks are stacked r, z, n (PyTorch order), G = 3H.
A step t is valid for sequence b when t < lengths[b]; invalid steps output zeros and leave
the state unchanged (packed-sequence semantics, both directions).
"""

include "_kernels_impl.pxi"
