# distutils: extra_compile_args = -ffp-contract=off
# fastlstm._matmul: Python-callable twins of the matmul.h kernels, for tests and benchmarks.
# The decode loop calls the kernels directly (cimport from matmul); nothing here is public.

from matmul cimport (fl_matmul_has_avx2, fl_matmul_packed, fl_matmul_packed_scalar,
                     fl_pack_wt, fl_packed_size)

import numpy as np

ALIGNMENT = 64  # bytes: one packed panel row (16 floats) is one cache line


def aligned_empty(size_t count):
    """An uninitialised float32 array of `count` elements whose data is 64-byte aligned."""
    raw = np.empty(count + ALIGNMENT // 4, dtype=np.float32)
    offset = (-raw.ctypes.data % ALIGNMENT) // 4
    return raw[offset:offset + count]


def has_avx2():
    """Whether matmul (without force_scalar) runs the AVX2+FMA kernels on this CPU."""
    return bool(fl_matmul_has_avx2())


def packed_size(int n, int k):
    """Floats in the packed form of a weight W (n, k)."""
    return fl_packed_size(n, k)


def pack(w):
    """The packed form of W (n, k) float32: a 1-D, 64-byte aligned array of panels,
    packed[p][kk][0:16] = W[16p + 0..15, kk] (zero past n)."""
    cdef const float[:, ::1] wv = np.ascontiguousarray(w, dtype=np.float32)
    cdef int n = wv.shape[0], k = wv.shape[1]
    if n < 1 or k < 1:
        raise ValueError(f"w must be a non-empty 2-D array, got shape {np.shape(w)}")
    packed = aligned_empty(fl_packed_size(n, k))
    cdef float[::1] pv = packed
    with nogil:
        fl_pack_wt(&wv[0, 0], n, k, &pv[0])
    return packed


cdef int row_stride(a, str name) except -1:
    """The row stride (in floats) of a 2-D float32 array whose rows are contiguous."""
    if a.dtype != np.float32 or a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D float32 array")
    if a.shape[0] == 0:
        return a.shape[1]
    if a.shape[1] > 1 and a.strides[1] != 4:
        raise ValueError(f"{name}'s rows must be contiguous")
    if a.shape[0] == 1:
        return a.shape[1]
    if a.strides[0] % 4 or a.strides[0] // 4 < a.shape[1]:
        raise ValueError(f"{name}'s rows must not overlap")
    return a.strides[0] // 4


def matmul(x, packed, int n, bias=None, y=None, bint accumulate=False,
           bint force_scalar=False):
    """y (m, n) := (y if accumulate else 0) + x (m, k) . W^T + bias, W packed by pack().

    x and y may be views whose rows are further apart than their widths (ldx > k, ldy > n).
    y is allocated when None (then accumulate must be False).  Returns y.
    """
    x = np.asarray(x)
    cdef int ldx = row_stride(x, "x")
    cdef int m = x.shape[0], k = x.shape[1]
    if k < 1 or n < 1:
        raise ValueError("k and n must be at least 1")
    cdef const float[::1] pv = packed
    if <size_t> pv.shape[0] != fl_packed_size(n, k):
        raise ValueError(f"packed has {pv.shape[0]} floats, W ({n}, {k}) needs {fl_packed_size(n, k)}")
    if (<size_t> &pv[0]) % 32:
        raise ValueError("packed must be 32-byte aligned")
    cdef const float[::1] bv
    cdef const float *bias_ptr = NULL
    if bias is not None:
        bv = np.ascontiguousarray(bias, dtype=np.float32)
        if bv.shape[0] != n:
            raise ValueError(f"bias must have {n} elements")
        bias_ptr = &bv[0]
    if y is None:
        if accumulate:
            raise ValueError("accumulate needs y")
        y = np.empty((m, n), dtype=np.float32)
    cdef int ldy = row_stride(y, "y")
    if y.shape[0] != m or y.shape[1] != n:
        raise ValueError(f"y must have shape ({m}, {n})")
    if m == 0:
        return y
    cdef float[:, :] yv = y
    cdef const float[:, :] xv = x
    cdef const float *xp = &xv[0, 0]
    cdef float *yp = &yv[0, 0]
    with nogil:
        if force_scalar:
            fl_matmul_packed_scalar(m, n, k, xp, ldx, &pv[0], bias_ptr, accumulate, yp, ldy)
        else:
            fl_matmul_packed(m, n, k, xp, ldx, &pv[0], bias_ptr, accumulate, yp, ldy)
    return y
