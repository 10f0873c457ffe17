"""The packed matmul of src_pyx/matmul.h, through its twins in fastlstm._matmul.

What generation relies on: every y[r, j] is one sequential fma chain over k, so a row's
result is bitwise the same alone, among any number of rows, at any offset, on the scalar
and on the AVX2 path.  Numerics are checked against float64 and against an emulation of
that exact chain.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fastlstm import _matmul
from fastlstm.pack import aligned_empty, pack_matrix

from conftest import fma_chain

NS = [1, 7, 15, 16, 17, 257, 2048 + 3]
KS = [1, 7, 64, 513]


def bits(a):
    """The float32 bit patterns, so that comparisons see -0.0 and NaN payloads."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_bitwise(a, b):
    np.testing.assert_array_equal(bits(a), bits(b))


def problem(m, n, k, seed=0):
    rng = np.random.default_rng([m, n, k, seed])
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    return x, w, bias


def check_close(y, x, w, bias=None, y0=None):
    """y == x . W^T + bias (+ y0) to float32 accuracy, measured against sum |x||W|."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 @ w64.T
    scale = np.abs(x64) @ np.abs(w64).T
    if bias is not None:
        ref = ref + bias
        scale = scale + np.abs(bias.astype(np.float64))
    if y0 is not None:
        ref = ref + y0
        scale = scale + np.abs(y0.astype(np.float64))
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= 1e-5 * scale + 1e-30), float(np.max(err / (scale + 1e-30)))


# ------------------------------------------------------------------------- packing


@pytest.mark.parametrize("n", [1, 15, 16, 17, 40])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_pack_layout(n, k):
    _, w, _ = problem(1, n, k)
    packed = pack_matrix(w).panels
    panels = -(-n // 16)
    assert packed.shape == (_matmul.packed_size(n, k),) == (panels * k * 16,)
    assert packed.ctypes.data % 64 == 0
    padded = np.zeros((panels * 16, k), dtype=np.float32)
    padded[:n] = w
    # packed[p][kk][l] == W[16p + l, kk]
    expected = padded.reshape(panels, 16, k).transpose(0, 2, 1)
    assert_bitwise(packed.reshape(panels, k, 16), expected)


# ------------------------------------------------------------------------ numerics


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("force_scalar", [False, True])
def test_matches_float64_and_the_fma_chain(n, k, force_scalar, vector_path):
    for m in ([1, 2, 3, 5, 6, 7, 13, 70] if n * k < 100_000 else [1, 4, 9]):
        x, w, bias = problem(m, n, k)
        packed = pack_matrix(w)
        y = _matmul.matmul(x, packed, force_scalar=force_scalar)
        check_close(y, x, w)
        assert_bitwise(y, fma_chain(x, w))
        yb = _matmul.matmul(x, packed, bias, force_scalar=force_scalar)
        check_close(yb, x, w, bias)
        assert_bitwise(yb, fma_chain(x, w, bias))


@pytest.mark.parametrize("n,k", [(17, 7), (257, 64), (2051, 65)])
def test_every_m_from_1_to_70(n, k, vector_path):
    x, w, bias = problem(70, n, k)
    packed = pack_matrix(w)
    for m in range(1, 71):
        y = _matmul.matmul(x[:m], packed, bias)
        check_close(y, x[:m], w, bias)


# ------------------------------------------------------- bitwise row independence


@pytest.mark.parametrize("n,k", [(1, 1), (7, 513), (16, 64), (17, 7), (257, 64), (2051, 33)])
def test_a_row_does_not_depend_on_the_others(n, k):
    x, w, bias = problem(70, n, k, seed=1)
    packed = pack_matrix(w)
    alone = np.stack([_matmul.matmul(x[r : r + 1], packed, bias)[0] for r in range(70)])
    for m in range(2, 71):
        assert_bitwise(_matmul.matmul(x[:m], packed, bias), alone[:m])
    for offset in range(1, 12):
        for m in (1, 2, 3, 5, 6, 7, 11, 13, 40):
            rows = slice(offset, offset + m)
            assert_bitwise(_matmul.matmul(x[rows], packed, bias), alone[rows])


def test_a_row_does_not_depend_on_the_others_values():
    # Infinities and NaNs in one row stay in that row; the others are bit for bit unchanged.
    n, k = 70, 40
    x, w, bias = problem(12, n, k)
    packed = pack_matrix(w)
    clean = _matmul.matmul(x, packed, bias)
    dirty = x.copy()
    dirty[3, 5] = np.nan
    dirty[8, 0] = np.inf
    y = _matmul.matmul(dirty, packed, bias)
    keep = [r for r in range(12) if r not in (3, 8)]
    assert_bitwise(y[keep], clean[keep])
    assert np.isnan(y[3]).all() and not np.isfinite(y[8]).any()


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("k", [1, 7, 64, 513])
def test_scalar_path_equals_the_vector_path(n, k, vector_path):
    if vector_path == "portable":
        pytest.skip("this CPU runs the scalar path only")
    m = 70 if n * k < 100_000 else 13
    x, w, bias = problem(m, n, k, seed=2)
    packed = pack_matrix(w)
    y0 = np.random.default_rng(3).standard_normal((m, n), dtype=np.float32)
    for b in (None, bias):
        for acc in (False, True):
            fast = _matmul.matmul(x, packed, b, y0.copy() if acc else None, acc)
            slow = _matmul.matmul(x, packed, b, y0.copy() if acc else None, acc, force_scalar=True)
            assert_bitwise(fast, slow)


def test_same_bits_from_concurrent_threads():
    # The kernels release the GIL and keep no state: threads running at once change nothing.
    n, k = 300, 200
    x, w, bias = problem(20, n, k)
    packed = pack_matrix(w)
    expected = _matmul.matmul(x, packed, bias)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda m: _matmul.matmul(x[:m], packed, bias), range(1, 21)))
    for m, y in zip(range(1, 21), results):
        assert_bitwise(y, expected[:m])


# ---------------------------------------------------------- strides, bias, accumulate


@pytest.mark.parametrize("force_scalar", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 17, 7), (9, 33, 64), (70, 257, 5)])
def test_strided_rows(m, n, k, force_scalar, vector_path):
    x, w, bias = problem(m, n, k)
    packed = pack_matrix(w)
    expected = _matmul.matmul(x, packed, bias, force_scalar=force_scalar)
    x_big = np.full((m, k + 5), np.nan, dtype=np.float32)  # NaN padding must not be read
    x_big[:, 2 : 2 + k] = x
    y_big = np.full((m, n + 11), -7.0, dtype=np.float32)
    y = y_big[:, 3 : 3 + n]
    out = _matmul.matmul(x_big[:, 2 : 2 + k], packed, bias, y, force_scalar=force_scalar)
    assert out is y
    assert_bitwise(y, expected)
    assert (y_big[:, :3] == -7.0).all() and (y_big[:, 3 + n :] == -7.0).all()


@pytest.mark.parametrize("force_scalar", [False, True])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 100])
def test_accumulate_and_bias(n, force_scalar, vector_path):
    m, k = 8, 19
    x, w, bias = problem(m, n, k)
    packed = pack_matrix(w)
    y0 = np.random.default_rng(5).standard_normal((m, n), dtype=np.float32)
    for b in (None, bias):
        plain = _matmul.matmul(x, packed, b, force_scalar=force_scalar)
        y = y0.copy()
        _matmul.matmul(x, packed, b, y, accumulate=True, force_scalar=force_scalar)
        assert_bitwise(y, y0 + plain)  # y + (chain + bias), one float32 add
        check_close(y, x, w, b, y0)
        assert_bitwise(y, fma_chain(x, w, b, y0))
    # Without accumulate, whatever y held is overwritten.
    y = np.full((m, n), np.nan, dtype=np.float32)
    _matmul.matmul(x, packed, bias, y, force_scalar=force_scalar)
    assert_bitwise(y, fma_chain(x, w, bias))


def test_zero_rows():
    _, w, _ = problem(1, 5, 3)
    y = _matmul.matmul(np.zeros((0, 3), dtype=np.float32), pack_matrix(w))
    assert y.shape == (0, 5)


def test_rejects_bad_arguments():
    x, w, bias = problem(2, 20, 8)
    packed = pack_matrix(w)
    with pytest.raises(ValueError, match="size"):
        _matmul.matmul(x, dataclasses.replace(packed, panels=packed.panels[:-16]))
    with pytest.raises(ValueError, match="alignment"):
        shifted = aligned_empty(packed.panels.size + 1, np.float32)[1:]
        shifted[:] = packed.panels
        _matmul.matmul(x, dataclasses.replace(packed, panels=shifted))
    with pytest.raises(ValueError, match="columns"):
        _matmul.matmul(x[:, :7], packed)
    with pytest.raises(ValueError, match="bias"):
        _matmul.matmul(x, packed, bias[:5])
    with pytest.raises(ValueError, match="shape"):
        _matmul.matmul(x, packed, y=np.empty((2, 19), dtype=np.float32))
    with pytest.raises(ValueError, match="accumulate"):
        _matmul.matmul(x, packed, accumulate=True)
    with pytest.raises(ValueError, match="contiguous"):
        _matmul.matmul(np.asfortranarray(np.ones((3, 8), dtype=np.float32)), packed)
    with pytest.raises(ValueError, match="float32"):
        _matmul.matmul(x.astype(np.float64), packed)
