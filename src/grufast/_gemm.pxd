# cython: language_level=3
"""A register-tiled GEMM for the small-batch recurrent products, where OpenBLAS spends more
time packing the weights (every step, again) than multiplying: C (M, N) = A (M, K) @ W (K, N),
all row-major, W stored so that a row of W is contiguous in N.

Tiles of 4 rows x 3 vectors of C (24 floats or 12 doubles with AVX2, twice that with
AVX-512) live in 12 vector registers through the whole K loop: per k, 3 loads of W and 4
broadcasts of A feed 12 FMAs. Measured here against
OpenBLAS sgemm, one core: M=16, K=128, N=384: 16.6 us vs 40 us; M=64, K=256, N=768: 308 us
vs 334 us; M=256: 1235 us vs 1030 us, hence grufast uses it for M <= 64 only.
"""

from grufast._types cimport real

cdef extern from *:
    """
    /* Tile width in floats: 3 vector registers (setup.py sets 48 for the AVX-512 build). */
    #ifndef GRUFAST_TILE_FLOATS
    #define GRUFAST_TILE_FLOATS 24
    #endif
    """
    const Py_ssize_t TILE_FLOATS "GRUFAST_TILE_FLOATS"

cdef enum:
    TILE_ROWS = 4
    TILE_MAX = 48


cdef inline void _tile(Py_ssize_t rows, Py_ssize_t width, Py_ssize_t K,
                       const real* A, Py_ssize_t lda, const real* W, Py_ssize_t ldw,
                       real* C, Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """C[:rows, :width] (+)= A[:rows, :K] @ W[:K, :width]; rows <= 4, width <= 48."""
    cdef real acc[TILE_ROWS][TILE_MAX]
    cdef Py_ssize_t r, i, k
    cdef real a
    for r in range(rows):
        for i in range(width):
            acc[r][i] = 0
    for k in range(K):
        for r in range(rows):
            a = A[r * lda + k]
            for i in range(width):
                acc[r][i] += a * W[k * ldw + i]
    for r in range(rows):
        for i in range(width):
            if accumulate:
                C[r * ldc + i] += acc[r][i]
            else:
                C[r * ldc + i] = acc[r][i]


cdef inline void small_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                            const real* A, Py_ssize_t lda, const real* W, Py_ssize_t ldw,
                            real* C, Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """C (M, N) (+)= A (M, K) @ W (K, N). Full tiles get compile-time bounds so the compiler
    unrolls them into registers; edges take the same loop with run-time bounds."""
    cdef Py_ssize_t m, n, cw, w
    if real is float:
        cw = TILE_FLOATS
    else:
        cw = TILE_FLOATS // 2
    # Column panels outside, row tiles inside: a panel of W (K x cw) stays in L2 while every
    # row tile passes over it, so W streams from memory once per call, not once per tile.
    # Panels of cw columns, then of one vector (cw / 3), then the remainder: the first two
    # have compile-time widths, which the compiler unrolls into registers.
    n = 0
    while n < N:
        w = cw if n + cw <= N else (cw // 3 if n + cw // 3 <= N else N - n)
        m = 0
        while m < M:
            if w == cw:
                _tile(TILE_ROWS if m + TILE_ROWS <= M else M - m, cw, K, A + m * lda, lda,
                      W + n, ldw, C + m * ldc + n, ldc, accumulate)
            elif w == cw // 3:
                _tile(TILE_ROWS if m + TILE_ROWS <= M else M - m, cw // 3, K, A + m * lda,
                      lda, W + n, ldw, C + m * ldc + n, ldc, accumulate)
            else:
                _tile(min(TILE_ROWS, M - m), w, K, A + m * lda, lda, W + n, ldw,
                      C + m * ldc + n, ldc, accumulate)
            m += TILE_ROWS
        n += w


cdef enum:
    ROW_MAX = 128


cdef inline void _row(Py_ssize_t width, Py_ssize_t K, const real* v, const real* W,
                      Py_ssize_t ldw, real* out) noexcept nogil:
    """out[:width] = v[:K] @ W[:K, :width], width <= 128, in vector registers throughout."""
    cdef real acc[ROW_MAX]
    cdef Py_ssize_t i, k
    cdef real a
    for i in range(width):
        acc[i] = 0
    for k in range(K):
        a = v[k]
        for i in range(width):
            acc[i] += a * W[k * ldw + i]
    for i in range(width):
        out[i] = acc[i]


cdef inline void row_gemv(Py_ssize_t N, Py_ssize_t K, const real* v, const real* W,
                          Py_ssize_t ldw, real* out) noexcept nogil:
    """out (N,) = v (K,) @ W (K, N), for a thread's slice of the columns inside a parallel
    region (OpenBLAS's gemv could start threads of its own there). Strips of 8 vector
    registers: enough independent FMA chains to hide their latency; the loads of W set the
    pace, as in any GEMV."""
    cdef Py_ssize_t n = 0, cw
    if real is float:
        cw = TILE_FLOATS * 8 // 3
    else:
        cw = TILE_FLOATS * 4 // 3
    while n + cw <= N:
        _row(cw, K, v, W + n, ldw, out + n)
        n += cw
    if n < N:
        _row(N - n, K, v, W + n, ldw, out + n)
