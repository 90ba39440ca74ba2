# After the backward recurrence: everything that does not feed it (dx, dW_ih, dW_hh and the
# bias gradients) as large GEMMs over all T*B rows of the gates' gradients dG. Serial: in
# OpenBLAS. Threaded: in the register-tiled GEMM, in the kernels' own threads.
# See docs/design.md section 4 (Kernels).


cdef void _colsum(Py_ssize_t rows, Py_ssize_t cols, const real* a, real* out,
                  bint accumulate) noexcept nogil:
    cdef Py_ssize_t i, j
    if not accumulate:
        fill(out, cols, <real>0)
    for i in range(rows):
        for j in range(cols):
            out[j] = out[j] + a[i * cols + j]


cdef void _transpose_rows(Py_ssize_t g0, Py_ssize_t g1, Py_ssize_t TB, Py_ssize_t G,
                          const real* dG, const real* scale, real* dG_transposed) noexcept nogil:
    """dG_transposed[g, i] = dG[i, g] (times scale[i * G + g - g0] when scale is not NULL) for
    g0 <= g < g1, in blocks of 16 rows of dG, so that each cache line read serves 16 g."""
    cdef Py_ssize_t i0, i, g, n
    for i0 in range(0, TB, 16):
        n = min(16, TB - i0)
        for g in range(g0, g1):
            if scale == NULL:
                for i in range(i0, i0 + n):
                    dG_transposed[g * TB + i] = dG[i * G + g]
            else:
                for i in range(i0, i0 + n):
                    dG_transposed[g * TB + i] = dG[i * G + g] * scale[i * G + g - g0]


cdef void _rowsum(Py_ssize_t rows, Py_ssize_t n, const real* a, real* out,
                  bint accumulate) noexcept nogil:
    cdef Py_ssize_t r, i
    cdef real acc
    for r in range(rows):
        acc = 0
        for i in range(n):
            acc = acc + a[r * n + i]
        out[r] = out[r] + acc if accumulate else acc


cdef void _r_times_h(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t H, const real* gates,
                     const real* hprev, real* work) noexcept nogil:
    """work[i] = r[i] * h[i] for the rows i0 <= i < i1 (T*B rows): what the n rows of W_hh
    multiply without linear_before_reset."""
    cdef Py_ssize_t i, j
    for i in range(i0, i1):
        for j in range(H):
            work[i * H + j] = gates[i * 3 * H + j] * hprev[i * H + j]


cdef void _weight_grads(int p, int nt, barrier_t* bar, const Dims* d,
                        const BackwardArrays* a, const real* dG) noexcept nogil:
    """Thread p of nt, after the recurrence: everything that does not feed it, as GEMMs over
    all TB = T*B rows of dG (TB, 3H) in the register-tiled GEMM, in our threads (OpenBLAS's
    would spin afterwards beside the next parallel loop). dx by rows of TB; the weight
    gradients and bias sums by their rows (gate units), from this thread's rows of
    dG_transposed (3H, TB): the sums over TB then read memory contiguously."""
    cdef Py_ssize_t TB = d.T * d.B, I = d.n_in, H = d.H
    cdef bint accumulate = d.accumulate
    cdef const real* gates = <const real*>a.gates
    cdef const real* hprev = <const real*>a.hprev
    cdef real* dw_ih = <real*>a.dw_ih
    cdef real* dw_hh = <real*>a.dw_hh
    cdef real* db_ih = <real*>a.db_ih
    cdef real* db_hh = <real*>a.db_hh
    cdef real* dG_transposed = <real*>a.dG_transposed
    cdef real* work = <real*>a.work
    cdef Py_ssize_t G = 3 * H, lo, hi
    cdef Py_ssize_t r0 = TB * p // nt, r1 = TB * (p + 1) // nt
    cdef Py_ssize_t g0 = _share(G, nt, p, 4), g1 = _share(G, nt, p + 1, 4)
    # This thread's panel buffer (196 KB); without it the GEMMs read W in place.
    cdef real* pack = <real*>malloc(K_BLOCK * TILE_MAX * sizeof(real))
    packed_gemm(r1 - r0, I, G, dG + r0 * G, G, <const real*>a.w_ih, I,
                <real*>a.dx + r0 * I, I, d.dx_accumulate, pack)
    _transpose_rows(g0, g1, TB, G, dG, NULL, dG_transposed)
    packed_gemm(g1 - g0, I, TB, dG_transposed + g0 * TB, TB, <const real*>a.x, I, dw_ih + g0 * I, I,
                accumulate, pack)
    if db_ih != NULL:
        _rowsum(g1 - g0, TB, dG_transposed + g0 * TB, db_ih + g0, accumulate)
    if d.lbr:
        # dgh differs from dgi only in its n block, which is scaled by r.
        lo = max(g0, 2 * H)
        if g1 > lo:
            _transpose_rows(lo, g1, TB, G, dG, gates + lo - 2 * H, dG_transposed)
        packed_gemm(g1 - g0, H, TB, dG_transposed + g0 * TB, TB, hprev, H, dw_hh + g0 * H, H,
                    accumulate, pack)
    else:
        # dgh == dgi; the n rows of W_hh multiply r * h instead of h.
        _r_times_h(r0, r1, H, gates, hprev, work)
        barrier_wait(bar, nt, p)  # r * h complete
        lo = g0
        hi = min(g1, 2 * H)
        if hi > lo:
            packed_gemm(hi - lo, H, TB, dG_transposed + lo * TB, TB, hprev, H, dw_hh + lo * H, H,
                        accumulate, pack)
        lo = max(g0, 2 * H)
        if g1 > lo:
            packed_gemm(g1 - lo, H, TB, dG_transposed + lo * TB, TB, work, H, dw_hh + lo * H, H,
                        accumulate, pack)
    if db_hh != NULL:
        _rowsum(g1 - g0, TB, dG_transposed + g0 * TB, db_hh + g0, accumulate)
    free(pack)


cdef void _serial_weight_grads(const Dims* d, const BackwardArrays* a, real* dG
                               ) noexcept nogil:
    """One thread, after the recurrence: OpenBLAS's packed GEMMs over all T*B rows, 10-20%
    faster on one core than the tiled GEMM on these long sums. dG is ours to reuse."""
    cdef Py_ssize_t i, j, TB = d.T * d.B, I = d.n_in, H = d.H, G = 3 * H
    cdef bint accumulate = d.accumulate
    cdef real beta = 1 if accumulate else 0
    cdef const real* gates = <const real*>a.gates
    cdef const real* hprev = <const real*>a.hprev
    cdef real* dw_hh = <real*>a.dw_hh
    cdef real* db_ih = <real*>a.db_ih
    cdef real* db_hh = <real*>a.db_hh
    cdef real* work = <real*>a.work
    gemm_rm(c'N', c'N', TB, I, G, 1, dG, G, <const real*>a.w_ih, I,
            1 if d.dx_accumulate else 0, <real*>a.dx, I)
    gemm_rm(c'T', c'N', G, I, TB, 1, dG, G, <const real*>a.x, I, beta, <real*>a.dw_ih, I)
    if db_ih != NULL:
        _colsum(TB, G, dG, db_ih, accumulate)
    if d.lbr:
        # dgh differs from dgi only in its n block, which is scaled by r.
        for i in range(TB):
            for j in range(H):
                dG[i * G + 2 * H + j] = dG[i * G + 2 * H + j] * gates[i * G + j]
        gemm_rm(c'T', c'N', G, H, TB, 1, dG, G, hprev, H, beta, dw_hh, H)
        if db_hh != NULL:
            _colsum(TB, G, dG, db_hh, accumulate)
    else:
        # dgh == dgi; the n rows of W_hh multiply r * h instead of h.
        _r_times_h(0, TB, H, gates, hprev, work)
        gemm_rm(c'T', c'N', 2 * H, H, TB, 1, dG, G, hprev, H, beta, dw_hh, H)
        gemm_rm(c'T', c'N', H, H, TB, 1, dG + 2 * H, G, work, H, beta, dw_hh + 2 * H * H, H)
        if db_hh != NULL:
            _colsum(TB, G, dG, db_hh, accumulate)
