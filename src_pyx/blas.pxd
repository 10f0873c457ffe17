# The few BLAS routines fastlstm calls, from the scipy-openblas32 wheel's cblas header
# (its symbols carry the `scipy_` prefix).  Every weight is a row-major PyTorch matrix
# W (out_features, in_features), so every product here is  C := A . W^T  (+ beta C).

cdef extern from "cblas.h" nogil:
    ctypedef enum CBLAS_ORDER:
        CblasRowMajor
    ctypedef enum CBLAS_TRANSPOSE:
        CblasNoTrans
        CblasTrans

    void scipy_cblas_sgemv(CBLAS_ORDER order, CBLAS_TRANSPOSE trans, int m, int n,
                           float alpha, const float *a, int lda, const float *x, int incx,
                           float beta, float *y, int incy)
    void scipy_cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE transa, CBLAS_TRANSPOSE transb,
                           int m, int n, int k, float alpha, const float *a, int lda,
                           const float *b, int ldb, float beta, float *c, int ldc)


cdef inline void matmul_wt(int m, int n, int k, const float *a, int lda,
                           const float *w, float beta, float *c, int ldc) noexcept nogil:
    """C[m, n] := A[m, k] . W[n, k]^T + beta * C   (W contiguous, as nn.Linear stores it).

    One row goes through GEMV, which OpenBLAS runs faster than a one-row GEMM.
    """
    if m == 1:
        scipy_cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.0, w, k, a, 1, beta, c, 1)
    else:
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k,
                          1.0, a, lda, w, k, beta, c, ldc)
