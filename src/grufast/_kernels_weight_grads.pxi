# Everything that does not feed the backward recurrence: dx, dW_ih, dW_hh and the bias
# gradients. Serial and split by sequences: during the recurrence, a flush of steps at a time
# (StepGrads), while the gates' gradients are still in cache. One sequence split by hidden
# units: after it, as large GEMMs over all T rows of dG (_weight_grads).
# See docs/design.md section 4 (Kernels).


cdef struct StepGrads:
    # The buffers of the weight gradients accumulated during the recurrence. A flush gathers
    # ``steps`` steps (functional.flush_rows rows at least, or all T steps) and adds
    # their products to each thread's partial sums; thread p, owning the sequences
    # b0 <= b < b1 (n = b1 - b0),
    # owns the rows [steps * b0, steps * b1) of dg, dgh, h_rows, rh_rows and x_rows: a region
    # of the buffers that is contiguous, with step i of the flush in its rows
    # [i * n, (i + 1) * n).
    Py_ssize_t steps
    int threads             # rows of partials: the most threads that may share the work
    void* dg                # (steps * B, 3H): the gates' gradients dgi
    void* dgh               # (steps * B, 3H): dgh, linear_before_reset only
    void* h_rows            # (steps * B, H): the state entering each step
    void* rh_rows           # (steps * B, H): r * h, without linear_before_reset
    void* x_rows            # (steps * B, I): the inputs
    void* dx_rows           # (steps * B, I): the flush's dx, before they go to dx
    const void* w_ih_t      # (I, 3H): W_ih transposed, for I < DOT_INPUTS; else NULL
    # partials (threads, (H + I + 2) * 3H): per thread, dW_hh (3H, H), dW_ih (3H, I) (for
    # I < DOT_INPUTS transposed, (I, 3H)), db_ih (3H), db_hh (3H): the gradients' own
    # layout, so that summing the threads' partials reads and writes memory contiguously (a
    # transposing sum crossed a page per element: 2.5 ms at H = I = 512, where a contiguous
    # one takes 0.4)
    void* partials


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
    would spin afterwards beside the next parallel loop). dx by columns; the weight
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
    cdef Py_ssize_t i0 = _share(I, nt, p, 16), i1 = _share(I, nt, p + 1, 16)
    # This thread's panel buffer (up to 196 KB in float32), for products of inner size G
    # (dx) and TB (dW); without it the GEMMs read W in place.
    cdef real* pack = gemm_pack_buffer(max(G, TB), dw_ih)
    # dx by columns: each thread copies only its own panels of W_ih (by rows, every thread
    # copied all of them: 3 MB each at I = H = 512).
    packed_gemm(TB, i1 - i0, G, dG, G, <const real*>a.w_ih + i0, I, <real*>a.dx + i0, I,
                d.dx_accumulate, pack)
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
    aligned_free(pack)


cdef enum:
    # Fewer inputs than this: dx as dot products and dW_ih as row updates, since the tiled
    # GEMM would run edge tiles narrower than a vector (I = 2 in the demo: 12% of the
    # backward in edge tiles before).
    DOT_INPUTS = 8


cdef void _dx_dots(Py_ssize_t n, Py_ssize_t I, Py_ssize_t G, const real* dg,
                   const real* w_ih_t, real* dx, bint accumulate) noexcept nogil:
    """dx (n, I) (+)= dg (n, G) @ W_ih (G, I), as dot products of dg's rows with W_ih^T's
    (I, G), for few inputs. 16 partial sums per dot: a vector the compiler can keep without
    reassociating the sum."""
    cdef real acc[16]
    cdef Py_ssize_t b, i, k, g, G16 = G - G % 16
    cdef real v
    for b in range(n):
        for i in range(I):
            for k in range(16):
                acc[k] = 0
            for g in range(0, G16, 16):
                for k in range(16):
                    acc[k] += dg[b * G + g + k] * w_ih_t[i * G + g + k]
            v = 0
            for g in range(G16, G):
                v += dg[b * G + g] * w_ih_t[i * G + g]
            for k in range(16):
                v += acc[k]
            dx[b * I + i] = dx[b * I + i] + v if accumulate else v


cdef inline Py_ssize_t _partial_size(const Dims* d) noexcept nogil:
    return (d.H + d.n_in + 2) * 3 * d.H


cdef void _gather_step(const Dims* d, const BackwardArrays* a, const StepGrads* f,
                       const real* hprev, Py_ssize_t t, Py_ssize_t b0, Py_ssize_t n,
                       Py_ssize_t i) noexcept nogil:
    """Slot i of the flush, for the sequences b0 <= b < b0 + n: the state entering step t
    (and r * h without linear_before_reset) and the inputs, the right operands of the
    flush's GEMMs. hprev: a.hprev, typed."""
    cdef Py_ssize_t B = d.B, H = d.H, I = d.n_in, G = 3 * H, row = f.steps * b0 + i * n, b, j
    cdef const real* hp = hprev + (t * B + b0) * H
    cdef const real* g = <const real*>a.gates + (t * B + b0) * G
    cdef real* rh
    memcpy(<real*>f.h_rows + row * H, hp, n * H * sizeof(real))
    memcpy(<real*>f.x_rows + row * I, <const real*>a.x + (t * B + b0) * I, n * I * sizeof(real))
    if not d.lbr:
        rh = <real*>f.rh_rows + row * H
        for b in range(n):
            for j in range(H):
                rh[b * H + j] = g[b * G + j] * hp[b * H + j]


cdef void _flush(const Dims* d, const StepGrads* f, Py_ssize_t b0, Py_ssize_t n,
                 Py_ssize_t steps, real* acc, bint blas_ok) noexcept nogil:
    """Add the products of the flush's first ``steps`` slots (K = steps * n rows) to this
    thread's partial sums acc: dW_hh += dgh^T h, dW_ih += dgi^T x, the bias sums."""
    cdef Py_ssize_t H = d.H, I = d.n_in, G = 3 * H, K = steps * n, row = f.steps * b0
    cdef const real* dg = <const real*>f.dg + row * G
    cdef const real* h_rows = <const real*>f.h_rows + row * H
    cdef const real* x_rows = <const real*>f.x_rows + row * I
    cdef real* acc_ih = acc + G * H
    cdef real* acc_bih = acc_ih + I * G
    cdef real* acc_bhh = acc_bih + G
    cdef Py_ssize_t k, i, g
    cdef real v
    if I < DOT_INPUTS:
        # A row update per input and row, into dW_ih^T (I, 3H): fewer columns than a vector.
        for k in range(K):
            for i in range(I):
                v = x_rows[k * I + i]
                for g in range(G):
                    acc_ih[i * G + g] += v * dg[k * G + g]
    else:
        _flush_gemm_tn(G, I, K, n, dg, G, x_rows, I, acc_ih, I, blas_ok)
    _colsum(K, G, dg, acc_bih, True)
    if d.lbr:
        # dgh differs from dgi only in its n block, which is scaled by r.
        dg = <const real*>f.dgh + row * G
        _flush_gemm_tn(G, H, K, n, dg, G, h_rows, H, acc, H, blas_ok)
    else:
        # dgh == dgi; the n rows of W_hh multiply r * h instead of h.
        _flush_gemm_tn(2 * H, H, K, n, dg, G, h_rows, H, acc, H, blas_ok)
        _flush_gemm_tn(H, H, K, n, dg + 2 * H, G, <const real*>f.rh_rows + row * H, H,
                       acc + 2 * H * H, H, blas_ok)
    _colsum(K, G, dg, acc_bhh, True)


cdef enum:
    # The flush rows by which a flush's GEMMs are weighed against the tiled-GEMM limit: the
    # flushes the limit was measured on (64 rows, or one step's rows if more), whatever
    # number of rows functional.flush_rows now gathers.
    DECIDE_ROWS = 64


cdef inline bint _flush_to_blas(bint blas_ok, long long macs_per_row, Py_ssize_t rows,
                                Py_ssize_t n) noexcept nogil:
    """Whether a flush's product of ``rows`` rows (n per step) goes to OpenBLAS: when allowed
    (serial calls) and, at DECIDE_ROWS rows or one step's, above the ISA build's limit."""
    return blas_ok and macs_per_row * min(rows, max(<Py_ssize_t>DECIDE_ROWS, n)) > tiled_max_macs


cdef inline void _flush_gemm_tn(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, Py_ssize_t n,
                                const real* A, Py_ssize_t lda, const real* W, Py_ssize_t ldw,
                                real* C, Py_ssize_t ldc, bint blas_ok) noexcept nogil:
    """C (M, N) += A^T W, A (K, M), K = the flush's rows (n per step): small_gemm_tn, or
    OpenBLAS's GEMM (_flush_to_blas)."""
    if _flush_to_blas(blas_ok, <long long>M * N, K, n):
        gemm_rm(c'T', c'N', M, N, K, 1, A, lda, W, ldw, 1, C, ldc)
    else:
        small_gemm_tn(M, N, K, A, lda, W, ldw, C, ldc, True)


cdef inline void _flush_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, Py_ssize_t n,
                             const real* A, Py_ssize_t lda, const real* W, Py_ssize_t ldw,
                             real* C, Py_ssize_t ldc, bint accumulate, bint blas_ok
                             ) noexcept nogil:
    """small_gemm over the flush's M rows (n per step; dx's GEMM), or OpenBLAS's GEMM
    (_flush_to_blas; the limit: _kernels_threads.pxi)."""
    if _flush_to_blas(blas_ok, <long long>N * K, M, n):
        gemm_rm(c'N', c'N', M, N, K, 1, A, lda, W, ldw, 1 if accumulate else 0, C, ldc)
    else:
        small_gemm(M, N, K, A, lda, W, ldw, C, ldc, accumulate)


cdef void _flush_dx(const Dims* d, const BackwardArrays* a, const StepGrads* f, real* dx,
                    Py_ssize_t b0, Py_ssize_t n, Py_ssize_t steps, Py_ssize_t s_last,
                    bint blas_ok) noexcept nogil:
    """dx for the flush's first ``steps`` slots (I >= DOT_INPUTS): dx_t = dgi_t W_ih for all
    of them in one GEMM of steps * n rows (one row per step, for one sequence, made that
    many GEMVs through the tiled GEMM's edge tiles), then each step's n rows copied (or
    added) to dx (a.dx). Slot j holds the step visited at loop index
    s_last - (steps - 1) + j."""
    cdef Py_ssize_t T = d.T, B = d.B, I = d.n_in, G = 3 * d.H, j, k, s, t
    cdef real* rows = <real*>f.dx_rows + f.steps * b0 * I
    cdef real* out
    _flush_gemm(steps * n, I, G, n, <const real*>f.dg + f.steps * b0 * G, G,
                <const real*>a.w_ih, I, rows, I, False, blas_ok)
    for j in range(steps):
        s = s_last - (steps - 1) + j
        t = s if d.reverse else T - 1 - s
        out = dx + (t * B + b0) * I
        if d.dx_accumulate:
            for k in range(n * I):
                out[k] += rows[j * n * I + k]
        else:
            memcpy(out, rows + j * n * I, n * I * sizeof(real))


cdef void _reduce_partials(int p, int nt, const Dims* d, const BackwardArrays* a,
                           const real* acc) noexcept nogil:
    """Thread p of nt, once every thread's partial sums are complete: the gate rows
    g0 <= g < g1 of dW_hh, dW_ih and the bias gradients, summing the nt partials in thread
    order, then adding to the gradients when accumulating. acc: the partial sums,
    StepGrads.partials, in the gradients' layout (dW_ih^T for I < DOT_INPUTS)."""
    cdef Py_ssize_t H = d.H, I = d.n_in, G = 3 * H, P = _partial_size(d)
    cdef Py_ssize_t g0 = _share(G, nt, p, 4), g1 = _share(G, nt, p + 1, 4)
    _sum_rows(g1 - g0, H, nt, P, acc + g0 * H, <real*>a.dw_hh + g0 * H, d.accumulate)
    if I >= DOT_INPUTS:
        _sum_rows(g1 - g0, I, nt, P, acc + G * H + g0 * I, <real*>a.dw_ih + g0 * I,
                  d.accumulate)
    else:
        _sum_transposed(g0, g1, I, G, nt, P, acc + G * H, <real*>a.dw_ih, d.accumulate)
    if a.db_ih != NULL:
        _sum_rows(1, g1 - g0, nt, P, acc + (H + I) * G + g0, <real*>a.db_ih + g0,
                  d.accumulate)
        _sum_rows(1, g1 - g0, nt, P, acc + (H + I + 1) * G + g0, <real*>a.db_hh + g0,
                  d.accumulate)


cdef void _sum_rows(Py_ssize_t rows, Py_ssize_t cols, int nt, Py_ssize_t P,
                    const real* acc, real* out, bint accumulate) noexcept nogil:
    """out (rows, cols) (+)= the sum of nt partials (rows, cols), P elements apart, in
    thread order; all contiguous rows of cols."""
    cdef Py_ssize_t r, j
    cdef int q
    cdef real v
    for r in range(rows):
        for j in range(cols):
            v = acc[r * cols + j]
            for q in range(1, nt):
                v = v + acc[q * P + r * cols + j]
            out[r * cols + j] = out[r * cols + j] + v if accumulate else v


cdef void _sum_transposed(Py_ssize_t g0, Py_ssize_t g1, Py_ssize_t I, Py_ssize_t G, int nt,
                          Py_ssize_t P, const real* acc, real* out, bint accumulate
                          ) noexcept nogil:
    """The rows g0 <= g < g1 of out (G, I) (+)= the sum of nt partials of out^T (I, G)
    (few inputs: a small array)."""
    cdef Py_ssize_t g, j
    cdef int q
    cdef real v
    for g in range(g0, g1):
        for j in range(I):
            v = acc[j * G + g]
            for q in range(1, nt):
                v = v + acc[q * P + j * G + g]
            out[g * I + j] = out[g * I + j] + v if accumulate else v
