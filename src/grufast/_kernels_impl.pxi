# The kernels' implementation, compiled once per instruction set: _kernels.pyx (baseline
# x86-64 / any CPU), _kernels_avx2.pyx (AVX2 + FMA) and _kernels_avx512.pyx include this file.
# It declares what the parts share and includes them, one concern per file:
#   _kernels_threads.pxi       thread queries, spinning barrier (_threads.h), plan_threads
#   _kernels_gates.pxi         the fused gate passes, forward and backward
#   _kernels_forward.pxi       the forward loops and ``forward``
#   _kernels_backward.pxi      the backward loops and ``backward``
#   _kernels_weight_grads.pxi  dx and the weight gradients, after the backward recurrence
#   _kernels_cell.pxi          CellPlan, one step for one sequence (GRUCell)
#   _quantized_kernels.pxi     int8 / bf16 recurrent products (grufast.quantized)
# See docs/design.md section 4 (Kernels).


cimport numpy as cnp
import numpy as np
from libc.string cimport memcpy, memset

from grufast._types cimport real
from grufast._blas cimport fill, gemm_rm
from grufast._gemm cimport (LINE_BYTES, PANEL, aligned_free, aligned_malloc,
                            gemm_pack_buffer, pack_column_panels, pack_gemm_weights,
                            pack_panels, packed_gemm, panel_gemv, panel_gemv_ex, panel_size,
                            prepacked_gemm, prepacked_gemm_columns, small_gemm, small_gemm_tn)
from grufast._activations cimport (exp_approx, exp_limits, exp_neg2abs, sigmoid, tanh_approx,
                                   tanh_from_exp)
from cython.parallel cimport parallel, prange

cnp.import_array()

# Where the kernels' arrays start: a cache line (LINE_BYTES, _gemm.pxd). NumPy's allocator
# gives 16 bytes, and an array 16 bytes off a 32-byte boundary makes every other AVX2 load
# (every AVX-512 load) straddle two lines: one sequence at H = 64 took 1.13x the time in the
# processes (18 of 24) whose W_hh panels fell there (AVX2 build, one core).
align_bytes = LINE_BYTES  # for grufast._buffers


def aligned_array(shape, dtype, cnp.ndarray buf=None):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` whose data starts on
    a LINE_BYTES boundary, in a new allocation LINE_BYTES larger, or in ``buf`` (1-D
    uint8, the pool's: the array starts at its first boundary, and buf must hold it from
    there). The array keeps its allocation alive (its base). 0.16 us (np.empty: 0.11);
    through NumPy's Python API (slice, view, reshape) it took 2 us."""
    cdef cnp.dtype descr = np.dtype(dtype)
    cdef cnp.npy_intp dims[32]
    cdef cnp.npy_intp size
    cdef int nd = len(shape), i
    cdef Py_ssize_t nbytes = descr.itemsize
    if nd > 32:
        raise ValueError(f"at most 32 dimensions, got {nd}")
    for i in range(nd):
        dims[i] = shape[i]
        if dims[i] < 0:
            raise ValueError(f"negative dimension in shape {tuple(shape)}")
        nbytes *= dims[i]
    if buf is None:
        size = nbytes + LINE_BYTES
        buf = cnp.PyArray_EMPTY(1, &size, cnp.NPY_UINT8, 0)
    elif cnp.PyArray_TYPE(buf) != cnp.NPY_UINT8 or cnp.PyArray_NDIM(buf) != 1 or \
            not cnp.PyArray_IS_C_CONTIGUOUS(buf):
        raise ValueError("buf must be a contiguous 1-D uint8 array")
    cdef char* data = <char*>cnp.PyArray_DATA(buf)
    cdef Py_ssize_t off = (LINE_BYTES - <size_t>data % LINE_BYTES) % LINE_BYTES
    if off + nbytes > cnp.PyArray_SIZE(buf):
        raise ValueError(f"buf holds {cnp.PyArray_SIZE(buf)} bytes, {off + nbytes} needed")
    cdef cnp.ndarray out = cnp.PyArray_SimpleNewFromData(nd, dims, descr.type_num, data + off)
    cnp.set_array_base(out, buf)
    return out


def aligned_empty(Py_ssize_t n, dtype):
    """aligned_array((n,), dtype): the packed weight copies."""
    return aligned_array((n,), dtype)


cdef struct Dims:
    # One call's shape and flags. Not ``I``: complex.h defines a macro of that name.
    Py_ssize_t T, B, n_in, H    # steps, sequences, input features, hidden units
    Py_ssize_t ldy              # row stride of y (forward) or dy (backward)
    bint reverse                # t = T-1 ... 0
    bint lbr                    # linear_before_reset
    bint accumulate             # backward: add to the weight and bias gradients
    bint dx_accumulate          # backward: add to dx


# The arrays of one call, as the ``def`` entry points receive them. The pointers are untyped
# because a struct cannot hold a fused type: every kernel casts them to its own ``real``,
# which the entry point fixed from the arrays' dtype. NULL where the docstrings say None.
cdef struct ForwardArrays:
    const void* x           # (T, B, I)
    const void* w_ih        # (3H, I)
    const void* w_ih_pp     # W_ih^T packed for the tiled GEMM (pack_gemm_panels)
    const void* w_hh        # (3H, H)
    const void* w_hh_pp     # W_hh^T packed for the tiled GEMM; NULL unless tiled
    const void* w_hh_p      # W_hh packed in panels (pack_weight_panels); NULL unless read
    const void* b_ih        # (3H,)
    const void* b_hh        # (3H,)
    const Py_ssize_t* lengths
    void* y                 # (T, B, ldy), this direction's first column
    Py_ssize_t chunk        # steps of input projections in gates
    void* gates             # (chunk, B, 3H)
    bint keep               # the gate passes store r, z, n (and hprev, ghn where given)
    void* hprev             # (T, B, H) or NULL
    void* ghn               # (T, B, H) or NULL
    void* gh                # (B, 3H) scratch
    void* rh                # (B, H) scratch
    void* step_scratch      # (3B, H) scratch


cdef struct BackwardArrays:
    const void* x           # (T, B, I)
    const void* w_ih        # (3H, I)
    const void* w_hh        # (3H, H)
    const void* w_hh_cp     # W_hh's columns packed in panels (pack_weight_columns), GEMVs
    const Py_ssize_t* lengths
    const void* gates       # (T, B, 3H): r, z, n of every step
    const void* hprev       # (T, B, H)
    const void* ghn         # (T, B, H) or NULL
    const void* dy          # (T, B, ldy), this direction's first column, or NULL
    const void* dy_zero     # (B, H) zeros, read in place of a missing dy
    void* dx                # (T, B, I)
    void* dw_ih             # (3H, I)
    void* dw_hh             # (3H, H)
    void* db_ih             # (3H,) or NULL
    void* db_hh             # (3H,) or NULL
    void* dG                # (T, B, 3H) scratch: the gates' gradients of every step
    void* dG_transposed     # (3H, T*B) scratch, multi-threaded backward only
    void* dgh               # (max(B, 2), 3H) scratch
    void* ds                # (B, H) scratch or NULL
    void* work              # (T, B, H) scratch or NULL


include "_kernels_threads.pxi"
include "_kernels_gates.pxi"
include "_kernels_forward.pxi"
include "_kernels_weight_grads.pxi"
include "_kernels_backward.pxi"
include "_kernels_cell.pxi"
include "_quantized_kernels.pxi"
