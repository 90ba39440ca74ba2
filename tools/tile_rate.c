/* How close the register tiles (src/grufast/_tiles.h) come to the core's FMA rate, on
   one core: a loop of nothing but independent fused multiply-adds (the ceiling), then the
   tiles over a product of the GRU's shape (C (M, N) = A (M, K) @ W, W packed in panels of
   3 vectors, as pack_gemm_weights packs it).

   AVX2 (the emulated AVX2 machine's tiles):
     gcc -O3 -fno-trapping-math -mavx2 -mfma -Isrc/grufast tools/tile_rate.c -o /tmp/tile_rate
     taskset -c 1 /tmp/tile_rate 16 384 128
   AVX-512: add -mavx512f -mavx512vl -DVEC=16. An optional fourth argument sets the seconds
   each of the two measurements runs (default 1).
   Prints GFLOP/s of each and their ratio. */
#include <immintrin.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef VEC
#define VEC 8
#endif
#define GRUFAST_VEC_FLOATS VEC
#define GRUFAST_TILE_FLOATS (3 * VEC)
#define GRUFAST_TILE_MAX 48
#include "_tiles.h"

#if VEC == 16
typedef __m512 vec;
#define FMADD _mm512_fmadd_ps
#define SET1 _mm512_set1_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define FMADD _mm256_fmadd_ps
#define SET1 _mm256_set1_ps
#define STORE _mm256_storeu_ps
#endif

/* n floats on a cache line (aligned_alloc wants a size that is a multiple of 64) */
static float* line_alloc(ptrdiff_t n)
{
    size_t bytes = ((size_t)n * sizeof(float) + 63) / 64 * 64;
    return aligned_alloc(64, bytes);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* 12 independent chains (as many as a full tile has), each a * m + c, nothing else: the
   asm barrier after each round keeps the compiler from merging or dropping any. */
static double fma_rate(double seconds)
{
    vec m = SET1(0.999999f), c = SET1(1e-7f);
    vec a0 = SET1(1), a1 = SET1(2), a2 = SET1(3), a3 = SET1(4), a4 = SET1(5), a5 = SET1(6);
    vec a6 = SET1(7), a7 = SET1(8), a8 = SET1(9), a9 = SET1(10), a10 = SET1(11), a11 = SET1(12);
    long rounds = 0;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 100000; i++) {
            a0 = FMADD(a0, m, c); a1 = FMADD(a1, m, c); a2 = FMADD(a2, m, c);
            a3 = FMADD(a3, m, c); a4 = FMADD(a4, m, c); a5 = FMADD(a5, m, c);
            a6 = FMADD(a6, m, c); a7 = FMADD(a7, m, c); a8 = FMADD(a8, m, c);
            a9 = FMADD(a9, m, c); a10 = FMADD(a10, m, c); a11 = FMADD(a11, m, c);
            __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4),
                             "+x"(a5), "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10),
                             "+x"(a11));
        }
        rounds += 100000;
        t = now() - t0;
    } while (t < seconds);
    float sink[VEC];
    STORE(sink, a0);
    if (sink[0] == 12345.0f) printf("-");  /* keeps the chains' results live */
    return rounds * 12.0 * 2 * VEC / t / 1e9;
}

int main(int argc, char** argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s M N K [seconds] (N a multiple of %d)\n", argv[0], 3 * VEC);
        return 2;
    }
    ptrdiff_t M = atol(argv[1]), N = atol(argv[2]), K = atol(argv[3]), w = 3 * VEC;
    double seconds = argc == 5 ? atof(argv[4]) : 1.0;
    if (M < 4 || M % 4 || N < w || N % w || K < 1 || !(seconds > 0)) {
        fprintf(stderr, "M a multiple of 4, N of %td, K >= 1, seconds > 0\n", w);
        return 2;
    }
    float* A = line_alloc(M * K);
    float* P = line_alloc(K * N);
    float* C = line_alloc(M * N);
    if (!A || !P || !C) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (ptrdiff_t i = 0; i < M * K; i++) A[i] = 0.001f * (float)(i % 7);
    for (ptrdiff_t i = 0; i < K * N; i++) P[i] = 0.002f * (float)(i % 5);
    double peak = fma_rate(seconds);
    long calls = 0;
    double t0 = now(), t;
    do {  /* column panels outside, row tiles inside, as _gemm.pxd's _panel walks them */
        for (ptrdiff_t n = 0; n < N; n += w)
            for (ptrdiff_t m = 0; m < M; m += 4)
                grufast_tile_f(4, 3, K, A + m * K, K, 1, P + K * n, w, C + m * N + n, N, 0);
        calls++;
        t = now() - t0;
    } while (t < seconds);
    double tiles = 2.0 * M * N * K * calls / t / 1e9;
    printf("%d-float vectors: FMA-only loop %.1f GFLOP/s; tiles, M=%td N=%td K=%td: %.1f "
           "GFLOP/s (%.2fx the FMA-only loop)\n", VEC, peak, M, N, K, tiles, tiles / peak);
    free(A); free(P); free(C);
    return 0;
}
