# How a call's work is split across threads: OpenMP's thread queries and the spinning
# barrier (C in _threads.h), the thresholds, and plan_threads, the one place that decides
# serial / by sequences / by hidden units for forward and backward alike.
# See docs/design.md section 5 (Threads).

cdef extern from "_threads.h":
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


cdef enum Split:
    SERIAL            # one thread (OpenBLAS may still thread each step's GEMM)
    BY_SEQUENCES      # each thread owns whole register tiles of sequences; no barrier
    BY_UNITS          # one sequence, each thread owns a slice of the hidden units; barrier


cdef struct ThreadPlan:
    Split split
    int threads                 # 1 when SERIAL
    bint tiled_recurrence       # recurrent products in the register-tiled GEMM


def openmp_threads() -> int:
    """The thread count the kernels' parallel steps would use now (1 without OpenMP)."""
    return max_threads()


cdef inline bint _use_tiled_recurrence(Py_ssize_t B) noexcept nogil:
    """Whether a step's recurrent products go to the register-tiled GEMM (grufast._gemm),
    which our threads can split by sequences: from 4 rows (below, a mostly empty tile loses
    to OpenBLAS's gemv, which threads itself). The choice depends on the shape only."""
    return B >= 4


cdef inline ThreadPlan plan_threads(Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """How a call on B sequences of H hidden units splits across threads.

    By hidden units: one sequence, with the spinning barrier only, for steps with enough
    multiply-adds, at least 64 units per thread. By sequences: when the register-tiled GEMM
    serves the batch (else OpenBLAS threads each step's GEMM itself), from B = 8, at most one
    thread per 4 sequences (whole register tiles), for steps with enough multiply-adds to
    pay for a second core. Thread counts follow OpenMP's (threadpoolctl and
    OMP_NUM_THREADS set it)."""
    cdef ThreadPlan plan
    cdef int n
    plan.split = SERIAL
    plan.threads = 1
    plan.tiled_recurrence = _use_tiled_recurrence(B)
    if B == 1 and SPIN_BARRIER and 3 * H * H >= PARALLEL_MIN_MACS:
        n = min(max_threads(), <int>(H // 64))
        if n > 1:
            plan.split = BY_UNITS
            plan.threads = n
    elif plan.tiled_recurrence and B >= 8 and B * 3 * H * H >= PARALLEL_MIN_MACS:
        n = min(max_threads(), <int>(B // 4))
        if n > 1:
            plan.split = BY_SEQUENCES
            plan.threads = n
    return plan


cdef inline Py_ssize_t _share(Py_ssize_t n, int nt, int p, Py_ssize_t q) noexcept nogil:
    """Where thread p of nt starts its share of n items (p = nt: n), on multiples of q:
    sequences and gate rows by whole tiles (4), hidden units by whole vectors (16)."""
    return n if p >= nt else (n * p // nt) // q * q
