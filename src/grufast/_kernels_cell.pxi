# One step for one sequence or a small batch, from Python at the lowest cost: the streaming
# path of GRUCell and GRU.step (one plan per layer). The products and the gate passes in
# one call, the arrays checked with NumPy's C API.
# See docs/design.md section 4 (Kernels).

cdef inline void _gate_gemvs(Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t H, Py_ssize_t K,
                             const real* v, const real* w_p, real* out) noexcept nogil:
    """out[k H : (k + 1) H] = v (K,) @ W_k^T for the gates k0 <= k < k1 of W (3H, K) packed
    in panels gate by gate (pack_panels)."""
    cdef Py_ssize_t k
    for k in range(k0, k1):
        panel_gemv(H, K, v, _panels_of(w_p, H, K, k, 0), out + k * H, False)


cdef void _step1(Py_ssize_t I, Py_ssize_t H, const real* x, real* h, const real* w_ih_p,
                 const real* w_hh_p, const real* b_ih, const real* b_hh, bint lbr,
                 real* work) noexcept nogil:
    """h (H,) <- one GRU step from x (I,), with W_ih and W_hh packed in panels (w_ih_p,
    w_hh_p: _panels.h's GEMV, the one-sequence forward's); work holds 9H reals (gi, gh, rh,
    2 x scratch)."""
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t one = 1
    cdef real* gi = work
    cdef real* gh = work + G
    cdef real* rh = work + 2 * G
    cdef real* s1 = rh + H
    cdef real* s2 = s1 + H
    _gate_gemvs(0, 3, H, I, x, w_ih_p, gi)
    if lbr:
        _gate_gemvs(0, 3, H, H, h, w_hh_p, gh)
        _gates_lbr(1, H, 0, H, 0, &one, gi, gh, b_ih, b_hh, h, h, h, H, s1, s2, False)
    else:
        _gate_gemvs(0, 2, H, H, h, w_hh_p, gh)
        _gates_rz(1, H, 0, H, 0, &one, gi, gh, b_ih, b_hh, h, rh, s2, False)
        _gate_gemvs(2, 3, H, H, rh, w_hh_p, gh)
        _gates_n(1, H, 0, H, 0, &one, gi, gh, b_ih, b_hh, h, h, h, H, s1, s2, False)


cdef void _step_rows(Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, const real* x, real* h,
                     const real* w_ih_t, const real* w_hh_t, const real* b_ih,
                     const real* b_hh, bint lbr, const Py_ssize_t* ones,
                     real* work) noexcept nogil:
    """h (B, H) <- one GRU step from x (B, I) for a small batch, the products in the
    register-tiled GEMM (one pass over the weights for all rows, where B single steps make
    B); ones holds B lengths >= 1; work holds 9BH reals."""
    cdef Py_ssize_t G = 3 * H
    cdef real* gi = work
    cdef real* gh = work + B * G
    cdef real* rh = work + 2 * B * G
    cdef real* s1 = rh + B * H
    cdef real* s2 = s1 + B * H
    small_gemm(B, G, I, x, I, w_ih_t, G, gi, G, False)
    if lbr:
        small_gemm(B, G, H, h, H, w_hh_t, G, gh, G, False)
        _gates_lbr(B, H, 0, H, 0, ones, gi, gh, b_ih, b_hh, h, h, h, H, s1, s2, False)
    else:
        small_gemm(B, 2 * H, H, h, H, w_hh_t, G, gh, G, False)
        _gates_rz(B, H, 0, H, 0, ones, gi, gh, b_ih, b_hh, h, rh, s2, False)
        small_gemm(B, H, H, rh, H, w_hh_t + 2 * H, G, gh + 2 * H, G, False)
        _gates_n(B, H, 0, H, 0, ones, gi, gh, b_ih, b_hh, h, h, h, H, s1, s2, False)


# Batches up to this many rows take the plan's path; larger ones the layer's (OpenBLAS
# GEMMs, threads).
cdef enum:
    PLAN_MAX_ROWS = 16


cdef inline size_t _reals_bytes(Py_ssize_t B, Py_ssize_t H, size_t size) noexcept nogil:
    """The bytes of a plan's 9BH scratch reals, rounded up so that the lengths after them
    are aligned."""
    return (9 * B * H * size + 7) // 8 * 8


cdef inline bint _is_plain(object a, int typenum, int ndim):
    """a is an exact ndarray of this dtype and ndim that the kernels can read in place:
    C-contiguous, aligned and in native byte order (the type number alone does not say
    the order: '>f4' and '<f4' share NPY_FLOAT32, and read in place '>f4' gave wrong
    numbers)."""
    return (cnp.PyArray_CheckExact(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a))


cdef inline bint _is_rows(object a, int typenum, int ndim, Py_ssize_t B, Py_ssize_t n):
    """a is _is_plain, shaped (n,) (ndim 1) or (B, n)."""
    if not (_is_plain(a, typenum, ndim)
            and cnp.PyArray_DIM(<cnp.ndarray>a, ndim - 1) == n):
        return False
    return ndim == 1 or cnp.PyArray_DIM(<cnp.ndarray>a, 0) == B


cdef class CellPlan:
    """A GRU cell's parameters held for one-step calls from Python on small batches.

    ``step(x, h)`` takes x (I,) or (B, I) with B <= 16, and h shaped like x's batch, (H,) or
    (B, H), or None, as C-contiguous arrays of the parameters' dtype, and returns the new
    state shaped like h; for anything else it returns None and the caller takes the general
    path. ``stack_step`` runs a stack of plans (GRU.step). A plan holds the transposed
    weights w_ih_t (I, 3H) and w_hh_t (H, 3H) for small batches, and W_ih and W_hh packed
    in panels for one vector (the owner builds a new plan when the weights change); it
    allocates its scratch per call: nothing mutable is shared.
    """

    cdef cnp.ndarray w_ih_t, w_hh_t, b_ih, b_hh, w_ih_p, w_hh_p
    cdef Py_ssize_t n_in, n_hidden  # not I: complex.h defines a macro of that name
    cdef bint lbr
    cdef int typenum
    cdef const void* p_w_ih_t
    cdef const void* p_w_hh_t
    cdef const void* p_w_ih_p
    cdef const void* p_w_hh_p
    cdef const void* p_b_ih
    cdef const void* p_b_hh

    def __init__(self, cnp.ndarray w_ih_t, cnp.ndarray w_hh_t, cnp.ndarray b_ih,
                 cnp.ndarray b_hh, bint linear_before_reset, cnp.ndarray w_ih,
                 cnp.ndarray w_hh_p):
        """w_ih_t (I, 3H), w_hh_t (H, 3H): the transposed weights; w_ih (3H, I) as stored;
        w_hh_p: W_hh packed in panels (pack_weight_panels), shared with the layer's
        forward."""
        for a in (w_ih_t, w_hh_t, b_ih, b_hh, w_ih, w_hh_p):
            if not cnp.PyArray_IS_C_CONTIGUOUS(a) or a.dtype != w_ih_t.dtype:
                raise ValueError("CellPlan needs C-contiguous parameters of one dtype")
        if w_ih_t.dtype not in (np.float32, np.float64):
            raise TypeError("CellPlan needs float32 or float64 parameters")
        if (w_ih.ndim != 2 or w_ih.shape[0] != w_ih_t.shape[1]
                or w_ih.shape[1] != w_ih_t.shape[0]
                or w_hh_p.size != panel_size(3, w_hh_t.shape[0], w_hh_t.shape[0])):
            raise ValueError("CellPlan's w_ih and w_hh_p must match w_ih_t and w_hh_t")
        self.w_ih_t, self.w_hh_t, self.b_ih, self.b_hh = w_ih_t, w_hh_t, b_ih, b_hh
        self.n_in = w_ih_t.shape[0]
        self.n_hidden = w_hh_t.shape[0]
        self.lbr = linear_before_reset
        self.typenum = cnp.PyArray_TYPE(w_ih_t)
        self.p_w_ih_t = cnp.PyArray_DATA(w_ih_t)
        self.p_w_hh_t = cnp.PyArray_DATA(w_hh_t)
        self.p_b_ih = cnp.PyArray_DATA(b_ih)
        self.p_b_hh = cnp.PyArray_DATA(b_hh)
        # One vector's steps read the weights packed in panels (_step1).
        self.w_ih_p = _pack_gate_panels(w_ih)
        self.w_hh_p = w_hh_p
        self.p_w_ih_p = cnp.PyArray_DATA(self.w_ih_p)
        self.p_w_hh_p = cnp.PyArray_DATA(self.w_hh_p)

    @property
    def input_size(self) -> int:
        return self.n_in

    @property
    def hidden_size(self) -> int:
        return self.n_hidden

    cdef void _run(self, Py_ssize_t B, const void* x, void* h, void* work) noexcept nogil:
        """h (B, H) <- one step from x (B, I); work: 9BH reals then B lengths."""
        cdef Py_ssize_t I = self.n_in, H = self.n_hidden, b
        cdef Py_ssize_t* ones
        cdef size_t size = 4 if self.typenum == cnp.NPY_FLOAT32 else 8
        if B == 1:
            if self.typenum == cnp.NPY_FLOAT32:
                _step1(I, H, <const float*>x, <float*>h, <const float*>self.p_w_ih_p,
                       <const float*>self.p_w_hh_p, <const float*>self.p_b_ih,
                       <const float*>self.p_b_hh, self.lbr, <float*>work)
            else:
                _step1(I, H, <const double*>x, <double*>h, <const double*>self.p_w_ih_p,
                       <const double*>self.p_w_hh_p, <const double*>self.p_b_ih,
                       <const double*>self.p_b_hh, self.lbr, <double*>work)
            return
        ones = <Py_ssize_t*>(<char*>work + _reals_bytes(B, H, size))
        for b in range(B):
            ones[b] = 1
        if self.typenum == cnp.NPY_FLOAT32:
            _step_rows(B, I, H, <const float*>x, <float*>h, <const float*>self.p_w_ih_t,
                       <const float*>self.p_w_hh_t, <const float*>self.p_b_ih,
                       <const float*>self.p_b_hh, self.lbr, ones, <float*>work)
        else:
            _step_rows(B, I, H, <const double*>x, <double*>h, <const double*>self.p_w_ih_t,
                       <const double*>self.p_w_hh_t, <const double*>self.p_b_ih,
                       <const double*>self.p_b_hh, self.lbr, ones, <double*>work)

    cdef void* _work(self, Py_ssize_t B) except? NULL:
        cdef size_t size = cnp.PyArray_ITEMSIZE(self.w_ih_t)
        cdef void* work = aligned_malloc(_reals_bytes(B, self.n_hidden, size)
                                         + B * sizeof(Py_ssize_t))
        if work == NULL:
            raise MemoryError()
        return work

    def step(self, x, h):
        """The new state (H,) or (B, H) shaped like h, or None (not a form this path takes)."""
        cdef Py_ssize_t I = self.n_in, H = self.n_hidden, B = 1
        cdef int ndim
        cdef size_t size = cnp.PyArray_ITEMSIZE(self.w_ih_t)
        cdef cnp.npy_intp dims[2]
        cdef cnp.ndarray out
        cdef void* work
        if not cnp.PyArray_CheckExact(x):
            return None
        ndim = cnp.PyArray_NDIM(<cnp.ndarray>x)
        if ndim == 2:
            B = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
            if B < 1 or B > PLAN_MAX_ROWS:
                return None
        elif ndim != 1:
            return None
        if not _is_rows(x, self.typenum, ndim, B, I):
            return None
        if h is not None and not _is_rows(h, self.typenum, ndim, B, H):
            return None
        dims[0] = B
        dims[1] = H
        out = cnp.PyArray_EMPTY(ndim, &dims[2 - ndim], self.typenum, 0)
        if h is None:
            memset(cnp.PyArray_DATA(out), 0, B * H * size)
        else:
            memcpy(cnp.PyArray_DATA(out), cnp.PyArray_DATA(<cnp.ndarray>h), B * H * size)
        work = self._work(B)
        with nogil:
            self._run(B, cnp.PyArray_DATA(<cnp.ndarray>x), cnp.PyArray_DATA(out), work)
        aligned_free(work)
        return out


def stack_step(list plans, x, h):
    """One step through a stack of layers (GRU.step): plans[k] is layer k's CellPlan.

    x (I,) or (B, I) with B <= 16; h None or (L, H) for 1-D x, (L, B, H) for 2-D x, all
    C-contiguous in the plans' dtype. Returns (y, h_new): y (H,) or (B, H), the last
    layer's new state (a copy), h_new shaped like h (L, [B,] H); or None for any other form.
    """
    cdef Py_ssize_t L = len(plans), B = 1, k, H
    cdef CellPlan plan
    cdef CellPlan first = <CellPlan?>plans[0]
    cdef int ndim
    cdef size_t size = cnp.PyArray_ITEMSIZE(first.w_ih_t), row
    cdef cnp.npy_intp dims[3]
    cdef cnp.ndarray state, y
    cdef char* sp
    cdef const void* inp
    cdef void* work
    H = first.n_hidden
    if not cnp.PyArray_CheckExact(x):
        return None
    ndim = cnp.PyArray_NDIM(<cnp.ndarray>x)
    if ndim == 2:
        B = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
        if B < 1 or B > PLAN_MAX_ROWS:
            return None
    elif ndim != 1:
        return None
    if not _is_rows(x, first.typenum, ndim, B, first.n_in):
        return None
    dims[0] = L
    dims[1] = B
    dims[2] = H
    if ndim == 1:
        dims[1] = H
    if h is not None:
        if not _is_plain(h, first.typenum, ndim + 1):
            return None
        for k in range(ndim + 1):
            if cnp.PyArray_DIM(<cnp.ndarray>h, k) != dims[k]:
                return None
    for k in range(L):
        plan = <CellPlan?>plans[k]
        if (plan.n_hidden != H or plan.typenum != first.typenum
                or (k > 0 and plan.n_in != H)):
            raise ValueError("stack_step needs plans of one dtype and hidden size, each "
                             "layer's input size the previous one's hidden size")
    row = B * H * size
    state = cnp.PyArray_EMPTY(ndim + 1, dims, first.typenum, 0)
    sp = <char*>cnp.PyArray_DATA(state)
    if h is None:
        memset(sp, 0, L * row)
    else:
        memcpy(sp, cnp.PyArray_DATA(<cnp.ndarray>h), L * row)
    y = cnp.PyArray_EMPTY(ndim, &dims[1], first.typenum, 0)
    work = first._work(B)
    inp = cnp.PyArray_DATA(<cnp.ndarray>x)
    for k in range(L):
        plan = <CellPlan>plans[k]
        with nogil:
            plan._run(B, inp, sp + k * row, work)
        inp = sp + k * row
    aligned_free(work)
    memcpy(cnp.PyArray_DATA(y), sp + (L - 1) * row, row)
    return y, state
