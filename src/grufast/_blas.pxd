# cython: language_level=3
"""Row-major BLAS helpers over scipy.linalg.cython_blas, fused over float and double.

Fortran BLAS is column-major; a row-major matrix is the transpose of a column-major one, so
C = op(A) @ op(B) in row-major is C^T = op(B)^T @ op(A)^T in column-major: swap the operands,
keep the flags. No helper ever calls gemm with a unit dimension: OpenBLAS runs those about ten
times slower than the equivalent gemv.
"""

cimport scipy.linalg.cython_blas as cb

include "_blas_int.pxi"

from grufast._types cimport real


cdef inline void gemv_rm(char trans, Py_ssize_t m, Py_ssize_t n, real alpha,
                         const real* a, Py_ssize_t lda, const real* x, Py_ssize_t incx,
                         real beta, real* y, Py_ssize_t incy) noexcept nogil:
    """y = alpha * op(A) @ x + beta * y for a row-major (m, n) matrix A."""
    cdef char t = c'N' if trans == c'T' else c'T'
    cdef blas_int bm = <blas_int>n, bn = <blas_int>m, blda = <blas_int>lda
    cdef blas_int bix = <blas_int>incx, biy = <blas_int>incy
    if real is float:
        cb.sgemv(&t, &bm, &bn, &alpha, <float*>a, &blda, <float*>x, &bix, &beta, y, &biy)
    else:
        cb.dgemv(&t, &bm, &bn, &alpha, <double*>a, &blda, <double*>x, &bix, &beta, y, &biy)


cdef inline void gemm_rm(char transa, char transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                         real alpha, const real* a, Py_ssize_t lda,
                         const real* b, Py_ssize_t ldb,
                         real beta, real* c, Py_ssize_t ldc) noexcept nogil:
    """C (m, n) = alpha * op(A) @ op(B) + beta * C, all row-major.

    op(A) is (m, k) and op(B) is (k, n). A unit m or n goes to gemv; beta must be 0 or 1
    when k == 1 (rank-1 updates go to ger).
    """
    cdef Py_ssize_t i
    cdef blas_int bm, bn, bk, blda, bldb, bldc
    if m == 0 or n == 0:
        return
    if m == 1:
        # c^T = op(B)^T @ op(A)^T: a row of A is a vector of stride 1 ('N') or lda ('T').
        if transb == c'N':
            gemv_rm(c'T', k, n, alpha, b, ldb, a, 1 if transa == c'N' else lda, beta, c, 1)
        else:
            gemv_rm(c'N', n, k, alpha, b, ldb, a, 1 if transa == c'N' else lda, beta, c, 1)
        return
    if n == 1:
        if transa == c'N':
            gemv_rm(c'N', m, k, alpha, a, lda, b, ldb if transb == c'N' else 1, beta, c, ldc)
        else:
            gemv_rm(c'T', k, m, alpha, a, lda, b, ldb if transb == c'N' else 1, beta, c, ldc)
        return
    if k == 1:
        # C = beta*C + alpha * u v^T with u = op(A)[:, 0], v = op(B)[0, :].
        if beta == 0:
            for i in range(m):
                fill(c + i * ldc, n, 0)
        bm = <blas_int>n
        bn = <blas_int>m
        bldc = <blas_int>ldc
        blda = <blas_int>(1 if transb == c'N' else ldb)   # stride of v
        bldb = <blas_int>(lda if transa == c'N' else 1)   # stride of u
        if real is float:
            cb.sger(&bm, &bn, &alpha, <float*>b, &blda, <float*>a, &bldb, c, &bldc)
        else:
            cb.dger(&bm, &bn, &alpha, <double*>b, &blda, <double*>a, &bldb, c, &bldc)
        return
    bm = <blas_int>n
    bn = <blas_int>m
    bk = <blas_int>k
    blda = <blas_int>lda
    bldb = <blas_int>ldb
    bldc = <blas_int>ldc
    if real is float:
        cb.sgemm(&transb, &transa, &bm, &bn, &bk, &alpha, <float*>b, &bldb, <float*>a, &blda,
                 &beta, c, &bldc)
    else:
        cb.dgemm(&transb, &transa, &bm, &bn, &bk, &alpha, <double*>b, &bldb, <double*>a, &blda,
                 &beta, c, &bldc)


cdef inline void fill(real* p, Py_ssize_t n, real value) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        p[i] = value
