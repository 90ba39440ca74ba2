/* The recurrent GEMVs of one sequence (B <= 3), out = v @ W^T for W (3H, K) row-major
   (forward: h W_hh^T) or out = v @ W (backward: dG W_hh), from a copy of W packed in
   panels (declared to Cython in _gemm.pxd).

   A panel is 16 consecutive rows of one gate of W, stored k-major: panel[k][i] = W[16 j + i,
   k], zero-padded past the gate's last row, so each panel is one contiguous K x 16 block.
   The GEMV walks a group of panels at once, each output column's sum in its own vector
   lane: per k, one broadcast of v[k] and one FMA per vector. Every weight byte is read once,
   sequentially: the hardware prefetcher streams it, and a caller that walks the panels
   backwards on every other step reads first what it read last, still in L2.

   Measured on one AMD EPYC core (Zen 4, AVX-512, 1 MiB L2), per GEMV, (1536 x 512) weights
   of 3 MB (read from L3 every step): 33-34 us against OpenBLAS's sgemv 39-41 us on the
   transposed copy (the form it streams fastest); (768 x 256), L2-resident: all forms ~7.2 us.

   Each output's sum is one chain over k = 0, 1, ... of fused multiply-adds starting from 0
   (then added to the output when accumulating), whatever range of panels a call covers:
   a sequence split across threads by hidden units, run alone after a fallback, or run on
   one thread computes the same state, and the backward the same dh.

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

/* The GEMV's pass only keeps its accumulators in registers when n is a compile-time
   constant, that is when it is inlined into a branch that fixes n (grufast_panel_pass_n).
   gcc stopped inlining it on its own once the streaming step called the GEMV too: a
   T = 1000, H = 32 forward took 1.2x the time. */
#if defined(__GNUC__)
#define GP_ALWAYS_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define GP_ALWAYS_INLINE static __forceinline
#else
#define GP_ALWAYS_INLINE static inline
#endif


/* The vector type of this build for GP_T, its width in elements and the group size (panels
   per pass: enough accumulators to cover the FMA latency, few enough to stay in
   registers). Without AVX2 + FMA, plain loops: the compiler vectorises them, and without
   FMA the sums round as that build's other loops do. */
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
#define GP_ADD_f _mm512_add_ps
#define GP_ADD_d _mm512_add_pd
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
#define GP_ADD_f _mm256_add_ps
#define GP_ADD_d _mm256_add_pd
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
#define GP_ADD GP_PICK(ADD, GRUFAST_PANEL_SUFFIX)
#define GP_NV (GRUFAST_PANEL / GP_W) /* vectors per panel row */

/* out[0 : n * 16] (+)= v[:K] @ (n panels from P, ldp elements apart), n <= GP_GROUP, n a
   compile-time constant where inlined. The sum starts from 0 and is added to out at the
   end. */
GP_ALWAYS_INLINE void GP_FN(grufast_panel_pass)(int n, ptrdiff_t K, const GP_T* v,
                                             const GP_T* P, ptrdiff_t ldp, GP_T* out,
                                             int accumulate) {
    GP_VEC acc[GP_GROUP * GP_NV];
    GP_VEC a;
    ptrdiff_t k, stride = ldp;
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
        for (u = 0; u < GP_NV; u++) {
            GP_T* o = out + q * GRUFAST_PANEL + u * GP_W;
            GP_STORE(o, accumulate ? GP_ADD(GP_LOAD(o), acc[q * GP_NV + u])
                                   : acc[q * GP_NV + u]);
        }
}

#else /* no AVX2 + FMA: plain loops */
#define GP_GROUP 2
GP_ALWAYS_INLINE void GP_FN(grufast_panel_pass)(int n, ptrdiff_t K, const GP_T* v,
                                             const GP_T* P, ptrdiff_t ldp, GP_T* out,
                                             int accumulate) {
    GP_T acc[GP_GROUP][GRUFAST_PANEL];
    GP_T a;
    ptrdiff_t k, stride = ldp;
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
        for (i = 0; i < GRUFAST_PANEL; i++) {
            if (accumulate)
                out[q * GRUFAST_PANEL + i] += acc[q][i];
            else
                out[q * GRUFAST_PANEL + i] = acc[q][i];
        }
}
#endif

/* grufast_panel_pass with n spelled as a constant in each branch, so that every pass, the
   last partial group's too, unrolls into registers. */
GP_ALWAYS_INLINE void GP_FN(grufast_panel_pass_n)(int n, ptrdiff_t K, const GP_T* v,
                                                  const GP_T* P, ptrdiff_t ldp, GP_T* out,
                                                  int accumulate) {
    if (n == GP_GROUP)
        GP_FN(grufast_panel_pass)(GP_GROUP, K, v, P, ldp, out, accumulate);
    else if (n == 1)
        GP_FN(grufast_panel_pass)(1, K, v, P, ldp, out, accumulate);
#if GP_GROUP > 2
    else if (n == 2)
        GP_FN(grufast_panel_pass)(2, K, v, P, ldp, out, accumulate);
#endif
#if GP_GROUP > 3
    else if (n == 3)
        GP_FN(grufast_panel_pass)(3, K, v, P, ldp, out, accumulate);
#endif
}

/* One pass of n panels (n <= GP_GROUP); a pass holding the range's last, partial panel
   goes through a buffer, so that nothing past out[width - 1] is written. */
GP_ALWAYS_INLINE void GP_FN(grufast_panel_step)(ptrdiff_t first, int n, ptrdiff_t width,
                                                ptrdiff_t K, const GP_T* v, const GP_T* P,
                                                ptrdiff_t ldp, GP_T* out, int accumulate) {
    GP_T buf[GP_GROUP * GRUFAST_PANEL];
    const GP_T* Pp = P + first * ldp;
    ptrdiff_t col = first * GRUFAST_PANEL, span = (ptrdiff_t)n * GRUFAST_PANEL, i;
    if (col + span <= width) {
        GP_FN(grufast_panel_pass_n)(n, K, v, Pp, ldp, out + col, accumulate);
    } else {
        GP_FN(grufast_panel_pass_n)(n, K, v, Pp, ldp, buf, 0);
        for (i = 0; i < width - col; i++) {
            if (accumulate)
                out[col + i] += buf[i];
            else
                out[col + i] = buf[i];
        }
    }
}

/* out[:width] (+)= v[:K] @ W^T for the width rows of W whose panels start at P (the first
   of them at a panel boundary), ldp elements from one panel to the next (K * 16 for a
   whole panel; more when v covers a slice of the panels' k range). ``backwards`` visits
   the panels last to first. */
static void GP_FN(grufast_panel_gemv_ex)(ptrdiff_t width, ptrdiff_t K, const GP_T* v,
                                         const GP_T* P, ptrdiff_t ldp, GP_T* out,
                                         int backwards, int accumulate) {
    ptrdiff_t panels = (width + GRUFAST_PANEL - 1) / GRUFAST_PANEL;
    ptrdiff_t groups = panels / GP_GROUP, rest = panels - groups * GP_GROUP, g;
    if (!backwards) {
        for (g = 0; g < groups; g++)
            GP_FN(grufast_panel_step)(g * GP_GROUP, GP_GROUP, width, K, v, P, ldp, out,
                                      accumulate);
        if (rest)
            GP_FN(grufast_panel_step)(groups * GP_GROUP, (int)rest, width, K, v, P, ldp, out,
                                      accumulate);
    } else {
        if (rest)
            GP_FN(grufast_panel_step)(groups * GP_GROUP, (int)rest, width, K, v, P, ldp, out,
                                      accumulate);
        for (g = groups - 1; g >= 0; g--)
            GP_FN(grufast_panel_step)(g * GP_GROUP, GP_GROUP, width, K, v, P, ldp, out,
                                      accumulate);
    }
}

/* Pack the columns of W (K, N) row-major into panels: ceil(N / 16) panels of K x 16,
   panel[k][i] = W[k, 16 j + i], zero-padded: what v @ W reads as panels (the backward's
   dh = dG W_hh). Row by row of W, each row's 16-column pieces copied whole. */
static void GP_FN(grufast_pack_column_panels)(const GP_T* W, ptrdiff_t K, ptrdiff_t N,
                                              GP_T* out) {
    ptrdiff_t full = N / GRUFAST_PANEL, j, k;
    ptrdiff_t rest = N - full * GRUFAST_PANEL, panel = K * GRUFAST_PANEL;
    for (k = 0; k < K; k++) {
        const GP_T* row = W + k * N;
        GP_T* p = out + k * GRUFAST_PANEL;
        for (j = 0; j < full; j++)
            memcpy(p + j * panel, row + j * GRUFAST_PANEL, GRUFAST_PANEL * sizeof(GP_T));
        if (rest) {
            memcpy(p + full * panel, row + full * GRUFAST_PANEL, (size_t)rest * sizeof(GP_T));
            memset(p + full * panel + rest, 0, (size_t)(GRUFAST_PANEL - rest) * sizeof(GP_T));
        }
    }
}

/* Pack W (gates * H, K) row-major into panels: gate by gate, ceil(H / 16) panels of
   K x 16 each, zero-padded (out holds gates * ceil(H / 16) * K * 16 elements). Each
   panel is a transpose of its 16 rows: taken 16 k at a time, so that the 16 cache lines
   being read and the 1 KiB being written stay in L1. */
static void GP_FN(grufast_pack_panels)(const GP_T* W, ptrdiff_t gates, ptrdiff_t H,
                                       ptrdiff_t K, GP_T* out) {
    ptrdiff_t per = (H + GRUFAST_PANEL - 1) / GRUFAST_PANEL, g, j, k0, k, i, rows, kn;
    GP_T* p;
    const GP_T* r;
    for (g = 0; g < gates; g++)
        for (j = 0; j < per; j++) {
            p = out + (g * per + j) * K * GRUFAST_PANEL;
            rows = H - j * GRUFAST_PANEL < GRUFAST_PANEL ? H - j * GRUFAST_PANEL
                                                          : GRUFAST_PANEL;
            if (rows < GRUFAST_PANEL)
                memset(p, 0, (size_t)(K * GRUFAST_PANEL) * sizeof(GP_T));
            for (k0 = 0; k0 < K; k0 += GRUFAST_PANEL) {
                kn = K - k0 < GRUFAST_PANEL ? K - k0 : GRUFAST_PANEL;
                for (i = 0; i < rows; i++) {
                    r = W + (g * H + j * GRUFAST_PANEL + i) * K + k0;
                    for (k = 0; k < kn; k++) p[(k0 + k) * GRUFAST_PANEL + i] = r[k];
                }
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
#undef GP_ADD
#undef GP_NV
#undef GP_ALWAYS_INLINE
#undef GP_FN
#undef GP_T
#endif /* one type's functions */
