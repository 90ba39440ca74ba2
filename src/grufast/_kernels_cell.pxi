# One step for one sequence, from Python at the lowest cost: GRUCell's streaming path. Both
# GEMVs and the gate passes in one call, the arrays checked with NumPy's C API.
# See docs/design.md section 4 (Kernels).

cdef void _step1(Py_ssize_t I, Py_ssize_t H, const real* x, real* h, const real* w_ih_t,
                 const real* w_hh_t, const real* b_ih, const real* b_hh, bint lbr,
                 real* work) noexcept nogil:
    """h (H,) <- one GRU step from x (I,), with the transposed weights w_ih_t (I, 3H) and
    w_hh_t (H, 3H); work holds 9H reals (gi, gh, rh, 2 x scratch)."""
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t one = 1
    cdef real* gi = work
    cdef real* gh = work + G
    cdef real* rh = work + 2 * G
    cdef real* s1 = rh + H
    cdef real* s2 = s1 + H
    _gemv_t(G, I, w_ih_t, G, x, gi)
    if lbr:
        _gemv_t(G, H, w_hh_t, G, h, gh)
        _gates_lbr(1, H, 0, H, 0, &one, gi, gh, b_ih, b_hh, h, h, h, H, s1, s2)
    else:
        _gemv_t(2 * H, H, w_hh_t, G, h, gh)
        _gates_rz(1, H, 0, H, 0, &one, gi, gh, b_ih, b_hh, h, rh, s2)
        _gemv_t(H, H, w_hh_t + 2 * H, G, rh, gh + 2 * H)
        _gates_n(1, H, 0, H, 0, &one, gi, gh, b_ih, b_hh, h, h, h, H, s1, s2)


cdef inline bint _is_vector(object a, int typenum, Py_ssize_t n):
    return (cnp.PyArray_CheckExact(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == 1
            and cnp.PyArray_DIM(<cnp.ndarray>a, 0) == n
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a))


cdef class CellPlan:
    """A GRU cell's parameters held for one-sequence steps from Python.

    ``step(x, h)`` takes x (I,) and h (H,) or None as C-contiguous arrays of the parameters'
    dtype and returns the new state (H,); for anything else it returns None and the caller
    takes the general path. It holds the transposed weights w_ih_t (I, 3H) and w_hh_t
    (H, 3H) (the owner builds a new plan when the weights change) and allocates its
    scratch per call: nothing mutable is shared.
    """

    cdef cnp.ndarray w_ih_t, w_hh_t, b_ih, b_hh
    cdef Py_ssize_t n_in, n_hidden  # not I: complex.h defines a macro of that name
    cdef bint lbr
    cdef int typenum

    def __init__(self, cnp.ndarray w_ih_t, cnp.ndarray w_hh_t, cnp.ndarray b_ih,
                 cnp.ndarray b_hh, bint linear_before_reset):
        for a in (w_ih_t, w_hh_t, b_ih, b_hh):
            if not cnp.PyArray_IS_C_CONTIGUOUS(a) or a.dtype != w_ih_t.dtype:
                raise ValueError("CellPlan needs C-contiguous parameters of one dtype")
        if w_ih_t.dtype not in (np.float32, np.float64):
            raise TypeError("CellPlan needs float32 or float64 parameters")
        self.w_ih_t, self.w_hh_t, self.b_ih, self.b_hh = w_ih_t, w_hh_t, b_ih, b_hh
        self.n_in = w_ih_t.shape[0]
        self.n_hidden = w_hh_t.shape[0]
        self.lbr = linear_before_reset
        self.typenum = cnp.PyArray_TYPE(w_ih_t)

    def step(self, x, h):
        cdef cnp.npy_intp dim = self.n_hidden
        cdef Py_ssize_t I = self.n_in, H = self.n_hidden
        cdef size_t size = cnp.PyArray_ITEMSIZE(self.w_ih_t)
        cdef cnp.ndarray out
        cdef void* work
        if not _is_vector(x, self.typenum, I):
            return None
        if h is not None and not _is_vector(h, self.typenum, H):
            return None
        out = cnp.PyArray_EMPTY(1, &dim, self.typenum, 0)
        if h is None:
            memset(cnp.PyArray_DATA(out), 0, H * size)
        else:
            memcpy(cnp.PyArray_DATA(out), cnp.PyArray_DATA(<cnp.ndarray>h), H * size)
        work = malloc(9 * H * size)
        if work == NULL:
            raise MemoryError()
        with nogil:
            if self.typenum == cnp.NPY_FLOAT32:
                _step1(I, H, <const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                       <float*>cnp.PyArray_DATA(out),
                       <const float*>cnp.PyArray_DATA(self.w_ih_t),
                       <const float*>cnp.PyArray_DATA(self.w_hh_t),
                       <const float*>cnp.PyArray_DATA(self.b_ih),
                       <const float*>cnp.PyArray_DATA(self.b_hh), self.lbr, <float*>work)
            else:
                _step1(I, H, <const double*>cnp.PyArray_DATA(<cnp.ndarray>x),
                       <double*>cnp.PyArray_DATA(out),
                       <const double*>cnp.PyArray_DATA(self.w_ih_t),
                       <const double*>cnp.PyArray_DATA(self.w_hh_t),
                       <const double*>cnp.PyArray_DATA(self.b_ih),
                       <const double*>cnp.PyArray_DATA(self.b_hh), self.lbr, <double*>work)
        free(work)
        return out
