/* The tiled GEMM's register tiles (grufast_tile, called by _gemm.pxd's _register_tile):
   1-4 rows x 3 vectors ("full"), x 2 ("pair") and x 1 ("vector") of C, C (+)= A @ W over
   K, each accumulator a named vector variable.

   Why not a loop over an accumulator array, as these tiles were written in Cython before:
   gcc compiled that loop well for some shapes and builds and not for others. The AVX2
   build's pair tile kept half of its sums in memory (a load-FMA-store chain per k) and ran
   at ~30 GFLOP/s where this one runs at ~60-80 (C micro-benchmark, one Zen 4 core, K = 128
   to 512); the AVX-512 build's vector tile did the same (26 against 69) and so did the
   AVX2 build's full tile for doubles; the AVX2 build's vector tile multiplied and added in
   separate instructions (two roundings where the other tiles fuse them). The full tile for
   floats was compiled well: 81-87 GFLOP/s there against 85-99 here (AVX2), 84-102 against
   83-102 (AVX-512).

   Each element's sum is one chain of fused multiply-adds over k = 0, 1, ... starting from
   0, then stored or added to C, whatever the tile's shape, the edge tiles included (below):
   an element has the same bits whichever tile computes it, on every build and optimisation
   level. Without AVX2 + FMA (the baseline build) the same tiles are plain loops, rounding
   as that build's other loops do. */

#ifndef GRUFAST_TILES_H
#define GRUFAST_TILES_H

#include <stddef.h>

/* The vector width comes from the build (_gemm.pxd's GRUFAST_VEC_FLOATS: 16 floats in the
   AVX-512 build, 8 otherwise), not from the compiler's ISA macros alone: a build given
   wider CFLAGS (-march=native on an AVX-512 machine) keeps its own tile widths and uses
   256-bit intrinsics where it can. */
#if !defined(GRUFAST_VEC_FLOATS) || !defined(GRUFAST_TILE_MAX)
#error "_tiles.h needs GRUFAST_VEC_FLOATS and GRUFAST_TILE_MAX (defined in _gemm.pxd) first"
#endif
#if defined(GRUFAST_TILE_FLOATS) && GRUFAST_TILE_FLOATS != 3 * GRUFAST_VEC_FLOATS
#error "the full tile is 3 vectors: GRUFAST_TILE_FLOATS must be 3 * GRUFAST_VEC_FLOATS"
#endif
#if 3 * GRUFAST_VEC_FLOATS > GRUFAST_TILE_MAX
#error "a panel (3 vectors) must fit the edge tile: at most GRUFAST_TILE_MAX floats wide"
#endif
#if GRUFAST_VEC_FLOATS == 16 && defined(__AVX512F__)
#define GT_AVX512 1
#elif GRUFAST_VEC_FLOATS == 8 && defined(__AVX2__) && defined(__FMA__)
#define GT_AVX2 1
#endif
#if defined(GT_AVX512) || defined(GT_AVX2)
#include <immintrin.h>
#endif

#if defined(GT_AVX512)
#define GT_VEC_f __m512
#define GT_VEC_d __m512d
#define GT_W_f 16
#define GT_W_d 8
#define GT_LOAD_f _mm512_loadu_ps
#define GT_LOAD_d _mm512_loadu_pd
#define GT_STORE_f _mm512_storeu_ps
#define GT_STORE_d _mm512_storeu_pd
#define GT_SET1_f _mm512_set1_ps
#define GT_SET1_d _mm512_set1_pd
#define GT_FMA_f _mm512_fmadd_ps
#define GT_FMA_d _mm512_fmadd_pd
#define GT_ADD_f _mm512_add_ps
#define GT_ADD_d _mm512_add_pd
#define GT_ZERO_f _mm512_setzero_ps
#define GT_ZERO_d _mm512_setzero_pd
#elif defined(GT_AVX2)
#define GT_VEC_f __m256
#define GT_VEC_d __m256d
#define GT_W_f 8
#define GT_W_d 4
#define GT_LOAD_f _mm256_loadu_ps
#define GT_LOAD_d _mm256_loadu_pd
#define GT_STORE_f _mm256_storeu_ps
#define GT_STORE_d _mm256_storeu_pd
#define GT_SET1_f _mm256_set1_ps
#define GT_SET1_d _mm256_set1_pd
#define GT_FMA_f _mm256_fmadd_ps
#define GT_FMA_d _mm256_fmadd_pd
#define GT_ADD_f _mm256_add_ps
#define GT_ADD_d _mm256_add_pd
#define GT_ZERO_f _mm256_setzero_ps
#define GT_ZERO_d _mm256_setzero_pd
#endif

#ifdef GT_VEC_f

/* One row's sums into C: stored, or added to what C holds. */
#define GT_OUT(S, p, v, accumulate) \
    GT_STORE_##S(p, (accumulate) ? GT_ADD_##S(GT_LOAD_##S(p), v) : (v))

/* Row r of a tile of NV vectors: its sums c<r>0 ... take b * w0 ... (NV is a constant: the
   compiler drops the other vectors' code and variables). */
#define GT_ROW_FMA(S, NV, r, b)                                                            \
    c##r##0 = GT_FMA_##S(b, w0, c##r##0);                                                  \
    if (NV > 1) c##r##1 = GT_FMA_##S(b, w1, c##r##1);                                      \
    if (NV > 2) c##r##2 = GT_FMA_##S(b, w2, c##r##2)
#define GT_ROW_OUT(S, NV, r)                                                               \
    GT_OUT(S, C + r * ldc, c##r##0, accumulate);                                           \
    if (NV > 1) GT_OUT(S, C + r * ldc + n, c##r##1, accumulate);                           \
    if (NV > 2) GT_OUT(S, C + r * ldc + 2 * n, c##r##2, accumulate)

/* R rows (1-4) x NV vectors: per k, NV loads of W, R broadcasts of A, R NV independent
   FMAs, one named variable per sum (R and NV are constants: the compiler drops the other
   rows' and vectors' code and variables). The full tile (4 x 3) has 12 chains; the vector
   tile (4 x 1) only 4, bound by the FMA's latency (hence _panel_width avoids it). Tiles of
   1-3 rows serve a batch's last rows (B = 7: 3 rows of every step's product), which the
   edge tile's plain loop, its sums in memory, ran 2-3x slower. */
#define GT_ROW(S, NV, R, r)                                                                \
    if (R > r) {                                                                           \
        b = GT_SET1_##S(a[r * lda]);                                                       \
        GT_ROW_FMA(S, NV, r, b);                                                           \
    }
#define GT_TILE_R(NAME, S, T, NV, R)                                                       \
static inline void NAME(ptrdiff_t K, const T* A, ptrdiff_t lda, ptrdiff_t a_k,             \
                        const T* W, ptrdiff_t ldw, T* C, ptrdiff_t ldc, int accumulate)    \
{                                                                                          \
    const ptrdiff_t n = GT_W_##S;                                                          \
    GT_VEC_##S c00 = GT_ZERO_##S(), c01 = GT_ZERO_##S(), c02 = GT_ZERO_##S();              \
    GT_VEC_##S c10 = GT_ZERO_##S(), c11 = GT_ZERO_##S(), c12 = GT_ZERO_##S();              \
    GT_VEC_##S c20 = GT_ZERO_##S(), c21 = GT_ZERO_##S(), c22 = GT_ZERO_##S();              \
    GT_VEC_##S c30 = GT_ZERO_##S(), c31 = GT_ZERO_##S(), c32 = GT_ZERO_##S();              \
    for (ptrdiff_t k = 0; k < K; k++) {                                                    \
        const T* w = W + k * ldw;                                                          \
        const T* a = A + k * a_k;                                                          \
        GT_VEC_##S w0 = GT_LOAD_##S(w);                                                    \
        GT_VEC_##S w1 = NV > 1 ? GT_LOAD_##S(w + n) : w0;                                  \
        GT_VEC_##S w2 = NV > 2 ? GT_LOAD_##S(w + 2 * n) : w0;                              \
        GT_VEC_##S b;                                                                      \
        GT_ROW(S, NV, R, 0)                                                                \
        GT_ROW(S, NV, R, 1)                                                                \
        GT_ROW(S, NV, R, 2)                                                                \
        GT_ROW(S, NV, R, 3)                                                                \
    }                                                                                      \
    if (R > 0) { GT_ROW_OUT(S, NV, 0); }                                                   \
    if (R > 1) { GT_ROW_OUT(S, NV, 1); }                                                   \
    if (R > 2) { GT_ROW_OUT(S, NV, 2); }                                                   \
    if (R > 3) { GT_ROW_OUT(S, NV, 3); }                                                   \
}
#else /* the baseline build: the edge tile's plain loop (below) over the same shapes */

#define GT_W_f GRUFAST_VEC_FLOATS
#define GT_W_d (GRUFAST_VEC_FLOATS / 2)

#define GT_TILE_R(NAME, S, T, NV, R)                                                       \
static inline void NAME(ptrdiff_t K, const T* A, ptrdiff_t lda, ptrdiff_t a_k,             \
                        const T* W, ptrdiff_t ldw, T* C, ptrdiff_t ldc, int accumulate)    \
{                                                                                          \
    grufast_tile_edge_##S(R, NV * GT_W_##S, K, A, lda, a_k, W, ldw, C, ldc, accumulate);   \
}
#endif

/* The edge tiles: rows <= 4 and width <= GRUFAST_TILE_MAX of the remainders, as
   plain loops. In the SIMD builds each multiply-add is an explicit fma (as the whole tiles'
   intrinsics are), so that an element rounds the same in an edge tile as in a whole one
   even where the compiler does not contract a * b + c (-O0 in the debug build, -O1 in the
   sanitizer builds): paths that split the work differently, by batch or by thread, then
   agree to the bit on every build. Optimised, gcc vectorises the fma as it did the
   contracted a * b + c. The baseline build has no FMA: a * b + c, as its other loops. */
#include <math.h>
#if defined(GT_VEC_f)
#define GT_MADD_f(a, w, c) fmaf(a, w, c)
#define GT_MADD_d(a, w, c) fma(a, w, c)
#else
#define GT_MADD_f(a, w, c) ((c) + (a) * (w))
#define GT_MADD_d(a, w, c) ((c) + (a) * (w))
#endif
#define GT_EDGE(S, T)                                                                      \
static inline void grufast_tile_edge_##S(ptrdiff_t rows, ptrdiff_t width, ptrdiff_t K,     \
                                         const T* A, ptrdiff_t lda, ptrdiff_t a_k,          \
                                         const T* W, ptrdiff_t ldw, T* C, ptrdiff_t ldc,    \
                                         int accumulate)                                    \
{                                                                                          \
    T acc[4][GRUFAST_TILE_MAX];                                                            \
    for (ptrdiff_t r = 0; r < rows; r++)                                                   \
        for (ptrdiff_t i = 0; i < width; i++)                                              \
            acc[r][i] = 0;                                                                 \
    for (ptrdiff_t k = 0; k < K; k++)                                                      \
        for (ptrdiff_t r = 0; r < rows; r++) {                                             \
            T a = A[r * lda + k * a_k];                                                    \
            for (ptrdiff_t i = 0; i < width; i++)                                          \
                acc[r][i] = GT_MADD_##S(a, W[k * ldw + i], acc[r][i]);                     \
        }                                                                                  \
    for (ptrdiff_t r = 0; r < rows; r++)                                                   \
        for (ptrdiff_t i = 0; i < width; i++)                                              \
            C[r * ldc + i] = accumulate ? C[r * ldc + i] + acc[r][i] : acc[r][i];          \
}

GT_EDGE(f, float)
GT_EDGE(d, double)
/* Every register tile, rows (1-4) x vectors (1-3), by a switch over the constant
   instantiations (inlined where rows and vectors are constants, as in the 4-row loop);
   anything else goes to the edge tile. */
#define GT_CASE(S, R, NV)                                                                  \
    case R * 4 + NV: gt_r##R##v##NV##_##S(K, A, lda, a_k, W, ldw, C, ldc, accumulate); break;
#define GT_TILES(S, T)                                                                     \
GT_TILE_R(gt_r1v1_##S, S, T, 1, 1) GT_TILE_R(gt_r1v2_##S, S, T, 2, 1)                      \
GT_TILE_R(gt_r1v3_##S, S, T, 3, 1) GT_TILE_R(gt_r2v1_##S, S, T, 1, 2)                      \
GT_TILE_R(gt_r2v2_##S, S, T, 2, 2) GT_TILE_R(gt_r2v3_##S, S, T, 3, 2)                      \
GT_TILE_R(gt_r3v1_##S, S, T, 1, 3) GT_TILE_R(gt_r3v2_##S, S, T, 2, 3)                      \
GT_TILE_R(gt_r3v3_##S, S, T, 3, 3) GT_TILE_R(gt_r4v1_##S, S, T, 1, 4)                      \
GT_TILE_R(gt_r4v2_##S, S, T, 2, 4) GT_TILE_R(gt_r4v3_##S, S, T, 3, 4)                      \
static inline void grufast_tile_##S(int rows, int vectors, ptrdiff_t K, const T* A,        \
                                    ptrdiff_t lda, ptrdiff_t a_k, const T* W,               \
                                    ptrdiff_t ldw, T* C, ptrdiff_t ldc, int accumulate)     \
{                                                                                          \
    switch (rows * 4 + vectors) {                                                          \
    GT_CASE(S, 1, 1) GT_CASE(S, 1, 2) GT_CASE(S, 1, 3)                                     \
    GT_CASE(S, 2, 1) GT_CASE(S, 2, 2) GT_CASE(S, 2, 3)                                     \
    GT_CASE(S, 3, 1) GT_CASE(S, 3, 2) GT_CASE(S, 3, 3)                                     \
    GT_CASE(S, 4, 1) GT_CASE(S, 4, 2) GT_CASE(S, 4, 3)                                     \
    default: grufast_tile_edge_##S(rows, vectors * GT_W_##S, K, A, lda, a_k, W, ldw, C,    \
                                   ldc, accumulate);                                       \
    }                                                                                      \
}
GT_TILES(f, float)
GT_TILES(d, double)

#endif /* GRUFAST_TILES_H */
