/* grufast's threads, for the kernels (declared to Cython in _kernels_threads.pxi).

   - OpenMP's thread queries, with single-thread stand-ins when built without OpenMP, capped
     by grufast_thread_cap: a forked child runs grufast serially. GNU OpenMP's thread pool
     does not survive fork(), and a child's first parallel region would wait forever for the
     parent's threads. A pthread_atfork child handler (registered when the module loads)
     sets the cap to 1; nothing raises it again, whatever OpenMP's own count says later.
   - A barrier for the threads of one parallel region, met once or twice per step by a
     sequence split across cores by hidden units. OpenMP's own barrier sleeps in the kernel
     under OMP_WAIT_POLICY=PASSIVE (which grufast sets while loading libgomp), and waking
     costs more than a step. This one spins for a bounded time (a partner running on its
     own core arrives within microseconds), then yields, then sleeps on a futex (the partner
     is descheduled: the machine is loaded or oversubscribed, and spinning would take the
     core it needs).
   - Adaptive fallback: the barrier adds up the time its waiters spent; when waiting takes
     more than two fifths of a call (a partner that is descheduled again and again), the
     team finishes the call on one thread, and the next calls within a back-off window plan
     serially before trying two threads again.
   See docs/design.md section 5 (Threads). */

#ifndef GRUFAST_THREADS_H
#define GRUFAST_THREADS_H

#include <limits.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <sched.h>
#define GRUFAST_HAVE_ATFORK 1
#else
#define GRUFAST_HAVE_ATFORK 0
#endif

/* The most threads the planner may hand to OpenMP in this process (per module build). */
static int grufast_thread_cap = INT_MAX;

static void grufast_fork_child(void) { grufast_thread_cap = 1; }

/* Called once, at the module's import. Returns 0 on success. */
static int grufast_register_fork_handler(void) {
#if GRUFAST_HAVE_ATFORK
    return pthread_atfork(NULL, NULL, grufast_fork_child);
#else
    return 0;
#endif
}

#ifdef _OPENMP
static int grufast_max_threads(void) {
    int n;
    if (grufast_thread_cap <= 1) return 1;  /* never ask libgomp anything after fork */
    n = omp_get_max_threads();
    return n < grufast_thread_cap ? n : grufast_thread_cap;
}
static int grufast_team_size(void) { return omp_get_num_threads(); }
static int grufast_thread_id(void) { return omp_get_thread_num(); }
#else
static int grufast_max_threads(void) { return 1; }
static int grufast_team_size(void) { return 1; }
static int grufast_thread_id(void) { return 0; }
#endif

static long long grufast_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A pool thread woken onto its caller's CPU moves to another one for the call. On a VM an
   idle vCPU is halted, which the guest kernel sees as preempted, so a wake-up prefers the
   waker's running vCPU: the two threads of a team split by hidden units then took turns on
   one core until the load balancer moved one, milliseconds later, and the barrier's waits
   made the call fall back to one thread (seen on this project's 2-vCPU VM in about one
   call in four after an idle pause). The thread that finds itself on the caller's CPU
   takes that CPU out of its affinity mask for the call (the kernel moves it at once) and
   puts the mask back at the end; a process allowed one CPU is left as it is. */
#if defined(__linux__) && defined(_OPENMP) && defined(CPU_SET)
#define GRUFAST_HAVE_AFFINITY 1
static __thread cpu_set_t grufast_saved_mask;
static __thread int grufast_mask_changed = 0;
static unsigned long grufast_cpu_moves = 0;  /* how many times a pool thread moved (tests) */
static int grufast_current_cpu(void) { return sched_getcpu(); }
#else
#define GRUFAST_HAVE_AFFINITY 0
static unsigned long grufast_cpu_moves = 0;
static int grufast_current_cpu(void) { return -1; }
#endif

/* Until when (grufast_now_ns) calls plan serially after one fell back (0: no back-off). */
static long long grufast_serial_until = 0;
/* Back-off after a fallback: long against a call's fallback cost, short enough that two
   threads come back soon after the load goes away (or after a passing stall: on a VM a
   vCPU is sometimes held off for milliseconds on an otherwise idle machine). */
#define GRUFAST_BACKOFF_NS 250000000LL
/* Spinning, then yielding, before sleeping: a step takes from ~5 us (H = 224) up; a
   partner that has not arrived after 50 us is not running. Yielding (which hands the core
   to any other runnable thread) goes on up to 2 ms before the futex: on a VM a sleeping
   vCPU took 1-2 ms to wake, so a sleep at every passing stall (at 0.2 ms, as before) made
   the partners take turns waiting for each other's wake-ups, and T = 1000, H = 512 ran at
   one thread's speed in half the processes (now 1.5x, int8 1.8x, in each). */
#define GRUFAST_SPIN_NS 50000LL
#define GRUFAST_YIELD_NS 2000000LL
/* A call falls back to one thread once its waits exceed 2/5 of its time, judged from the
   first meeting (the pool's wake-up is not load) and after 2 ms of it.
   A waiter that waits a fraction f of the call makes two threads 2 (1 - f) times as fast
   as one: at f = 2/5 still 1.2x, below that one thread would lose. (At 1/5, passing stalls
   on an idle VM set it off, and the back-off then cost the second core for no reason.) */
#define GRUFAST_FALLBACK_MIN_NS 2000000LL

/* Start a back-off window now, as a fallback would (tests). */
static void grufast_start_serial_backoff(void) {
    __atomic_store_n(&grufast_serial_until, grufast_now_ns() + GRUFAST_BACKOFF_NS,
                     __ATOMIC_RELAXED);
}

static int grufast_serial_backoff(void) {
    long long until = __atomic_load_n(&grufast_serial_until, __ATOMIC_RELAXED);
    return until != 0 && grufast_now_ns() < until;
}

typedef struct {
    unsigned arrived, generation;  /* generation is also the futex word */
    unsigned sleepers;             /* waiters inside futex_wait */
    int first;                     /* the thread that arrived first at this generation */
    int serial;                    /* set at a barrier: the team goes on as one thread */
    int leader;                    /* ... this one, the first to arrive there */
    int adaptive;                  /* whether this team may fall back to one thread */
    long long start_ns, waited_ns; /* the call's start; time all waiters spent waiting */
    unsigned long tickets;         /* grufast_ticket's counter: work handed out first come */
    int caller_cpu;                /* the CPU the caller ran on when it opened the team */
} grufast_barrier;

static void grufast_barrier_init(grufast_barrier* b, int adaptive) {
    b->arrived = 0;
    b->generation = 0;
    b->sleepers = 0;
    b->first = 0;
    b->serial = 0;
    b->leader = 0;
    b->adaptive = adaptive;
    b->waited_ns = 0;
    b->start_ns = grufast_now_ns();
    b->tickets = 0;
    b->caller_cpu = grufast_current_cpu();
}

/* The next ticket of the team's shared counter: threads take blocks of work in the order
   they come (a pool thread woken from sleep may start a millisecond late). */
static unsigned long grufast_ticket(grufast_barrier* b) {
    return __atomic_fetch_add(&b->tickets, 1UL, __ATOMIC_RELAXED);
}

/* Thread p of a team, at the start of its work: a pool thread (p > 0) running on the CPU
   its caller ran on when it opened the team leaves that CPU for the call. */
static void grufast_leave_caller_cpu(const grufast_barrier* b, int p) {
#if GRUFAST_HAVE_AFFINITY
    cpu_set_t mask;
    int cpu;
    if (p == 0 || b->caller_cpu < 0 || grufast_mask_changed) return;
    cpu = sched_getcpu();
    if (cpu != b->caller_cpu) return;
    if (pthread_getaffinity_np(pthread_self(), sizeof mask, &mask) != 0) return;
    grufast_saved_mask = mask;
    CPU_CLR(cpu, &mask);
    if (CPU_COUNT(&mask) == 0) return;
    if (pthread_setaffinity_np(pthread_self(), sizeof mask, &mask) == 0) {
        grufast_mask_changed = 1;
        __atomic_add_fetch(&grufast_cpu_moves, 1UL, __ATOMIC_RELAXED);
    }
#else
    (void)b; (void)p;
#endif
}

/* At the end of a thread's work: the affinity mask it had before grufast_leave_caller_cpu. */
static void grufast_restore_cpu_mask(void) {
#if GRUFAST_HAVE_AFFINITY
    if (!grufast_mask_changed) return;
    pthread_setaffinity_np(pthread_self(), sizeof grufast_saved_mask, &grufast_saved_mask);
    grufast_mask_changed = 0;
#endif
}

#if defined(_OPENMP) && defined(__GNUC__)
#define GRUFAST_SPIN_BARRIER 1
#include <sched.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
static void grufast_futex_wait(unsigned* word, unsigned value) {
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}
static void grufast_futex_wake(unsigned* word) {
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#define GRUFAST_HAVE_FUTEX 1
#else
#define GRUFAST_HAVE_FUTEX 0
#endif
#if defined(__x86_64__) || defined(__i386__)
#define GRUFAST_PAUSE() __builtin_ia32_pause()
#else
#define GRUFAST_PAUSE() ((void)0)
#endif

/* Thread p of n arrives. The last to arrive decides whether the team falls back to one
   thread, resets the count and opens the next generation (waking sleepers); the others
   wait for the generation to change. Returns 0 to go on as before, 1 when the team
   continues serially with the caller as its one thread, -1 when the caller leaves. */
static int grufast_barrier_wait(grufast_barrier* b, unsigned n, int p) {
    unsigned gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE), spins = 0;
    unsigned arrived = __atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL);
    long long t0, now, waited;
    if (arrived == 1) __atomic_store_n(&b->first, p, __ATOMIC_RELAXED);
    if (arrived == n) {
        if (gen == 0) {
            /* The first meeting waits for the pool threads to wake (on a VM that took up
               to 1.6 ms): a one-off cost of the call, not a partner held off by load. The
               load is judged from here on. */
            b->start_ns = grufast_now_ns();
            __atomic_store_n(&b->waited_ns, 0, __ATOMIC_RELAXED);
        } else if (b->adaptive && n > 1) {
            now = grufast_now_ns();
            waited = __atomic_load_n(&b->waited_ns, __ATOMIC_RELAXED) / (long long)(n - 1);
            if (now - b->start_ns > GRUFAST_FALLBACK_MIN_NS
                    && 5 * waited > 2 * (now - b->start_ns)) {
                b->serial = 1;
                b->leader = __atomic_load_n(&b->first, __ATOMIC_RELAXED);
                __atomic_store_n(&grufast_serial_until, now + GRUFAST_BACKOFF_NS,
                                 __ATOMIC_RELAXED);
            }
        }
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, gen + 1, __ATOMIC_SEQ_CST);
#if GRUFAST_HAVE_FUTEX
        if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST))
            grufast_futex_wake(&b->generation);
#endif
    } else {
        t0 = grufast_now_ns();
        now = t0;
        while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen) {
            if (++spins % 64 == 0) now = grufast_now_ns();
            if (now - t0 < GRUFAST_SPIN_NS) {
                GRUFAST_PAUSE();
            } else if (now - t0 < GRUFAST_YIELD_NS || !GRUFAST_HAVE_FUTEX) {
                sched_yield();
                now = grufast_now_ns();
            } else {
#if GRUFAST_HAVE_FUTEX
                __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
                if (__atomic_load_n(&b->generation, __ATOMIC_SEQ_CST) == gen)
                    grufast_futex_wait(&b->generation, gen);
                __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
#endif
            }
        }
        if (gen > 0)
            __atomic_add_fetch(&b->waited_ns, grufast_now_ns() - t0, __ATOMIC_RELAXED);
    }
    if (!b->serial) return 0;
    return b->leader == p ? 1 : -1;
}
#else
/* No spinning barrier: the kernels then never split a sequence across threads. */
#define GRUFAST_SPIN_BARRIER 0
static int grufast_barrier_wait(grufast_barrier* b, unsigned n, int p) {
    (void)b; (void)n; (void)p;
    return 0;
}
#endif

#endif /* GRUFAST_THREADS_H */
