# The gate passes: elementwise, fused, vectorisable loops over a step's rows for the hidden
# units j0 <= j < j1 (all of them, or one thread's slice). Forward: the activations and the
# new state; backward: the gates' gradients. The recurrent products around them live in the
# forward and backward loops. See docs/design.md sections 1 (equations) and 4 (Kernels).

cdef inline void _zero_units(real* g, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1
                             ) noexcept nogil:
    """Zero the units j0 <= j < j1 of the three gate blocks of a row of g (3H)."""
    cdef Py_ssize_t k
    for k in range(3):
        fill(g + k * H + j0, j1 - j0, <real>0)


cdef inline real _preactivation(const real* g, const real* q, const real* b_ih,
                                const real* b_hh, Py_ssize_t i) noexcept nogil:
    """gi + gh + b_ih + b_hh at column i, summed as (gi + gh) + (b_ih + b_hh): two additions
    deep instead of three. The forward passes are bound by the latency of each unit's chain
    (sigmoid r, then tanh n from it, then the state), not by their instruction count."""
    return (g[i] + q[i]) + (b_ih[i] + b_hh[i])


cdef inline void _masked(Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, real* y, real* g,
                         const real* h, real* h_out, real* hprev) noexcept nogil:
    """A step past the sequence's length, units j0 <= j < j1: output zeros, keep the state;
    the gates and the recorded state are zeroed so that backward's products over all rows
    stay finite."""
    cdef Py_ssize_t n = j1 - j0
    fill(y + j0, n, <real>0)
    _zero_units(g, H, j0, j1)
    fill(hprev + j0, n, <real>0)
    if h_out != h:
        memcpy(h_out + j0, h + j0, n * sizeof(real))


cdef void _gates_lbr(Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t t,
                     const Py_ssize_t* lengths, real* gi, const real* gh, const real* b_ih,
                     const real* b_hh, const real* h, real* h_out, real* y, Py_ssize_t ldy,
                     real* hprev, real* ghn, bint keep) noexcept nogil:
    """linear_before_reset=True: n = tanh(gi_n + r * (h W_hn^T + b_hn)), units j0 <= j < j1.

    gi (B, G) holds x W_ih^T; gh (B, G) holds h W_hh^T. The new state goes to h_out (B, H),
    which may be h. ``keep`` (training, GRU.gates): gi is overwritten with r, z, n, and
    hprev and ghn (B, H) receive h and the recurrent n term; inference skips those stores.
    """
    cdef Py_ssize_t b
    for b in range(B):
        if t >= lengths[b]:
            _masked(H, j0, j1, y + b * ldy, gi + b * 3 * H, h + b * H, h_out + b * H,
                    hprev + b * H)
            fill(ghn + b * H + j0, j1 - j0, <real>0)
        elif keep:
            _lbr_row(H, j0, j1, gi + b * 3 * H, gh + b * 3 * H, b_ih, b_hh, h + b * H,
                     h_out + b * H, y + b * ldy, hprev + b * H, ghn + b * H, True)
        else:
            _lbr_row(H, j0, j1, gi + b * 3 * H, gh + b * 3 * H, b_ih, b_hh, h + b * H,
                     h_out + b * H, y + b * ldy, hprev + b * H, ghn + b * H, False)


cdef enum:
    # Units per block of the forward gate passes' split loops (_lbr_row's three, two in
    # _gates_rz and _gates_n): their scratch, at most 4 x 64 reals on the stack. 32 and 128
    # measured the same (B = 16, H = 128, both builds).
    GATE_BLOCK = 64


cdef inline void _lbr_row(Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, real* g, const real* q,
                          const real* b_ih, const real* b_hh, const real* h, real* h_out,
                          real* y, real* hprev, real* ghn, bint keep) noexcept nogil:
    """_gates_lbr for one row; ``keep`` is a constant at both call sites, so the compiler
    makes one version with the stores and one without (vectorised, branch-free). With the
    branch inside one loop gcc kept it there: B = 16, H = 128 took 1.05x the time (one
    core, AVX-512; 1.02x on AVX2).

    Three loops over each block of units, not one: a unit's chain (the exps of r and z,
    then r, the exp of n's argument, then n and the state) is ~150 cycles deep, and in one
    loop the core's schedulers fill with its waiting operations before the next units'
    independent ones come in, so the loop ran at the chain's pace. Split where the chain is
    (exps; r and n's exp; n and the state), each loop's chain is a third as deep and its
    units overlap. Every unit's operations are the same, so are the bits. T = 100, I = H,
    one core, fresh processes alternating (AVX2 / AVX-512): B = 16, H = 128 2.73-2.89 ->
    2.62-2.75 ms / 1.37-1.40 -> 1.34-1.37 ms; B = 1, H = 64 64.4-66.1 -> 60.8-62.6 us /
    41.6-42.1 -> 39.8-41.4 us; T = 1000, H = 32 0.207-0.212 -> 0.180-0.186 ms /
    0.141-0.147 -> 0.135-0.139 ms; larger shapes within noise."""
    cdef Py_ssize_t jb = j0, j, k, m
    cdef real r, z, a, n, hn, hp, lo, hi
    cdef real er[GATE_BLOCK]
    cdef real ez[GATE_BLOCK]
    cdef real an[GATE_BLOCK]
    cdef real en[GATE_BLOCK]
    exp_limits(&lo, &hi)
    while jb < j1:  # blocks of units: the three loops' scratch stays in L1
        m = min(<Py_ssize_t>GATE_BLOCK, j1 - jb)
        for k in range(m):
            er[k] = exp_approx(-_preactivation(g, q, b_ih, b_hh, jb + k), lo, hi)
            ez[k] = exp_approx(-_preactivation(g, q, b_ih, b_hh, H + jb + k), lo, hi)
        for k in range(m):
            j = jb + k
            r = <real>1 / (<real>1 + er[k])
            hn = q[2 * H + j] + b_hh[2 * H + j]
            a = g[2 * H + j] + b_ih[2 * H + j] + r * hn
            an[k] = a
            en[k] = exp_neg2abs(a, lo)
            if keep:
                g[j] = r
                ghn[j] = hn
        for k in range(m):
            j = jb + k
            n = tanh_from_exp(en[k], an[k])
            z = <real>1 / (<real>1 + ez[k])
            hp = h[j]
            if keep:
                g[H + j] = z
                g[2 * H + j] = n
                hprev[j] = hp
            # (1 - z) n + z h with 1 - z = ez z: no cancellation when z is close to 1.
            hn = z * (hp + ez[k] * n)
            h_out[j] = hn
            y[j] = hn
        jb += m


cdef void _gates_rz(Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t t,
                    const Py_ssize_t* lengths, real* gi, const real* gh, const real* b_ih,
                    const real* b_hh, const real* h, real* rh, real* ez,
                    bint keep) noexcept nogil:
    """linear_before_reset=False, first half, units j0 <= j < j1: z into gi (and r where
    ``keep``), r * h into rh (B, H), exp(-a_z) into ez (B, H) for the second half. The
    stores ``keep`` saves (one here, two in _gates_n) gained nothing measurable with the
    branch in the loop (B = 16, H = 128, both builds), so it stays there; _lbr_row says why
    the other pass splits its loop. The exps, then the rest, in two loops for _lbr_row's
    reason (with _gates_n's two: T = 1000, H = 32 0.93-0.94x the time on both builds,
    B = 16, H = 128 0.98-0.99x; same bits)."""
    cdef Py_ssize_t b, j, jb, k, m, G = 3 * H
    cdef real r, e, lo, hi
    cdef real* g
    cdef const real* q
    cdef real er[GATE_BLOCK]
    cdef real ezb[GATE_BLOCK]
    exp_limits(&lo, &hi)
    for b in range(B):
        g = gi + b * G
        q = gh + b * G
        if t >= lengths[b]:
            fill(rh + b * H + j0, j1 - j0, <real>0)
            continue
        jb = j0
        while jb < j1:  # the exps, then the rest: two loops, as _lbr_row's three
            m = min(<Py_ssize_t>GATE_BLOCK, j1 - jb)
            for k in range(m):
                er[k] = exp_approx(-_preactivation(g, q, b_ih, b_hh, jb + k), lo, hi)
                ezb[k] = exp_approx(-_preactivation(g, q, b_ih, b_hh, H + jb + k), lo, hi)
            for k in range(m):
                j = jb + k
                r = <real>1 / (<real>1 + er[k])
                if keep:
                    g[j] = r
                e = ezb[k]
                g[H + j] = <real>1 / (<real>1 + e)
                ez[b * H + j] = e
                rh[b * H + j] = r * h[b * H + j]
            jb += m


cdef void _gates_n(Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t t,
                   const Py_ssize_t* lengths, real* gi, const real* gh, const real* b_ih,
                   const real* b_hh, const real* h, real* h_out, real* y, Py_ssize_t ldy,
                   real* hprev, const real* ez, bint keep) noexcept nogil:
    """linear_before_reset=False, second half, units j0 <= j < j1:
    n = tanh(gi_n + b_in + (r*h) W_hn^T + b_hn); the new state goes to h_out; n into gi and
    h into hprev where ``keep``."""
    cdef Py_ssize_t b, j, jb, k, m, G = 3 * H
    cdef real z, a, n, hp, lo, hi
    cdef real* g
    cdef const real* q
    cdef real an[GATE_BLOCK]
    cdef real en[GATE_BLOCK]
    exp_limits(&lo, &hi)
    for b in range(B):
        g = gi + b * G
        q = gh + b * G
        if t >= lengths[b]:
            _masked(H, j0, j1, y + b * ldy, g, h + b * H, h_out + b * H, hprev + b * H)
            continue
        jb = j0
        while jb < j1:  # tanh's exp, then the rest: two loops, as _lbr_row's three
            m = min(<Py_ssize_t>GATE_BLOCK, j1 - jb)
            for k in range(m):
                a = _preactivation(g, q, b_ih, b_hh, 2 * H + jb + k)
                an[k] = a
                en[k] = exp_neg2abs(a, lo)
            for k in range(m):
                j = jb + k
                z = g[H + j]
                n = tanh_from_exp(en[k], an[k])
                hp = h[b * H + j]
                if keep:
                    g[2 * H + j] = n
                    hprev[b * H + j] = hp
                n = z * (hp + ez[b * H + j] * n)
                h_out[b * H + j] = n
                y[b * ldy + j] = n
            jb += m


# With d = dL/dh' (carried gradient plus dy_t) and the stored r, z, n, h, hn = h W_hn^T + b_hn:
#   dn  = d (1 - z)            dz = d (h - n)            dh  = d z  (+ the recurrent terms)
#   dan = dn (1 - n^2)         daz = dz z (1 - z)        (pre-activation gradients)
#   lbr:     dar = dan hn r (1 - r);  dgh = [dar, daz, dan r];  dh += dgh W_hh
#   not lbr: ds = dan W_hn;  dar = ds h r (1 - r);  dh += ds r + [dar, daz] W_h[rz]
#   dgi = [dar, daz, dan] for both; it is stored for all steps in dG (T, B, G) so that
#   dx, dW_ih and dW_hh become large GEMMs after the loop.

cdef void _dgates_lbr(Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t t,
                      const Py_ssize_t* lengths, const real* g, const real* hprev,
                      const real* ghn, const real* dy, Py_ssize_t ldy, real* dh, real* dg,
                      real* dgh) noexcept nogil:
    """Units j0 <= j < j1: the gates' gradients into dg (dgi) and dgh, dh <- d z."""
    cdef Py_ssize_t b, j, G = 3 * H
    cdef real d, r, z, n, dan, daz, dar
    for b in range(B):
        if t >= lengths[b]:
            _zero_units(dg + b * G, H, j0, j1)
            _zero_units(dgh + b * G, H, j0, j1)
            continue
        for j in range(j0, j1):
            d = dh[b * H + j] + dy[b * ldy + j]
            r = g[b * G + j]
            z = g[b * G + H + j]
            n = g[b * G + 2 * H + j]
            dan = d * (<real>1 - z) * (<real>1 - n * n)
            daz = d * (hprev[b * H + j] - n) * z * (<real>1 - z)
            dar = dan * ghn[b * H + j] * r * (<real>1 - r)
            dg[b * G + j] = dar
            dg[b * G + H + j] = daz
            dg[b * G + 2 * H + j] = dan
            dgh[b * G + j] = dar
            dgh[b * G + H + j] = daz
            dgh[b * G + 2 * H + j] = dan * r
            dh[b * H + j] = d * z


cdef void _dgates_zn(Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t t,
                     const Py_ssize_t* lengths, const real* g, const real* hprev,
                     const real* dy, Py_ssize_t ldy, real* dh, real* dg) noexcept nogil:
    """linear_before_reset=False, first half, units j0 <= j < j1: daz, dan and the direct
    dh = d z."""
    cdef Py_ssize_t b, j, G = 3 * H
    cdef real d, z, n
    for b in range(B):
        if t >= lengths[b]:
            _zero_units(dg + b * G, H, j0, j1)
            continue
        for j in range(j0, j1):
            d = dh[b * H + j] + dy[b * ldy + j]
            z = g[b * G + H + j]
            n = g[b * G + 2 * H + j]
            dg[b * G + H + j] = d * (hprev[b * H + j] - n) * z * (<real>1 - z)
            dg[b * G + 2 * H + j] = d * (<real>1 - z) * (<real>1 - n * n)
            dh[b * H + j] = d * z


cdef void _dgates_r(Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t t,
                    const Py_ssize_t* lengths, const real* g, const real* hprev,
                    const real* ds, real* dh, real* dg) noexcept nogil:
    """linear_before_reset=False, second half, units j0 <= j < j1: dar from ds = dan W_hn,
    and dh += ds r."""
    cdef Py_ssize_t b, j, G = 3 * H
    cdef real r
    for b in range(B):
        if t >= lengths[b]:
            continue
        for j in range(j0, j1):
            r = g[b * G + j]
            dg[b * G + j] = ds[b * H + j] * hprev[b * H + j] * r * (<real>1 - r)
            dh[b * H + j] = dh[b * H + j] + ds[b * H + j] * r


def activations(const real[::1] x, real[::1] sig, real[::1] tanh):
    """Apply the kernels' sigmoid and tanh elementwise (exposed to test their error bound)."""
    cdef Py_ssize_t i
    cdef real lo, hi
    with nogil:
        exp_limits(&lo, &hi)
        for i in range(x.shape[0]):
            sig[i] = sigmoid(x[i], lo, hi)
            tanh[i] = tanh_approx(x[i], lo)
