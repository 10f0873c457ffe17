"""fastlstm's packed matmul (src_pyx/matmul.h) against single-threaded OpenBLAS.

    python bench/bench_matmul.py [--repeat 7] [--seconds 0.02] [--dtype float16|bfloat16|int8]

For each shape (m, n, k), y (m, n) := x (m, k) . W^T with W (n, k) as PyTorch stores it:
  fastlstm   fastlstm._matmul.matmul on the packed W (AVX2/FMA/F16C path where the CPU has
             it), stored in --dtype (the others multiply the same rounded values in float32)
  numpy      numpy.matmul(x, W.T, out=y): NumPy's own OpenBLAS (sgemv for one row)
  openblas32 cblas_sgemv / cblas_sgemm of the scipy-openblas32 wheel fastlstm ships with,
             called through ctypes (skipped when the wheel is missing)
All three are timed in the same run, interleaved, each call from Python (a call costs about
2 us of overhead for each), best of --repeat; GFLOP/s = 2 m n k / time.  The machine is
noisy: compare the ratios of one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy loads its OpenBLAS
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # an in-place build works too

import numpy as np  # noqa: E402

from fastlstm import _matmul  # noqa: E402
from fastlstm.pack import pack_matrix  # noqa: E402
from fastlstm.precision import DTYPES, store  # noqa: E402

SHAPES = [(1, 2048, 512), (1, 2048, 1024), (64, 2048, 512), (64, 2048, 1024), (1, 10000, 650), (256, 2048, 64)]


def openblas32():
    """The scipy-openblas32 library (one thread), or None."""
    try:
        import scipy_openblas32
    except ImportError:
        return None
    lib = scipy_openblas32.dll  # the ctypes handle the wheel opens at import
    lib.scipy_openblas_set_num_threads(1)
    return lib


def blas_call(lib, x, w, y):
    """A no-argument function computing y := x . w^T with the library's cblas."""
    m, k = x.shape
    n = w.shape[0]
    ptr = ctypes.c_void_p
    xp, wp, yp = (ptr(a.ctypes.data) for a in (x, w, y))
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    row_major, no_trans, trans = 101, 111, 112
    if m == 1:
        gemv = lib.scipy_cblas_sgemv
        return lambda: gemv(row_major, no_trans, n, k, one, wp, k, xp, 1, zero, yp, 1)
    gemm = lib.scipy_cblas_sgemm
    return lambda: gemm(row_major, no_trans, trans, m, n, k, one, xp, k, wp, k, zero, yp, n)


def best_time(fn, repeat, seconds):
    """Best per-call time over `repeat` timed loops of about `seconds` each."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(seconds / once))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.02, help="length of one timed loop")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="precision of fastlstm's packed weights (the others multiply the "
                        "same values in float32)")
    args = parser.parse_args()

    lib = openblas32()
    rng = np.random.default_rng(0)
    print(f"fastlstm kernels: {'AVX2+FMA+F16C' if _matmul.has_avx2() else 'scalar'}, "
          f"{args.dtype} weights; one thread")
    names = ["fastlstm", "numpy", "openblas32"] if lib else ["fastlstm", "numpy"]
    header = f"{'m':>4} {'n':>6} {'k':>5} | " + " ".join(f"{s + ' GF/s':>15}" for s in names)
    header += " | " + " ".join(f"{'vs ' + s:>14}" for s in names[1:])
    print(header)
    print("-" * len(header))
    for m, n, k in SHAPES:
        x = rng.standard_normal((m, k), dtype=np.float32)
        stored = store(rng.standard_normal((n, k), dtype=np.float32), args.dtype)
        w = stored.to_float32()
        packed = pack_matrix(stored)
        wt = w.T
        outs = {name: np.empty((m, n), dtype=np.float32) for name in names}
        calls = {
            "fastlstm": lambda: _matmul.matmul(x, packed, None, outs["fastlstm"]),
            "numpy": lambda: np.matmul(x, wt, out=outs["numpy"]),
        }
        if lib:
            calls["openblas32"] = blas_call(lib, x, w, outs["openblas32"])
        best = {name: float("inf") for name in names}
        for _ in range(args.repeat):  # interleaved, so that noise hits every kernel alike
            for name in names:
                best[name] = min(best[name], best_time(calls[name], 1, args.seconds))
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        for name in names:
            err = np.abs(outs[name] - ref).max() / np.abs(ref).max()
            assert err < 1e-5, (name, err)
        gflops = {name: 2.0 * m * n * k / best[name] / 1e9 for name in names}
        line = f"{m:>4} {n:>6} {k:>5} | " + " ".join(f"{gflops[s]:>15.1f}" for s in names)
        line += " | " + " ".join(f"{best[s] / best['fastlstm']:>13.2f}x" for s in names[1:])
        print(line, flush=True)
    print("vs X: X's time / fastlstm's time (above 1: fastlstm is faster)")


if __name__ == "__main__":
    main()
