# fastlstm._matmul: matmul.h for Python.  Its weight types and panel layout, which
# fastlstm.precision and fastlstm.pack build on (WEIGHT_TYPES, PANEL, pack_panels), and
# Python-callable twins of its kernels, for tests and benchmarks.  The kernels' callers
# (stack.pxd, the loops) cimport them directly; nothing here is public.

from libc.stdint cimport int64_t

from matmul cimport (FL_BF16, FL_F16, FL_F32, FL_I8, FL_PANEL, fl_gather_rows,
                     fl_gather_rows_scalar, fl_matmul, fl_matmul_has_avx2, fl_matmul_scalar,
                     fl_matrix, fl_pack, fl_packed_size, wtype_numpy_char)
from stack cimport Rows, fill_matrix, fill_rows

import numpy as np

include "isa.pxi"

# What matmul.h's weights are (its enum fl_wtype and FL_PANEL), for Python: each weight
# type's name -> (its code, the NumPy type of its elements), and the outputs per panel.
WEIGHT_TYPES = {name: (code, np.dtype(wtype_numpy_char(code))) for name, code in (
    ("float32", FL_F32), ("float16", FL_F16), ("bfloat16", FL_BF16), ("int8", FL_I8))}
PANEL = FL_PANEL


def has_avx2():
    """Whether matmul (without force_scalar) runs the AVX2/FMA/F16C kernels on this CPU."""
    return bool(fl_matmul_has_avx2())


def packed_size(int n, int k, str dtype="float32"):
    """Elements in the packed form of a weight W (n, k) stored as `dtype`."""
    return fl_packed_size(WEIGHT_TYPES[dtype][0], n, k)


def pack_panels(data, out):
    """Pack W (n, k), `data` C-contiguous in a weight type's storage (WEIGHT_TYPES: int8 as
    q), into `out`: a 1-D, 64-byte aligned array of packed_size(n, k) such elements (matmul.h's
    fl_pack; the padding is zeroed)."""
    codes = {storage.char: code for code, storage in WEIGHT_TYPES.values()}
    if data.dtype.char not in codes or data.ndim != 2 or not data.flags.c_contiguous:
        raise ValueError("data must be a C-contiguous 2-D array of a weight type's storage")
    cdef int type = codes[data.dtype.char], n = data.shape[0], k = data.shape[1]
    if n < 1 or k < 1:
        raise ValueError(f"an empty matrix {data.shape}")
    if (out.dtype != data.dtype or out.ndim != 1 or not out.flags.c_contiguous
            or out.size != fl_packed_size(type, n, k) or out.ctypes.data % 64):
        raise ValueError("out must be a 64-byte aligned 1-D array of packed_size elements")
    cdef size_t w = data.ctypes.data, panels = out.ctypes.data
    with nogil:
        fl_pack(type, n, k, <const void *> w, <void *> panels)


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


def matmul(x, packed, bias=None, y=None, bint accumulate=False, bint force_scalar=False):
    """y (m, n) := (y if accumulate else 0) + x (m, k) . W^T + bias, for W a
    fastlstm.pack.PackedMatrix (n, k) in any precision (int8: W = q * scale, multiplied by x
    rounded to int16 per row, see matmul.h).

    x and y may be views whose rows are further apart than their widths (ldx > k, ldy > n).
    y is allocated when None (then accumulate must be False).  Returns y.
    """
    cdef fl_matrix W
    fill_matrix(&W, packed, "packed")
    x = np.asarray(x)
    cdef int ldx = row_stride(x, "x")
    cdef int m = x.shape[0]
    if x.shape[1] != W.k:
        raise ValueError(f"x has {x.shape[1]} columns, W ({W.n}, {W.k}) needs {W.k}")
    cdef const float[::1] bv
    cdef const float *bias_ptr = NULL
    if bias is not None:
        bv = np.ascontiguousarray(bias, dtype=np.float32)
        if bv.shape[0] != W.n:
            raise ValueError(f"bias must have {W.n} elements")
        bias_ptr = &bv[0]
    if y is None:
        if accumulate:
            raise ValueError("accumulate needs y")
        y = np.empty((m, W.n), dtype=np.float32)
    cdef int ldy = row_stride(y, "y")
    if y.shape[0] != m or y.shape[1] != W.n:
        raise ValueError(f"y must have shape ({m}, {W.n})")
    if m == 0:
        return y
    cdef float[:, :] yv = y
    cdef const float[:, :] xv = x
    cdef const float *xp = &xv[0, 0]
    cdef float *yp = &yv[0, 0]
    with nogil:
        if force_scalar:
            fl_matmul_scalar(m, &W, xp, ldx, bias_ptr, accumulate, yp, ldy)
        else:
            fl_matmul(m, &W, xp, ldx, bias_ptr, accumulate, yp, ldy)
    return y


def gather_rows(stored, ids, bint force_scalar=False):
    """Rows `ids` of a fastlstm.precision.Stored (vocab, width) table as float32 (count, width):
    how the kernels read embedding and lookup-table rows."""
    cdef Rows t
    fill_rows(&t, stored, "table")
    cdef const int64_t[::1] idv = np.ascontiguousarray(ids, dtype=np.int64)
    if idv.shape[0] and (min(idv) < 0 or max(idv) >= stored.data.shape[0]):
        raise ValueError("row id out of range")
    out = np.empty((idv.shape[0], t.width), np.float32)
    cdef float[:, ::1] ov = out
    if idv.shape[0] == 0:
        return out
    with nogil:
        if force_scalar:
            fl_gather_rows_scalar(t.data, t.type, t.scale, t.width, &idv[0], idv.shape[0],
                                  &ov[0, 0], t.width)
        else:
            fl_gather_rows(t.data, t.type, t.scale, t.width, &idv[0], idv.shape[0],
                           &ov[0, 0], t.width)
    return out
