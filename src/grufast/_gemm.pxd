# cython: language_level=3
"""A register-tiled GEMM for the recurrent products and the multi-threaded weight gradients:
OpenBLAS packs the weights again at every step's call, and its threads spin for a while after
each call, taking the cores our own threads need. C (M, N) = A (M, K) @ W (K, N), all
row-major, W stored so that a row of W is contiguous in N.

Tiles of 4 rows x 3 vectors of C (24 floats or 12 doubles with AVX2, twice that with
AVX-512) live in 12 vector registers through the whole K loop: per k, 3 loads of W and 4
broadcasts of A feed 12 FMAs; narrower panels take 2 or 1 vectors. Measured on one core
(AMD EPYC, AVX-512): M=16, K=128, N=384: 16.6 us vs OpenBLAS 40 us; in the whole GRU at
T=50, B=256, I=128, H=256 it matches OpenBLAS's per-step GEMMs (forward 86 vs 89 ms,
backward 194 vs 189 ms), and OpenBLAS stays 10-20% faster on the long weight-gradient
sums, which grufast therefore leaves to it on one thread.
"""

from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from grufast._types cimport real

cdef extern from *:
    """
    /* A vector register in floats, and the tile width: 3 vectors (setup.py sets 16 and 48
       for the AVX-512 build; 4 vectors measured no faster there). */
    #ifndef GRUFAST_VEC_FLOATS
    #define GRUFAST_VEC_FLOATS 8
    #endif
    #ifndef GRUFAST_TILE_FLOATS
    #define GRUFAST_TILE_FLOATS 24
    #endif
    /* The widest panel of any build, in floats (the edge tiles' bound, _tiles.h). */
    #define GRUFAST_TILE_MAX 48
    """
    const Py_ssize_t VEC_FLOATS "GRUFAST_VEC_FLOATS"
    const Py_ssize_t TILE_FLOATS "GRUFAST_TILE_FLOATS"
    const Py_ssize_t TILE_MAX "GRUFAST_TILE_MAX"

cdef enum:
    # Kernel buffers start on a cache line (the packed copies and scratch alike): malloc
    # gives 16 bytes, and an AVX-512 load 16 bytes off a line straddles two.
    LINE_BYTES = 64


cdef inline void* aligned_malloc(size_t size) noexcept nogil:
    """malloc's block, starting on a LINE_BYTES boundary (the address malloc returned is
    kept just before it); NULL if malloc fails. Free with aligned_free only."""
    cdef char* raw = <char*>malloc(size + LINE_BYTES + sizeof(void*))
    if raw == NULL:
        return NULL
    cdef size_t start = <size_t>(raw + sizeof(void*))
    cdef void** block = <void**>((start + LINE_BYTES - 1) & ~(<size_t>LINE_BYTES - 1))
    (block - 1)[0] = raw
    return <void*>block


cdef inline void aligned_free(void* block) noexcept nogil:
    """Free a block from aligned_malloc (NULL: nothing)."""
    if block != NULL:
        free((<void**>block - 1)[0])


cdef extern from "_tiles.h":
    # The register tiles (1-4 rows of 1-3 vectors, named accumulators) and the edge tiles
    # (why: _tiles.h).
    void _tile_edge_f "grufast_tile_edge_f"(Py_ssize_t rows, Py_ssize_t width, Py_ssize_t K,
                                            const float* A, Py_ssize_t lda, Py_ssize_t a_k,
                                            const float* W, Py_ssize_t ldw, float* C,
                                            Py_ssize_t ldc, bint accumulate) noexcept nogil
    void _tile_edge_d "grufast_tile_edge_d"(Py_ssize_t rows, Py_ssize_t width, Py_ssize_t K,
                                            const double* A, Py_ssize_t lda, Py_ssize_t a_k,
                                            const double* W, Py_ssize_t ldw, double* C,
                                            Py_ssize_t ldc, bint accumulate) noexcept nogil
    void _tile_f "grufast_tile_f"(int rows, int vectors, Py_ssize_t K, const float* A,
                                  Py_ssize_t lda, Py_ssize_t a_k, const float* W,
                                  Py_ssize_t ldw, float* C, Py_ssize_t ldc,
                                  bint accumulate) noexcept nogil
    void _tile_d "grufast_tile_d"(int rows, int vectors, Py_ssize_t K, const double* A,
                                  Py_ssize_t lda, Py_ssize_t a_k, const double* W,
                                  Py_ssize_t ldw, double* C, Py_ssize_t ldc,
                                  bint accumulate) noexcept nogil

cdef enum:
    TILE_ROWS = 4
    K_BLOCK = 1024
    TN_ROWS = 32   # small_gemm_tn's blocks: 32 columns x 256 rows of A, 32 KB of floats
    TN_K = 256


cdef inline void _register_tile(int rows, int vectors, Py_ssize_t K, const real* A,
                                Py_ssize_t lda, Py_ssize_t a_k, const real* W,
                                Py_ssize_t ldw, real* C, Py_ssize_t ldc,
                                bint accumulate) noexcept nogil:
    """C[:rows, :vectors * VEC_FLOATS] (+)= A[:rows, :K] @ W[:K, :vectors * VEC_FLOATS]
    (half as many columns for doubles), rows 1-4, A's element (r, k) at r * lda + k * a_k:
    the full (3 vectors), pair (2) and vector (1) tiles of _tiles.h, whose sums are named
    vector variables (as loops over an array here, gcc kept some of them in memory: see
    _tiles.h)."""
    if real is float:
        _tile_f(rows, vectors, K, A, lda, a_k, W, ldw, C, ldc, accumulate)
    else:
        _tile_d(rows, vectors, K, A, lda, a_k, W, ldw, C, ldc, accumulate)


cdef inline void _edge_tile(Py_ssize_t rows, Py_ssize_t width, Py_ssize_t K, const real* A,
                            Py_ssize_t lda, Py_ssize_t a_k, const real* W, Py_ssize_t ldw,
                            real* C, Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """C[:rows, :width] (+)= A[:rows, :K] @ W[:K, :width] for the remainders, rows <= 4
    and width <= TILE_MAX (_tiles.h's plain loops: a small share of the work). Each
    element's sum is one chain over k from 0, fused as in the whole tiles."""
    if real is float:
        _tile_edge_f(rows, width, K, A, lda, a_k, W, ldw, C, ldc, accumulate)
    else:
        _tile_edge_d(rows, width, K, A, lda, a_k, W, ldw, C, ldc, accumulate)


cdef inline Py_ssize_t _panel_width(Py_ssize_t n, Py_ssize_t N, Py_ssize_t cw,
                                    Py_ssize_t vw) noexcept nogil:
    """Panels of 3 vectors (cw), then of 2 or 1 (vw each), then the remainder: all but the
    last run in _tiles.h's whole tiles. Four vectors left go as two pairs, not 3 + 1: a
    one-vector tile has 4 chains of FMAs, too few to cover their latency."""
    if N - n == cw + vw:
        return 2 * vw
    return cw if n + cw <= N else (2 * vw if n + 2 * vw <= N else (
        vw if n + vw <= N else N - n))


cdef inline void _panel(Py_ssize_t M, Py_ssize_t w, Py_ssize_t K, const real* A,
                        Py_ssize_t lda, Py_ssize_t a_k, const real* W, Py_ssize_t ldw,
                        real* C, Py_ssize_t ldc, bint accumulate, Py_ssize_t cw,
                        Py_ssize_t vw) noexcept nogil:
    """C[:, :w] (+)= A @ W[:, :w] for one column panel, by row tiles: the panel of W
    (K x w) stays in L2 while every row tile passes over it."""
    cdef Py_ssize_t m = 0, rows
    cdef int vectors = 3 if w == cw else (2 if w == 2 * vw else (1 if w == vw else 0))
    while m < M:
        rows = min(<Py_ssize_t>TILE_ROWS, M - m)  # the last 1-3 rows in registers too
        if vectors:
            _register_tile(<int>rows, vectors, K, A + m * lda, lda, a_k, W, ldw,
                           C + m * ldc, ldc, accumulate)
        else:
            _edge_tile(rows, w, K, A + m * lda, lda, a_k, W, ldw, C + m * ldc, ldc,
                       accumulate)
        m += TILE_ROWS


cdef inline void _copy_panel(Py_ssize_t rows, Py_ssize_t w, const real* W, Py_ssize_t ldw,
                             real* out) noexcept nogil:
    """rows x w of W (row stride ldw) into out, contiguous: the panel copy packed_gemm makes
    at every call and pack_gemm_weights once, and small_gemm_tn's block of A."""
    cdef Py_ssize_t k
    for k in range(rows):
        memcpy(out + k * w, W + k * ldw, w * sizeof(real))


cdef inline void _copy_panel_t(Py_ssize_t rows, Py_ssize_t w, const real* Wt,
                               Py_ssize_t ldwt, real* out) noexcept nogil:
    """The panel _copy_panel copies, from W's transpose Wt (row stride ldwt): out[k * w + i]
    = Wt[i * ldwt + k], for k < rows and i < w; 16 k at a time, so that each cache line of
    Wt read serves 16 of them."""
    cdef Py_ssize_t k0, k, i, kn
    for k0 in range(0, rows, 16):
        kn = min(16, rows - k0)
        for i in range(w):
            for k in range(k0, k0 + kn):
                out[k * w + i] = Wt[i * ldwt + k]


cdef inline Py_ssize_t _tile_width(const real* like) noexcept nogil:
    """The full tile's width in reals: 3 vectors (``like`` only picks the dtype)."""
    return TILE_FLOATS if real is float else TILE_FLOATS // 2


cdef inline Py_ssize_t _vec_width(const real* like) noexcept nogil:
    """A vector register's width in reals (``like`` only picks the dtype)."""
    return VEC_FLOATS if real is float else VEC_FLOATS // 2


cdef inline void _gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const real* A,
                       Py_ssize_t lda, Py_ssize_t a_k, const real* W, Py_ssize_t ldw,
                       real* C, Py_ssize_t ldc, bint accumulate, real* pack) noexcept nogil:
    """C (M, N) (+)= A (M, K) @ W (K, N), W and C row-major, A's element (m, k) at
    m * lda + k * a_k (a_k = 1: row-major; lda = 1: A^T stored row-major). K in blocks, so
    that a panel of W (K_BLOCK x cw) fits in L2 however long K is; later blocks add to C.
    Column panels outside, row tiles inside, so W streams from memory once per call, not
    once per tile.
    With ``pack`` (min(K, K_BLOCK) x TILE_MAX floats, or half as many doubles), each panel is
    first copied there: the tiles then read it contiguously, without W's stride (a page per
    row when rows are long)."""
    cdef Py_ssize_t cw = _tile_width(A), vw = _vec_width(A), k0 = 0, kn, n, w
    while k0 < K or k0 == 0:
        kn = min(K_BLOCK, K - k0)
        n = 0
        while n < N:
            w = _panel_width(n, N, cw, vw)
            if pack == NULL:
                _panel(M, w, kn, A + k0 * a_k, lda, a_k, W + k0 * ldw + n, ldw, C + n, ldc,
                       accumulate or k0 > 0, cw, vw)
            else:
                _copy_panel(kn, w, W + k0 * ldw + n, ldw, pack)
                _panel(M, w, kn, A + k0 * a_k, lda, a_k, pack, w, C + n, ldc,
                       accumulate or k0 > 0, cw, vw)
            n += w
        k0 += K_BLOCK


cdef inline void _prepacked_window(Py_ssize_t M, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t K,
                                   const real* A, Py_ssize_t lda, Py_ssize_t a_k,
                                   const real* P, Py_ssize_t NP, real* C, Py_ssize_t ldc,
                                   bint accumulate) noexcept nogil:
    """C (M, c1 - c0) (+)= A (M, K) @ W[:, c0:c1], W (K, NP) packed by pack_gemm_weights (P),
    A's element (m, k) at m * lda + k * a_k:
    the packed panels that overlap the columns, each cut to them (a cut panel runs in the
    narrower tile of its width, reading the panel with its own stride). The whole width
    (c0 = 0, c1 = NP) is exactly packed_gemm's walk on the same panels: the same bits."""
    cdef Py_ssize_t cw = _tile_width(A), vw = _vec_width(A), k0 = 0, kn, n, w, o0, o1
    while k0 < K or k0 == 0:
        kn = min(K_BLOCK, K - k0)
        n = 0
        while n < c1:
            w = _panel_width(n, NP, cw, vw)
            o0 = max(n, c0)
            o1 = min(n + w, c1)
            if o1 > o0:
                _panel(M, o1 - o0, kn, A + k0 * a_k, lda, a_k, P + k0 * NP + kn * n + (o0 - n), w,
                       C + (o0 - c0), ldc, accumulate or k0 > 0, cw, vw)
            n += w
        k0 += K_BLOCK


cdef inline void pack_gemm_weights(Py_ssize_t N, Py_ssize_t K, const real* W, Py_ssize_t ldw,
                                   bint transposed, real* out) noexcept nogil:
    """W (K, N) copied into every panel packed_gemm copies at each call, in the order
    _prepacked_window reads them: per block of K_BLOCK rows, the column panels one after the
    other, each (rows x width) contiguous. out holds K * N reals. ``transposed``: W is given
    as its transpose (N, K) (row stride ldw), as W_ih is, so no transposed copy is made
    first."""
    cdef Py_ssize_t cw = _tile_width(W), vw = _vec_width(W), k0 = 0, kn, n, w
    while k0 < K:
        kn = min(K_BLOCK, K - k0)
        n = 0
        while n < N:
            w = _panel_width(n, N, cw, vw)
            if transposed:
                _copy_panel_t(kn, w, W + n * ldw + k0, ldw, out + k0 * N + kn * n)
            else:
                _copy_panel(kn, w, W + k0 * ldw + n, ldw, out + k0 * N + kn * n)
            n += w
        k0 += K_BLOCK


cdef inline void small_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                            const real* A, Py_ssize_t lda, const real* W, Py_ssize_t ldw,
                            real* C, Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """C (M, N) (+)= A (M, K) @ W (K, N), all row-major."""
    _gemm(M, N, K, A, lda, 1, W, ldw, C, ldc, accumulate, NULL)


cdef inline void small_gemm_tn(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                               const real* A, Py_ssize_t lda, const real* W, Py_ssize_t ldw,
                               real* C, Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """C (M, N) (+)= A^T @ W (K, N), A (K, M) row-major (row stride lda): a sum of outer
    products over the rows of A and W, as the weight gradients are (dW = dG^T h), without
    transposing A. By blocks of TN_ROWS columns of A, each copied first (TN_K rows at a
    time) into a small contiguous block: read in place, a tile's K rows of A lie a page
    apart each and it ran 8% slower (B = 64, H = 512 training).
    W's TN_K rows are packed into the tiles' panels once (pack_gemm_weights), for all the
    blocks of A: read in place, a tile's row of W is 24 floats on AVX2 (96 bytes, straddling
    a cache line in two panels of three) and W's rows are H or I apart (2 KB at 512); copied
    per block of A, as before, W was copied 48 times per flush at H = 512. The same tiles on
    the same panels as in place: the same bits. If the buffer cannot be had, W is read in
    place."""
    cdef real block[TN_K * TN_ROWS]
    cdef real* packed = <real*>aligned_malloc(min(TN_K, K) * N * sizeof(real))
    cdef Py_ssize_t k0 = 0, kn, m0, mb
    while k0 < K:
        kn = min(TN_K, K - k0)
        if packed != NULL:
            pack_gemm_weights(N, kn, W + k0 * ldw, ldw, False, packed)
        m0 = 0
        while m0 < M:
            mb = min(TN_ROWS, M - m0)
            _copy_panel(kn, mb, A + k0 * lda + m0, lda, block)
            if packed != NULL:
                _prepacked_window(mb, 0, N, kn, block, 1, mb, packed, N, C + m0 * ldc, ldc,
                                  accumulate or k0 > 0)
            else:
                _gemm(mb, N, kn, block, 1, mb, W + k0 * ldw, ldw, C + m0 * ldc, ldc,
                      accumulate or k0 > 0, NULL)
            m0 += mb
        k0 += kn
    aligned_free(packed)


cdef inline void packed_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                             const real* A, Py_ssize_t lda, const real* W, Py_ssize_t ldw,
                             real* C, Py_ssize_t ldc, bint accumulate, real* pack
                             ) noexcept nogil:
    """small_gemm for long products (many row tiles per panel), W's panels packed first
    into pack (min(K, K_BLOCK) x TILE_MAX reals), or read in place if pack is NULL."""
    _gemm(M, N, K, A, lda, 1, W, ldw, C, ldc, accumulate, pack)


cdef inline real* gemm_pack_buffer(Py_ssize_t K, const real* like) noexcept nogil:
    """A panel buffer for packed_gemm's products of inner size up to K (min(K, K_BLOCK) x
    TILE_MAX reals; ``like`` only picks the dtype), to aligned_free() after; NULL if malloc
    fails, and packed_gemm then reads W in place (the same bits)."""
    return <real*>aligned_malloc(min(K, <Py_ssize_t>K_BLOCK) * TILE_MAX * sizeof(real))


cdef inline void prepacked_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const real* A,
                                Py_ssize_t lda, const real* P, real* C, Py_ssize_t ldc,
                                bint accumulate) noexcept nogil:
    """packed_gemm on weights packed once by pack_gemm_weights (P): the same tiles on the
    same panels, so the same bits, without the copy at every call."""
    _prepacked_window(M, 0, N, K, A, lda, 1, P, N, C, ldc, accumulate)


cdef inline void prepacked_gemm_columns(Py_ssize_t M, Py_ssize_t c0, Py_ssize_t c1,
                                        Py_ssize_t K, const real* A, Py_ssize_t lda,
                                        const real* P, Py_ssize_t NP, real* C,
                                        Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """C (M, c1 - c0) (+)= A @ W[:, c0:c1] from W (K, NP) packed whole (pack_gemm_weights):
    the recurrent products of some of the gates, from W_hh^T packed once for all three, and
    a split by hidden units' input projections, each a window of W_ih^T's columns."""
    _prepacked_window(M, c0, c1, K, A, lda, 1, P, NP, C, ldc, accumulate)


cdef extern from "_panels.h":
    # The recurrent GEMV of one sequence from W_hh packed in panels of 16 rows (_panels.h).
    const Py_ssize_t PANEL "GRUFAST_PANEL"
    void _panel_gemv_ex_f "grufast_panel_gemv_ex_f"(Py_ssize_t width, Py_ssize_t K,
                                                    const float* v, const float* P,
                                                    Py_ssize_t ldp, float* out, bint backwards,
                                                    bint accumulate) noexcept nogil
    void _panel_gemv_ex_d "grufast_panel_gemv_ex_d"(Py_ssize_t width, Py_ssize_t K,
                                                    const double* v, const double* P,
                                                    Py_ssize_t ldp, double* out,
                                                    bint backwards, bint accumulate
                                                    ) noexcept nogil
    void _pack_column_panels_f "grufast_pack_column_panels_f"(
        const float* W, Py_ssize_t K, Py_ssize_t N, float* out) noexcept nogil
    void _pack_column_panels_d "grufast_pack_column_panels_d"(
        const double* W, Py_ssize_t K, Py_ssize_t N, double* out) noexcept nogil
    void _pack_panels_f "grufast_pack_panels_f"(const float* W, Py_ssize_t gates, Py_ssize_t H,
                                                Py_ssize_t K, float* out) noexcept nogil
    void _pack_panels_d "grufast_pack_panels_d"(const double* W, Py_ssize_t gates,
                                                Py_ssize_t H, Py_ssize_t K,
                                                double* out) noexcept nogil


cdef inline void panel_gemv_ex(Py_ssize_t width, Py_ssize_t K, const real* v, const real* P,
                               Py_ssize_t ldp, real* out, bint backwards,
                               bint accumulate) noexcept nogil:
    """panel_gemv with the panels ldp elements apart (v covering a slice of their k range)
    and, with ``accumulate``, the finished sum added to out."""
    if real is float:
        _panel_gemv_ex_f(width, K, v, P, ldp, out, backwards, accumulate)
    else:
        _panel_gemv_ex_d(width, K, v, P, ldp, out, backwards, accumulate)


cdef inline void panel_gemv(Py_ssize_t width, Py_ssize_t K, const real* v, const real* P,
                            real* out, bint backwards) noexcept nogil:
    """out (width,) = v (K,) @ W^T for the width rows of W whose panels start at P (a panel
    boundary): each output one chain of multiply-adds over k from 0, whatever the width or
    the direction; ``backwards`` visits the panels last to first."""
    panel_gemv_ex(width, K, v, P, K * PANEL, out, backwards, False)


cdef inline void pack_column_panels(const real* W, Py_ssize_t K, Py_ssize_t N,
                                    real* out) noexcept nogil:
    """The columns of W (K, N) row-major in panels of 16 (panel_size(1, N, K) elements)."""
    if real is float:
        _pack_column_panels_f(W, K, N, out)
    else:
        _pack_column_panels_d(W, K, N, out)


cdef inline void pack_panels(const real* W, Py_ssize_t gates, Py_ssize_t H, Py_ssize_t K,
                             real* out) noexcept nogil:
    """W (gates * H, K) row-major into panels, gate by gate (panel_size elements)."""
    if real is float:
        _pack_panels_f(W, gates, H, K, out)
    else:
        _pack_panels_d(W, gates, H, K, out)


cdef inline Py_ssize_t panel_size(Py_ssize_t gates, Py_ssize_t H, Py_ssize_t K) noexcept nogil:
    """Elements of W (gates * H, K) packed in panels (each gate's rows padded to 16)."""
    return gates * ((H + PANEL - 1) // PANEL) * K * PANEL
