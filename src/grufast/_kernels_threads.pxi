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
    BATCH_UNITS_MIN = 32  # units per thread for a batch split by units (2 AVX-512 vectors)

# Input projections (x W_ih^T over a chunk of steps) run in the register-tiled GEMM on
# W_ih^T packed once per weight update into the panels the tiles read (prepacked_gemm),
# on one thread always, and on several when they have at most projection_max_macs
# multiply-adds or at most projection_max_rows rows (steps x sequences); the others in
# OpenBLAS's GEMM, which threads them. One thread (T = 100, interleaved calls, grid
# batches B = 16-256, H = 128-512, Zen 5): the tiles took 0.68-0.76x OpenBLAS's time on
# the AVX-512 build where OpenBLAS 0.3.30 runs its Haswell kernels (it does not know the
# CPU), 0.94-1.01x against its SkylakeX kernels (OPENBLAS_CORETYPE=SkylakeX), and
# 0.93-1.00x on the AVX2 build against the Haswell kernels. The limits, for several
# threads, come from earlier one-thread measurements (interleaved calls, GRU inference,
# T = 100, one sequence, whole call, Zen 4): H = 128 (100 rows, 4.9M): prepacked 0.93x
# OpenBLAS's time on the AVX-512 build, 0.95x on the AVX2 one (OpenBLAS Haswell kernels);
# H = 256 (19.7M): 0.91x and 0.94x (the tiles on the unpacked transposed weights: 0.94x
# and 0.96x); H = 512 (78.6M): 0.95x and 0.975x with the panels copied at every call
# (unpacked: 0.95-1.00x and 1.04-1.05x); B = 16, H = 128 (1600 rows): unpacked 1.11x.
cdef long long projection_max_macs = 8000000
cdef long long projection_max_rows = 128


def set_projection_limit(long long max_macs, long long max_rows) -> None:
    """On several threads, input projections with at most max_macs multiply-adds, or with
    at most max_rows rows, run in the tiled GEMM on prepacked weights; the others in
    OpenBLAS's (one thread: the tiled GEMM always)."""
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
    return (max_threads() == 1 or <long long>rows * N * K <= projection_max_macs
            or rows <= projection_max_rows)


def tiled_projection(Py_ssize_t rows, Py_ssize_t N, Py_ssize_t K) -> bool:
    """Whether a serial call's input projection of rows x K by K x N runs in the tiled GEMM
    now (else OpenBLAS's), with this thread count and limit (for tests)."""
    return bool(_tiled_projection(rows, N, K))


cdef enum Split:
    SERIAL            # one thread (OpenBLAS may still thread each step's GEMM)
    BY_SEQUENCES      # each thread owns whole register tiles of sequences; no barrier
    BY_UNITS          # each thread a slice of the units of every sequence; barrier


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


# Which GEMM serves a training step's recurrent products of a batch (B >= 2), forward and
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
    """Batches (B >= 2) whose step has more than max_macs multiply-adds (B * 3H * H) run
    their training steps' recurrent products in OpenBLAS's GEMM (2-3 sequences: a GEMV
    each) instead of the register-tiled one."""
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


cdef inline bint _reads_w_hh_pp(ThreadPlan plan, Py_ssize_t B) noexcept nogil:
    """Whether forward under this plan reads the packed W_hh^T: the register-tiled
    recurrent products of a batch, split by units or not (one sequence split by units runs
    GEMVs, even when tiles are forced)."""
    if plan.split == BY_UNITS:
        return B > 1
    return plan.tiled_recurrence


cdef inline bint _reads_w_hh_p(ThreadPlan plan, Py_ssize_t B) noexcept nogil:
    """Whether forward under this plan reads W_hh's panels: one sequence split by units,
    and one GEMV per sequence for one to three sequences the tiles do not serve."""
    if plan.split == BY_UNITS:
        return B == 1
    return B < 4 and not plan.tiled_recurrence


def forward_reads(Py_ssize_t B, Py_ssize_t H, bint training) -> tuple:
    """(w_hh_pp, w_hh_p): which weight copies forward on B sequences of H units reads now
    (its plan, with this thread count and limit); forward refuses None for these, and
    functional.Weights.read_by makes only these."""
    cdef ThreadPlan plan = plan_threads(B, H, training)
    return bool(_reads_w_hh_pp(plan, B)), bool(_reads_w_hh_p(plan, B))


def backward_reads(Py_ssize_t B, Py_ssize_t H) -> bool:
    """Whether backward on B sequences of H units reads W_hh's column panels
    (pack_weight_columns) under its plan now, for the same GEMVs as forward's
    (_reads_w_hh_p); backward refuses None where it does."""
    return bool(_reads_w_hh_p(plan_threads(B, H, True), B))


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


cdef int batch_split = 0  # 0 by the rule (_units_for_batch), 1 sequences, 2 hidden units


def force_batch_split(str split) -> None:
    """'auto' (by the rule), 'sequences' or 'units' for a batch of 8 or more that splits
    across threads, inference and training: for measuring the choice
    (tools/many_cores.py) and for tests, not for users."""
    global batch_split
    splits = ("auto", "sequences", "units")
    if split not in splits:
        raise ValueError(f"split must be one of {splits}, got {split!r}")
    batch_split = splits.index(split)


# A batch of 8 or more splits by hidden units (each thread a slice of the units for all the
# sequences, as one sequence does) rather than by sequences (each thread whole register
# tiles of 4 sequences) from UNITS_MIN_THREADS threads, when that gets it more threads (a
# split by sequences stops at B / 4 threads, one by units at H / 32), or when W_hh^T
# (12 H^2 bytes in float32) exceeds one core's L2 (units_min_bytes, set by grufast._isa
# from the L2 size read at run time): each thread then keeps a 1/n slice of the weights
# where a split by sequences streams them all every step. Measured
# (tools/many_cores.py, 16-core Xeon, 2 MiB L2, docs/many_cores/run2_splits.txt): where
# both get the same threads, the two splits took the same time (units / sequences
# 0.95-1.03, 2 to 16 threads, B = 16 to 256), so the L2 clause has no measured gain; it is
# the rule the 16-core bench measured (B = 64, H = 512 split by units). Two and three
# threads keep the split without per-step barriers, as does a back-off.
cdef long long units_min_bytes = 1LL << 62
cdef enum:
    UNITS_MIN_THREADS = 4


def set_units_min_bytes(long long n) -> None:
    """Inference batches whose W_hh^T (12 H^2 bytes) exceeds n split by hidden units
    (from 4 threads)."""
    global units_min_bytes
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    units_min_bytes = n


cdef inline bint _units_for_batch(Py_ssize_t H, int by_units, int by_sequences,
                                  bint training) noexcept nogil:
    """Whether a batch of 8 or more splits by hidden units rather than by sequences, given
    the threads each split would use. Not during a back-off (a loaded machine): the split by
    sequences needs no barrier and hands its parts out as threads come free, where a split
    by units would run on one thread. Training only where units get it more threads: its
    backward by units leaves the weight gradients to GEMMs after the loop, where by
    sequences they accumulate while the gates' gradients are in cache."""
    if batch_split:
        return batch_split == 2
    return by_units >= UNITS_MIN_THREADS and not serial_backoff() and (
        by_units > by_sequences
        or (not training and 12 * <long long>H * H > units_min_bytes))


cdef inline bint _use_tiled_recurrence(Py_ssize_t B, Py_ssize_t H, bint training
                                       ) noexcept nogil:
    """Whether a step's recurrent products go to the register-tiled GEMM (grufast._gemm),
    which our threads can split: from 2 rows (one sequence: a GEMV on panel-packed
    weights), in training up to the per-process limit. Two and three rows run tiles of
    2 and 3 rows (_tiles.h), which read each weight once for all the rows where a GEMV per
    sequence read it once per row: one core, T = 100, I = H, inference, fresh processes,
    B = 3: 0.70-0.80x the GEMVs' time at H = 128, 0.62-0.82x at 256, 0.47-0.58x at 512
    (both builds); B = 2: 0.62-0.85x at H = 128-512 on the AVX-512 build, 0.71-0.97x on
    the AVX2 one, and the same time at H = 64. The choice depends on the shape and that
    limit only, never on timing within a process."""
    if recurrence_path:
        return recurrence_path == 1
    if B < 2:
        return False
    return not training or B * 3 * H * H <= tiled_max_macs


cdef inline ThreadPlan plan_threads(Py_ssize_t B, Py_ssize_t H, bint training
                                    ) noexcept nogil:
    """How a call on B sequences of H hidden units splits across threads.

    By hidden units, with the spinning barrier only: up to 7 sequences (too few for two
    threads by sequences) where one sequence's step has enough multiply-adds, at least 64
    units per thread; a batch of 8 or more as _units_for_batch says, at least 32 units per
    thread. By sequences: when the register-tiled GEMM serves the batch (else OpenBLAS
    threads each step's GEMM itself), from B = 8, at most one thread per 4 sequences (whole
    register tiles), for steps with enough multiply-adds to pay for a second core. Thread
    counts follow OpenMP's (threadpoolctl and OMP_NUM_THREADS set it)."""
    cdef ThreadPlan plan
    cdef int n, m
    plan.split = SERIAL
    plan.threads = 1
    plan.alone = False
    plan.tiled_recurrence = _use_tiled_recurrence(B, H, training)
    if B < 8 and SPIN_BARRIER and 3 * H * H >= PARALLEL_MIN_MACS and (
            B == 1 or plan.tiled_recurrence):
        # The threshold of one sequence for up to 7: B = 4 and 7 at H = 128 took 1.1-1.4x
        # their one-thread time on two threads (a step's share is too short for the
        # barrier). Batches past the training limit stay serial (GEMVs or OpenBLAS).
        n = min(max_threads(), <int>(H // 64))
        if n > 1:
            # After a fallback (a loaded machine) one thread runs every thread's part of the
            # forward, for a while: the results do not depend on the load.
            plan.split = BY_UNITS
            plan.threads = n
            plan.alone = serial_backoff()
    elif plan.tiled_recurrence and B >= 8 and B * 3 * H * H >= PARALLEL_MIN_MACS:
        n = min(max_threads(), <int>(H // BATCH_UNITS_MIN))
        m = min(max_threads(), <int>(B // 4))
        if SPIN_BARRIER and n > 1 and _units_for_batch(H, n, m, training):
            plan.split = BY_UNITS
            plan.threads = n
            plan.alone = serial_backoff()
        elif m > 1:
            plan.split = BY_SEQUENCES
            plan.threads = m
    return plan


cdef inline Py_ssize_t _share(Py_ssize_t n, int nt, int p, Py_ssize_t q) noexcept nogil:
    """Where thread p of nt starts its share of n items (p = nt: n), on multiples of q:
    sequences and gate rows by whole tiles (4), hidden units by whole vectors (16)."""
    return n if p >= nt else (n * p // nt) // q * q
