# The backward recurrence: per step (last to first) the gates' gradients and dh through
# W_hh; the weight gradients (_kernels_weight_grads.pxi) accumulate a flush of steps at a
# time (serial, split by sequences) or follow from dG after the loop (split by hidden units).
# Serial, split by sequences, or split by hidden units as plan_threads decides.
# See docs/design.md sections 4 (Kernels) and 5 (Threads).


cdef void _bsteps(const Dims* d, const BackwardArrays* a, const StepGrads* f, real* dh,
                  Py_ssize_t b0, Py_ssize_t b1, bint tiled, real* acc) noexcept nogil:
    """The backward recurrence for the sequences b0 <= b < b1 (rows never interact: disjoint
    ranges run on different threads without synchronisation), with their share of the weight
    gradients: dx and the products over the weights a flush of steps at a time (the
    products into this thread's partial sums acc; _kernels_weight_grads.pxi), while the
    gates' gradients are still in cache. ``tiled``: dh's products with W_hh in the register-tiled
    GEMM, else one GEMV per sequence on W_hh's column panels (up to 3 sequences; the same
    GEMV as a split of one sequence by hidden units runs per share) or OpenBLAS's GEMM."""
    cdef Py_ssize_t T = d.T, B = d.B, I = d.n_in, H = d.H, ldy = d.ldy
    cdef bint reverse = d.reverse, lbr = d.lbr
    cdef const real* w_hh = <const real*>a.w_hh
    cdef const real* w_hh_cp = <const real*>a.w_hh_cp
    cdef const real* w_ih = <const real*>a.w_ih
    cdef const real* gates = <const real*>a.gates
    cdef const real* hprev = <const real*>a.hprev
    cdef const real* ghn = <const real*>a.ghn
    cdef const real* dy = <const real*>a.dy
    cdef real* dx = <real*>a.dx
    cdef bint dx_accumulate = d.dx_accumulate
    cdef Py_ssize_t s, t, b, i = 0, n = b1 - b0, G = 3 * H, BG = B * G, BH = B * H
    cdef const real* dy_t = <const real*>a.dy_zero + b0 * ldy  # zeros for a missing dy
    cdef const Py_ssize_t* lr = a.lengths + b0
    cdef real* dhr = dh + b0 * H
    cdef real* dsr = NULL if a.ds == NULL else <real*>a.ds + b0 * H
    cdef real* dG_t
    cdef real* dgh_t
    cdef const real* g_t
    cdef const real* hp_t
    fill(acc, _partial_size(d), <real>0)  # even with no sequences: the reduction reads it
    if n <= 0:
        return
    for s in range(T):
        t = s if reverse else T - 1 - s
        if dy != NULL:
            dy_t = dy + (t * B + b0) * ldy
        # This step's slot of the flush (see StepGrads).
        dG_t = <real*>f.dg + (f.steps * b0 + i * n) * G
        g_t = gates + t * BG + b0 * G
        hp_t = hprev + t * BH + b0 * H
        if lbr:
            dgh_t = <real*>f.dgh + (f.steps * b0 + i * n) * G
            _dgates_lbr(n, H, 0, H, t, lr, g_t, hp_t, ghn + t * BH + b0 * H, dy_t, ldy, dhr,
                        dG_t, dgh_t)
            if tiled:
                small_gemm(n, H, G, dgh_t, G, w_hh, H, dhr, H, True)
            elif n < 4:  # one GEMV per sequence: OpenBLAS's GEMM repacks w_hh every step
                for b in range(n):
                    panel_gemv_ex(H, G, dgh_t + b * G, w_hh_cp, G * PANEL, dhr + b * H,
                                  s % 2 == 1, True)
            else:
                gemm_rm(c'N', c'N', n, H, G, 1, dgh_t, G, w_hh, H, 1, dhr, H)
        else:
            _dgates_zn(n, H, 0, H, t, lr, g_t, hp_t, dy_t, ldy, dhr, dG_t)
            if tiled:
                small_gemm(n, H, H, dG_t + 2 * H, G, w_hh + 2 * H * H, H, dsr, H, False)
            elif n < 4:
                for b in range(n):
                    panel_gemv_ex(H, H, dG_t + b * G + 2 * H, w_hh_cp + 2 * H * PANEL,
                                  G * PANEL, dsr + b * H, s % 2 == 1, False)
            else:
                gemm_rm(c'N', c'N', n, H, H, 1, dG_t + 2 * H, G, w_hh + 2 * H * H, H, 0, dsr,
                        H)
            _dgates_r(n, H, 0, H, t, lr, g_t, hp_t, dsr, dhr, dG_t)
            if tiled:
                small_gemm(n, H, 2 * H, dG_t, G, w_hh, H, dhr, H, True)
            elif n < 4:
                for b in range(n):
                    panel_gemv_ex(H, 2 * H, dG_t + b * G, w_hh_cp, G * PANEL, dhr + b * H,
                                  s % 2 == 1, True)
            else:
                gemm_rm(c'N', c'N', n, H, 2 * H, 1, dG_t, G, w_hh, H, 1, dhr, H)
        # dx_t = dgi_t W_ih: its own rows, no sum across steps. Few inputs: dot products
        # now; else one GEMM per flush (_flush_dx).
        if I < DOT_INPUTS:
            _dx_dots(n, I, G, dG_t, <const real*>f.w_ih_t, dx + (t * B + b0) * I,
                     dx_accumulate)
        _gather_step(d, a, f, hprev, t, b0, n, i)
        i += 1
        if i == f.steps or s == T - 1:
            # Not tiled: serial, beyond the ISA's tiled-GEMM limit (never inside a parallel
            # region): the flush's large GEMMs may go to OpenBLAS too.
            if I >= DOT_INPUTS:
                _flush_dx(d, a, f, dx, b0, n, i, s, not tiled)
            _flush(d, f, b0, n, i, acc, not tiled)
            i = 0


cdef inline void _column_products(Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t w,
                                  Py_ssize_t k0, Py_ssize_t K, const real* v,
                                  const real* w_cp, const real* w_hh, real* out, bint back,
                                  bint accumulate) noexcept nogil:
    """out[:, j0 : j0 + w] (+)= v (B, K; rows 3H apart) @ W_hh[k0 : k0 + K, j0 : j0 + w], out
    (B, H): one sequence by the GEMV on W_hh's column panels (w_cp: this share's, walked
    last to first when ``back``), a batch in the register tiles on W_hh's window."""
    if B == 1:
        panel_gemv_ex(w, K, v, w_cp + k0 * PANEL, 3 * H * PANEL, out + j0, back, accumulate)
    else:
        small_gemm(B, w, K, v, 3 * H, w_hh + k0 * H + j0, H, out + j0, H, accumulate)


cdef void _unit_backward(int p, int nt, barrier_t* bar, const Dims* d,
                         const BackwardArrays* a, real* dh) noexcept nogil:
    """Backward split by hidden units, thread p of nt owning the units j0 <= j < j1 as in
    _unit_steps: their gate gradients for every sequence and their columns of W_hh for dh
    (one sequence: a GEMV on W_hh's column panels; a batch: the register-tiled GEMM on
    W_hh's column window);
    afterwards its share of the weight gradients and of dx (_weight_grads). No OpenBLAS
    call: its threads would spin after each call and take the cores this loop's barrier
    waits on. dgh holds two (B, 3H) blocks, used by alternate steps so that no thread
    writes the block another one is still reading."""
    cdef Py_ssize_t T = d.T, B = d.B, H = d.H, ldy = d.ldy
    cdef bint reverse = d.reverse, lbr = d.lbr
    cdef const Py_ssize_t* lengths = a.lengths
    cdef const real* gates = <const real*>a.gates
    cdef const real* hprev = <const real*>a.hprev
    cdef const real* ghn = <const real*>a.ghn
    cdef const real* dy = <const real*>a.dy
    cdef const real* w_hh = <const real*>a.w_hh
    cdef real* dG = <real*>a.dG
    cdef real* dgh = <real*>a.dgh
    cdef real* ds = <real*>a.ds
    cdef Py_ssize_t s, t, G = 3 * H, BG = B * G, BH = B * H
    cdef Py_ssize_t j0 = _share(H, nt, p, 16), j1 = _share(H, nt, p + 1, 16), w = j1 - j0
    cdef const real* w_cp = NULL  # own column panels (one sequence)
    cdef const real* dy_t = <const real*>a.dy_zero
    cdef real* dG_t
    cdef real* dgh_t
    cdef const real* g_t
    cdef const real* hp_t
    cdef bint back
    if B == 1:
        w_cp = <const real*>a.w_hh_cp + (j0 // PANEL) * G * PANEL
    for s in range(T):
        t = s if reverse else T - 1 - s
        back = s % 2 == 1
        if dy != NULL:
            dy_t = dy + t * B * ldy
        dG_t = dG + t * BG
        g_t = gates + t * BG
        hp_t = hprev + t * BH
        if lbr:
            dgh_t = dgh + (s % 2) * BG
            _dgates_lbr(B, H, j0, j1, t, lengths, g_t, hp_t, ghn + t * BH, dy_t, ldy, dh,
                        dG_t, dgh_t)
            barrier_wait(bar, nt, p)
            _column_products(B, H, j0, w, 0, G, dgh_t, w_cp, w_hh, dh, back, True)
        else:
            _dgates_zn(B, H, j0, j1, t, lengths, g_t, hp_t, dy_t, ldy, dh, dG_t)
            barrier_wait(bar, nt, p)
            _column_products(B, H, j0, w, 2 * H, H, dG_t + 2 * H, w_cp, w_hh, ds, back,
                             False)
            _dgates_r(B, H, j0, j1, t, lengths, g_t, hp_t, ds, dh, dG_t)
            barrier_wait(bar, nt, p)
            _column_products(B, H, j0, w, 0, 2 * H, dG_t, w_cp, w_hh, dh, back, True)
    barrier_wait(bar, nt, p)  # dG complete
    _weight_grads(p, nt, bar, d, a, dG)


cdef void _backward_by_sequences(int p, int nt, barrier_t* bar, const Dims* d,
                                 const BackwardArrays* a, const StepGrads* f,
                                 real* dh) noexcept nogil:
    # The backward keeps its threads through a back-off: the forward's fallback
    # (_unit_steps) emulates every thread's part, which the weight gradients' phases do not.
    """Thread p of nt: the backward recurrence of its own sequences, with their partial sums
    of the weight gradients; then, once every thread's are complete, its rows of the sums."""
    _bsteps(d, a, f, dh, _share(d.B, nt, p, 4), _share(d.B, nt, p + 1, 4), True,
            <real*>f.partials + p * _partial_size(d))
    barrier_wait(bar, nt, p)  # every thread's partial sums complete
    _reduce_partials(p, nt, d, a, <const real*>f.partials)


cdef void _backward(const Dims* d, const BackwardArrays* a, const StepGrads* f,
                    real* dh, ThreadPlan plan) noexcept nogil:
    # plan: plan_threads's for this call, made by backward (which checked the copies it reads)
    # The backward keeps its threads through a back-off: the forward's fallback
    # (_unit_steps) emulates every thread's part, which the weight gradients' phases do not.
    cdef barrier_t bar
    cdef barrier_t* barp = &bar
    barrier_init(barp, False)
    if plan.split == BY_UNITS:
        with parallel(num_threads=plan.threads):
            leave_caller_cpu(barp, thread_id())
            _unit_backward(thread_id(), team_size(), barp, d, a, dh)
            restore_cpu_mask()
    elif plan.split == BY_SEQUENCES and min(plan.threads, f.threads) > 1:
        # (f.threads: the partial sums were sized for the thread count when the call began.)
        with parallel(num_threads=min(plan.threads, f.threads)):
            leave_caller_cpu(barp, thread_id())
            _backward_by_sequences(thread_id(), team_size(), barp, d, a, f, dh)
            restore_cpu_mask()
    else:
        _bsteps(d, a, f, dh, 0, d.B, plan.tiled_recurrence, <real*>f.partials)
        _reduce_partials(0, 1, d, a, <const real*>f.partials)


def backward(const real[:, :, ::1] x, const real[:, ::1] w_ih, const real[:, ::1] w_hh,
             const Py_ssize_t[::1] lengths, bint reverse, bint linear_before_reset,
             const real[:, :, ::1] gates, const real[:, :, ::1] hprev,
             const real[:, :, ::1] ghn, const real[:, :, ::1] dy, Py_ssize_t dy_col,
             real[:, ::1] dh, real[:, :, ::1] dx, bint dx_accumulate,
             real[:, ::1] dw_ih, real[:, ::1] dw_hh,
             real[::1] db_ih, real[::1] db_hh, bint accumulate,
             real[:, :, ::1] dG, real[:, ::1] dG_transposed, real[:, ::1] dgh, real[:, ::1] ds,
             real[:, :, ::1] work, const real[:, ::1] dy_zero, Py_ssize_t flush_steps,
             real[::1] flush, real[:, ::1] partials, const real[:, ::1] w_ih_t,
             const real[::1] w_hh_cp):
    """Back-propagate through the recurrence recorded by a training forward.

    dh (B, H) holds dL/dh_n on entry and dL/dh0 on exit; dy (T, B, W) may be None (zero),
    its columns [dy_col, dy_col + H) are this direction's. dx (T, B, I) is overwritten, or
    added to when dx_accumulate; the weight and bias gradients are overwritten, or added to
    when accumulate is true; db_ih and db_hh may be None (no bias). ds (B, H) is scratch,
    only touched without linear_before_reset; ghn is None unless linear_before_reset.
    dy_zero (B, H) holds zeros, read in place of a missing dy.

    Scratch of the weight gradients accumulated during the recurrence (serial, or split by
    sequences): flush holds (2 * 3H + 2 * H + 2 * I) * flush_steps * B reals, where flush_steps
    (at least 1, at most T) steps make a flush; partials (threads, (H + I + 2) * 3H), one
    row per thread that may share the call (the OpenMP thread count); w_ih_t (I, 3H) is
    w_ih transposed, read with fewer than 8 inputs (else it may be None). w_hh_cp is W_hh's
    columns packed in panels (pack_weight_columns), read by the GEMVs of one to three
    sequences the tiles do not serve (backward_reads says when; else it may be None).
    Scratch of a split by hidden units (only touched there, so untouched pages cost
    nothing): dG (T, B, 3H), dG_transposed (3H, T*B), dgh (2, B * 3H), work (T, B, H,
    without linear_before_reset).
    """
    cdef Dims d
    cdef BackwardArrays a
    cdef StepGrads f
    cdef Py_ssize_t rows
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
    a.w_hh_cp = NULL
    # The plan is made here, once, so that the copy checked is the copy it reads.
    cdef ThreadPlan plan = plan_threads(d.B, d.H, True)
    if _reads_w_hh_p(plan, d.B):  # forward's GEMVs' twins, on W_hh's column panels
        if w_hh_cp is None or w_hh_cp.shape[0] != panel_size(1, d.H, 3 * d.H):
            raise ValueError(f"w_hh_cp must hold W_hh's columns packed in panels "
                             f"({panel_size(1, d.H, 3 * d.H)} elements): this call's "
                             f"{d.B} sequence(s) run one GEMV each (backward_reads)")
        a.w_hh_cp = &w_hh_cp[0]
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
    if dgh.shape[0] != 2 or dgh.shape[1] != d.B * 3 * d.H:
        raise ValueError(f"dgh must have shape (2, {d.B * 3 * d.H}) (two steps' B x 3H), got "
                         f"({dgh.shape[0]}, {dgh.shape[1]})")
    a.dG = &dG[0, 0, 0]
    a.dG_transposed = &dG_transposed[0, 0]
    a.dgh = &dgh[0, 0]
    rows = flush_steps * d.B
    f.steps = flush_steps
    f.threads = <int>partials.shape[0]
    f.dg = &flush[0]
    f.dgh = &flush[3 * d.H * rows]
    f.h_rows = &flush[6 * d.H * rows]
    f.rh_rows = &flush[7 * d.H * rows]
    f.x_rows = &flush[8 * d.H * rows]
    f.dx_rows = &flush[(8 * d.H + d.n_in) * rows]
    f.partials = &partials[0, 0]
    f.w_ih_t = NULL if w_ih_t is None else &w_ih_t[0, 0]
    with nogil:
        _backward(&d, &a, &f, &dh[0, 0], plan)


def pack_weight_columns(const real[:, ::1] w_hh):
    """W_hh (3H, H)'s columns packed in panels of 16, each stored k-major (a contiguous
    3H x 16 block, zero-padded past column H): what the backward's GEMVs read for
    dh = dG W_hh (_panels.h): one sequence's, and 2-3 past the training limit's. Returns
    a new 1-D array of the same dtype."""
    cdef Py_ssize_t K = w_hh.shape[0], H = w_hh.shape[1]
    if K != 3 * H:
        raise ValueError(f"w_hh must have shape (3H, H), got ({K}, {H})")
    out = aligned_empty(panel_size(1, H, K), np.float32 if real is float else np.float64)
    cdef real[::1] o = out
    if H > 0:
        with nogil:
            pack_column_panels(&w_hh[0, 0], K, H, &o[0])
    return out
