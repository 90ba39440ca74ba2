/* grufast's threads, for the kernels (declared to Cython in _kernels_threads.pxi).

   OpenMP's thread queries, with single-thread stand-ins when built without OpenMP, and a
   spinning barrier for the threads of one parallel region, met once or twice per step by a
   sequence split across cores by hidden units. OpenMP's own barrier sleeps in the kernel
   under OMP_WAIT_POLICY=PASSIVE (which grufast sets while loading libgomp), and waking costs
   more than a step. The barrier spins, then yields the core when it waits long (the machine
   is oversubscribed). See docs/design.md section 5 (Threads). */

#ifndef GRUFAST_THREADS_H
#define GRUFAST_THREADS_H

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

typedef struct { unsigned arrived, generation; } grufast_barrier;

#if defined(_OPENMP) && defined(__GNUC__)
#define GRUFAST_SPIN_BARRIER 1
#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#define GRUFAST_PAUSE() __builtin_ia32_pause()
#else
#define GRUFAST_PAUSE() ((void)0)
#endif
/* The last of n threads to arrive resets the count and opens the next generation; the
   others wait for the generation to change. */
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
/* No spinning barrier: the kernels then never split a sequence across threads. */
#define GRUFAST_SPIN_BARRIER 0
static void grufast_barrier_wait(grufast_barrier* b, unsigned n) { (void)b; (void)n; }
#endif

#endif /* GRUFAST_THREADS_H */
