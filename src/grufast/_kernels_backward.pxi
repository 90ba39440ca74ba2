# The backward recurrence: per step (last to first) the gates' gradients and dh through
# W_hh, stored for every step in dG; then the weight gradients (_kernels_weight_grads.pxi).
# Serial, split by sequences, or split by hidden units as plan_threads decides.
# See docs/design.md sections 4 (Kernels) and 5 (Threads).


cdef void _bsteps(const Dims* d, const BackwardArrays* a, real* dh, Py_ssize_t b0,
                  Py_ssize_t b1, bint tiled) noexcept nogil:
    """The backward recurrence for the sequences b0 <= b < b1 (rows never interact: disjoint
    ranges run on different threads without synchronisation). ``tiled``: the products with
    W_hh in the register-tiled GEMM, else in OpenBLAS."""
    cdef Py_ssize_t T = d.T, B = d.B, H = d.H, ldy = d.ldy
    cdef bint reverse = d.reverse, lbr = d.lbr
    cdef const real* w_hh = <const real*>a.w_hh
    cdef const real* gates = <const real*>a.gates
    cdef const real* hprev = <const real*>a.hprev
    cdef const real* ghn = <const real*>a.ghn
    cdef const real* dy = <const real*>a.dy
    cdef real* dG = <real*>a.dG
    cdef Py_ssize_t s, t, n = b1 - b0, G = 3 * H, BG = B * G, BH = B * H
    cdef const real* dy_t = <const real*>a.dy_zero + b0 * ldy  # zeros for a missing dy
    cdef const Py_ssize_t* lr = a.lengths + b0
    cdef real* dhr = dh + b0 * H
    cdef real* dghr = <real*>a.dgh + b0 * G
    cdef real* dsr = NULL if a.ds == NULL else <real*>a.ds + b0 * H
    cdef real* dG_t
    cdef const real* g_t
    cdef const real* hp_t
    for s in range(T):
        t = s if reverse else T - 1 - s
        if dy != NULL:
            dy_t = dy + (t * B + b0) * ldy
        dG_t = dG + t * BG + b0 * G
        g_t = gates + t * BG + b0 * G
        hp_t = hprev + t * BH + b0 * H
        if lbr:
            _dgates_lbr(n, H, 0, H, t, lr, g_t, hp_t, ghn + t * BH + b0 * H, dy_t, ldy, dhr,
                        dG_t, dghr)
            if tiled:
                small_gemm(n, H, G, dghr, G, w_hh, H, dhr, H, True)
            else:
                gemm_rm(c'N', c'N', n, H, G, 1, dghr, G, w_hh, H, 1, dhr, H)
        else:
            _dgates_zn(n, H, 0, H, t, lr, g_t, hp_t, dy_t, ldy, dhr, dG_t)
            if tiled:
                small_gemm(n, H, H, dG_t + 2 * H, G, w_hh + 2 * H * H, H, dsr, H, False)
            else:
                gemm_rm(c'N', c'N', n, H, H, 1, dG_t + 2 * H, G, w_hh + 2 * H * H, H, 0, dsr,
                        H)
            _dgates_r(n, H, 0, H, t, lr, g_t, hp_t, dsr, dhr, dG_t)
            if tiled:
                small_gemm(n, H, 2 * H, dG_t, G, w_hh, H, dhr, H, True)
            else:
                gemm_rm(c'N', c'N', n, H, 2 * H, 1, dG_t, G, w_hh, H, 1, dhr, H)


cdef void _unit_backward(int p, int nt, barrier_t* bar, const Dims* d,
                         const BackwardArrays* a, real* dh) noexcept nogil:
    """Backward of one sequence (B = 1), thread p of nt owning the hidden units j0 <= j < j1
    as in _unit_forward: their gate gradients and their columns of W_hh for dh; afterwards
    its share of the weight gradients and of dx (_weight_grads). No OpenBLAS call:
    its threads would spin after each call and take the cores this loop's barrier waits on.
    dgh holds two rows (2, 3H), used by alternate steps so that no thread writes the row
    another one is still reading."""
    cdef Py_ssize_t T = d.T, H = d.H, ldy = d.ldy
    cdef bint reverse = d.reverse, lbr = d.lbr
    cdef const Py_ssize_t* lengths = a.lengths
    cdef const real* w_hh = <const real*>a.w_hh
    cdef const real* gates = <const real*>a.gates
    cdef const real* hprev = <const real*>a.hprev
    cdef const real* ghn = <const real*>a.ghn
    cdef const real* dy = <const real*>a.dy
    cdef real* dG = <real*>a.dG
    cdef real* dgh = <real*>a.dgh
    cdef real* ds = <real*>a.ds
    cdef Py_ssize_t s, t, G = 3 * H
    cdef Py_ssize_t j0 = _share(H, nt, p, 16), j1 = _share(H, nt, p + 1, 16), w = j1 - j0
    cdef const real* dy_t = <const real*>a.dy_zero
    cdef real* dG_t
    cdef real* dgh_row
    cdef const real* g_t
    cdef const real* hp_t
    for s in range(T):
        t = s if reverse else T - 1 - s
        if dy != NULL:
            dy_t = dy + t * ldy
        dG_t = dG + t * G
        g_t = gates + t * G
        hp_t = hprev + t * H
        if lbr:
            dgh_row = dgh + (s % 2) * G
            _dgates_lbr(1, H, j0, j1, t, lengths, g_t, hp_t, ghn + t * H, dy_t, ldy, dh, dG_t,
                        dgh_row)
            barrier_wait(bar, nt, p)
            row_gemv(w, G, dgh_row, w_hh + j0, H, dh + j0, True, s % 2 == 1)
        else:
            _dgates_zn(1, H, j0, j1, t, lengths, g_t, hp_t, dy_t, ldy, dh, dG_t)
            barrier_wait(bar, nt, p)
            row_gemv(w, H, dG_t + 2 * H, w_hh + 2 * H * H + j0, H, ds + j0, False, s % 2 == 1)
            _dgates_r(1, H, j0, j1, t, lengths, g_t, hp_t, ds, dh, dG_t)
            barrier_wait(bar, nt, p)
            row_gemv(w, 2 * H, dG_t, w_hh + j0, H, dh + j0, True, s % 2 == 1)
    barrier_wait(bar, nt, p)  # dG complete
    _weight_grads(p, nt, bar, d, a, dG)


cdef void _backward_by_sequences(int p, int nt, barrier_t* bar, const Dims* d,
                                 const BackwardArrays* a, real* dh) noexcept nogil:
    """Thread p of nt: the backward recurrence of its own sequences, then its share of the
    weight gradients."""
    _bsteps(d, a, dh, _share(d.B, nt, p, 4), _share(d.B, nt, p + 1, 4), True)
    barrier_wait(bar, nt, p)  # dG complete
    _weight_grads(p, nt, bar, d, a, <const real*>a.dG)


cdef void _backward(const Dims* d, const BackwardArrays* a, real* dh) noexcept nogil:
    # The backward keeps its threads through a back-off: the forward's fallback
    # (_unit_forward) emulates every thread's part, which the weight gradients' phases do not.
    cdef ThreadPlan plan = plan_threads(d.B, d.H)
    cdef barrier_t bar
    cdef barrier_t* barp = &bar
    barrier_init(barp, False)
    if plan.split == BY_UNITS:
        with parallel(num_threads=plan.threads):
            _unit_backward(thread_id(), team_size(), barp, d, a, dh)
    elif plan.split == BY_SEQUENCES:
        with parallel(num_threads=plan.threads):
            _backward_by_sequences(thread_id(), team_size(), barp, d, a, dh)
    else:
        _bsteps(d, a, dh, 0, d.B, plan.tiled_recurrence)
        _serial_weight_grads(d, a, <real*>a.dG)


def backward(const real[:, :, ::1] x, const real[:, ::1] w_ih, const real[:, ::1] w_hh,
             const Py_ssize_t[::1] lengths, bint reverse, bint linear_before_reset,
             const real[:, :, ::1] gates, const real[:, :, ::1] hprev,
             const real[:, :, ::1] ghn, const real[:, :, ::1] dy, Py_ssize_t dy_col,
             real[:, ::1] dh, real[:, :, ::1] dx, bint dx_accumulate,
             real[:, ::1] dw_ih, real[:, ::1] dw_hh,
             real[::1] db_ih, real[::1] db_hh, bint accumulate,
             real[:, :, ::1] dG, real[:, ::1] dG_transposed, real[:, ::1] dgh, real[:, ::1] ds,
             real[:, :, ::1] work, const real[:, ::1] dy_zero):
    """Back-propagate through the recurrence recorded by a training forward.

    dh (B, H) holds dL/dh_n on entry and dL/dh0 on exit; dy (T, B, W) may be None (zero),
    its columns [dy_col, dy_col + H) are this direction's. dx (T, B, I) is overwritten, or
    added to when dx_accumulate; the weight and bias gradients are overwritten, or added to
    when accumulate is true; db_ih and db_hh may be None (no bias). dG (T, B, 3H),
    dG_transposed (3H, T*B; only touched where the backward runs on several threads, so its
    untouched pages cost nothing), dgh (max(B, 2), 3H), ds (B, H) and work (T, B, H) are
    scratch; ghn is None unless linear_before_reset; ds and work are only touched when it is
    false. dy_zero (B, H) holds zeros, read in place of a missing dy.
    """
    cdef Dims d
    cdef BackwardArrays a
    d.T, d.B, d.n_in, d.H = x.shape[0], x.shape[1], x.shape[2], dh.shape[1]
    d.ldy = d.H
    d.reverse = reverse
    d.lbr = linear_before_reset
    d.accumulate = accumulate
    d.dx_accumulate = dx_accumulate
    a.db_ih = NULL
    a.db_hh = NULL
    if db_ih is not None:
        a.db_ih = &db_ih[0]
        a.db_hh = &db_hh[0]
    if d.T == 0 or d.B == 0:
        # No step ran: dh0 = dh_n, and the parameter gradients are zero (or unchanged).
        if not accumulate:
            dw_ih[:, :] = 0
            dw_hh[:, :] = 0
            if a.db_ih != NULL:
                db_ih[:] = 0
                db_hh[:] = 0
        return
    a.x = &x[0, 0, 0]
    a.w_ih = &w_ih[0, 0]
    a.w_hh = &w_hh[0, 0]
    a.lengths = &lengths[0]
    a.gates = &gates[0, 0, 0]
    a.hprev = &hprev[0, 0, 0]
    a.ghn = NULL
    a.dy = NULL
    a.ds = NULL
    a.work = NULL
    if dy is not None:
        a.dy = &dy[0, 0, 0] + dy_col
        d.ldy = dy.shape[2]
    if linear_before_reset:
        a.ghn = &ghn[0, 0, 0]
    else:
        a.ds = &ds[0, 0]
        a.work = &work[0, 0, 0]
    a.dy_zero = &dy_zero[0, 0]
    a.dx = &dx[0, 0, 0]
    a.dw_ih = &dw_ih[0, 0]
    a.dw_hh = &dw_hh[0, 0]
    a.dG = &dG[0, 0, 0]
    a.dG_transposed = &dG_transposed[0, 0]
    a.dgh = &dgh[0, 0]
    with nogil:
        _backward(&d, &a, &dh[0, 0])
