# fastlstm's own deterministic matrix product (matmul.h):  y (+)= x . W^T (* scale) + bias,
# with W packed once into panels of 16 outputs, stored as float32, float16 or bfloat16 and
# multiplied in float32, or as int8 (a float32 scale per output row) multiplied exactly in
# integers by x rounded to int16.  Each y[r, j] is one fixed chain of fused multiply-adds
# over k (int8: an exact sum), so a row's result is bitwise the same whatever else is
# computed with it (BLAS's is not).  See matmul.h for the layout and the int8 arithmetic.

from libc.stdint cimport int32_t, int64_t

cdef extern from "kernels.h" nogil:  # matmul.h, on the kernel path of kernels.h
    cdef enum fl_wtype:
        FL_F32
        FL_F16
        FL_BF16
        FL_I8

    ctypedef struct fl_matrix:
        const void *panels   # fl_packed_size(type, n, k) elements of `type`, 64-byte aligned
        const float *scale   # (n,) int8 only; NULL otherwise
        const int32_t *qsum  # (n,) int8 only: sum over k of each output's q; NULL otherwise
        int type
        int n
        int k

    int FL_PANEL  # outputs per panel
    # Elements in the packed form of W (n, k) stored as `type`.
    size_t fl_packed_size(int type, int n, int k)
    # panels := W (n, k) row-major, in the panel layout (the layout's one writer).
    void fl_pack(int type, int n, int k, const void *w, void *panels)
    # y[r, j] := v (or y[r, j] + v if accumulate), v = sum_kk x[r, kk] W[j, kk] (+ bias[j])
    # as one fma chain over kk (int8: exact, on x rounded to int16), for r < m, j < n; x rows ldx floats apart, y rows
    # ldy apart, bias (n,) or NULL.  Single-threaded; callers split rows across threads.
    void fl_matmul(int m, const fl_matrix *W, const float *x, int ldx,
                   const float *bias_or_null, int accumulate, float *y, int ldy)
    # The outputs of panels [np*part/parts, np*(part+1)/parts) of the same product, for
    # threads sharing it (np = W's panel count): the parts together give fl_matmul's bits.
    void fl_matmul_part(int part, int parts, int m, const fl_matrix *W, const float *x,
                        int ldx, const float *bias_or_null, int accumulate, float *y, int ldy)
    # The same, always on the portable scalar path (bitwise the same results): for tests.
    void fl_matmul_scalar(int m, const fl_matrix *W, const float *x, int ldx,
                          const float *bias_or_null, int accumulate, float *y, int ldy)
    # rows[i, 0:n] := row ids[i] of a row-major (.., n) table of `type`, as floats (int8:
    # times scale[ids[i]]); rows ld floats apart.  Embedding and lookup-table rows.
    void fl_gather_rows(const void *table, int type, const float *scale, int n,
                        const int64_t *ids, int count, float *rows, int ld)
    void fl_gather_rows_scalar(const void *table, int type, const float *scale, int n,
                               const int64_t *ids, int count, float *rows, int ld)
    # Whether fl_matmul runs vector kernels (the AVX2 or the AVX-512 path).
    int fl_matmul_has_avx2()


# The NumPy element type (dtype.char) matmul.h reads for each enum fl_wtype, in its order:
# float32, float16, bfloat16 as its raw 16 bits (uint16), int8.  fastlstm._matmul publishes
# the types as WEIGHT_TYPES, which fastlstm.precision and fastlstm.pack read.
cdef inline str wtype_numpy_char(int wtype):
    return "feHb"[wtype]


cdef extern from "kernels.h" nogil:
    # The kernel paths (isa.h, kernels.h): every one gives bitwise the same results.
    cdef enum fl_isa:
        FL_ISA_PORTABLE
        FL_ISA_AVX2
        FL_ISA_AVX512
    int fl_active_isa()       # this module's path, set once by fastlstm.isa at import
    int fl_isa_supported(int isa)
    int fl_set_isa(int isa)   # 0, or -1 if the CPU lacks it
