# Everything that does not feed the backward recurrence: dx, dW_ih, dW_hh and the bias
# gradients. Serial and split by sequences: during the recurrence, a flush of steps at a time
# (StepGrads), while the gates' gradients are still in cache. One sequence split by hidden
# units: after it, as large GEMMs over all T rows of dG (_weight_grads).
# See docs/design.md section 4 (Kernels).


cdef struct StepGrads:
    # The buffers of the weight gradients accumulated during the recurrence. A flush gathers
    # ``steps`` steps (functional.py: at least FLUSH_ROWS rows, or all T steps) and adds
    # their products to each thread's partial sums; thread p, owning the sequences
    # b0 <= b < b1 (n = b1 - b0),
    # owns the rows [steps * b0, steps * b1) of dg and dgh and the columns of the same range
    # of h_t, rh_t and x_t: a region of the buffers that is contiguous, with step i of the
    # flush in its rows [i * n, (i + 1) * n).
    Py_ssize_t steps
    int threads             # rows of partials: the most threads that may share the work
    void* dg                # (steps * B, 3H): the gates' gradients dgi
    void* dgh               # (steps * B, 3H): dgh, linear_before_reset only
    void* h_t               # (H, steps * B): the state entering each step, transposed
    void* rh_t              # (H, steps * B): r * h transposed, without linear_before_reset
    void* x_t               # (I, steps * B): the inputs, transposed
    void* dx_rows           # (steps * B, I): the flush's dx, before they go to dx
    const void* w_ih_t      # (I, 3H): W_ih transposed, for I < DOT_INPUTS; else NULL
    # partials (threads, (H + I + 2) * 3H): per thread, dW_hh^T (H, 3H), dW_ih^T (I, 3H),
    # db_ih (3H), db_hh (3H)
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
    (and r * h without linear_before_reset) and the inputs, transposed, so that the flush's
    GEMMs read them as row-major (H, K) and (I, K) left operands. hprev: a.hprev, typed."""
    cdef Py_ssize_t B = d.B, H = d.H, I = d.n_in, G = 3 * H, K = f.steps * n, b, j, col
    cdef const real* hp = hprev + (t * B + b0) * H
    cdef const real* x = <const real*>a.x + (t * B + b0) * I
    cdef const real* g = <const real*>a.gates + (t * B + b0) * G
    cdef real* h_t = <real*>f.h_t + H * f.steps * b0
    cdef real* x_t = <real*>f.x_t + I * f.steps * b0
    cdef real* rh_t
    for b in range(n):
        col = i * n + b
        for j in range(H):
            h_t[j * K + col] = hp[b * H + j]
        for j in range(I):
            x_t[j * K + col] = x[b * I + j]
    if not d.lbr:
        rh_t = <real*>f.rh_t + H * f.steps * b0
        for b in range(n):
            col = i * n + b
            for j in range(H):
                rh_t[j * K + col] = g[b * G + j] * hp[b * H + j]


cdef void _flush(const Dims* d, const StepGrads* f, Py_ssize_t b0, Py_ssize_t n,
                 Py_ssize_t steps, real* acc, bint blas_ok) noexcept nogil:
    """Add the products of the flush's first ``steps`` slots (K = steps * n rows) to this
    thread's partial sums acc: dW_hh^T += h^T dgh, dW_ih^T += x^T dgi, the bias sums."""
    cdef Py_ssize_t H = d.H, I = d.n_in, G = 3 * H, K = steps * n, ld = f.steps * n
    cdef const real* dg = <const real*>f.dg + f.steps * b0 * G
    cdef const real* h_t = <const real*>f.h_t + H * f.steps * b0
    cdef real* acc_ih = acc + H * G
    cdef real* acc_bih = acc_ih + I * G
    cdef real* acc_bhh = acc_bih + G
    cdef const real* x_t = <const real*>f.x_t + I * f.steps * b0
    cdef Py_ssize_t k, i, g
    cdef real v
    if I < DOT_INPUTS:
        # A row update per input and row: fewer rows than a register tile.
        for k in range(K):
            for i in range(I):
                v = x_t[i * ld + k]
                for g in range(G):
                    acc_ih[i * G + g] += v * dg[k * G + g]
    else:
        _flush_gemm(I, G, K, x_t, ld, dg, G, acc_ih, G, True, blas_ok)
    _colsum(K, G, dg, acc_bih, True)
    if d.lbr:
        # dgh differs from dgi only in its n block, which is scaled by r.
        dg = <const real*>f.dgh + f.steps * b0 * G
        _flush_gemm(H, G, K, h_t, ld, dg, G, acc, G, True, blas_ok)
    else:
        # dgh == dgi; the n rows of W_hh multiply r * h instead of h.
        _flush_gemm(H, 2 * H, K, h_t, ld, dg, G, acc, G, True, blas_ok)
        _flush_gemm(H, H, K, <const real*>f.rh_t + H * f.steps * b0, ld, dg + 2 * H, G,
                    acc + 2 * H, G, True, blas_ok)
    _colsum(K, G, dg, acc_bhh, True)


cdef inline void _flush_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const real* A,
                             Py_ssize_t lda, const real* W, Py_ssize_t ldw, real* C,
                             Py_ssize_t ldc, bint accumulate, bint blas_ok) noexcept nogil:
    """small_gemm, or OpenBLAS's GEMM when allowed (serial calls) and the product has more
    multiply-adds than the ISA build's tiled-GEMM limit (_kernels_threads.pxi): on the AVX2
    build the flush's (512 x 1536 x 64) products ran 1.3x slower tiled."""
    if blas_ok and <long long>M * N * K > tiled_max_macs:
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
    _flush_gemm(steps * n, I, G, <const real*>f.dg + f.steps * b0 * G, G,
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
    g0 <= g < g1 of dW_hh, dW_ih and the bias gradients, summing the nt partials (stored
    transposed) in thread order, then adding to the gradients when accumulating. acc: the
    partial sums, StepGrads.partials. The transposition goes by blocks of 16 gate rows, so
    that each cache line of the partials read serves 16 of them (one gate row at a time
    read a line per element: 4.6 ms of a 27.5 ms B = 1, H = 512 training step)."""
    cdef Py_ssize_t H = d.H, I = d.n_in, G = 3 * H, P = _partial_size(d), q, g, j, gb, ge
    cdef Py_ssize_t g0 = _share(G, nt, p, 4), g1 = _share(G, nt, p + 1, 4)
    cdef bint accumulate = d.accumulate
    cdef real* dw_hh = <real*>a.dw_hh
    cdef real* dw_ih = <real*>a.dw_ih
    cdef real* db_ih = <real*>a.db_ih
    cdef real* db_hh = <real*>a.db_hh
    cdef real v
    for gb in range(g0, g1, 16):
        ge = min(gb + 16, g1)
        for j in range(H):
            for g in range(gb, ge):
                v = acc[j * G + g]
                for q in range(1, nt):
                    v = v + acc[q * P + j * G + g]
                dw_hh[g * H + j] = dw_hh[g * H + j] + v if accumulate else v
        for j in range(I):
            for g in range(gb, ge):
                v = acc[(H + j) * G + g]
                for q in range(1, nt):
                    v = v + acc[q * P + (H + j) * G + g]
                dw_ih[g * I + j] = dw_ih[g * I + j] + v if accumulate else v
    if db_ih != NULL:
        for g in range(g0, g1):
            v = acc[(H + I) * G + g]
            for q in range(1, nt):
                v = v + acc[q * P + (H + I) * G + g]
            db_ih[g] = db_ih[g] + v if accumulate else v
            v = acc[(H + I + 1) * G + g]
            for q in range(1, nt):
                v = v + acc[q * P + (H + I + 1) * G + g]
            db_hh[g] = db_hh[g] + v if accumulate else v
