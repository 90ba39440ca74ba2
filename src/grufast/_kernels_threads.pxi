# How a call's work is split across threads: OpenMP's thread queries and the spinning
# barrier (C in _threads.h), the thresholds, and plan_threads, the one place that decides
# serial / by sequences / by hidden units for forward and backward alike.
# See docs/design.md section 5 (Threads).

cdef extern from "_threads.h":
    int max_threads "grufast_max_threads"() noexcept nogil
    int team_size "grufast_team_size"() noexcept nogil
    int thread_id "grufast_thread_id"() noexcept nogil
    ctypedef struct barrier_t "grufast_barrier":
        int serial
    void barrier_init "grufast_barrier_init"(barrier_t* b, bint adaptive) noexcept nogil
    int barrier_wait "grufast_barrier_wait"(barrier_t* b, unsigned n, int p) noexcept nogil
    unsigned long ticket "grufast_ticket"(barrier_t* b) noexcept nogil
    void leave_caller_cpu "grufast_leave_caller_cpu"(const barrier_t* b, int p) noexcept nogil
    void restore_cpu_mask "grufast_restore_cpu_mask"() noexcept nogil
    unsigned long cpu_moves_count "grufast_cpu_moves"
    bint serial_backoff "grufast_serial_backoff"() noexcept nogil
    void begin_backoff "grufast_start_serial_backoff"() noexcept nogil
    int register_fork_handler "grufast_register_fork_handler"() noexcept nogil
    int thread_cap "grufast_thread_cap"
    const bint SPIN_BARRIER "GRUFAST_SPIN_BARRIER"


# A forked child runs grufast serially (GNU OpenMP's pool does not survive fork): _threads.h.
if register_fork_handler() != 0:
    raise RuntimeError("grufast could not register its fork handler (pthread_atfork)")

# A parallel region costs a couple of microseconds: steps with fewer multiply-adds run on
# one thread (B = 1, H = 128 is 49k; B = 1, H = 256 is 197k).
cdef enum:
    PARALLEL_MIN_MACS = 150000

# Input projections (x W_ih^T over a chunk of steps) run in the register-tiled GEMM on
# W_ih^T packed once per weight update into the panels the tiles read (prepacked_gemm),
# when they have at most projection_max_macs multiply-adds or at most
# projection_max_rows rows (steps x sequences); the others in OpenBLAS's GEMM, which
# packs the weights at every call and wins once many rows share each packed panel.
# Measured (interleaved calls, one thread, GRU inference, T = 100, one sequence, whole
# call): H = 128 (100 rows, 4.9M): prepacked 0.93x OpenBLAS's time on the AVX-512 build,
# 0.95x on the AVX2 one (OpenBLAS Haswell kernels); H = 256 (19.7M): 0.91x and 0.94x (the
# tiles on the unpacked transposed weights: 0.94x and 0.96x); H = 512 (78.6M): 0.95x and
# 0.975x with the panels copied at every call (unpacked: 0.95-1.00x and 1.04-1.05x);
# B = 16, H = 128 (1600 rows): unpacked 1.11x, so OpenBLAS keeps the batches.
cdef long long projection_max_macs = 8000000
cdef long long projection_max_rows = 128


def set_projection_limit(long long max_macs, long long max_rows) -> None:
    """Input projections with at most max_macs multiply-adds, or with at most max_rows
    rows, run in the tiled GEMM on prepacked weights; the others in OpenBLAS's."""
    global projection_max_macs, projection_max_rows
    if max_macs < 0 or max_rows < 0:
        raise ValueError(f"limits must be >= 0, got {max_macs}, {max_rows}")
    projection_max_macs = max_macs
    projection_max_rows = max_rows


def projection_limit() -> tuple:
    """(max_macs, max_rows) as set_projection_limit set them."""
    return projection_max_macs, projection_max_rows


cdef inline bint _tiled_projection(Py_ssize_t rows, Py_ssize_t N,
                                   Py_ssize_t K) noexcept nogil:
    return <long long>rows * N * K <= projection_max_macs or rows <= projection_max_rows


cdef enum Split:
    SERIAL            # one thread (OpenBLAS may still thread each step's GEMM)
    BY_SEQUENCES      # each thread owns whole register tiles of sequences; no barrier
    BY_UNITS          # one sequence, each thread owns a slice of the hidden units; barrier


cdef struct ThreadPlan:
    Split split
    int threads                 # 1 when SERIAL
    bint alone                  # BY_UNITS forward: one thread runs every thread's part
    bint tiled_recurrence       # recurrent products in the register-tiled GEMM


def openmp_threads() -> int:
    """The thread count the kernels' parallel steps would use now (1 without OpenMP, and 1
    in a process forked from one that loaded grufast)."""
    return max_threads()


def serial_after_fork() -> bool:
    """Whether this process is a fork of one that loaded these kernels (then they run
    serially, whatever OpenMP's thread count says)."""
    return thread_cap == 1


def serial_backoff_active() -> bool:
    """Whether calls split by hidden units plan serially now, because a recent call found
    its partner threads descheduled (a loaded or oversubscribed machine) and fell back."""
    return serial_backoff()


def cpu_moves() -> int:
    """How many times a pool thread, woken onto its caller's CPU, moved to another one for
    a call split by hidden units (_threads.h)."""
    return cpu_moves_count


def start_serial_backoff() -> None:
    """Enter the back-off window now, as a call that fell back would (for tests)."""
    begin_backoff()


# Which GEMM serves a training step's recurrent products of a batch (B >= 4), forward and
# backward, and the backward's flushes: the register-tiled one up to tiled_max_macs
# multiply-adds per step (B * 3H * H), OpenBLAS's above. Set once per process by
# grufast._isa (set_tiled_limit) from the ISA and the cache sizes; the default keeps the
# tiled GEMM everywhere. Inference, on W_hh^T packed for the tiles, always runs tiled
# (tools/isa_crossover.py: 0.61-0.97x OpenBLAS's time on the AVX2 build, B <= 256,
# H <= 512); a training forward follows the backward, so that one thread pool serves the
# whole step (ours and OpenBLAS's in turn: 1.11x the time at B = 64, H = 512 on two
# threads, each pool's spinning threads taking the other's cores); above the limit a
# training forward therefore equals inference to rounding, not bitwise. recurrence_path
# forces one path everywhere.
cdef long long tiled_max_macs = 1LL << 62
cdef int recurrence_path = 0  # 0 by the limit, 1 tiled, 2 OpenBLAS


def set_tiled_limit(long long max_macs) -> None:
    """Batches (B >= 4) whose step has more than max_macs multiply-adds (B * 3H * H) run
    their training steps' recurrent products in OpenBLAS's GEMM instead of the
    register-tiled one."""
    global tiled_max_macs
    if max_macs < 0:
        raise ValueError(f"max_macs must be >= 0, got {max_macs}")
    tiled_max_macs = max_macs


def recurrence_plan(Py_ssize_t B, Py_ssize_t H, bint training) -> tuple:
    """(tiled, split) as a call on B sequences of H units would plan it (a training forward
    or backward, or inference): whether the
    recurrent products run in the register-tiled GEMM, and 'serial', 'units' or
    'sequences' (for tests)."""
    cdef ThreadPlan plan = plan_threads(B, H, training)
    return (bool(plan.tiled_recurrence),
            ("serial", "sequences", "units")[<int>plan.split])


cdef inline bint _reads_w_hh_pp(ThreadPlan plan) noexcept nogil:
    """Whether forward under this plan reads the packed W_hh^T: the register-tiled
    recurrent products of a batch (a split by units runs GEMVs, even when tiles are
    forced)."""
    return plan.tiled_recurrence and plan.split != BY_UNITS


cdef inline bint _reads_w_hh_p(ThreadPlan plan, Py_ssize_t B) noexcept nogil:
    """Whether forward under this plan reads W_hh's panels: a split by units, and one GEMV
    per sequence for one to three sequences."""
    return plan.split == BY_UNITS or (not plan.tiled_recurrence and B < 4)


def forward_reads(Py_ssize_t B, Py_ssize_t H, bint training) -> tuple:
    """(w_hh_pp, w_hh_p): which weight copies forward on B sequences of H units reads now
    (its plan, with this thread count and limit); forward refuses None for these, and
    functional.Weights.read_by makes only these."""
    cdef ThreadPlan plan = plan_threads(B, H, training)
    return bool(_reads_w_hh_pp(plan)), bool(_reads_w_hh_p(plan, B))


def tiled_limit() -> int:
    """The limit set_tiled_limit set (2**62: none)."""
    return tiled_max_macs


def force_recurrence_path(str path) -> None:
    """'auto' (by the limit), 'tiled' or 'blas' (a GEMV per sequence below 4 sequences)
    for every batch, forward and backward: for measuring the crossover
    (tools/isa_crossover.py), not for users."""
    global recurrence_path
    paths = ("auto", "tiled", "blas")
    if path not in paths:
        raise ValueError(f"path must be one of {paths}, got {path!r}")
    recurrence_path = paths.index(path)


cdef inline bint _use_tiled_recurrence(Py_ssize_t B, Py_ssize_t H, bint training
                                       ) noexcept nogil:
    """Whether a step's recurrent products go to the register-tiled GEMM (grufast._gemm),
    which our threads can split by sequences: from 4 rows (below, one GEMV per sequence on
    panel-packed weights), in training up to the per-process limit. The choice
    depends on the shape and that limit only, never on timing within a process."""
    if recurrence_path:
        return recurrence_path == 1
    if B < 4:
        return False
    return not training or B * 3 * H * H <= tiled_max_macs


cdef inline ThreadPlan plan_threads(Py_ssize_t B, Py_ssize_t H, bint training
                                    ) noexcept nogil:
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
    plan.alone = False
    plan.tiled_recurrence = _use_tiled_recurrence(B, H, training)
    if B == 1 and SPIN_BARRIER and 3 * H * H >= PARALLEL_MIN_MACS:
        n = min(max_threads(), <int>(H // 64))
        if n > 1:
            # After a fallback (a loaded machine) one thread runs every thread's part of the
            # forward, for a while: the results do not depend on the load.
            plan.split = BY_UNITS
            plan.threads = n
            plan.alone = serial_backoff()
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
