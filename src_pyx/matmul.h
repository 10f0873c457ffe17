/* fastlstm's own matrix product for the decode loop:  y (+)= x . W^T + bias.
 *
 * Why not BLAS: OpenBLAS's result for one row changes in the last bit with the number of
 * rows it is computed with, and generation must not depend on what else is in the batch.
 * Here every output is ONE sequential chain of fused multiply-adds over k, starting from 0:
 *
 *     acc = 0;  for kk in 0..k-1:  acc = fma(x[r, kk], W[j, kk], acc)
 *     v = acc (+ bias[j]);  y[r, j] = v  (or  y[r, j] = y[r, j] + v)
 *
 * whatever the kernel, the number of rows, the row's position or the blocking, so the
 * result for (r, j) is bitwise the same however many rows are computed together.
 * The AVX2+FMA kernels (chosen at run time) and the portable scalar path (fmaf, same order)
 * therefore agree bitwise too.
 *
 * Packed weight layout: W (n, k) row-major, as PyTorch stores a weight, becomes panels of
 * 16 outputs,  packed[p][kk][0:16] = W[16p + 0..15, kk]  (zeros past n), contiguous, so a
 * kernel reads one 64-byte line per panel per kk.  The caller allocates fl_packed_size(n, k)
 * floats, 32-byte aligned (64 is better: one line per read).
 *
 * The arithmetic above is written with explicit fma intrinsics / fmaf and plain adds, never
 * as a*b + c, so -ffp-contract cannot change it; -ffast-math (reassociation) would, hence
 * the #error below.
 */
#ifndef FASTLSTM_MATMUL_H
#define FASTLSTM_MATMUL_H

#include <math.h>
#include <stddef.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "matmul.h relies on IEEE arithmetic in a fixed order: do not compile with -ffast-math"
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FL_HAVE_AVX2_PATH 1
#include <immintrin.h>
#else
#define FL_HAVE_AVX2_PATH 0
#endif

#define FL_PANEL 16 /* outputs per panel */

/* ------------------------------------------------------------------------ packing */

/* Floats needed for W (n, k) in the panel layout. */
static inline size_t fl_packed_size(int n, int k)
{
    if (n <= 0 || k <= 0)
        return 0;
    return (size_t)((n + FL_PANEL - 1) / FL_PANEL) * FL_PANEL * (size_t)k;
}

/* packed[p][kk][l] := W[16p + l, kk], zero where 16p + l >= n. */
static inline void fl_pack_wt(const float *w, int n, int k, float *packed)
{
    int np = (n + FL_PANEL - 1) / FL_PANEL;
    for (int p = 0; p < np; p++) {
        float *panel = packed + (size_t)p * k * FL_PANEL;
        for (int l = 0; l < FL_PANEL; l++) {
            int j = p * FL_PANEL + l;
            if (j < n) {
                const float *row = w + (size_t)j * k;
                for (int kk = 0; kk < k; kk++)
                    panel[(size_t)kk * FL_PANEL + l] = row[kk];
            } else {
                for (int kk = 0; kk < k; kk++)
                    panel[(size_t)kk * FL_PANEL + l] = 0.0f;
            }
        }
    }
}

/* ---------------------------------------------------------------- shared epilogue */

/* y[0:count] := (or +=) acc[0:count] (+ bias[0:count]), element by element. */
static inline void fl_store_scalar(const float *acc, int count, const float *bias,
                                   int accumulate, float *y)
{
    for (int l = 0; l < count; l++) {
        float v = acc[l];
        if (bias)
            v = v + bias[l];
        y[l] = accumulate ? y[l] + v : v;
    }
}

/* ------------------------------------------------------------------- scalar path */

/* The reference: same chain per output as the AVX2 kernels, with fmaf. */
static void fl_matmul_packed_scalar(int m, int n, int k, const float *x, int ldx,
                                    const float *packed, const float *bias, int accumulate,
                                    float *y, int ldy)
{
    int np = (n + FL_PANEL - 1) / FL_PANEL;
    float acc[FL_PANEL];
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        for (int p = 0; p < np; p++) {
            const float *panel = packed + (size_t)p * k * FL_PANEL;
            for (int l = 0; l < FL_PANEL; l++)
                acc[l] = 0.0f;
            for (int kk = 0; kk < k; kk++) {
                float xv = xr[kk];
                const float *wk = panel + (size_t)kk * FL_PANEL;
                for (int l = 0; l < FL_PANEL; l++)
                    acc[l] = fmaf(xv, wk[l], acc[l]);
            }
            int j0 = p * FL_PANEL;
            int count = n - j0 < FL_PANEL ? n - j0 : FL_PANEL;
            fl_store_scalar(acc, count, bias ? bias + j0 : NULL, accumulate,
                            y + (size_t)r * ldy + j0);
        }
    }
}

/* ---------------------------------------------------------------- AVX2 + FMA path */

#if FL_HAVE_AVX2_PATH

/* How far ahead (in panel rows of 64 bytes) the one-panel tiles prefetch their panel. */
#define FL_PREFETCH 32

#define FL_AVX2 __attribute__((target("avx2,fma")))
#define FL_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

/* Register tile: MR rows x NP panels (16 outputs each), 2*MR*NP ymm accumulators, over
 * x rows [x, x + (MR-1)*ldx] and panels p0 .. p0+NP-1.  MR and NP are compile-time
 * constants at every call site, so the accumulators live in registers. */
FL_AVX2_INLINE void fl_tile_avx2(const int MR, const int NP, int n, int k, int p0,
                                 const float *x, int ldx, const float *packed,
                                 const float *bias, int accumulate, float *y, int ldy)
{
    __m256 acc[6][8];
    const float *w[4];
    const float *xr[6];
    const size_t pstride = (size_t)k * FL_PANEL;

#pragma GCC unroll 4
    for (int q = 0; q < NP; q++)
        w[q] = packed + (size_t)(p0 + q) * pstride;
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        xr[i] = x + (size_t)i * ldx;
#pragma GCC unroll 8
        for (int h = 0; h < 2 * NP; h++)
            acc[i][h] = _mm256_setzero_ps();
    }

    for (int kk = 0; kk < k; kk++) {
        /* Order the loads so that at most 16 ymm registers are live: with one panel, hold
         * its two vectors and broadcast x row by row; with several, hold the MR
         * broadcasts and load the panel vectors one by one. */
        if (NP == 1) {
            __m256 w0 = _mm256_loadu_ps(w[0] + (size_t)kk * FL_PANEL);
            __m256 w1 = _mm256_loadu_ps(w[0] + (size_t)kk * FL_PANEL + 8);
            /* One panel is one stream, which the hardware prefetcher alone does not keep
             * fed from L3/DRAM (measured: 6 x 2048 x 2048 goes from ~35 to ~100 GFLOP/s).
             * Prefetches never fault, so running past the end of the panels is harmless. */
            _mm_prefetch((const char *)(w[0] + (size_t)(kk + FL_PREFETCH) * FL_PANEL),
                         _MM_HINT_T0);
#pragma GCC unroll 6
            for (int i = 0; i < MR; i++) {
                __m256 xb = _mm256_broadcast_ss(xr[i] + kk);
                acc[i][0] = _mm256_fmadd_ps(xb, w0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(xb, w1, acc[i][1]);
            }
        } else {
            __m256 xb[6];
#pragma GCC unroll 6
            for (int i = 0; i < MR; i++)
                xb[i] = _mm256_broadcast_ss(xr[i] + kk);
#pragma GCC unroll 8
            for (int h = 0; h < 2 * NP; h++) {
                __m256 wv = _mm256_loadu_ps(w[h >> 1] + (size_t)kk * FL_PANEL + 8 * (h & 1));
#pragma GCC unroll 6
                for (int i = 0; i < MR; i++)
                    acc[i][h] = _mm256_fmadd_ps(xb[i], wv, acc[i][h]);
            }
        }
    }

#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        float *yr = y + (size_t)i * ldy;
#pragma GCC unroll 8
        for (int h = 0; h < 2 * NP; h++) {
            int j = (p0 + (h >> 1)) * FL_PANEL + 8 * (h & 1);
            if (j + 8 <= n) {
                __m256 v = acc[i][h];
                if (bias)
                    v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
                if (accumulate)
                    v = _mm256_add_ps(_mm256_loadu_ps(yr + j), v);
                _mm256_storeu_ps(yr + j, v);
            } else if (j < n) {
                float tmp[8];
                _mm256_storeu_ps(tmp, acc[i][h]);
                fl_store_scalar(tmp, n - j, bias ? bias + j : NULL, accumulate, yr + j);
            }
        }
    }
}

/* Each (MR, NP) tile is its own function: inlined together into one, the tiles' loops
 * lose their accumulators to the stack. */
#define FL_TILE_FN(MR, NP)                                                                 \
    static __attribute__((noinline, target("avx2,fma"))) void fl_tile_avx2_##MR##x##NP(     \
        int n, int k, int p0, const float *x, int ldx, const float *packed,                \
        const float *bias, int accumulate, float *y, int ldy)                              \
    {                                                                                      \
        fl_tile_avx2(MR, NP, n, k, p0, x, ldx, packed, bias, accumulate, y, ldy);          \
    }
FL_TILE_FN(1, 1) FL_TILE_FN(1, 2) FL_TILE_FN(1, 3) FL_TILE_FN(1, 4)
FL_TILE_FN(2, 1) FL_TILE_FN(2, 2) FL_TILE_FN(2, 3)
FL_TILE_FN(3, 1) FL_TILE_FN(3, 2)
FL_TILE_FN(4, 1) FL_TILE_FN(5, 1) FL_TILE_FN(6, 1)
#undef FL_TILE_FN

typedef void (*fl_tile_fn)(int, int, int, const float *, int, const float *, const float *,
                           int, float *, int);

/* The tile for mr rows (1..6) and np panels (1 .. fl_tile_panels(mr)). */
static inline fl_tile_fn fl_tile_avx2_for(int mr, int np)
{
    static const fl_tile_fn tiles[7][5] = {
        {0, 0, 0, 0, 0},
        {0, fl_tile_avx2_1x1, fl_tile_avx2_1x2, fl_tile_avx2_1x3, fl_tile_avx2_1x4},
        {0, fl_tile_avx2_2x1, fl_tile_avx2_2x2, fl_tile_avx2_2x3, 0},
        {0, fl_tile_avx2_3x1, fl_tile_avx2_3x2, 0, 0},
        {0, fl_tile_avx2_4x1, 0, 0, 0},
        {0, fl_tile_avx2_5x1, 0, 0, 0},
        {0, fl_tile_avx2_6x1, 0, 0, 0},
    };
    return tiles[mr][np];
}

/* Panels per tile for a block of mr rows: about 12 accumulators, 8 at least so that
 * enough independent FMA chains hide the FMA latency. */
static inline int fl_tile_panels(int mr)
{
    static const int panels[7] = {0, 4, 3, 2, 1, 1, 1};
    return panels[mr];
}

static FL_AVX2 void fl_matmul_packed_avx2(int m, int n, int k, const float *x, int ldx,
                                          const float *packed, const float *bias,
                                          int accumulate, float *y, int ldy)
{
    int np = (n + FL_PANEL - 1) / FL_PANEL;
    /* Panels are walked in groups of about 512 KB, which stay in L2 while every block of
     * rows runs over them; x (m rows) is re-read once per group.  Above 12 panels a
     * group is a multiple of 12, so the 4-, 3- and 2-panel tiles have no leftovers. */
    size_t panel_bytes = (size_t)k * FL_PANEL * sizeof(float);
    int group = panel_bytes ? (int)((512 * 1024) / panel_bytes) : np;
    group = group < 4 ? 4 : group < 12 ? group : group / 12 * 12;
    for (int g0 = 0; g0 < np; g0 += group) {
        int g1 = g0 + group < np ? g0 + group : np;
        for (int r0 = 0; r0 < m; r0 += 6) {
            int mr = m - r0 < 6 ? m - r0 : 6;
            int tp = fl_tile_panels(mr);
            const float *xr = x + (size_t)r0 * ldx;
            float *yr = y + (size_t)r0 * ldy;
            for (int p = g0; p < g1; p += tp) {
                int cnt = g1 - p < tp ? g1 - p : tp;
                fl_tile_avx2_for(mr, cnt)(n, k, p, xr, ldx, packed, bias, accumulate, yr, ldy);
            }
        }
    }
}

#endif /* FL_HAVE_AVX2_PATH */

/* ------------------------------------------------------------------------- entry */

/* Whether fl_matmul_packed runs the AVX2+FMA kernels on this machine. */
static inline int fl_matmul_has_avx2(void)
{
#if FL_HAVE_AVX2_PATH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* y[r, j] := v, or y[r, j] + v when accumulate, where v = sum_kk x[r, kk] * W[j, kk]
 * (+ bias[j]) is the fixed fma chain described above, for r < m, j < n.  x (m, k) has rows
 * ldx floats apart, y (m, n) rows ldy apart; W is packed by fl_pack_wt; bias (n,) or NULL.
 * Single-threaded and stateless: callers split rows (or panels) across threads. */
static inline void fl_matmul_packed(int m, int n, int k, const float *x, int ldx,
                                    const float *packed, const float *bias, int accumulate,
                                    float *y, int ldy)
{
    if (m <= 0 || n <= 0)
        return;
#if FL_HAVE_AVX2_PATH
    if (fl_matmul_has_avx2()) {
        fl_matmul_packed_avx2(m, n, k, x, ldx, packed, bias, accumulate, y, ldy);
        return;
    }
#endif
    fl_matmul_packed_scalar(m, n, k, x, ldx, packed, bias, accumulate, y, ldy);
}

#endif /* FASTLSTM_MATMUL_H */
