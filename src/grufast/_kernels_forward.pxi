# The forward recurrence: input projections by chunks of steps, then per step the recurrent
# product and the fused gate pass; serial, split by sequences, or split by hidden units as
# plan_threads decides. See docs/design.md sections 4 (Kernels) and 5 (Threads).


cdef void _steps(const Dims* d, const ForwardArrays* a, real* h, Py_ssize_t s0,
                 Py_ssize_t s1, Py_ssize_t first, Py_ssize_t b0, Py_ssize_t b1,
                 bint project, bint tiled) noexcept nogil:
    """Steps s0 <= s < s1 (in visiting order) for the sequences b0 <= b < b1, whose input
    projections for time steps first, first + 1, ... are in gates, or are computed here step
    by step when ``project`` (x W_ih^T through the register-tiled GEMM, on this thread).
    ``tiled``: the recurrent products in the register-tiled GEMM, else, up to 3 sequences
    (one, or 2-3 past the training limit), one GEMV each from the panel-packed weights
    (OpenBLAS's GEMM repacks the weights every step: 2.0-2.2x the time for B = 2), or
    OpenBLAS's GEMM. Sequences never interact, so
    disjoint row ranges run on different threads without any synchronisation."""
    cdef Py_ssize_t T = d.T, B = d.B, I = d.n_in, H = d.H, ldy = d.ldy
    cdef bint reverse = d.reverse, lbr = d.lbr, keep = a.keep
    cdef const real* x = <const real*>a.x
    cdef const real* w_hh = <const real*>a.w_hh
    cdef const real* w_hh_pp = <const real*>a.w_hh_pp
    cdef const real* w_ih_pp = <const real*>a.w_ih_pp
    cdef const real* w_hh_p = <const real*>a.w_hh_p
    cdef const real* b_ih = <const real*>a.b_ih
    cdef const real* b_hh = <const real*>a.b_hh
    cdef real* gates = <real*>a.gates
    cdef real* hprev = <real*>a.hprev
    cdef real* ghn = <real*>a.ghn
    cdef real* step_scratch = <real*>a.step_scratch
    cdef bint backwards
    cdef Py_ssize_t s, t, b, n = b1 - b0, G = 3 * H, BG = B * G, BH = B * H
    cdef real* gi
    cdef real* hp_t = step_scratch + b0 * H
    cdef real* hn_t = step_scratch + BH + b0 * H  # lbr: the recurrent n term; else exp(-a_z)
    cdef real* y_t
    cdef real* hr = h + b0 * H
    cdef real* ghr = <real*>a.gh + b0 * G
    cdef real* rhr = <real*>a.rh + b0 * H
    cdef const Py_ssize_t* lr = a.lengths + b0
    for s in range(s0, s1):
        t = T - 1 - s if reverse else s
        backwards = s % 2 == 1  # the GEMVs walk the weights the other way every other step
        gi = gates + (t - first) * BG + b0 * G
        y_t = <real*>a.y + (t * B + b0) * ldy
        if hprev != NULL:
            hp_t = hprev + t * BH + b0 * H
        if ghn != NULL:
            hn_t = ghn + t * BH + b0 * H
        if project:
            prepacked_gemm(n, G, I, x + (t * B + b0) * I, I, w_ih_pp, gi, G, False)
        if lbr:
            if tiled:
                _recurrent_tiles(0, 3, n, H, hr, w_hh_pp, ghr)
            elif n < 4:
                for b in range(n):
                    _recurrent_products(0, 3, 1, H, 0, H, hr + b * H, w_hh_p, w_hh_pp,
                                        ghr + b * G, backwards)
            else:
                gemm_rm(c'N', c'T', n, G, H, 1, hr, H, w_hh, H, 0, ghr, G)
            _gates_lbr(n, H, 0, H, t, lr, gi, ghr, b_ih, b_hh, hr, hr, y_t, ldy, hp_t, hn_t,
                       keep)
        else:
            if tiled:
                _recurrent_tiles(0, 2, n, H, hr, w_hh_pp, ghr)
            elif n < 4:
                for b in range(n):
                    _recurrent_products(0, 2, 1, H, 0, H, hr + b * H, w_hh_p, w_hh_pp,
                                        ghr + b * G, backwards)
            else:
                gemm_rm(c'N', c'T', n, 2 * H, H, 1, hr, H, w_hh, H, 0, ghr, G)
            _gates_rz(n, H, 0, H, t, lr, gi, ghr, b_ih, b_hh, hr, rhr, hn_t, keep)
            if tiled:
                _recurrent_tiles(2, 3, n, H, rhr, w_hh_pp, ghr)
            elif n < 4:
                for b in range(n):
                    _recurrent_products(2, 3, 1, H, 0, H, rhr + b * H, w_hh_p, w_hh_pp,
                                        ghr + b * G, backwards)
            else:
                gemm_rm(c'N', c'T', n, H, H, 1, rhr, H, w_hh + 2 * H * H, H, 0, ghr + 2 * H,
                        G)
            _gates_n(n, H, 0, H, t, lr, gi, ghr, b_ih, b_hh, hr, hr, y_t, ldy, hp_t, hn_t,
                     keep)


cdef inline void _recurrent_tiles(Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t n, Py_ssize_t H,
                                  const real* h, const real* w_hh_pp, real* gh) noexcept nogil:
    """gh[:, k0 H:k1 H] = h (n, H) @ W_hh^T's columns of the gates k0 <= k < k1, in the tiled
    GEMM on W_hh^T packed once (pack_gemm_panels): the tiles read each panel contiguously,
    where W_hh^T's rows lie 3H apart (B = 64, H = 512 inference 0.89x the time on one
    core, 0.76x on two)."""
    prepacked_gemm_columns(n, k0 * H, k1 * H, H, h, H, w_hh_pp, 3 * H, gh + k0 * H, 3 * H,
                           False)


cdef inline const real* _panels_of(const real* w_p, Py_ssize_t H, Py_ssize_t K,
                                   Py_ssize_t k, Py_ssize_t j0) noexcept nogil:
    """The first panel of gate k's rows j0, j0 + 1, ... (j0 a multiple of 16) in W (3H, K)
    packed in panels (grufast._gemm.pack_panels: gate by gate): W_hh (K = H), or the
    streaming step's W_ih (K = I)."""
    return w_p + (k * ((H + PANEL - 1) // PANEL) + j0 // PANEL) * K * PANEL


cdef inline void _project_window(int part, Py_ssize_t k, int nt, Py_ssize_t n,
                                 Py_ssize_t I, Py_ssize_t H, const real* x,
                                 const real* w_ih_pp, real* gates) noexcept nogil:
    """gates (n, 3H) <- x (n, I) @ W_ih^T for gate k's columns of one part's hidden units:
    the window of W_ih^T packed once for the tiled GEMM (w_ih_pp, pack_gemm_panels), read in
    place; every element the same chain of fused multiply-adds as in the whole-width
    product, whichever tile computes it (_tiles.h)."""
    cdef Py_ssize_t j0 = _share(H, nt, part, 16), j1 = _share(H, nt, part + 1, 16)
    prepacked_gemm_columns(n, k * H + j0, k * H + j1, I, x, I, w_ih_pp, 3 * H,
                           gates + k * H + j0, 3 * H, False)


cdef inline void _recurrent_products(Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t B,
                                     Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                                     const real* v, const real* w_hh_p, const real* w_hh_pp,
                                     real* gh, bint backwards) noexcept nogil:
    """gh[:, k H + j0 : k H + j1] = v (B, H) @ W_hk^T's columns j0 <= j < j1, for the gates
    k0 <= k < k1: one sequence by GEMVs on the panel-packed W_hh (gates in the order
    ``backwards`` says, so that a caller alternating directions step by step reads first
    what it read last, in L2), a batch in the register tiles on the window of the packed
    W_hh^T (the same bits as the whole width: _tiles.h)."""
    cdef Py_ssize_t kk, k
    for kk in range(k0, k1):
        k = k0 + k1 - 1 - kk if backwards else kk
        if B == 1:
            panel_gemv(j1 - j0, H, v, _panels_of(w_hh_p, H, H, k, j0), gh + k * H + j0,
                       backwards)
        else:
            prepacked_gemm_columns(B, k * H + j0, k * H + j1, H, v, H, w_hh_pp, 3 * H,
                                   gh + k * H + j0, 3 * H, False)


cdef void _unit_steps(int p, int nt, bint alone, barrier_t* bar, const Dims* d,
                      const ForwardArrays* a, real* h) noexcept nogil:
    """Thread p of nt runs the B sequences for its part of the hidden units,
    j0 <= j < j1: their columns of h W_hh^T (so each thread streams a 1/nt slice of the
    weights, which stays in its own cache: B = 1 by GEMVs, a batch in the register tiles)
    and of the gates; the columns of x W_ih^T, per
    chunk of steps, go in blocks to whichever thread comes first. The threads meet
    at a barrier after each step, where the new state is complete (and once more without
    linear_before_reset, where r * h is). The state alternates between h and a scratch row,
    so that no thread writes the state another one is still reading.

    ``alone``: this thread runs all nt parts in turn, without barriers (the back-off after a
    fallback). When the barrier finds the partners descheduled (waits over two fifths of the
    call: _threads.h), the first thread to arrive there goes on alone and the others leave.
    Either way every part is computed as its own thread would, so the result is bitwise the
    same."""
    cdef Py_ssize_t T = d.T, B = d.B, I = d.n_in, H = d.H, ldy = d.ldy, chunk = a.chunk
    cdef bint reverse = d.reverse, lbr = d.lbr, keep = a.keep
    cdef const real* x = <const real*>a.x
    cdef const real* w_ih_pp = <const real*>a.w_ih_pp
    cdef const real* w_hh_p = <const real*>a.w_hh_p
    cdef const real* w_hh_pp = <const real*>a.w_hh_pp
    cdef const real* b_ih = <const real*>a.b_ih
    cdef const real* b_hh = <const real*>a.b_hh
    cdef const Py_ssize_t* lengths = a.lengths
    cdef real* y = <real*>a.y
    cdef real* gates = <real*>a.gates
    cdef real* hprev = <real*>a.hprev
    cdef real* ghn = <real*>a.ghn
    cdef real* gh = <real*>a.gh
    cdef real* rh = <real*>a.rh
    cdef real* step_scratch = <real*>a.step_scratch
    cdef Py_ssize_t s = 0, q, t, n, b, first, G = 3 * H, BG = B * G, BH = B * H, j0, j1
    cdef Py_ssize_t blk, base = 0
    cdef bint backwards  # this step walks the weights' strips last to first
    cdef int part, pa = 0 if alone else p, pb = nt if alone else p + 1  # parts run here
    cdef int team = 1 if alone else nt  # threads meeting at the barrier
    cdef int went  # barrier_wait's answer: 0 as before, 1 go on alone, -1 leave
    cdef real* states[2]
    cdef real* gi
    cdef real* hp_t = step_scratch
    cdef real* hn_t = step_scratch + BH  # lbr: the recurrent n term; else exp(-a_z)
    states[0] = h
    states[1] = step_scratch + 2 * BH
    while s < T:
        n = min(chunk, T - s)
        first = T - s - n if reverse else s
        if team > 1:
            # The chunk's projections in 3 * nt blocks (a gate's columns for one share),
            # taken first come first served: a pool thread woken from sleep starts late,
            # and the others meanwhile take its blocks. Each block is computed the same
            # whoever takes it; the barrier then publishes them all.
            while True:
                blk = <Py_ssize_t>ticket(bar) - base
                if blk >= 3 * nt:
                    break
                _project_window(<int>(blk // 3), blk % 3, nt, n * B, I, H,
                                x + first * B * I, w_ih_pp, gates)
            base += 4 * nt  # 3 nt blocks, and each thread's one ticket past them
            went = barrier_wait(bar, team, p)
            if went < 0:
                return
            if went > 0:
                pa, pb, team = 0, nt, 1
        else:
            for part in range(pa, pb):
                for b in range(3):
                    _project_window(part, b, nt, n * B, I, H, x + first * B * I, w_ih_pp,
                                    gates)
        for q in range(s, s + n):
            t = T - 1 - q if reverse else q
            gi = gates + (t - first) * BG
            if hprev != NULL:
                hp_t = hprev + t * BH
            if ghn != NULL:
                hn_t = ghn + t * BH
            # Alternate directions through the weights each step (gates and strips): what
            # was read last is read first, from cache (a thread's slice may exceed L2).
            backwards = q % 2 == 1
            if team == 1 and nt > 1:
                # Alone with every share: the recurrent products for all units at once (the
                # same bits as the shares' products).
                _recurrent_products(0, 3 if lbr else 2, B, H, 0, H, states[q % 2], w_hh_p,
                                    w_hh_pp, gh, backwards)
            for part in range(pa, pb):
                j0, j1 = _share(H, nt, part, 16), _share(H, nt, part + 1, 16)
                if team > 1 or nt == 1:
                    _recurrent_products(0, 3 if lbr else 2, B, H, j0, j1, states[q % 2],
                                        w_hh_p, w_hh_pp, gh, backwards)
                if lbr:
                    _gates_lbr(B, H, j0, j1, t, lengths, gi, gh, b_ih, b_hh, states[q % 2],
                               states[(q + 1) % 2], y + t * B * ldy, ldy, hp_t, hn_t, keep)
                else:
                    _gates_rz(B, H, j0, j1, t, lengths, gi, gh, b_ih, b_hh, states[q % 2],
                              rh, hn_t, keep)
            if not lbr:
                if team > 1:
                    went = barrier_wait(bar, team, p)
                    if went < 0:
                        return
                    if went > 0:  # the team fell back to one thread: this one
                        pa, pb, team = 0, nt, 1
                if team == 1 and nt > 1:
                    _recurrent_products(2, 3, B, H, 0, H, rh, w_hh_p, w_hh_pp, gh,
                                        backwards)
                for part in range(pa, pb):
                    j0, j1 = _share(H, nt, part, 16), _share(H, nt, part + 1, 16)
                    if team > 1 or nt == 1:
                        _recurrent_products(2, 3, B, H, j0, j1, rh, w_hh_p, w_hh_pp, gh,
                                            backwards)
                    _gates_n(B, H, j0, j1, t, lengths, gi, gh, b_ih, b_hh, states[q % 2],
                             states[(q + 1) % 2], y + t * B * ldy, ldy, hp_t, hn_t, keep)
            if team > 1:
                went = barrier_wait(bar, team, p)
                if went < 0:
                    return
                if went > 0:
                    pa, pb, team = 0, nt, 1
        s += n
    if T % 2:
        j0, j1 = _share(H, nt, pa, 16), _share(H, nt, pb, 16)
        for b in range(B):
            memcpy(h + b * H + j0, states[1] + b * H + j0, (j1 - j0) * sizeof(real))


cdef void _forward(const Dims* d, const ForwardArrays* a, real* h,
                   ThreadPlan plan) noexcept nogil:
    # plan: plan_threads's for this call, made by forward (which checked the copies it reads)
    cdef Py_ssize_t T = d.T, B = d.B, I = d.n_in, G = 3 * d.H
    cdef const real* x = <const real*>a.x
    cdef real* gates = <real*>a.gates
    cdef Py_ssize_t s = 0, n, first
    cdef int p, nt = plan.threads
    cdef barrier_t bar
    cdef barrier_t* barp = &bar
    cdef int parts = 1
    if plan.split == BY_UNITS:
        barrier_init(barp, True)
        if plan.alone:
            _unit_steps(0, nt, True, barp, d, a, h)
            return
        with parallel(num_threads=nt):
            # The team may be smaller than asked for: split among the threads that came.
            leave_caller_cpu(barp, thread_id())
            _unit_steps(thread_id(), team_size(), False, barp, d, a, h)
            restore_cpu_mask()
        return
    # Split by sequences, each thread also projects its own sequences' inputs, step by
    # step: OpenBLAS's threads would spin for ~0.1 s after a chunk's GEMM and take a core
    # from ours. (The summation order then differs from OpenBLAS's: see README, threads.)
    cdef bint project = plan.split == BY_SEQUENCES
    if project:
        barrier_init(barp, False)  # no barrier: for the caller's CPU (leave_caller_cpu)
    while s < T:
        # Input projections of the next `chunk` steps in one GEMM: gates = x W_ih^T.
        # Training passes chunk = T (backward reads them all); inference keeps memory
        # independent of T.
        n = min(a.chunk, T - s)
        first = T - s - n if d.reverse else s
        if not project:
            if _tiled_projection(n * B, G, I):
                # Small projections, or few rows, in the tiled GEMM on the prepacked weights:
                # OpenBLAS would start its threads for less work than waking them costs,
                # and repack the weights for too few rows to pay for it
                # (_kernels_threads.pxi).
                prepacked_gemm(n * B, G, I, x + first * B * I, I, <const real*>a.w_ih_pp,
                               gates, G, False)
            else:
                gemm_rm(c'N', c'T', n * B, G, I, 1, x + first * B * I, I,
                        <const real*>a.w_ih, I, 0, gates, G)
        if plan.split == SERIAL:
            _steps(d, a, h, s, s + n, first, 0, B, False, plan.tiled_recurrence)
        else:
            # By sequences: each part of the batch (whole register tiles of 4 rows) runs
            # through the whole chunk on one thread. Two parts per thread, handed out as
            # threads come free: a thread that shares its core with another process takes
            # fewer (each row's sums are the same whichever thread runs it).
            parts = min(<int>(B // 4), 2 * nt)
            with parallel(num_threads=nt):
                leave_caller_cpu(barp, thread_id())
                for p in prange(parts, schedule="dynamic", chunksize=1):
                    _steps(d, a, h, s, s + n, first, _share(B, parts, p, 4),
                           _share(B, parts, p + 1, 4), True, plan.tiled_recurrence)
                restore_cpu_mask()
        s += n


def forward(const real[:, :, ::1] x, const real[:, ::1] w_ih, const real[::1] w_ih_pp,
            const real[:, ::1] w_hh, const real[::1] w_hh_pp, const real[::1] w_hh_p,
            const real[::1] b_ih, const real[::1] b_hh, const Py_ssize_t[::1] lengths,
            bint reverse, bint linear_before_reset, real[:, :, ::1] y, Py_ssize_t y_col,
            real[:, ::1] h, real[:, :, ::1] gates, bint keep_gates, real[:, :, ::1] hprev,
            real[:, :, ::1] ghn, real[:, ::1] gh, real[:, ::1] rh, real[:, ::1] step_scratch):
    """Run the recurrence over x (T, B, I); all outputs are caller-allocated.

    w_ih_pp and w_hh_pp are W_ih^T and W_hh^T packed for the register-tiled GEMM
    (pack_gemm_panels), read by the input projections of few rows, of each thread's
    sequences and of a split by hidden units (each thread a window of its columns), and by
    the recurrent products of batches;
    w_hh_p is W_hh packed in panels (pack_weight_panels), read by the GEMVs of one sequence
    (and of 2-3 past the training limit). w_hh_pp and w_hh_p may be None where this call
    does not read them (forward_reads says which it does); a call that would read a missing
    one is refused.

    y (T, B, W) receives the outputs in its columns [y_col, y_col + H): the two directions of
    a bidirectional layer write side by side into one buffer.

    h (B, H) holds h0 on entry and h_n on exit. gates (C, B, 3H) holds the input projections
    of C steps at a time; ``keep_gates`` (training, GRU.gates: C = T) makes it end holding
    every step's r, z, n.
    hprev (T, B, H) and ghn (T, B, H) are None in inference; in training they receive the
    state entering each step and the recurrent n term (h W_hn^T + b_hn, linear_before_reset
    only; None otherwise). gh (B, 3H), rh (B, H) and step_scratch (3B, H) are per-step
    scratch.
    """
    cdef Dims d
    cdef ForwardArrays a
    d.T, d.B, d.n_in, d.H = x.shape[0], x.shape[1], x.shape[2], h.shape[1]
    d.ldy = y.shape[2]
    d.reverse = reverse
    d.lbr = linear_before_reset
    d.accumulate = False
    d.dx_accumulate = False
    if w_ih.shape[0] != 3 * d.H or w_ih.shape[1] != d.n_in:
        raise ValueError(f"w_ih must have shape ({3 * d.H}, {d.n_in}) (3H from h, I from x), "
                         f"got ({w_ih.shape[0]}, {w_ih.shape[1]})")
    if w_ih_pp.shape[0] != w_ih.shape[0] * w_ih.shape[1]:
        raise ValueError(f"w_ih_pp must hold {w_ih.shape[0] * w_ih.shape[1]} elements "
                         f"(W_ih^T packed), got {w_ih_pp.shape[0]}")
    if hprev is not None and not keep_gates:
        raise ValueError("training (hprev given) needs keep_gates: backward reads r, z, n")
    # The plan is made here, once, so that the copies checked are the copies it reads.
    cdef ThreadPlan plan = plan_threads(d.B, d.H, hprev is not None)
    if w_hh_pp is None:
        if _reads_w_hh_pp(plan, d.B):
            raise ValueError("w_hh_pp is None, but this call's recurrent products run in the "
                             "register-tiled GEMM, which reads it")
    elif w_hh_pp.shape[0] != 3 * d.H * d.H:
        raise ValueError(f"w_hh_pp must hold {3 * d.H * d.H} elements (W_hh^T packed), got "
                         f"{w_hh_pp.shape[0]}")
    if w_hh_p is None:
        if _reads_w_hh_p(plan, d.B):
            raise ValueError(f"w_hh_p is None, but this call's {d.B} sequence(s) run one "
                             "GEMV each, which reads it")
    elif w_hh_p.shape[0] != panel_size(3, d.H, d.H):
        raise ValueError(f"w_hh_p must hold {panel_size(3, d.H, d.H)} elements (W_hh packed "
                         f"in panels), got {w_hh_p.shape[0]}")
    if d.T == 0 or d.B == 0:
        return
    a.x = &x[0, 0, 0]
    a.w_ih = &w_ih[0, 0]
    a.w_ih_pp = &w_ih_pp[0]
    a.w_hh = &w_hh[0, 0]
    a.w_hh_pp = NULL if w_hh_pp is None else &w_hh_pp[0]
    a.w_hh_p = NULL if w_hh_p is None else &w_hh_p[0]
    a.b_ih = &b_ih[0]
    a.b_hh = &b_hh[0]
    a.lengths = &lengths[0]
    a.y = &y[0, 0, 0] + y_col
    a.chunk = gates.shape[0]
    a.gates = &gates[0, 0, 0]
    a.keep = keep_gates
    a.hprev = NULL
    a.ghn = NULL
    if hprev is not None:
        a.hprev = &hprev[0, 0, 0]
    if ghn is not None:
        a.ghn = &ghn[0, 0, 0]
    a.gh = &gh[0, 0]
    a.rh = &rh[0, 0]
    a.step_scratch = &step_scratch[0, 0]
    with nogil:
        _forward(&d, &a, &h[0, 0], plan)


def transpose_into(const real[:, ::1] a, real[:, ::1] out):
    """out (C, R) <- a (R, C) transposed: the transposed weight copies (w_ih_t, w_hh_t) the
    cells read, made after an optimiser step where a call needs them (functional.Weights),
    through the backward's blocked transpose (_transpose_rows: blocks of 16 rows, each cache
    line read serving 16 columns). A (1536, 512) float32 matrix: 0.25 ms (NumPy's strided
    copy 2.6 ms)."""
    cdef Py_ssize_t R = a.shape[0], C = a.shape[1]
    if out.shape[0] != C or out.shape[1] != R:
        raise ValueError(f"out must have shape ({C}, {R}), got ({out.shape[0]}, "
                         f"{out.shape[1]})")
    if R == 0 or C == 0:
        return
    with nogil:
        _transpose_rows(0, C, R, C, &a[0, 0], NULL, &out[0, 0])


def pack_weight_panels(const real[:, ::1] w_hh):
    """W_hh (3H, H) packed in panels of 16 rows per gate, each stored k-major (a contiguous
    H x 16 block, zero-padded past the gate's last row): what forward's GEMVs of one to three
    sequences read (_panels.h). Returns a new 1-D array of the same dtype."""
    cdef Py_ssize_t R = w_hh.shape[0], H = w_hh.shape[1]
    if R != 3 * H:
        raise ValueError(f"w_hh must have shape (3H, H), got ({R}, {H})")
    return _pack_gate_panels(w_hh)


def _pack_gate_panels(const real[:, ::1] w):
    """W (3H, K) packed in panels of 16 rows per gate (pack_panels: zero-padded past each
    gate's last row), as a new 1-D array: W_hh for forward's GEMVs, W_ih for the streaming
    step's."""
    cdef Py_ssize_t H = w.shape[0] // 3, K = w.shape[1]
    out = aligned_empty(panel_size(3, H, K), np.float32 if real is float else np.float64)
    cdef real[::1] o = out
    if H > 0 and K > 0:
        with nogil:
            pack_panels(&w[0, 0], 3, H, K, &o[0])
    return out


def pack_gemm_panels(const real[:, ::1] w_t, bint transposed=False):
    """w_t (K, N) packed for the tiled GEMM (grufast._gemm.pack_gemm_weights): the panels
    packed_gemm would copy at every call, copied once; with ``transposed``, w_t is given as
    its transpose (N, K) (W_ih itself for W_ih^T). Returns a new 1-D array of K * N
    elements."""
    cdef Py_ssize_t K = w_t.shape[1 if transposed else 0], N = w_t.shape[0 if transposed else 1]
    out = aligned_empty(K * N, np.float32 if real is float else np.float64)
    cdef real[::1] o = out
    if K > 0 and N > 0:
        with nogil:
            pack_gemm_weights(N, K, &w_t[0, 0], K if transposed else N, transposed, &o[0])
    return out
