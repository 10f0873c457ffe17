# fastlstm's own deterministic matrix product (matmul.h):  y (+)= x . W^T + bias, with W
# packed once into panels of 16 outputs.  Each y[r, j] is one fixed chain of fused
# multiply-adds over k, so a row's result is bitwise the same whatever else is computed
# with it (BLAS's is not).  See matmul.h for the layout.

cdef extern from "matmul.h" nogil:
    # Floats needed for a packed W (n, k); the caller allocates them 32-byte aligned.
    size_t fl_packed_size(int n, int k)
    # packed := W (n, k) row-major, in panels: packed[p][kk][0:16] = W[16p + 0..15, kk].
    void fl_pack_wt(const float *w, int n, int k, float *packed)
    # y[r, j] := v (or y[r, j] + v if accumulate), v = sum_kk x[r, kk] W[j, kk] (+ bias[j])
    # as one fma chain over kk, for r < m, j < n; x rows ldx floats apart, y rows ldy
    # apart, bias (n,) or NULL.  Single-threaded; callers split rows across threads.
    void fl_matmul_packed(int m, int n, int k, const float *x, int ldx, const float *packed,
                          const float *bias_or_null, int accumulate, float *y, int ldy)
    # The same, always on the portable scalar path (fmaf in the same order): for tests.
    void fl_matmul_packed_scalar(int m, int n, int k, const float *x, int ldx,
                                 const float *packed, const float *bias_or_null,
                                 int accumulate, float *y, int ldy)
    # Whether fl_matmul_packed runs the AVX2+FMA kernels on this CPU.
    int fl_matmul_has_avx2()
