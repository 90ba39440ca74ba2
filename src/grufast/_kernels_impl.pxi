# The kernels' implementation, compiled once per instruction set: _kernels.pyx (baseline
# x86-64 / any CPU), _kernels_avx2.pyx (AVX2 + FMA) and _kernels_avx512.pyx include this file.


cimport numpy as cnp
import numpy as np
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from grufast._types cimport real
from grufast._blas cimport fill, gemm_rm, gemv_rm
from grufast._gemm cimport K_BLOCK, TILE_MAX, packed_gemm, row_gemv, small_gemm
from grufast._activations cimport exp_approx, sigmoid, tanh_approx
from cython.parallel cimport parallel, prange

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int grufast_max_threads(void) { return omp_get_max_threads(); }
    static int grufast_team_size(void) { return omp_get_num_threads(); }
    static int grufast_thread_id(void) { return omp_get_thread_num(); }
    #else
    static int grufast_max_threads(void) { return 1; }
    static int grufast_team_size(void) { return 1; }
    static int grufast_thread_id(void) { return 0; }
    #endif

    /* A spinning barrier for the threads of one parallel region, met once or twice per step
       by a sequence split across cores. OpenMP's own barrier sleeps in the kernel under
       OMP_WAIT_POLICY=PASSIVE (which grufast sets while loading libgomp), and waking costs
       more than a step. Spins, then yields the core when it waits long (oversubscribed). */
    typedef struct { unsigned arrived, generation; } grufast_barrier;
    #if defined(_OPENMP) && defined(__GNUC__)
    #define GRUFAST_SPIN_BARRIER 1
    #include <sched.h>
    #if defined(__x86_64__) || defined(__i386__)
    #define GRUFAST_PAUSE() __builtin_ia32_pause()
    #else
    #define GRUFAST_PAUSE() ((void)0)
    #endif
    static void grufast_barrier_wait(grufast_barrier* b, unsigned n) {
        unsigned gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE), spins = 0;
        if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == n) {
            __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
            return;
        }
        while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen) {
            if (++spins < 20000) GRUFAST_PAUSE(); else sched_yield();
        }
    }
    #else
    #define GRUFAST_SPIN_BARRIER 0
    static void grufast_barrier_wait(grufast_barrier* b, unsigned n) { (void)b; (void)n; }
    #endif
    """
    int max_threads "grufast_max_threads"() noexcept nogil
    int team_size "grufast_team_size"() noexcept nogil
    int thread_id "grufast_thread_id"() noexcept nogil
    ctypedef struct barrier_t "grufast_barrier":
        unsigned arrived, generation
    void barrier_wait "grufast_barrier_wait"(barrier_t* b, unsigned n) noexcept nogil
    const bint SPIN_BARRIER "GRUFAST_SPIN_BARRIER"

# A parallel region costs a couple of microseconds: steps with fewer multiply-adds run on
# one thread (B = 1, H = 128 is 49k; B = 1, H = 256 is 197k). Input projections with fewer
# than SMALL_GEMM_MACS run in the tiled GEMM (measured faster below it, 1 or 2 threads).
cdef enum:
    PARALLEL_MIN_MACS = 150000
    SMALL_GEMM_MACS = 8000000


def openmp_threads() -> int:
    """The thread count the kernels' parallel steps would use now (1 without OpenMP)."""
    return max_threads()


# ---------------------------------------------------------------------------------------------
# forward

cdef inline void _zero_units(real* g, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1
                             ) noexcept nogil:
    """Zero the units j0 <= j < j1 of the three gate blocks of a row of g (3H)."""
    cdef Py_ssize_t k
    for k in range(3):
        fill(g + k * H + j0, j1 - j0, <real>0)


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
                     real* hprev, real* ghn) noexcept nogil:
    """linear_before_reset=True: n = tanh(gi_n + r * (h W_hn^T + b_hn)), units j0 <= j < j1.

    gi (B, G) holds x W_ih^T and is overwritten with r, z, n; gh (B, G) holds h W_hh^T.
    The new state goes to h_out (B, H), which may be h. hprev and ghn (B, H) receive h and
    the recurrent n term (scratch in inference: storing unconditionally keeps the loop
    branch-free, hence vectorisable).
    """
    cdef Py_ssize_t b, j, G = 3 * H
    cdef real r, z, ez, n, hn, hp
    cdef real* g
    cdef const real* q
    for b in range(B):
        g = gi + b * G
        q = gh + b * G
        if t >= lengths[b]:
            _masked(H, j0, j1, y + b * ldy, g, h + b * H, h_out + b * H, hprev + b * H)
            fill(ghn + b * H + j0, j1 - j0, <real>0)
            continue
        for j in range(j0, j1):
            r = sigmoid(g[j] + b_ih[j] + q[j] + b_hh[j])
            ez = exp_approx(-(g[H + j] + b_ih[H + j] + q[H + j] + b_hh[H + j]))
            z = <real>1 / (<real>1 + ez)
            hn = q[2 * H + j] + b_hh[2 * H + j]
            n = tanh_approx(g[2 * H + j] + b_ih[2 * H + j] + r * hn)
            hp = h[b * H + j]
            g[j] = r
            g[H + j] = z
            g[2 * H + j] = n
            hprev[b * H + j] = hp
            ghn[b * H + j] = hn
            # (1 - z) n + z h with 1 - z = ez z: no cancellation when z is close to 1.
            hn = z * (hp + ez * n)
            h_out[b * H + j] = hn
            y[b * ldy + j] = hn


cdef void _gates_rz(Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t t,
                    const Py_ssize_t* lengths, real* gi, const real* gh, const real* b_ih,
                    const real* b_hh, const real* h, real* rh, real* ez) noexcept nogil:
    """linear_before_reset=False, first half, units j0 <= j < j1: r and z into gi, r * h
    into rh (B, H), exp(-a_z) into ez (B, H) for the second half."""
    cdef Py_ssize_t b, j, G = 3 * H
    cdef real r, e
    cdef real* g
    cdef const real* q
    for b in range(B):
        g = gi + b * G
        q = gh + b * G
        if t >= lengths[b]:
            fill(rh + b * H + j0, j1 - j0, <real>0)
            continue
        for j in range(j0, j1):
            r = sigmoid(g[j] + b_ih[j] + q[j] + b_hh[j])
            g[j] = r
            e = exp_approx(-(g[H + j] + b_ih[H + j] + q[H + j] + b_hh[H + j]))
            g[H + j] = <real>1 / (<real>1 + e)
            ez[b * H + j] = e
            rh[b * H + j] = r * h[b * H + j]


cdef void _gates_n(Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t t,
                   const Py_ssize_t* lengths, real* gi, const real* gh, const real* b_ih,
                   const real* b_hh, const real* h, real* h_out, real* y, Py_ssize_t ldy,
                   real* hprev, const real* ez) noexcept nogil:
    """linear_before_reset=False, second half, units j0 <= j < j1:
    n = tanh(gi_n + b_in + (r*h) W_hn^T + b_hn); the new state goes to h_out."""
    cdef Py_ssize_t b, j, G = 3 * H
    cdef real z, n, hp
    cdef real* g
    cdef const real* q
    for b in range(B):
        g = gi + b * G
        q = gh + b * G
        if t >= lengths[b]:
            _masked(H, j0, j1, y + b * ldy, g, h + b * H, h_out + b * H, hprev + b * H)
            continue
        for j in range(j0, j1):
            z = g[H + j]
            n = tanh_approx(g[2 * H + j] + b_ih[2 * H + j] + q[2 * H + j] + b_hh[2 * H + j])
            hp = h[b * H + j]
            g[2 * H + j] = n
            hprev[b * H + j] = hp
            n = z * (hp + ez[b * H + j] * n)
            h_out[b * H + j] = n
            y[b * ldy + j] = n


cdef inline void _gemv_t(Py_ssize_t N, Py_ssize_t K, const real* w_t, Py_ssize_t ldw,
                         const real* v, real* out) noexcept nogil:
    """out (N,) = W v for W (N, K) given as its transpose w_t (K, N) row-major: that is W in
    column-major order, which OpenBLAS's gemv streams faster than the dot-product form."""
    gemv_rm(c'T', K, N, 1, w_t, ldw, v, 1, 0, out, 1)


cdef inline bint _small(Py_ssize_t B) noexcept nogil:
    """Steps for the register-tiled recurrent GEMM (grufast._gemm), which our threads can
    split by sequences: from 4 rows (below, a mostly empty tile loses to OpenBLAS's gemv,
    which threads itself). The choice depends on the shape only."""
    return B >= 4


cdef void _steps(Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t first, Py_ssize_t b0,
                 Py_ssize_t b1, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                 const real* x, const real* w_ih_t, bint project, bint small,
                 const real* w_hh, const real* w_hh_t, const real* b_ih, const real* b_hh,
                 const Py_ssize_t* lengths, bint reverse, bint lbr, real* y, Py_ssize_t ldy,
                 real* h, real* gates, real* hprev, real* ghn, real* gh, real* rh,
                 real* step_scratch) noexcept nogil:
    """Steps s0 <= s < s1 (in visiting order) for the sequences b0 <= b < b1, whose input
    projections for time steps first, first + 1, ... are in gates, or are computed here step
    by step when ``project`` (x W_ih^T through the register-tiled GEMM, on this thread).
    Sequences never interact, so disjoint row ranges run on different threads without any
    synchronisation."""
    cdef Py_ssize_t s, t, n = b1 - b0, G = 3 * H, BG = B * G, BH = B * H
    cdef real* gi
    cdef real* hp_t = step_scratch + b0 * H
    cdef real* hn_t = step_scratch + BH + b0 * H  # lbr: the recurrent n term; else exp(-a_z)
    cdef real* y_t
    cdef real* hr = h + b0 * H
    cdef real* ghr = gh + b0 * G
    cdef real* rhr = rh + b0 * H
    cdef const Py_ssize_t* lr = lengths + b0
    for s in range(s0, s1):
        t = T - 1 - s if reverse else s
        gi = gates + (t - first) * BG + b0 * G
        y_t = y + (t * B + b0) * ldy
        if hprev != NULL:
            hp_t = hprev + t * BH + b0 * H
        if ghn != NULL:
            hn_t = ghn + t * BH + b0 * H
        if project:
            small_gemm(n, G, I, x + (t * B + b0) * I, I, w_ih_t, G, gi, G, False)
        if lbr:
            if small:
                small_gemm(n, G, H, hr, H, w_hh_t, G, ghr, G, False)
            elif n == 1:
                _gemv_t(G, H, w_hh_t, G, hr, ghr)
            else:
                gemm_rm(c'N', c'T', n, G, H, 1, hr, H, w_hh, H, 0, ghr, G)
            _gates_lbr(n, H, 0, H, t, lr, gi, ghr, b_ih, b_hh, hr, hr, y_t, ldy, hp_t, hn_t)
        else:
            if small:
                small_gemm(n, 2 * H, H, hr, H, w_hh_t, G, ghr, G, False)
            elif n == 1:
                _gemv_t(2 * H, H, w_hh_t, G, hr, ghr)
            else:
                gemm_rm(c'N', c'T', n, 2 * H, H, 1, hr, H, w_hh, H, 0, ghr, G)
            _gates_rz(n, H, 0, H, t, lr, gi, ghr, b_ih, b_hh, hr, rhr, hn_t)
            if small:
                small_gemm(n, H, H, rhr, H, w_hh_t + 2 * H, G, ghr + 2 * H, G, False)
            elif n == 1:
                _gemv_t(H, H, w_hh_t + 2 * H, G, rhr, ghr + 2 * H)
            else:
                gemm_rm(c'N', c'T', n, H, H, 1, rhr, H, w_hh + 2 * H * H, H, 0, ghr + 2 * H,
                        G)
            _gates_n(n, H, 0, H, t, lr, gi, ghr, b_ih, b_hh, hr, hr, y_t, ldy, hp_t, hn_t)


cdef inline int _threads_for(Py_ssize_t B, Py_ssize_t H, bint small) noexcept nogil:
    """Threads to split the recurrence by sequences: OpenMP's count (threadpoolctl and
    OMP_NUM_THREADS set it), at most one per 4 sequences (whole register tiles), when the
    register-tiled GEMM serves the batch (else OpenBLAS threads each step's GEMM itself) and
    a step has enough multiply-adds to pay for a second core."""
    if not small or B < 8 or B * 3 * H * H < PARALLEL_MIN_MACS:
        return 1
    return max(1, min(max_threads(), <int>(B // 4)))


cdef inline Py_ssize_t _share(Py_ssize_t n, int nt, int p, Py_ssize_t q) noexcept nogil:
    """Where thread p of nt starts its share of n items (p = nt: n), on multiples of q:
    sequences and gate rows by whole tiles (4), hidden units by whole vectors (16)."""
    return n if p >= nt else (n * p // nt) // q * q


cdef inline int _unit_threads(Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """Threads to split one sequence's hidden units: with the spinning barrier only, for
    steps with enough multiply-adds, at least 64 units per thread."""
    if B != 1 or not SPIN_BARRIER or 3 * H * H < PARALLEL_MIN_MACS:
        return 1
    return max(1, min(max_threads(), <int>(H // 64)))


cdef void _unit_forward(int p, int nt, barrier_t* bar, Py_ssize_t T, Py_ssize_t I,
                        Py_ssize_t H, const real* x, const real* w_ih_t, const real* w_hh_t,
                        const real* b_ih, const real* b_hh, const Py_ssize_t* lengths,
                        bint reverse, bint lbr, real* y, Py_ssize_t ldy, real* h,
                        Py_ssize_t chunk, real* gates, real* hprev, real* ghn, real* gh,
                        real* rh, real* step_scratch) noexcept nogil:
    """Thread p of nt runs one sequence (B = 1) for its hidden units j0 <= j < j1: their
    columns of x W_ih^T, of h W_hh^T (so each thread streams a 1/nt slice of the weights,
    which stays in its own cache) and of the gates. The threads meet at a barrier after each
    step, where the new state is complete (and once more without linear_before_reset, where
    r * h is). The state alternates between h and a scratch row, so that no thread writes
    the state another one is still reading."""
    cdef Py_ssize_t s = 0, q, t, n, k, kk, first, G = 3 * H
    cdef bint zz
    cdef Py_ssize_t j0 = _share(H, nt, p, 16), j1 = _share(H, nt, p + 1, 16), w = j1 - j0
    cdef real* states[2]
    cdef real* gi
    cdef real* hp_t = step_scratch
    cdef real* hn_t = step_scratch + H  # lbr: the recurrent n term; else exp(-a_z)
    states[0] = h
    states[1] = step_scratch + 2 * H
    while s < T:
        n = min(chunk, T - s)
        first = T - s - n if reverse else s
        for k in range(3):
            small_gemm(n, w, I, x + first * I, I, w_ih_t + k * H + j0, G,
                       gates + k * H + j0, G, False)
        for q in range(s, s + n):
            t = T - 1 - q if reverse else q
            gi = gates + (t - first) * G
            if hprev != NULL:
                hp_t = hprev + t * H
            if ghn != NULL:
                hn_t = ghn + t * H
            # Alternate directions through the weights each step (gates and strips): what
            # was read last is read first, from cache (a thread's slice may exceed L2).
            zz = q % 2 == 1
            if lbr:
                for kk in range(3):
                    k = 2 - kk if zz else kk
                    row_gemv(w, H, states[q % 2], w_hh_t + k * H + j0, G, gh + k * H + j0,
                             False, zz)
                _gates_lbr(1, H, j0, j1, t, lengths, gi, gh, b_ih, b_hh, states[q % 2],
                           states[(q + 1) % 2], y + t * ldy, ldy, hp_t, hn_t)
            else:
                for kk in range(2):
                    k = 1 - kk if zz else kk
                    row_gemv(w, H, states[q % 2], w_hh_t + k * H + j0, G, gh + k * H + j0,
                             False, zz)
                _gates_rz(1, H, j0, j1, t, lengths, gi, gh, b_ih, b_hh, states[q % 2], rh,
                          hn_t)
                barrier_wait(bar, nt)
                row_gemv(w, H, rh, w_hh_t + 2 * H + j0, G, gh + 2 * H + j0, False, zz)
                _gates_n(1, H, j0, j1, t, lengths, gi, gh, b_ih, b_hh, states[q % 2],
                         states[(q + 1) % 2], y + t * ldy, ldy, hp_t, hn_t)
            barrier_wait(bar, nt)
        s += n
    if T % 2:
        memcpy(h + j0, states[1] + j0, w * sizeof(real))


cdef void _forward(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                   const real* x, const real* w_ih, const real* w_ih_t, const real* w_hh,
                   const real* w_hh_t,
                   const real* b_ih, const real* b_hh, const Py_ssize_t* lengths,
                   bint reverse, bint lbr, real* y, Py_ssize_t ldy, real* h,
                   Py_ssize_t chunk, real* gates,
                   real* hprev, real* ghn, real* gh, real* rh, real* step_scratch
                   ) noexcept nogil:
    cdef Py_ssize_t s = 0, n, first, G = 3 * H
    cdef bint small = _small(B)
    cdef int p, nt = _threads_for(B, H, small), nu = _unit_threads(B, H)
    cdef barrier_t bar
    cdef barrier_t* barp = &bar
    if nu > 1:
        bar.arrived = 0
        bar.generation = 0
        with parallel(num_threads=nu):
            # The team may be smaller than asked for: split among the threads that came.
            _unit_forward(thread_id(), team_size(), barp, T, I, H, x, w_ih_t, w_hh_t, b_ih,
                          b_hh, lengths, reverse, lbr, y, ldy, h, chunk, gates, hprev, ghn,
                          gh, rh, step_scratch)
        return
    # Split across threads, each thread also projects its own sequences' inputs, step by
    # step: OpenBLAS's threads would spin for ~0.1 s after a chunk's GEMM and take a core
    # from ours. (The summation order then differs from OpenBLAS's: see README, threads.)
    cdef bint project = nt > 1
    while s < T:
        # Input projections of the next `chunk` steps in one GEMM: gates = x W_ih^T.
        # Training passes chunk = T (backward reads them all); inference keeps memory
        # independent of T.
        n = min(chunk, T - s)
        first = T - s - n if reverse else s
        if not project:
            if n * B * G * I < SMALL_GEMM_MACS:
                # Small projections in the tiled GEMM: OpenBLAS would start its threads
                # for them, for less work than waking them costs.
                small_gemm(n * B, G, I, x + first * B * I, I, w_ih_t, G, gates, G, False)
            else:
                gemm_rm(c'N', c'T', n * B, G, I, 1, x + first * B * I, I, w_ih, I, 0, gates, G)
        if nt == 1:
            _steps(s, s + n, first, 0, B, T, B, I, H, x, w_ih_t, project, small, w_hh, w_hh_t,
                   b_ih, b_hh, lengths, reverse, lbr, y, ldy, h, gates, hprev, ghn, gh, rh,
                   step_scratch)
        else:
            # Batch-parallel: each thread runs its own sequences through the whole chunk,
            # in whole register tiles of 4 rows.
            for p in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                _steps(s, s + n, first, _share(B, nt, p, 4), _share(B, nt, p + 1, 4), T, B, I, H,
                       x, w_ih_t, project, small, w_hh, w_hh_t, b_ih, b_hh, lengths, reverse,
                       lbr,
                       y, ldy, h, gates, hprev, ghn, gh, rh, step_scratch)
        s += n


def forward(const real[:, :, ::1] x, const real[:, ::1] w_ih, const real[:, ::1] w_ih_t,
            const real[:, ::1] w_hh, const real[:, ::1] w_hh_t, const real[::1] b_ih,
            const real[::1] b_hh, const Py_ssize_t[::1] lengths, bint reverse,
            bint linear_before_reset,
            real[:, :, ::1] y, Py_ssize_t y_col, real[:, ::1] h, real[:, :, ::1] gates,
            real[:, :, ::1] hprev, real[:, :, ::1] ghn, real[:, ::1] gh, real[:, ::1] rh,
            real[:, ::1] step_scratch):
    """Run the recurrence over x (T, B, I); all outputs are caller-allocated.

    w_ih_t (I, 3H) and w_hh_t (H, 3H) are the weights transposed, read by the register-tiled
    GEMM of small batches.

    y (T, B, W) receives the outputs in its columns [y_col, y_col + H): the two directions of
    a bidirectional layer write side by side into one buffer.

    h (B, H) holds h0 on entry and h_n on exit. gates (C, B, 3H) holds the input projections
    of C steps at a time (C = T in training, where it ends holding every step's r, z, n).
    hprev (T, B, H) and ghn (T, B, H) are None in inference; in training they receive the
    state entering each step and the recurrent n term (h W_hn^T + b_hn, linear_before_reset
    only; None otherwise). gh (B, 3H), rh (B, H) and step_scratch (3B, H) are per-step
    scratch.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h.shape[1]
    cdef real* p_hprev = NULL
    cdef real* p_ghn = NULL
    if T == 0 or B == 0:
        return
    if hprev is not None:
        p_hprev = &hprev[0, 0, 0]
    if ghn is not None:
        p_ghn = &ghn[0, 0, 0]
    with nogil:
        _forward(T, B, I, H, &x[0, 0, 0], &w_ih[0, 0], &w_ih_t[0, 0], &w_hh[0, 0],
                 &w_hh_t[0, 0],
                 &b_ih[0], &b_hh[0],
                 &lengths[0], reverse, linear_before_reset, &y[0, 0, 0] + y_col, y.shape[2],
                 &h[0, 0], gates.shape[0],
                 &gates[0, 0, 0], p_hprev, p_ghn, &gh[0, 0], &rh[0, 0], &step_scratch[0, 0])


# ---------------------------------------------------------------------------------------------
# backward
#
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


cdef void _colsum(Py_ssize_t rows, Py_ssize_t cols, const real* a, real* out,
                  bint accumulate) noexcept nogil:
    cdef Py_ssize_t i, j
    if not accumulate:
        fill(out, cols, <real>0)
    for i in range(rows):
        for j in range(cols):
            out[j] = out[j] + a[i * cols + j]


cdef void _bsteps(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                  bint small, const real* w_hh, const Py_ssize_t* lengths, bint reverse,
                  bint lbr,
                  const real* gates, const real* hprev, const real* ghn, const real* dy,
                  Py_ssize_t ldy, real* dh, real* dG, real* dgh, real* ds,
                  const real* dy_zero) noexcept nogil:
    """The backward recurrence for the sequences b0 <= b < b1 (rows never interact: disjoint
    ranges run on different threads without synchronisation)."""
    cdef Py_ssize_t s, t, n = b1 - b0, G = 3 * H, BG = B * G, BH = B * H
    cdef const real* dyt = dy_zero + b0 * ldy  # zeros stand in for a missing dy
    cdef const Py_ssize_t* lr = lengths + b0
    cdef real* dhr = dh + b0 * H
    cdef real* dghr = dgh + b0 * G
    cdef real* dsr = NULL if ds == NULL else ds + b0 * H
    cdef real* dGt
    cdef const real* gt
    cdef const real* hpt
    for s in range(T):
        t = s if reverse else T - 1 - s
        if dy != NULL:
            dyt = dy + (t * B + b0) * ldy
        dGt = dG + t * BG + b0 * G
        gt = gates + t * BG + b0 * G
        hpt = hprev + t * BH + b0 * H
        if lbr:
            _dgates_lbr(n, H, 0, H, t, lr, gt, hpt, ghn + t * BH + b0 * H, dyt, ldy, dhr, dGt,
                        dghr)
            if small:
                small_gemm(n, H, G, dghr, G, w_hh, H, dhr, H, True)
            else:
                gemm_rm(c'N', c'N', n, H, G, 1, dghr, G, w_hh, H, 1, dhr, H)
        else:
            _dgates_zn(n, H, 0, H, t, lr, gt, hpt, dyt, ldy, dhr, dGt)
            if small:
                small_gemm(n, H, H, dGt + 2 * H, G, w_hh + 2 * H * H, H, dsr, H, False)
            else:
                gemm_rm(c'N', c'N', n, H, H, 1, dGt + 2 * H, G, w_hh + 2 * H * H, H, 0, dsr, H)
            _dgates_r(n, H, 0, H, t, lr, gt, hpt, dsr, dhr, dGt)
            if small:
                small_gemm(n, H, 2 * H, dGt, G, w_hh, H, dhr, H, True)
            else:
                gemm_rm(c'N', c'N', n, H, 2 * H, 1, dGt, G, w_hh, H, 1, dhr, H)


cdef void _unit_backward(int p, int nt, barrier_t* bar, Py_ssize_t T, Py_ssize_t I,
                         Py_ssize_t H, const real* x, const real* w_ih, const real* w_hh,
                         const Py_ssize_t* lengths, bint reverse, bint lbr,
                         const real* gates, const real* hprev, const real* ghn,
                         const real* dy, Py_ssize_t ldy, real* dh, real* dx,
                         bint dx_accumulate, real* dw_ih, real* dw_hh, real* db_ih,
                         real* db_hh, bint accumulate, real* dG, real* dGt, real* dgh,
                         real* ds, real* work, const real* dy_zero) noexcept nogil:
    """Backward of one sequence (B = 1), thread p of nt owning the hidden units j0 <= j < j1
    as in _unit_forward: their gate gradients and their columns of W_hh for dh; afterwards
    its share of the weight gradients and of dx (_weight_grads). No OpenBLAS call:
    its threads would spin after each call and take the cores this loop's barrier waits on.
    dgh holds two rows (2, 3H), used by alternate steps so that no thread writes the row
    another one is still reading."""
    cdef Py_ssize_t s, t, k, G = 3 * H
    cdef Py_ssize_t j0 = _share(H, nt, p, 16), j1 = _share(H, nt, p + 1, 16), w = j1 - j0
    cdef const real* dyt = dy_zero
    cdef real* dGs
    cdef real* cur
    cdef const real* gt
    cdef const real* hpt
    for s in range(T):
        t = s if reverse else T - 1 - s
        if dy != NULL:
            dyt = dy + t * ldy
        dGs = dG + t * G
        gt = gates + t * G
        hpt = hprev + t * H
        if lbr:
            cur = dgh + (s % 2) * G
            _dgates_lbr(1, H, j0, j1, t, lengths, gt, hpt, ghn + t * H, dyt, ldy, dh, dGs, cur)
            barrier_wait(bar, nt)
            row_gemv(w, G, cur, w_hh + j0, H, dh + j0, True, s % 2 == 1)
        else:
            _dgates_zn(1, H, j0, j1, t, lengths, gt, hpt, dyt, ldy, dh, dGs)
            barrier_wait(bar, nt)
            row_gemv(w, H, dGs + 2 * H, w_hh + 2 * H * H + j0, H, ds + j0, False, s % 2 == 1)
            _dgates_r(1, H, j0, j1, t, lengths, gt, hpt, ds, dh, dGs)
            barrier_wait(bar, nt)
            row_gemv(w, 2 * H, dGs, w_hh + j0, H, dh + j0, True, s % 2 == 1)
    barrier_wait(bar, nt)  # dG complete
    _weight_grads(p, nt, bar, T, I, H, x, w_ih, lbr, gates, hprev, dx, dx_accumulate, dw_ih,
                  dw_hh, db_ih, db_hh, accumulate, dG, dGt, work)


cdef void _transpose_rows(Py_ssize_t g0, Py_ssize_t g1, Py_ssize_t TB, Py_ssize_t G,
                          const real* dG, const real* scale, real* dGt) noexcept nogil:
    """dGt[g, i] = dG[i, g] (times scale[i * G + g - g0] when scale is not NULL) for
    g0 <= g < g1, in blocks of 16 rows of dG, so that each cache line read serves 16 g."""
    cdef Py_ssize_t i0, i, g, n
    for i0 in range(0, TB, 16):
        n = min(16, TB - i0)
        for g in range(g0, g1):
            if scale == NULL:
                for i in range(i0, i0 + n):
                    dGt[g * TB + i] = dG[i * G + g]
            else:
                for i in range(i0, i0 + n):
                    dGt[g * TB + i] = dG[i * G + g] * scale[i * G + g - g0]


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


cdef void _weight_grads(int p, int nt, barrier_t* bar, Py_ssize_t TB, Py_ssize_t I,
                        Py_ssize_t H, const real* x, const real* w_ih, bint lbr,
                        const real* gates, const real* hprev, real* dx, bint dx_accumulate,
                        real* dw_ih, real* dw_hh, real* db_ih, real* db_hh, bint accumulate,
                        const real* dG, real* dGt, real* work) noexcept nogil:
    """Thread p of nt, after the recurrence: everything that does not feed it, as GEMMs over
    all TB = T*B rows of dG (TB, 3H) in the register-tiled GEMM, in our threads (OpenBLAS's
    would spin afterwards beside the next parallel loop). dx by rows of TB; the weight
    gradients and bias sums by their rows (gate units), from this thread's rows of
    dGt (3H, TB), dG transposed: the sums over TB then read memory contiguously."""
    cdef Py_ssize_t G = 3 * H, a, b
    cdef Py_ssize_t r0 = TB * p // nt, r1 = TB * (p + 1) // nt
    cdef Py_ssize_t g0 = _share(G, nt, p, 4), g1 = _share(G, nt, p + 1, 4)
    # This thread's panel buffer (196 KB); without it the GEMMs read W in place.
    cdef real* pack = <real*>malloc(K_BLOCK * TILE_MAX * sizeof(real))
    packed_gemm(r1 - r0, I, G, dG + r0 * G, G, w_ih, I, dx + r0 * I, I, dx_accumulate, pack)
    _transpose_rows(g0, g1, TB, G, dG, NULL, dGt)
    packed_gemm(g1 - g0, I, TB, dGt + g0 * TB, TB, x, I, dw_ih + g0 * I, I, accumulate,
                pack)
    if db_ih != NULL:
        _rowsum(g1 - g0, TB, dGt + g0 * TB, db_ih + g0, accumulate)
    if lbr:
        # dgh differs from dgi only in its n block, which is scaled by r.
        a = max(g0, 2 * H)
        if g1 > a:
            _transpose_rows(a, g1, TB, G, dG, gates + a - 2 * H, dGt)
        packed_gemm(g1 - g0, H, TB, dGt + g0 * TB, TB, hprev, H, dw_hh + g0 * H, H,
                    accumulate, pack)
    else:
        # dgh == dgi; the n rows of W_hh multiply r * h instead of h.
        _r_times_h(r0, r1, H, gates, hprev, work)
        barrier_wait(bar, nt)  # r * h complete
        a = g0
        b = min(g1, 2 * H)
        if b > a:
            packed_gemm(b - a, H, TB, dGt + a * TB, TB, hprev, H, dw_hh + a * H, H, accumulate,
                        pack)
        a = max(g0, 2 * H)
        if g1 > a:
            packed_gemm(g1 - a, H, TB, dGt + a * TB, TB, work, H, dw_hh + a * H, H, accumulate,
                        pack)
    if db_hh != NULL:
        _rowsum(g1 - g0, TB, dGt + g0 * TB, db_hh + g0, accumulate)
    free(pack)


cdef void _backward_team(int p, int nt, barrier_t* bar, Py_ssize_t T, Py_ssize_t B,
                         Py_ssize_t I, Py_ssize_t H, const real* x, const real* w_ih,
                         const real* w_hh, const Py_ssize_t* lengths, bint reverse, bint lbr,
                         const real* gates, const real* hprev, const real* ghn,
                         const real* dy, Py_ssize_t ldy, real* dh, real* dx,
                         bint dx_accumulate, real* dw_ih, real* dw_hh, real* db_ih,
                         real* db_hh, bint accumulate, real* dG, real* dGt, real* dgh,
                         real* ds, real* work, const real* dy_zero) noexcept nogil:
    """Thread p of nt: the backward recurrence of its own sequences, then its share of the
    weight gradients."""
    _bsteps(_share(B, nt, p, 4), _share(B, nt, p + 1, 4), T, B, H, True, w_hh, lengths,
            reverse, lbr, gates, hprev, ghn, dy, ldy, dh, dG, dgh, ds, dy_zero)
    barrier_wait(bar, nt)  # dG complete
    _weight_grads(p, nt, bar, T * B, I, H, x, w_ih, lbr, gates, hprev, dx, dx_accumulate,
                  dw_ih, dw_hh, db_ih, db_hh, accumulate, dG, dGt, work)


cdef void _backward(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                    const real* x, const real* w_ih, const real* w_hh,
                    const Py_ssize_t* lengths, bint reverse, bint lbr,
                    const real* gates, const real* hprev, const real* ghn, const real* dy,
                    Py_ssize_t ldy, real* dh, real* dx, bint dx_accumulate,
                    real* dw_ih, real* dw_hh, real* db_ih, real* db_hh,
                    bint accumulate, real* dG, real* dGt, real* dgh, real* ds, real* work,
                    const real* dy_zero) noexcept nogil:
    cdef Py_ssize_t i, j, G = 3 * H, TB = T * B
    cdef real beta = 1 if accumulate else 0
    cdef bint small = _small(B)
    cdef int nt = _threads_for(B, H, small), nu = _unit_threads(B, H)
    cdef barrier_t bar
    cdef barrier_t* barp = &bar
    bar.arrived = 0
    bar.generation = 0
    if nu > 1:
        with parallel(num_threads=nu):
            _unit_backward(thread_id(), team_size(), barp, T, I, H, x, w_ih, w_hh, lengths,
                           reverse, lbr, gates, hprev, ghn, dy, ldy, dh, dx, dx_accumulate,
                           dw_ih, dw_hh, db_ih, db_hh, accumulate, dG, dGt, dgh, ds, work,
                           dy_zero)
        return
    if nt > 1:
        with parallel(num_threads=nt):
            _backward_team(thread_id(), team_size(), barp, T, B, I, H, x, w_ih, w_hh, lengths,
                           reverse, lbr, gates, hprev, ghn, dy, ldy, dh, dx, dx_accumulate,
                           dw_ih, dw_hh, db_ih, db_hh, accumulate, dG, dGt, dgh, ds, work,
                           dy_zero)
        return

    _bsteps(0, B, T, B, H, small, w_hh, lengths, reverse, lbr, gates, hprev, ghn, dy, ldy,
            dh, dG, dgh, ds, dy_zero)
    # Everything that does not feed the recurrence, as large GEMMs over all T*B rows: here
    # OpenBLAS's packed GEMMs, 10-20% faster on one core than the tiled GEMM on these sums.
    gemm_rm(c'N', c'N', TB, I, G, 1, dG, G, w_ih, I, 1 if dx_accumulate else 0, dx, I)
    gemm_rm(c'T', c'N', G, I, TB, 1, dG, G, x, I, beta, dw_ih, I)
    if db_ih != NULL:
        _colsum(TB, G, dG, db_ih, accumulate)
    if lbr:
        # dgh differs from dgi only in its n block, which is scaled by r; dG is ours to reuse.
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


def backward(const real[:, :, ::1] x, const real[:, ::1] w_ih, const real[:, ::1] w_hh,
             const Py_ssize_t[::1] lengths, bint reverse, bint linear_before_reset,
             const real[:, :, ::1] gates, const real[:, :, ::1] hprev,
             const real[:, :, ::1] ghn, const real[:, :, ::1] dy, Py_ssize_t dy_col,
             real[:, ::1] dh, real[:, :, ::1] dx, bint dx_accumulate,
             real[:, ::1] dw_ih, real[:, ::1] dw_hh,
             real[::1] db_ih, real[::1] db_hh, bint accumulate,
             real[:, :, ::1] dG, real[:, ::1] dGt, real[:, ::1] dgh, real[:, ::1] ds,
             real[:, :, ::1] work, const real[:, ::1] dy_zero):
    """Back-propagate through the recurrence recorded by a training forward.

    dh (B, H) holds dL/dh_n on entry and dL/dh0 on exit; dy (T, B, W) may be None (zero),
    its columns [dy_col, dy_col + H) are this direction's. dx (T, B, I) is overwritten, or
    added to when dx_accumulate; the weight and bias gradients are overwritten, or added to
    when accumulate is true; db_ih and db_hh may be None (no bias). dG (T, B, 3H), dGt
    (3H, T*B; only touched where the backward runs on several threads, so its untouched
    pages cost nothing), dgh (max(B, 2), 3H), ds (B, H) and work (T, B, H) are scratch;
    ghn is None unless linear_before_reset; ds and work are only touched when it is false.
    dy_zero (B, H) holds zeros, read in place of a missing dy.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = dh.shape[1]
    cdef const real* p_dy = NULL
    cdef Py_ssize_t ldy = H
    cdef const real* p_ghn = NULL
    cdef real* p_dbi = NULL
    cdef real* p_dbh = NULL
    cdef real* p_ds = NULL
    cdef real* p_work = NULL
    if db_ih is not None:
        p_dbi = &db_ih[0]
        p_dbh = &db_hh[0]
    if T == 0 or B == 0:
        # No step ran: dh0 = dh_n, and the parameter gradients are zero (or unchanged).
        if not accumulate:
            dw_ih[:, :] = 0
            dw_hh[:, :] = 0
            if p_dbi != NULL:
                db_ih[:] = 0
                db_hh[:] = 0
        return
    if dy is not None:
        p_dy = &dy[0, 0, 0] + dy_col
        ldy = dy.shape[2]
    if linear_before_reset:
        p_ghn = &ghn[0, 0, 0]
    else:
        p_ds = &ds[0, 0]
        p_work = &work[0, 0, 0]
    with nogil:
        _backward(T, B, I, H, &x[0, 0, 0], &w_ih[0, 0], &w_hh[0, 0], &lengths[0],
                  reverse, linear_before_reset, &gates[0, 0, 0], &hprev[0, 0, 0], p_ghn, p_dy,
                  ldy, &dh[0, 0], &dx[0, 0, 0], dx_accumulate, &dw_ih[0, 0], &dw_hh[0, 0],
                  p_dbi, p_dbh,
                  accumulate, &dG[0, 0, 0], &dGt[0, 0], &dgh[0, 0], p_ds, p_work,
                  &dy_zero[0, 0])


def activations(const real[::1] x, real[::1] sig, real[::1] tanh):
    """Apply the kernels' sigmoid and tanh elementwise (exposed to test their error bound)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            sig[i] = sigmoid(x[i])
            tanh[i] = tanh_approx(x[i])


# ---------------------------------------------------------------------------------------------
# one step for one sequence, from Python at the lowest cost (GRUCell's streaming path)


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
