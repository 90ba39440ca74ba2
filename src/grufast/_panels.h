/* The recurrent GEMV of one sequence (B <= 3), out = v @ W^T for W (3H, K) row-major,
   from a copy of W packed in panels (declared to Cython in _gemm.pxd).

   A panel is 16 consecutive rows of one gate of W, stored k-major: panel[k][i] = W[16 j + i,
   k], zero-padded past the gate's last row, so each panel is one contiguous K x 16 block.
   The GEMV walks a group of panels at once, each output column's sum in its own vector
   lane: per k, one broadcast of v[k] and one FMA per vector. Every weight byte is read once,
   sequentially: the hardware prefetcher streams it, and a caller that walks the panels
   backwards on every other step reads first what it read last, still in L2.

   Measured on one AMD EPYC core (Zen 4, AVX-512, 1 MiB L2), per GEMV, (1536 x 512) weights
   of 3 MB (read from L3 every step): 33-34 us against OpenBLAS's sgemv 39-41 us on the
   transposed copy (the form it streams fastest); (768 x 256), L2-resident: all forms ~7.2 us.

   Each output's sum is one chain over k = 0, 1, ... of fused multiply-adds starting from 0,
   as in row_gemv and stream_gemv (grufast._gemm): the three give the same bits, so a
   sequence split across threads by hidden units, run alone after a fallback, or run on one
   thread computes the same state.

   The file is included twice, for float and double: GRUFAST_PANEL_T names the type and
   GRUFAST_PANEL_SUFFIX the functions' suffix (f, d). */

#ifndef GRUFAST_PANEL_T
#ifndef GRUFAST_PANELS_H
#define GRUFAST_PANELS_H

#include <stddef.h>
#include <string.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#define GRUFAST_PANEL 16

#define GRUFAST_PANEL_T float
#define GRUFAST_PANEL_SUFFIX f
#include "_panels.h"
#undef GRUFAST_PANEL_T
#undef GRUFAST_PANEL_SUFFIX

#define GRUFAST_PANEL_T double
#define GRUFAST_PANEL_SUFFIX d
#include "_panels.h"
#undef GRUFAST_PANEL_T
#undef GRUFAST_PANEL_SUFFIX

#endif /* GRUFAST_PANELS_H */
#else /* one type's functions */

#define GP_CAT2(a, b) a##_##b
#define GP_CAT(a, b) GP_CAT2(a, b)
#define GP_FN(name) GP_CAT(name, GRUFAST_PANEL_SUFFIX)
#define GP_T GRUFAST_PANEL_T

/* The vector type of this build for GP_T, its width in elements and the group size (panels
   per pass: enough accumulators to cover the FMA latency, few enough to stay in
   registers). Without AVX2 + FMA, plain loops: the compiler vectorises them, and without
   FMA the sums round like row_gemv's in that build. */
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#if defined(__AVX512F__)
#define GP_VEC_f __m512
#define GP_VEC_d __m512d
#define GP_W_f 16
#define GP_W_d 8
#define GP_GROUP_f 4
#define GP_GROUP_d 4
#define GP_LOAD_f _mm512_loadu_ps
#define GP_LOAD_d _mm512_loadu_pd
#define GP_STORE_f _mm512_storeu_ps
#define GP_STORE_d _mm512_storeu_pd
#define GP_SET1_f _mm512_set1_ps
#define GP_SET1_d _mm512_set1_pd
#define GP_FMA_f _mm512_fmadd_ps
#define GP_FMA_d _mm512_fmadd_pd
#define GP_ZERO_f _mm512_setzero_ps
#define GP_ZERO_d _mm512_setzero_pd
#else
#define GP_VEC_f __m256
#define GP_VEC_d __m256d
#define GP_W_f 8
#define GP_W_d 4
#define GP_GROUP_f 4
#define GP_GROUP_d 2
#define GP_LOAD_f _mm256_loadu_ps
#define GP_LOAD_d _mm256_loadu_pd
#define GP_STORE_f _mm256_storeu_ps
#define GP_STORE_d _mm256_storeu_pd
#define GP_SET1_f _mm256_set1_ps
#define GP_SET1_d _mm256_set1_pd
#define GP_FMA_f _mm256_fmadd_ps
#define GP_FMA_d _mm256_fmadd_pd
#define GP_ZERO_f _mm256_setzero_ps
#define GP_ZERO_d _mm256_setzero_pd
#endif
#define GP_SEL2(a, b) GP_##a##_##b
#define GP_PICK(a, b) GP_SEL2(a, b)
#define GP_VEC GP_PICK(VEC, GRUFAST_PANEL_SUFFIX)
#define GP_W GP_PICK(W, GRUFAST_PANEL_SUFFIX)
#define GP_GROUP GP_PICK(GROUP, GRUFAST_PANEL_SUFFIX)
#define GP_LOAD GP_PICK(LOAD, GRUFAST_PANEL_SUFFIX)
#define GP_STORE GP_PICK(STORE, GRUFAST_PANEL_SUFFIX)
#define GP_SET1 GP_PICK(SET1, GRUFAST_PANEL_SUFFIX)
#define GP_FMA GP_PICK(FMA, GRUFAST_PANEL_SUFFIX)
#define GP_ZERO GP_PICK(ZERO, GRUFAST_PANEL_SUFFIX)
#define GP_NV (GRUFAST_PANEL / GP_W) /* vectors per panel row */

/* out[0 : n * 16] = v[:K] @ (n panels from P), n <= GP_GROUP, n a compile-time constant
   where inlined. */
static inline void GP_FN(grufast_panel_pass)(int n, ptrdiff_t K, const GP_T* v,
                                             const GP_T* P, GP_T* out) {
    GP_VEC acc[GP_GROUP * GP_NV];
    GP_VEC a;
    ptrdiff_t k, stride = K * GRUFAST_PANEL;
    int q, u;
    for (q = 0; q < n * GP_NV; q++) acc[q] = GP_ZERO();
    for (k = 0; k < K; k++) {
        a = GP_SET1(v[k]);
        for (q = 0; q < n; q++)
            for (u = 0; u < GP_NV; u++)
                acc[q * GP_NV + u] = GP_FMA(
                    a, GP_LOAD(P + q * stride + k * GRUFAST_PANEL + u * GP_W),
                    acc[q * GP_NV + u]);
    }
    for (q = 0; q < n; q++)
        for (u = 0; u < GP_NV; u++)
            GP_STORE(out + q * GRUFAST_PANEL + u * GP_W, acc[q * GP_NV + u]);
}

#else /* no AVX2 + FMA: plain loops */
#define GP_GROUP 2
static inline void GP_FN(grufast_panel_pass)(int n, ptrdiff_t K, const GP_T* v,
                                             const GP_T* P, GP_T* out) {
    GP_T acc[GP_GROUP][GRUFAST_PANEL];
    GP_T a;
    ptrdiff_t k, stride = K * GRUFAST_PANEL;
    int q, i;
    for (q = 0; q < n; q++)
        for (i = 0; i < GRUFAST_PANEL; i++) acc[q][i] = 0;
    for (k = 0; k < K; k++) {
        a = v[k];
        for (q = 0; q < n; q++)
            for (i = 0; i < GRUFAST_PANEL; i++)
                acc[q][i] += a * P[q * stride + k * GRUFAST_PANEL + i];
    }
    for (q = 0; q < n; q++)
        for (i = 0; i < GRUFAST_PANEL; i++) out[q * GRUFAST_PANEL + i] = acc[q][i];
}
#endif

/* One pass of n panels (n <= GP_GROUP); a pass holding the range's last, partial panel
   goes through a buffer, so that nothing past out[width - 1] is written. The full-group
   pass is spelled with a constant so that its loops unroll into registers. */
static inline void GP_FN(grufast_panel_step)(ptrdiff_t first, int n, ptrdiff_t width,
                                             ptrdiff_t K, const GP_T* v, const GP_T* P,
                                             GP_T* out) {
    GP_T buf[GP_GROUP * GRUFAST_PANEL];
    const GP_T* Pp = P + first * K * GRUFAST_PANEL;
    ptrdiff_t col = first * GRUFAST_PANEL, span = (ptrdiff_t)n * GRUFAST_PANEL;
    if (col + span <= width) {
        if (n == GP_GROUP)
            GP_FN(grufast_panel_pass)(GP_GROUP, K, v, Pp, out + col);
        else
            GP_FN(grufast_panel_pass)(n, K, v, Pp, out + col);
    } else {
        GP_FN(grufast_panel_pass)(n, K, v, Pp, buf);
        memcpy(out + col, buf, (size_t)(width - col) * sizeof(GP_T));
    }
}

/* out[:width] = v[:K] @ W^T for the width rows of W whose panels start at P (the first of
   them at a panel boundary). ``backwards`` visits the panels last to first. */
static void GP_FN(grufast_panel_gemv)(ptrdiff_t width, ptrdiff_t K, const GP_T* v,
                                      const GP_T* P, GP_T* out, int backwards) {
    ptrdiff_t panels = (width + GRUFAST_PANEL - 1) / GRUFAST_PANEL;
    ptrdiff_t groups = panels / GP_GROUP, rest = panels - groups * GP_GROUP, g;
    if (!backwards) {
        for (g = 0; g < groups; g++)
            GP_FN(grufast_panel_step)(g * GP_GROUP, GP_GROUP, width, K, v, P, out);
        if (rest)
            GP_FN(grufast_panel_step)(groups * GP_GROUP, (int)rest, width, K, v, P, out);
    } else {
        if (rest)
            GP_FN(grufast_panel_step)(groups * GP_GROUP, (int)rest, width, K, v, P, out);
        for (g = groups - 1; g >= 0; g--)
            GP_FN(grufast_panel_step)(g * GP_GROUP, GP_GROUP, width, K, v, P, out);
    }
}

/* Pack W (gates * H, K) row-major into panels: gate by gate, ceil(H / 16) panels of
   K x 16 each, zero-padded (out holds gates * ceil(H / 16) * K * 16 elements). */
static void GP_FN(grufast_pack_panels)(const GP_T* W, ptrdiff_t gates, ptrdiff_t H,
                                       ptrdiff_t K, GP_T* out) {
    ptrdiff_t per = (H + GRUFAST_PANEL - 1) / GRUFAST_PANEL, g, j, k, i, row;
    GP_T* p;
    for (g = 0; g < gates; g++)
        for (j = 0; j < per; j++) {
            p = out + (g * per + j) * K * GRUFAST_PANEL;
            for (k = 0; k < K; k++)
                for (i = 0; i < GRUFAST_PANEL; i++) {
                    row = j * GRUFAST_PANEL + i;
                    p[k * GRUFAST_PANEL + i] = row < H ? W[(g * H + row) * K + k] : 0;
                }
        }
}

#undef GP_VEC
#undef GP_W
#undef GP_GROUP
#undef GP_LOAD
#undef GP_STORE
#undef GP_SET1
#undef GP_FMA
#undef GP_ZERO
#undef GP_NV
#undef GP_FN
#undef GP_T
#endif /* one type's functions */
