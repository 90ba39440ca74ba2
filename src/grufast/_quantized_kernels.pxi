# Kernels of the quantized inference models (grufast.quantized), float32 only: the recurrent
# products read int8 or bfloat16 weights and widen them in registers; the gate passes are the
# float kernels' own (_gates_lbr, _gates_rz, _gates_n). Included by the three ISA builds
# after the float kernels.

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX512F__) || defined(__AVX2__)
    #include <immintrin.h>
    #endif

    /* out[r] = scale[r] * sum_k w[r, k] v[k] for rows r0 <= r < r0 + R of a row-major
       (rows, K) matrix of int8 (fmt 0, scaled per row) or bfloat16 bits (fmt 1, scale
       unused). Four rows at a time share each load of v; each weight is widened to float32
       in registers (gcc scalarises this widening when written as a plain or vector-extension
       loop, hence the intrinsics) and accumulated with an FMA into float32 lanes, which are
       summed at the end: a fixed order, independent of the data. */
    #if defined(__AVX512F__)
    #define GQ_VF 16
    typedef __m512 gq_vf;
    #define GQ_ZERO() _mm512_setzero_ps()
    #define GQ_LDF(p) _mm512_loadu_ps(p)
    #define GQ_LDI8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32( \
        _mm_loadu_si128((const __m128i*)(p))))
    #define GQ_LDBF(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32( \
        _mm256_loadu_si256((const __m256i*)(p))), 16))
    #define GQ_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
    #define GQ_HSUM(a) _mm512_reduce_add_ps(a)
    #elif defined(__AVX2__)
    #define GQ_VF 8
    typedef __m256 gq_vf;
    #define GQ_ZERO() _mm256_setzero_ps()
    #define GQ_LDF(p) _mm256_loadu_ps(p)
    #define GQ_LDI8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32( \
        _mm_loadl_epi64((const __m128i*)(p))))
    #define GQ_LDBF(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32( \
        _mm_loadu_si128((const __m128i*)(p))), 16))
    #define GQ_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
    static inline float gq_hsum8(__m256 a) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
    }
    #define GQ_HSUM(a) gq_hsum8(a)
    #endif

    static inline float gq_i8(int8_t q) { return (float)q; }
    static inline float gq_bf(uint16_t u) {
        uint32_t b = (uint32_t)u << 16; float f; memcpy(&f, &b, 4); return f;
    }

    #ifdef GQ_VF
    #define GQ_ROWS(NAME, TYPE, LOADV, WIDEN) \
    static void NAME(ptrdiff_t R, ptrdiff_t K, const TYPE* w, const float* v, float* out) { \
        ptrdiff_t r = 0, k; \
        for (; r + 4 <= R; r += 4) { \
            const TYPE *w0 = w + r * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K; \
            gq_vf a0 = GQ_ZERO(), a1 = GQ_ZERO(), a2 = GQ_ZERO(), a3 = GQ_ZERO(); \
            float s0, s1, s2, s3, x; \
            for (k = 0; k + GQ_VF <= K; k += GQ_VF) { \
                gq_vf xv = GQ_LDF(v + k); \
                a0 = GQ_FMA(LOADV(w0 + k), xv, a0); a1 = GQ_FMA(LOADV(w1 + k), xv, a1); \
                a2 = GQ_FMA(LOADV(w2 + k), xv, a2); a3 = GQ_FMA(LOADV(w3 + k), xv, a3); \
            } \
            s0 = GQ_HSUM(a0); s1 = GQ_HSUM(a1); s2 = GQ_HSUM(a2); s3 = GQ_HSUM(a3); \
            for (; k < K; k++) { \
                x = v[k]; \
                s0 += WIDEN(w0[k]) * x; s1 += WIDEN(w1[k]) * x; \
                s2 += WIDEN(w2[k]) * x; s3 += WIDEN(w3[k]) * x; \
            } \
            out[r] = s0; out[r + 1] = s1; out[r + 2] = s2; out[r + 3] = s3; \
        } \
        for (; r < R; r++) { \
            const TYPE *w0 = w + r * K; \
            gq_vf a0 = GQ_ZERO(); \
            float s0; \
            for (k = 0; k + GQ_VF <= K; k += GQ_VF) a0 = GQ_FMA(LOADV(w0 + k), GQ_LDF(v + k), a0); \
            s0 = GQ_HSUM(a0); \
            for (; k < K; k++) s0 += WIDEN(w0[k]) * v[k]; \
            out[r] = s0; \
        } \
    }
    GQ_ROWS(gq_rows_i8, int8_t, GQ_LDI8, gq_i8)
    GQ_ROWS(gq_rows_bf, uint16_t, GQ_LDBF, gq_bf)

    /* bfloat16 without a shuffle: a 32-bit lane of the weights holds the pair k = 2l (low
       half) and 2l + 1 (high half); the high one is a float32 once its low half is masked
       off, the low one once shifted up 16 bits, two integer operations for 2 weights where
       the zero-extending load costs a shuffle per weight (measured at H = 512 on Zen 4: 24
       vs 31 us per (3H, H) product). v is de-interleaved to match, once per call, into vp:
       per block of 2 * GQ_VF, vp[l] = v[2l] and vp[GQ_VF + l] = v[2l + 1]. K0 is K rounded
       down to whole blocks; the caller finishes the tail. Two accumulators per row. */
    #if defined(__AVX512F__)
    typedef __m512i gq_vi;
    #define GQ_LDI(p) _mm512_loadu_si512((const void*)(p))
    #define GQ_LO16(q) _mm512_castsi512_ps(_mm512_slli_epi32(q, 16))
    #define GQ_HI16(q, m) _mm512_castsi512_ps(_mm512_and_si512(q, m))
    #define GQ_SETI(x) _mm512_set1_epi32(x)
    #define GQ_ADD(a, b) _mm512_add_ps(a, b)
    #else
    typedef __m256i gq_vi;
    #define GQ_LDI(p) _mm256_loadu_si256((const __m256i*)(p))
    #define GQ_LO16(q) _mm256_castsi256_ps(_mm256_slli_epi32(q, 16))
    #define GQ_HI16(q, m) _mm256_castsi256_ps(_mm256_and_si256(q, m))
    #define GQ_SETI(x) _mm256_set1_epi32(x)
    #define GQ_ADD(a, b) _mm256_add_ps(a, b)
    #endif

    static void gq_deinterleave(ptrdiff_t K0, const float* v, float* vp) {
        ptrdiff_t k, l;
        for (k = 0; k < K0; k += 2 * GQ_VF)
            for (l = 0; l < GQ_VF; l++) {
                vp[k + l] = v[k + 2 * l];
                vp[k + GQ_VF + l] = v[k + 2 * l + 1];
            }
    }

    static void gq_rows_bf_pairs(ptrdiff_t R, ptrdiff_t K, ptrdiff_t K0, const uint16_t* w,
                                 const float* vp, const float* v, float* out) {
        const gq_vi m = GQ_SETI((int)0xFFFF0000);
        ptrdiff_t r = 0, k;
        for (; r + 4 <= R; r += 4) {
            const uint16_t *w0 = w + r * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
            gq_vf a0 = GQ_ZERO(), a1 = GQ_ZERO(), a2 = GQ_ZERO(), a3 = GQ_ZERO();
            gq_vf b0 = GQ_ZERO(), b1 = GQ_ZERO(), b2 = GQ_ZERO(), b3 = GQ_ZERO();
            float s0, s1, s2, s3, x;
            for (k = 0; k < K0; k += 2 * GQ_VF) {
                gq_vf xl = GQ_LDF(vp + k), xh = GQ_LDF(vp + k + GQ_VF);
                gq_vi q0 = GQ_LDI(w0 + k), q1 = GQ_LDI(w1 + k);
                gq_vi q2 = GQ_LDI(w2 + k), q3 = GQ_LDI(w3 + k);
                a0 = GQ_FMA(GQ_LO16(q0), xl, a0); b0 = GQ_FMA(GQ_HI16(q0, m), xh, b0);
                a1 = GQ_FMA(GQ_LO16(q1), xl, a1); b1 = GQ_FMA(GQ_HI16(q1, m), xh, b1);
                a2 = GQ_FMA(GQ_LO16(q2), xl, a2); b2 = GQ_FMA(GQ_HI16(q2, m), xh, b2);
                a3 = GQ_FMA(GQ_LO16(q3), xl, a3); b3 = GQ_FMA(GQ_HI16(q3, m), xh, b3);
            }
            s0 = GQ_HSUM(GQ_ADD(a0, b0)); s1 = GQ_HSUM(GQ_ADD(a1, b1));
            s2 = GQ_HSUM(GQ_ADD(a2, b2)); s3 = GQ_HSUM(GQ_ADD(a3, b3));
            for (k = K0; k < K; k++) {
                x = v[k];
                s0 += gq_bf(w0[k]) * x; s1 += gq_bf(w1[k]) * x;
                s2 += gq_bf(w2[k]) * x; s3 += gq_bf(w3[k]) * x;
            }
            out[r] = s0; out[r + 1] = s1; out[r + 2] = s2; out[r + 3] = s3;
        }
        for (; r < R; r++) {
            const uint16_t *w0 = w + r * K;
            gq_vf a0 = GQ_ZERO(), b0 = GQ_ZERO();
            float s0;
            for (k = 0; k < K0; k += 2 * GQ_VF) {
                gq_vi q0 = GQ_LDI(w0 + k);
                a0 = GQ_FMA(GQ_LO16(q0), GQ_LDF(vp + k), a0);
                b0 = GQ_FMA(GQ_HI16(q0, m), GQ_LDF(vp + k + GQ_VF), b0);
            }
            s0 = GQ_HSUM(GQ_ADD(a0, b0));
            for (k = K0; k < K; k++) s0 += gq_bf(w0[k]) * v[k];
            out[r] = s0;
        }
    }
    /* The de-interleaved copy of v lives on the stack: up to 4096 floats (16 KiB, well
       inside an OpenMP thread's stack); longer rows take the zero-extending path. */
    #define GQ_PAIRS_MAX 4096
    #else
    /* Portable baseline: eight independent partial sums per row. */
    #define GQ_ROWS(NAME, TYPE, WIDEN) \
    static void NAME(ptrdiff_t R, ptrdiff_t K, const TYPE* w, const float* v, float* out) { \
        ptrdiff_t r, k, l; \
        for (r = 0; r < R; r++) { \
            const TYPE *w0 = w + r * K; \
            float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s = 0; \
            for (k = 0; k + 8 <= K; k += 8) \
                for (l = 0; l < 8; l++) a[l] += WIDEN(w0[k + l]) * v[k + l]; \
            for (l = 0; l < 8; l++) s += a[l]; \
            for (; k < K; k++) s += WIDEN(w0[k]) * v[k]; \
            out[r] = s; \
        } \
    }
    GQ_ROWS(gq_rows_i8, int8_t, gq_i8)
    GQ_ROWS(gq_rows_bf, uint16_t, gq_bf)
    #endif

    static void grufast_qmatvec(int fmt, ptrdiff_t r0, ptrdiff_t R, ptrdiff_t K,
                                const void* w, const float* scale, const float* v,
                                float* out) {
        ptrdiff_t r;
        if (fmt == 0) {
            gq_rows_i8(R, K, (const int8_t*)w + r0 * K, v, out);
            for (r = 0; r < R; r++) out[r] *= scale[r0 + r];
        } else {
    #ifdef GQ_VF
            ptrdiff_t K0 = K - K % (2 * GQ_VF);
            if (K0 > 0 && K0 <= GQ_PAIRS_MAX) {
                float vp[GQ_PAIRS_MAX];
                gq_deinterleave(K0, v, vp);
                gq_rows_bf_pairs(R, K, K0, (const uint16_t*)w + r0 * K, vp, v, out);
                return;
            }
    #endif
            gq_rows_bf(R, K, (const uint16_t*)w + r0 * K, v, out);
        }
    }
    /* out (R, K) float32 = the quantized w widened, one pass: int8 times its row's scale
       (rounded once, as numpy's multiply does), or bfloat16 bits shifted up. Written as
       plain loops, which gcc vectorises here (no reduction to keep in order). */
    static void grufast_qwiden(int fmt, ptrdiff_t R, ptrdiff_t K, const void* w,
                               const float* scale, float* out) {
        ptrdiff_t r, k;
        if (fmt == 0) {
            for (r = 0; r < R; r++) {
                const int8_t* q = (const int8_t*)w + r * K;
                float s = scale[r], *o = out + r * K;
                for (k = 0; k < K; k++) o[k] = (float)q[k] * s;
            }
        } else {
            const uint16_t* q = (const uint16_t*)w;
            uint32_t* o = (uint32_t*)out;
            for (k = 0; k < R * K; k++) o[k] = (uint32_t)q[k] << 16;
        }
    }
    /* Rows r0 <= r < r0 + R of the quantized w (rows, K), widened and transposed into
       columns r0 ... of out (K, ldo) float32: the register-tiled GEMM's (K, N) operand.
       Blocks of 16 rows, each output row receiving 16 contiguous floats per block. Same
       values as qwiden. */
    static void grufast_qwiden_t(int fmt, ptrdiff_t r0, ptrdiff_t R, ptrdiff_t K,
                                 const void* w, const float* scale, float* out,
                                 ptrdiff_t ldo) {
        ptrdiff_t b, r, k, rn;
        for (b = r0; b < r0 + R; b += 16) {
            rn = r0 + R - b < 16 ? r0 + R - b : 16;
            if (fmt == 0) {
                const int8_t* q = (const int8_t*)w + b * K;
                for (k = 0; k < K; k++)
                    for (r = 0; r < rn; r++)
                        out[k * ldo + b + r] = (float)q[r * K + k] * scale[b + r];
            } else {
                const uint16_t* q = (const uint16_t*)w + b * K;
                uint32_t* o = (uint32_t*)out;
                for (k = 0; k < K; k++)
                    for (r = 0; r < rn; r++)
                        o[k * ldo + b + r] = (uint32_t)q[r * K + k] << 16;
            }
        }
    }
    """
    void qwiden "grufast_qwiden"(int fmt, Py_ssize_t R, Py_ssize_t K, const void* w,
                                 const float* scale, float* out) noexcept nogil
    void qwiden_t "grufast_qwiden_t"(int fmt, Py_ssize_t r0, Py_ssize_t R, Py_ssize_t K,
                                     const void* w, const float* scale, float* out,
                                     Py_ssize_t ldo) noexcept nogil
    void qmatvec "grufast_qmatvec"(int fmt, Py_ssize_t r0, Py_ssize_t R, Py_ssize_t K,
                                   const void* w, const float* scale, const float* v,
                                   float* out) noexcept nogil


cdef enum:
    Q_INT8 = 0
    Q_BF16 = 1


cdef int _qformat(cnp.ndarray w) except -1:
    if cnp.PyArray_TYPE(w) == cnp.NPY_INT8:
        return Q_INT8
    if cnp.PyArray_TYPE(w) == cnp.NPY_UINT16:
        return Q_BF16
    raise TypeError(f"quantized weights must be int8 or uint16 (bfloat16 bits), got {w.dtype}")


cdef void _qsteps(Py_ssize_t n, Py_ssize_t first, bint reverse, Py_ssize_t B, Py_ssize_t H,
                  float* gates, int fmt, const void* w_hh, const float* s_hh,
                  const float* b_ih, const float* b_hh, const Py_ssize_t* lengths, bint lbr,
                  float* y, Py_ssize_t ldy, float* h, float* gh, float* rh,
                  float* step_scratch) noexcept nogil:
    """Steps t = first ... first + n - 1 (backwards when ``reverse``) of B sequences whose
    input projections x W_ih^T are in gates (n, B, 3H); the recurrent products read the
    quantized w_hh (3H, H) once per sequence and step."""
    cdef Py_ssize_t i, s, t, b, G = 3 * H
    cdef float* hp_t = step_scratch
    cdef float* hn_t = step_scratch + B * H  # lbr: the recurrent n term; else exp(-a_z)
    cdef float* gi
    for i in range(n):
        s = n - 1 - i if reverse else i
        t = first + s
        gi = gates + s * B * G
        if lbr:
            for b in range(B):
                qmatvec(fmt, 0, G, H, w_hh, s_hh, h + b * H, gh + b * G)
            _gates_lbr(B, H, 0, H, t, lengths, gi, gh, b_ih, b_hh, h, h, y + t * B * ldy, ldy,
                       hp_t, hn_t, False)
        else:
            for b in range(B):
                qmatvec(fmt, 0, 2 * H, H, w_hh, s_hh, h + b * H, gh + b * G)
            _gates_rz(B, H, 0, H, t, lengths, gi, gh, b_ih, b_hh, h, rh, hn_t, False)
            for b in range(B):
                qmatvec(fmt, 2 * H, H, H, w_hh, s_hh, rh + b * H, gh + b * G + 2 * H)
            _gates_n(B, H, 0, H, t, lengths, gi, gh, b_ih, b_hh, h, h, y + t * B * ldy, ldy,
                     hp_t, hn_t, False)


cdef void _qproject(int pa, int pb, int nt, Py_ssize_t n, Py_ssize_t K, Py_ssize_t H,
                    const float* x, int fmt, const void* w_ih, const float* s_ih,
                    float* w_ih_t, float* gates) noexcept nogil:
    """gates (n, 3H) <- x (n, K) @ w_ih^T for the hidden units of parts pa <= part < pb of
    nt (their rows of all three gate blocks): those rows of the quantized w_ih (3H, K) are
    first widened into their columns of w_ih_t (K, 3H), then multiplied in the
    register-tiled GEMM, each panel copied first into a buffer of this call's. Each element
    is the same chain of multiply-adds whichever thread computes which part."""
    cdef int part
    cdef Py_ssize_t k
    cdef float* pack = gemm_pack_buffer(K, gates)
    for part in range(pa, pb):
        for k in range(3):
            _qproject_block(part, k, nt, n, K, H, x, fmt, w_ih, s_ih, w_ih_t, gates, pack)
    aligned_free(pack)


cdef void _qproject_block(int part, Py_ssize_t k, int nt, Py_ssize_t n, Py_ssize_t K,
                          Py_ssize_t H, const float* x, int fmt, const void* w_ih,
                          const float* s_ih, float* w_ih_t, float* gates,
                          float* pack) noexcept nogil:
    """_qproject's block for gate k and the units of one part: those rows widened into
    their columns of w_ih_t, then multiplied in the tiled GEMM, each panel of the block
    copied first into pack (gemm_pack_buffer; read in place if NULL, the same bits), so that
    the tiles do not read it with w_ih_t's row stride of 3H."""
    cdef Py_ssize_t j0 = _share(H, nt, part, 16), j1 = _share(H, nt, part + 1, 16)
    qwiden_t(fmt, k * H + j0, j1 - j0, K, w_ih, s_ih, w_ih_t, 3 * H)
    packed_gemm(n, j1 - j0, K, x, K, w_ih_t + k * H + j0, 3 * H, gates + k * H + j0, 3 * H,
                False, pack)


cdef void _qunit_steps(int p, int nt, bint alone, barrier_t* bar, Py_ssize_t n,
                       Py_ssize_t first, bint reverse, Py_ssize_t K, Py_ssize_t H,
                       const float* x, const void* w_ih, const float* s_ih,
                       float* w_ih_t, float* gates, int fmt, const void* w_hh,
                       const float* s_hh, const float* b_ih, const float* b_hh,
                       const Py_ssize_t* lengths, bint lbr, float* y, Py_ssize_t ldy,
                       float* h, float* gh, float* rh, float* step_scratch) noexcept nogil:
    """Steps of one sequence split across nt threads by hidden units, as the float
    kernels split them (_unit_steps): the team projects the inputs (_qproject's blocks,
    first come first served, in the tiled GEMM: no OpenBLAS threads to compete with the
    team); thread p computes the rows of its units in each gate block of the recurrent
    product (streaming 1/nt of the weights) and their gates; the threads meet at the barrier after
    each step (and once more without linear_before_reset). The state alternates between h
    and a scratch row, so no thread writes what another still reads.

    ``alone``: this thread runs all nt parts in turn (the back-off after a fallback); when
    the barrier finds a partner descheduled, the first thread there goes on alone and the
    others leave. Every part is computed as its own thread would: the same bits either
    way. step_scratch holds 3H floats."""
    cdef Py_ssize_t i, s, t, k, j0, j1, blk
    cdef int part, pa = 0 if alone else p, pb = nt if alone else p + 1
    cdef int team = 1 if alone else nt
    cdef int went
    cdef float* states[2]
    cdef float* gi
    cdef float* hp_t = step_scratch
    cdef float* hn_t = step_scratch + H  # lbr: the recurrent n term; else exp(-a_z)
    states[0] = h
    states[1] = step_scratch + 2 * H
    cdef float* pack
    if team > 1:
        # Blocks first come first served (a pool thread woken from sleep starts late), then
        # the barrier publishes them: as in _unit_steps.
        pack = NULL  # allocated by a thread that takes a block
        while True:
            blk = <Py_ssize_t>ticket(bar)
            if blk >= 3 * nt:
                break
            if pack == NULL:
                pack = gemm_pack_buffer(K, gates)
            _qproject_block(<int>(blk // 3), blk % 3, nt, n, K, H, x, fmt, w_ih, s_ih,
                            w_ih_t, gates, pack)
        aligned_free(pack)
        went = barrier_wait(bar, team, p)
        if went < 0:
            return
        if went > 0:
            pa, pb, team = 0, nt, 1
    else:
        _qproject(pa, pb, nt, n, K, H, x, fmt, w_ih, s_ih, w_ih_t, gates)
    for i in range(n):
        s = n - 1 - i if reverse else i
        t = first + s
        gi = gates + s * 3 * H
        for part in range(pa, pb):
            j0, j1 = _share(H, nt, part, 16), _share(H, nt, part + 1, 16)
            if lbr:
                for k in range(3):
                    qmatvec(fmt, k * H + j0, j1 - j0, H, w_hh, s_hh, states[i % 2],
                            gh + k * H + j0)
                _gates_lbr(1, H, j0, j1, t, lengths, gi, gh, b_ih, b_hh, states[i % 2],
                           states[(i + 1) % 2], y + t * ldy, ldy, hp_t, hn_t, False)
            else:
                for k in range(2):
                    qmatvec(fmt, k * H + j0, j1 - j0, H, w_hh, s_hh, states[i % 2],
                            gh + k * H + j0)
                _gates_rz(1, H, j0, j1, t, lengths, gi, gh, b_ih, b_hh, states[i % 2], rh,
                          hn_t, False)
        if not lbr:
            if team > 1:
                went = barrier_wait(bar, team, p)
                if went < 0:
                    return
                if went > 0:  # the team fell back to one thread: this one
                    pa, pb, team = 0, nt, 1
            for part in range(pa, pb):
                j0, j1 = _share(H, nt, part, 16), _share(H, nt, part + 1, 16)
                qmatvec(fmt, 2 * H + j0, j1 - j0, H, w_hh, s_hh, rh, gh + 2 * H + j0)
                _gates_n(1, H, j0, j1, t, lengths, gi, gh, b_ih, b_hh, states[i % 2],
                         states[(i + 1) % 2], y + t * ldy, ldy, hp_t, hn_t, False)
        if team > 1:
            went = barrier_wait(bar, team, p)
            if went < 0:
                return
            if went > 0:
                pa, pb, team = 0, nt, 1
    if n % 2:
        j0, j1 = _share(H, nt, pa, 16), _share(H, nt, pb, 16)
        memcpy(h + j0, states[1] + j0, (j1 - j0) * sizeof(float))


def quantized_widen(cnp.ndarray w, const float[::1] scale, float[:, ::1] out):
    """out (R, K) float32 <- w (R, K) widened in one pass: int8 times scale (R,) per row,
    or uint16 bfloat16 bits shifted up (scale unused; may be empty)."""
    cdef int fmt = _qformat(w)
    cdef Py_ssize_t R = out.shape[0], K = out.shape[1]
    if not cnp.PyArray_IS_C_CONTIGUOUS(w) or w.ndim != 2 or w.shape[0] != R or w.shape[1] != K:
        raise ValueError(f"w must be a C-contiguous ({R}, {K}) array")
    if fmt == Q_INT8 and scale.shape[0] != R:
        raise ValueError(f"scale must have {R} values, got {scale.shape[0]}")
    if R == 0 or K == 0:
        return
    with nogil:
        qwiden(fmt, R, K, cnp.PyArray_DATA(w), &scale[0] if fmt == Q_INT8 else NULL, &out[0, 0])


def quantized_steps(const float[:, :, ::1] x, cnp.ndarray w_ih, const float[::1] s_ih,
                    float[::1] w_ih_scratch, float[:, :, ::1] gates, Py_ssize_t first,
                    bint reverse, cnp.ndarray w_hh, const float[::1] s_hh,
                    const float[::1] b_ih, const float[::1] b_hh, const Py_ssize_t[::1] lengths,
                    bint linear_before_reset, float[:, :, ::1] y, Py_ssize_t y_col,
                    float[:, ::1] h, float[:, ::1] gh, float[:, ::1] rh,
                    float[:, ::1] step_scratch):
    """Run time steps first ... first + n - 1 (n = x.shape[0]; in reverse order when
    ``reverse``) of one layer and direction for B sequences.

    x (n, B, K) holds those steps' inputs; w_ih (3H, K) and w_hh (3H, H) are int8 with the
    per-row scales s_ih, s_hh (3H,), or uint16 holding bfloat16 bits (scales unused).
    w_ih_scratch (3H * K floats) receives w_ih widened for the input projections, gates
    (n, B, 3H) the projections. y (T, B, W) receives the outputs in columns
    [y_col, y_col + H); h (B, H) holds the state, updated in place; gh (B, 3H), rh (B, H)
    and step_scratch (max(2B, 3), H) are scratch. One sequence with enough work is split
    across OpenMP's threads by hidden units, each thread widening and projecting its own
    units' rows (no OpenBLAS threads then compete with the team); otherwise small
    projections run in the tiled GEMM and large ones in OpenBLAS's. Callers check dtypes
    and contiguity (grufast.quantized).
    """
    cdef Py_ssize_t n = x.shape[0], B = x.shape[1], K = x.shape[2], H = h.shape[1]
    cdef Py_ssize_t G = 3 * H
    cdef int fmt = _qformat(w_hh)
    cdef const void* pw = cnp.PyArray_DATA(w_hh)
    cdef const void* pwi = cnp.PyArray_DATA(w_ih)
    cdef ThreadPlan plan = plan_threads(B, H, False)
    # One sequence only: a batch (B >= 4 goes to the float kernels from grufast.quantized)
    # may plan a split by units, which _qunit_steps does not run.
    cdef int nt = plan.threads if plan.split == BY_UNITS and B == 1 else 1
    cdef barrier_t bar
    cdef barrier_t* barp = &bar
    if n == 0 or B == 0:
        return
    if _qformat(w_ih) != fmt:
        raise TypeError("w_ih and w_hh must have one dtype")
    if not cnp.PyArray_IS_C_CONTIGUOUS(w_hh) or w_hh.shape[0] != G or w_hh.shape[1] != H:
        raise ValueError("w_hh must be a C-contiguous (3H, H) array")
    if not cnp.PyArray_IS_C_CONTIGUOUS(w_ih) or w_ih.shape[0] != G or w_ih.shape[1] != K:
        raise ValueError("w_ih must be a C-contiguous (3H, K) array")
    if w_ih_scratch.shape[0] < G * K or gates.shape[0] < n or gates.shape[1] != B:
        raise ValueError("w_ih_scratch must hold 3H * K floats and gates be (n, B, 3H)")
    if step_scratch.shape[0] < max(2 * B, 3):
        raise ValueError("step_scratch must have max(2B, 3) rows")
    if nt > 1:
        barrier_init(barp, True)
        if plan.alone:
            with nogil:
                _qunit_steps(0, nt, True, barp, n, first, reverse, K, H, &x[0, 0, 0], pwi,
                             &s_ih[0], &w_ih_scratch[0], &gates[0, 0, 0], fmt, pw, &s_hh[0],
                             &b_ih[0], &b_hh[0], &lengths[0], linear_before_reset,
                             &y[0, 0, 0] + y_col, y.shape[2], &h[0, 0], &gh[0, 0], &rh[0, 0],
                             &step_scratch[0, 0])
            return
        with nogil, parallel(num_threads=nt):
            # The team may be smaller than asked for: split among the threads that came.
            leave_caller_cpu(barp, thread_id())
            _qunit_steps(thread_id(), team_size(), False, barp, n, first, reverse, K, H,
                         &x[0, 0, 0], pwi, &s_ih[0], &w_ih_scratch[0], &gates[0, 0, 0], fmt,
                         pw, &s_hh[0], &b_ih[0], &b_hh[0], &lengths[0], linear_before_reset,
                         &y[0, 0, 0] + y_col, y.shape[2], &h[0, 0], &gh[0, 0], &rh[0, 0],
                         &step_scratch[0, 0])
            restore_cpu_mask()
        return
    with nogil:
        if n * B * G * K <= projection_max_macs:
            # OpenBLAS would start its threads for less work than waking them costs. (Not
            # by rows, as the float path: the transposed widening costs more than it saves.)
            qwiden_t(fmt, 0, G, K, pwi, &s_ih[0], &w_ih_scratch[0], G)
            small_gemm(n * B, G, K, &x[0, 0, 0], K, &w_ih_scratch[0], G, &gates[0, 0, 0], G,
                       False)
        else:
            qwiden(fmt, G, K, pwi, &s_ih[0], &w_ih_scratch[0])
            gemm_rm(c'N', c'T', n * B, G, K, 1, &x[0, 0, 0], K, &w_ih_scratch[0], K, 0,
                    &gates[0, 0, 0], G)
        _qsteps(n, first, reverse, B, H, &gates[0, 0, 0], fmt, pw, &s_hh[0], &b_ih[0],
                &b_hh[0], &lengths[0], linear_before_reset, &y[0, 0, 0] + y_col, y.shape[2],
                &h[0, 0], &gh[0, 0], &rh[0, 0], &step_scratch[0, 0])


# ---------------------------------------------------------------------------------------------
# one step for one sequence from Python (QuantizedGRUCell's streaming path)

cdef void _qstep1(Py_ssize_t I, Py_ssize_t H, int fmt, const float* x, float* h,
                  const void* w_ih, const float* s_ih, const void* w_hh, const float* s_hh,
                  const float* b_ih, const float* b_hh, bint lbr, float* work) noexcept nogil:
    """h (H,) <- one GRU step from x (I,) with quantized w_ih (3H, I) and w_hh (3H, H);
    work holds 9H floats."""
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t one = 1
    cdef float* gi = work
    cdef float* gh = work + G
    cdef float* rh = work + 2 * G
    cdef float* s1 = rh + H
    cdef float* s2 = s1 + H
    qmatvec(fmt, 0, G, I, w_ih, s_ih, x, gi)
    if lbr:
        qmatvec(fmt, 0, G, H, w_hh, s_hh, h, gh)
        _gates_lbr(1, H, 0, H, 0, &one, gi, gh, b_ih, b_hh, h, h, h, H, s1, s2, False)
    else:
        qmatvec(fmt, 0, 2 * H, H, w_hh, s_hh, h, gh)
        _gates_rz(1, H, 0, H, 0, &one, gi, gh, b_ih, b_hh, h, rh, s2, False)
        qmatvec(fmt, 2 * H, H, H, w_hh, s_hh, rh, gh + 2 * H)
        _gates_n(1, H, 0, H, 0, &one, gi, gh, b_ih, b_hh, h, h, h, H, s1, s2, False)


cdef class QuantizedCellPlan:
    """A quantized GRU cell's stored arrays held for one-sequence steps from Python.

    ``step(x, h)`` takes x (I,) and h (H,) or None as C-contiguous float32 arrays and
    returns the new state (H,); for anything else it returns None and the caller takes the
    general path. w_ih (3H, I) and w_hh (3H, H) are int8 with per-row scales s_ih, s_hh
    (3H,), or uint16 bfloat16 bits with the scales unused. Scratch is allocated per call:
    nothing mutable is shared.
    """

    cdef cnp.ndarray w_ih, s_ih, w_hh, s_hh, b_ih, b_hh
    cdef Py_ssize_t n_in, n_hidden
    cdef bint lbr
    cdef int fmt

    def __init__(self, cnp.ndarray w_ih, cnp.ndarray s_ih, cnp.ndarray w_hh, cnp.ndarray s_hh,
                 cnp.ndarray b_ih, cnp.ndarray b_hh, bint linear_before_reset):
        self.fmt = _qformat(w_ih)
        if _qformat(w_hh) != self.fmt:
            raise TypeError("w_ih and w_hh must have one dtype")
        H = w_hh.shape[1]
        for a, shape in ((w_ih, (3 * H, w_ih.shape[1])), (w_hh, (3 * H, H)), (s_ih, (3 * H,)),
                         (s_hh, (3 * H,)), (b_ih, (3 * H,)), (b_hh, (3 * H,))):
            if not cnp.PyArray_IS_C_CONTIGUOUS(a) or (<object>a).shape != shape:
                raise ValueError(f"QuantizedCellPlan needs C-contiguous arrays of shape {shape}")
        for a in (s_ih, s_hh, b_ih, b_hh):
            if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32:
                raise TypeError("scales and biases must be float32")
        self.w_ih, self.s_ih, self.w_hh, self.s_hh = w_ih, s_ih, w_hh, s_hh
        self.b_ih, self.b_hh = b_ih, b_hh
        self.n_in = w_ih.shape[1]
        self.n_hidden = H
        self.lbr = linear_before_reset

    def step(self, x, h):
        cdef cnp.npy_intp dim = self.n_hidden
        cdef Py_ssize_t I = self.n_in, H = self.n_hidden
        cdef cnp.ndarray out
        cdef float* work
        if not _is_rows(x, cnp.NPY_FLOAT32, 1, 1, I):
            return None
        if h is not None and not _is_rows(h, cnp.NPY_FLOAT32, 1, 1, H):
            return None
        out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_FLOAT32, 0)
        if h is None:
            memset(cnp.PyArray_DATA(out), 0, H * sizeof(float))
        else:
            memcpy(cnp.PyArray_DATA(out), cnp.PyArray_DATA(<cnp.ndarray>h), H * sizeof(float))
        work = <float*>aligned_malloc(9 * H * sizeof(float))
        if work == NULL:
            raise MemoryError()
        with nogil:
            _qstep1(I, H, self.fmt, <const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                    <float*>cnp.PyArray_DATA(out), cnp.PyArray_DATA(self.w_ih),
                    <const float*>cnp.PyArray_DATA(self.s_ih), cnp.PyArray_DATA(self.w_hh),
                    <const float*>cnp.PyArray_DATA(self.s_hh),
                    <const float*>cnp.PyArray_DATA(self.b_ih),
                    <const float*>cnp.PyArray_DATA(self.b_hh), self.lbr, work)
        aligned_free(work)
        return out
