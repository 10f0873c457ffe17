/* fastlstm's own matrix product:  y (+)= x . W^T (* scale) + bias, with W stored in panels
 * of float32, float16, bfloat16 or int8 weights.
 *
 * Why not BLAS: OpenBLAS's result for one row changes in the last bit with the number of
 * rows it is computed with, and generation must not depend on what else is in the batch;
 * and BLAS has no product with half-precision or int8 weights on CPUs.  Here every output
 * is ONE sequential chain of fused multiply-adds over k, in float32, starting from 0:
 *
 *     acc = 0;  for kk in 0..k-1:  acc = fma(x[r, kk], float(W[j, kk]), acc)
 *     v = acc (* scale[j]) (+ bias[j]);  y[r, j] = v  (or  y[r, j] = y[r, j] + v)
 *
 * whatever the kernel, the number of rows, the row's position or the blocking, so the
 * result for (r, j) is bitwise the same however many rows are computed together.
 * float(W) is exact for every storage type (a half, a bfloat16 and an int8 are all floats),
 * so the AVX2/FMA/F16C kernels and the portable scalar path (fmaf in the same order) agree
 * bitwise too; isa.h says how the path is chosen.  int8 weights are the exception: they multiply x
 * rounded to 16-bit integers, exactly, in integer arithmetic (see "int8 weights" below).
 *
 * Packed layout: W (n, k) row-major, as PyTorch stores a weight, becomes panels of 16
 * outputs,  packed[p][kk][0:16] = W[16p + 0..15, kk]  (zeros past n), contiguous, so a
 * kernel reads one 16-weight row per panel per kk.  bfloat16 panel rows are interleaved
 * (W[16p + 0], W[16p + 8], W[16p + 1], W[16p + 9], ...) so that one 32-byte load yields
 * both halves with one shift and one mask (fl_panel_slot).  int8 panels hold quads of
 * k instead, k padded with zeros to a multiple of 4: 64 bytes per quad c, outputs 0..7 then
 * 8..15, each output's 4 k together, packed[p][c][h][l][i] = q[16p + 8h + l, 4c + i]
 * (fl_i8_slot): one 32-byte vector is 8 outputs x 4 k, what vpdpbusd multiplies per 32-bit
 * lane.  Panels are 64-byte aligned.  fl_pack writes them.
 *
 * The arithmetic above is written with explicit fma intrinsics / fmaf and plain adds, never
 * as a*b + c, so -ffp-contract cannot change it; -ffast-math (reassociation) would, hence
 * the #error below.
 */
#ifndef FASTLSTM_MATMUL_H
#define FASTLSTM_MATMUL_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "matmul.h relies on IEEE arithmetic in a fixed order: do not compile with -ffast-math"
#endif

#include "isa.h"

#if FL_HAVE_X86_PATHS
#define FL_HAVE_AVX2_PATH 1
#include <immintrin.h>
#else
#define FL_HAVE_AVX2_PATH 0
#endif

#define FL_PANEL 16 /* outputs per panel */

/* How weights are stored (the element type of the panels and of embedding/table rows). */
enum fl_wtype { FL_F32 = 0, FL_F16 = 1, FL_BF16 = 2, FL_I8 = 3 };

/* A weight W (n, k) packed for fl_matmul. */
typedef struct fl_matrix {
    const void *panels;  /* fl_packed_size(type, n, k) elements of `type`, 64-byte aligned */
    const float *scale;  /* (n,) FL_I8 only: W[j, :] = q[j, :] * scale[j]; NULL otherwise */
    const int32_t *qsum; /* (n,) FL_I8 only: sum_kk q[j, kk] (see "int8 weights"); else NULL */
    int type;            /* enum fl_wtype */
    int n, k;            /* k >= 1 (fastlstm.pack never packs an empty matrix) */
} fl_matrix;

static inline size_t fl_wtype_size(int type)
{
    return type == FL_F32 ? 4 : type == FL_I8 ? 1 : 2;
}

/* The panels' depth: k, or k rounded up to a multiple of 4 for int8 (quads of k). */
static inline int fl_packed_k(int type, int k)
{
    return type == FL_I8 ? k + (-k & 3) : k;
}

/* Elements needed for W (n, k) of `type` in the panel layout. */
static inline size_t fl_packed_size(int type, int n, int k)
{
    if (n <= 0 || k <= 0)
        return 0;
    return (size_t)((n + FL_PANEL - 1) / FL_PANEL) * FL_PANEL * (size_t)fl_packed_k(type, k);
}

/* Where output l (0..15) of a float32, float16 or bfloat16 panel row sits within that row. */
static inline int fl_panel_slot(int type, int l)
{
    if (type == FL_BF16)
        return l < 8 ? 2 * l : 2 * (l - 8) + 1;
    return l;
}

/* Where q[16p + l, kk] sits in int8 panel p, in bytes from the panel's start. */
static inline size_t fl_i8_slot(int l, int kk)
{
    return (size_t)(kk / 4) * 4 * FL_PANEL + (size_t)(l / 8) * 32 + (size_t)(l % 8) * 4 + kk % 4;
}

/* panels := W (n, k), row-major elements of `type` (as PyTorch lays a weight out), in the
 * panel layout above: fl_packed_size(type, n, k) elements, zeros past n (and past k in int8
 * quads).  The layout's one writer: fastlstm.pack packs every weight through it
 * (fastlstm._matmul.pack_panels); the kernels read what fl_panel_slot and fl_i8_slot say. */
static inline void fl_pack(int type, int n, int k, const void *w, void *panels)
{
    size_t size = fl_wtype_size(type), panel_bytes = (size_t)FL_PANEL * fl_packed_k(type, k) * size;
    memset(panels, 0, fl_packed_size(type, n, k) * size);
    for (int j = 0; j < n; j++) {
        int l = j % FL_PANEL;
        char *panel = (char *)panels + (size_t)(j / FL_PANEL) * panel_bytes;
        const char *row = (const char *)w + (size_t)j * k * size;
        for (int kk = 0; kk < k; kk++) {
            size_t at = type == FL_I8 ? fl_i8_slot(l, kk)
                                      : ((size_t)kk * FL_PANEL + fl_panel_slot(type, l)) * size;
            switch (size) {
            case 4: memcpy(panel + at, row + (size_t)kk * 4, 4); break;
            case 2: memcpy(panel + at, row + (size_t)kk * 2, 2); break;
            default: panel[at] = row[kk];
            }
        }
    }
}

/* ------------------------------------------------------------ exact conversions */

/* IEEE half -> float, exactly (subnormals included; the loader refuses inf and NaN, but
 * they convert correctly too). */
static inline float fl_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal: mant * 2^-24, exactly representable in float */
        float f = (float)mant * 5.9604644775390625e-08f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static inline float fl_bf16_to_float(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* Element i of an array of `type`, as a float (exact; int8 without its scale). */
static inline float fl_element(const void *data, int type, size_t i)
{
    switch (type) {
    case FL_F16: return fl_half_to_float(((const uint16_t *)data)[i]);
    case FL_BF16: return fl_bf16_to_float(((const uint16_t *)data)[i]);
    case FL_I8: return (float)((const int8_t *)data)[i];
    default: return ((const float *)data)[i];
    }
}

/* ------------------------------------------------------------------ shared epilogue */

/* y[0:count] := (or +=) acc[0:count] (+ bias[0:count]), one by one. */
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

/* --------------------------------------------------------------------- scalar path */

/* The reference for float32, float16 and bfloat16 weights: the same chain per output as
 * the AVX2 kernels, with fmaf. */
static void fl_matmul_float_scalar(int m, const fl_matrix *W, const float *x, int ldx,
                                   const float *bias, int accumulate, float *y, int ldy)
{
    int n = W->n, k = W->k, type = W->type;
    int np = (n + FL_PANEL - 1) / FL_PANEL;
    float acc[FL_PANEL];
    int slot[FL_PANEL];
    for (int l = 0; l < FL_PANEL; l++)
        slot[l] = fl_panel_slot(type, l);
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        for (int p = 0; p < np; p++) {
            size_t base = (size_t)p * k * FL_PANEL;
            for (int l = 0; l < FL_PANEL; l++)
                acc[l] = 0.0f;
            for (int kk = 0; kk < k; kk++) {
                float xv = xr[kk];
                size_t row = base + (size_t)kk * FL_PANEL;
                for (int l = 0; l < FL_PANEL; l++)
                    acc[l] = fmaf(xv, fl_element(W->panels, type, row + slot[l]), acc[l]);
            }
            int j0 = p * FL_PANEL;
            int count = n - j0 < FL_PANEL ? n - j0 : FL_PANEL;
            fl_store_scalar(acc, count, bias ? bias + j0 : NULL, accumulate,
                            y + (size_t)r * ldy + j0);
        }
    }
}

/* ------------------------------------------------------------------- int8 weights
 *
 * Converting int8 weights to floats takes two vector instructions per 8 weights (sign-
 * extend, convert), which kept a float32 kernel at about half the speed its bytes allow.
 * So int8 weights multiply integers: each row of x is rounded to 16 bits with its own
 * scale, and the integer sums are exact:
 *
 *     a = max_kk |x[r, kk]|,  sx = a / 32767  (double)
 *     xq[r, kk] = rint(x[r, kk] * (32767 / a))   (double product; |xq| <= 32767; 0 if a = 0)
 *     s = sum_kk q[j, kk] * xq[r, kk]             (exact, in any order)
 *     v = (float)((double)s * ((double)scale[j] * sx));  v + bias[j];  y = v or y + v
 *
 * The one rounding beyond the weights' own is x's: at most 2^-16 of the row's largest
 * magnitude per element, against the 2^-8 of the int8 weights.  A row of x holding an inf
 * or NaN gets sx = NaN: all its outputs are NaN.  Exact sums make every path agree
 * bitwise, and a row's result independent of the other rows.  How each path sums:
 *
 *   - AVX2: vpmaddwd on the weights sign-extended to int16 in place (two shifts give a
 *     quad's bytes k0, k2, one gives k1, k3) against xq stored (x0, x2, x1, x3) per quad;
 *     int32 sums over at most FL_I8_CHUNK_AVX2 quads (|s| < 128 * 4 * 127 * 32767 < 2^31),
 *     added in double (exact below 2^53).
 *   - AVX512-VNNI: vpdpbusd multiplies unsigned by signed bytes, 4 per 32-bit lane, so xq is
 *     split in bytes: u = xq + 32768 (1..65535), H = u >> 8, L = u & 255, and
 *         s = 256 * sum q H + sum q L - 32768 * qsum[j],   qsum[j] = sum_kk q[j, kk]
 *     (W->qsum, computed at pack time), the two byte sums in int32 over at most
 *     FL_I8_CHUNK_VNNI quads (< 2^31 / (4 * 255 * 127)), combined in double (exact).
 *   - portable: int64 sums of q * xq.
 */

#define FL_I8_XMAX 32767
#define FL_I8_CHUNK_AVX2 128  /* quads of k per int32 partial sum, vpmaddwd */
#define FL_I8_CHUNK_VNNI 512  /* the same, vpdpbusd (16577 would do; 512: k = 3000 tests it) */
#define FL_I8_BLOCK 48        /* rows of x quantized at a time, at most */
#define FL_I8_STACK_XQ 16384  /* int16 elements of quantized x (VNNI: their bytes), on the stack */

/* The row scale sx = max|x| / 32767 from max|x| and whether every element is finite, and
 * the factor x is multiplied by before rounding, 32767 / max|x| (*inverse).  An all-zero
 * row: both 0.  A row holding an inf or NaN: sx = NaN, and every xq is 0. */
static inline double fl_i8_scales(float amax, int finite, double *inverse)
{
    if (!finite) {
        *inverse = 0.0;
        return NAN;
    }
    *inverse = amax == 0.0f ? 0.0 : FL_I8_XMAX / (double)amax;
    return (double)amax / FL_I8_XMAX;
}

static inline int16_t fl_i8_quantize(float x, double inverse)
{
    return inverse == 0.0 ? 0 : (int16_t)lrint((double)x * inverse);
}

/* max|x[0:k]| over the finite elements (*amax) and whether all are finite. */
static inline int fl_i8_row_max_scalar(const float *x, int k, float *amax)
{
    int finite = 1;
    *amax = 0.0f;
    for (int kk = 0; kk < k; kk++) {
        float a = fabsf(x[kk]);
        if (!(a <= FLT_MAX))
            finite = 0;
        else if (a > *amax)
            *amax = a;
    }
    return finite;
}

/* xq[0:kp] := x[0:k] rounded to int16 (zeros past k); returns the row's sx (see above). */
static inline double fl_i8_quantize_row_scalar(const float *x, int k, int kp, int16_t *xq)
{
    float amax;
    int finite = fl_i8_row_max_scalar(x, k, &amax);
    double inverse, sx = fl_i8_scales(amax, finite, &inverse);
    for (int kk = 0; kk < kp; kk++)
        xq[kk] = kk < k ? fl_i8_quantize(x[kk], inverse) : 0;
    return sx;
}

/* y[0:count] := (or +=) sums[0:count] scaled as above, + bias. */
static inline void fl_i8_store_scalar(const double *sums, int count, const float *scale,
                                      double sx, const float *bias, int accumulate, float *y)
{
    for (int l = 0; l < count; l++) {
        float v = (float)(sums[l] * ((double)scale[l] * sx));
        if (bias)
            v = v + bias[l];
        y[l] = accumulate ? y[l] + v : v;
    }
}

/* Rows [0, mb) of y from quantized rows xq (kp apart, in k order) and their sx: the
 * reference loop. */
static void fl_i8_block_scalar(int mb, const fl_matrix *W, const int16_t *xq, int kp,
                               const double *sx, const float *bias, int accumulate, float *y,
                               int ldy)
{
    const int8_t *q = (const int8_t *)W->panels;
    int n = W->n, np = (n + FL_PANEL - 1) / FL_PANEL;
    double sums[FL_PANEL];
    for (int r = 0; r < mb; r++) {
        const int16_t *xr = xq + (size_t)r * kp;
        for (int p = 0; p < np; p++) {
            const int8_t *panel = q + (size_t)p * kp * FL_PANEL;
            for (int l = 0; l < FL_PANEL; l++) {
                int64_t s = 0;
                for (int kk = 0; kk < kp; kk++)
                    s += panel[fl_i8_slot(l, kk)] * (int64_t)xr[kk];
                sums[l] = (double)s;
            }
            int j0 = p * FL_PANEL;
            int count = n - j0 < FL_PANEL ? n - j0 : FL_PANEL;
            fl_i8_store_scalar(sums, count, W->scale + j0, sx[r], bias ? bias + j0 : NULL,
                               accumulate, y + (size_t)r * ldy + j0);
        }
    }
}

/* The same results without a buffer for x (each xq element rounded where it is used):
 * fl_matmul_i8's path for rows longer than FL_I8_STACK_XQ, slow but never met by a
 * recurrent language model's matrices (k is an embedding, hidden or projection size). */
static void fl_i8_unbuffered_scalar(int m, const fl_matrix *W, const float *x, int ldx,
                                    const float *bias, int accumulate, float *y, int ldy)
{
    const int8_t *q = (const int8_t *)W->panels;
    int n = W->n, k = W->k, kp = fl_packed_k(FL_I8, k);
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        float amax;
        int finite = fl_i8_row_max_scalar(xr, k, &amax);
        double inverse, sx = fl_i8_scales(amax, finite, &inverse);
        for (int j = 0; j < n; j++) {
            const int8_t *panel = q + (size_t)(j / FL_PANEL) * kp * FL_PANEL;
            int64_t s = 0;
            for (int kk = 0; kk < k; kk++)
                s += panel[fl_i8_slot(j % FL_PANEL, kk)] *
                     (int64_t)fl_i8_quantize(xr[kk], inverse);
            double sum = (double)s;
            fl_i8_store_scalar(&sum, 1, W->scale + j, sx, bias ? bias + j : NULL, accumulate,
                               y + (size_t)r * ldy + j);
        }
    }
}

/* rows (count, n) := table[ids[i], :] as floats (* scale[ids[i]] for int8), for an
 * embedding or lookup table stored row-major in `type`; rows ld floats apart. */
static inline void fl_gather_rows_scalar(const void *table, int type, const float *scale,
                                         int n, const int64_t *ids, int count, float *rows,
                                         int ld)
{
    for (int i = 0; i < count; i++) {
        size_t base = (size_t)ids[i] * n;
        float *dst = rows + (size_t)i * ld;
        for (int j = 0; j < n; j++) {
            float v = fl_element(table, type, base + j);
            dst[j] = type == FL_I8 ? v * scale[ids[i]] : v;
        }
    }
}

/* ---------------------------------------------------------- AVX2 + FMA + F16C path */

#if FL_HAVE_AVX2_PATH

/* How far ahead (in bytes) the tiles prefetch a panel, and the size from which the batch-1
 * tiles prefetch half-precision matrices (see fl_tile_avx2). */
#define FL_PREFETCH_BYTES 2048
#define FL_PREFETCH_MIN_BYTES (3u << 20)

#define FL_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FL_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* The 16 weights of one float32, float16 or bfloat16 panel row as two float vectors:
 * outputs 0..7 and 8..15. */
FL_AVX2_INLINE void fl_load16(const int type, const char *row, __m256 *lo, __m256 *hi)
{
    if (type == FL_F32) {
        *lo = _mm256_loadu_ps((const float *)row);
        *hi = _mm256_loadu_ps((const float *)row + 8);
    } else if (type == FL_F16) {
        *lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)row));
        *hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 16)));
    } else {
        /* FL_BF16: 32-bit lane i holds (W[i], W[8 + i]) in its (low, high) halves: a
         * bfloat16 is the top half of a float, so shifting left gives W[i], masking gives
         * W[8 + i]. */
        __m256i v = _mm256_loadu_si256((const __m256i *)row);
        *lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        *hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
    }
}

/* y[0:8] := v + bias[0:8] (bias may be NULL), or y[0:8] + that when accumulate: the tiles'
 * epilogue for 8 outputs. */
FL_AVX2_INLINE void fl_finish8(__m256 v, const float *bias, int accumulate, float *y)
{
    if (bias)
        v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
    if (accumulate)
        v = _mm256_add_ps(_mm256_loadu_ps(y), v);
    _mm256_storeu_ps(y, v);
}

/* Register tile: MR rows x NP panels (16 outputs each), 2*MR*NP ymm accumulators, over
 * x rows [x, x + (MR-1)*ldx] and panels p0 .. p0+NP-1.  TYPE, MR and NP are compile-time
 * constants at every call site, so the accumulators live in registers. */
FL_AVX2_INLINE void fl_tile_avx2(const int TYPE, const int MR, const int NP, const fl_matrix *W,
                                 int p0, const float *x, int ldx, const float *bias,
                                 int accumulate, float *y, int ldy)
{
    __m256 acc[6][8];
    const char *w[4];
    const float *xr[6];
    const int n = W->n, k = W->k;
    const size_t row_bytes = FL_PANEL * fl_wtype_size(TYPE);
    const size_t pstride = (size_t)k * row_bytes;
    const size_t ahead = FL_PREFETCH_BYTES;
    /* Half-precision matrices of 3 MB and more at batch 1: prefetch each panel.  Measured
     * (noisy, shared machine): the word LSTM 2x650 (3.4 MB layers, 13 MB head in float16;
     * 23 MB a token, which L3 does not keep) gains 10-30% tokens/s; the char LSTM 2x512
     * (2 MB matrices, 6 MB a token, L3-resident) loses 5-15% with them, and so does float32
     * on both models. */
    const int stream = MR == 1 && TYPE != FL_F32 &&
                       (size_t)W->n * W->k * fl_wtype_size(TYPE) >= FL_PREFETCH_MIN_BYTES;

#pragma GCC unroll 4
    for (int q = 0; q < NP; q++)
        w[q] = (const char *)W->panels + (size_t)(p0 + q) * pstride;
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        xr[i] = x + (size_t)i * ldx;
#pragma GCC unroll 8
        for (int h = 0; h < 2 * NP; h++)
            acc[i][h] = _mm256_setzero_ps();
    }

    for (int kk = 0; kk < k; kk++) {
        const size_t off = (size_t)kk * row_bytes;
        if (NP == 1) {
            __m256 w0, w1;
            fl_load16(TYPE, w[0] + off, &w0, &w1);
            /* One panel is one stream, which the hardware prefetcher alone does not keep
             * fed from L3/DRAM (measured: 6 x 2048 x 2048 fp32 goes from ~35 to ~100
             * GFLOP/s).  Prefetches never fault, so running past the panels is harmless. */
            if (row_bytes == 64 || (off & 63) == 0)
                _mm_prefetch(w[0] + off + ahead, _MM_HINT_T0);
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
#pragma GCC unroll 4
            for (int q = 0; q < NP; q++) {
                __m256 w0, w1;
                fl_load16(TYPE, w[q] + off, &w0, &w1);
                if (stream && (off & 63) == 0)
                    _mm_prefetch(w[q] + off + ahead, _MM_HINT_T0);
#pragma GCC unroll 6
                for (int i = 0; i < MR; i++) {
                    acc[i][2 * q] = _mm256_fmadd_ps(xb[i], w0, acc[i][2 * q]);
                    acc[i][2 * q + 1] = _mm256_fmadd_ps(xb[i], w1, acc[i][2 * q + 1]);
                }
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
                fl_finish8(acc[i][h], bias ? bias + j : NULL, accumulate, yr + j);
            } else if (j < n) {
                float tmp[8];
                _mm256_storeu_ps(tmp, acc[i][h]);
                fl_store_scalar(tmp, n - j, bias ? bias + j : NULL, accumulate, yr + j);
            }
        }
    }
}

typedef void (*fl_tile_fn)(const fl_matrix *, int, const float *, int, const float *, int,
                           float *, int);

/* Each (TYPE, MR, NP) tile is its own function: inlined together into one, the tiles'
 * loops lose their accumulators to the stack. */
#define FL_TILE_FN(TYPE, MR, NP)                                                           \
    static __attribute__((noinline, target("avx2,fma,f16c"))) void                         \
        fl_tile_##TYPE##_##MR##x##NP(const fl_matrix *W, int p0, const float *x, int ldx,  \
                                     const float *bias, int accumulate, float *y, int ldy) \
    {                                                                                      \
        fl_tile_avx2(TYPE, MR, NP, W, p0, x, ldx, bias, accumulate, y, ldy);               \
    }
#define FL_TILES(TYPE)                                                                     \
    FL_TILE_FN(TYPE, 1, 1) FL_TILE_FN(TYPE, 1, 2) FL_TILE_FN(TYPE, 1, 3)                   \
    FL_TILE_FN(TYPE, 1, 4) FL_TILE_FN(TYPE, 2, 1) FL_TILE_FN(TYPE, 2, 2)                   \
    FL_TILE_FN(TYPE, 2, 3) FL_TILE_FN(TYPE, 3, 1) FL_TILE_FN(TYPE, 3, 2)                   \
    FL_TILE_FN(TYPE, 4, 1) FL_TILE_FN(TYPE, 5, 1) FL_TILE_FN(TYPE, 6, 1)                   \
    static const fl_tile_fn fl_tiles_##TYPE[7][5] = {                                      \
        {0, 0, 0, 0, 0},                                                                   \
        {0, fl_tile_##TYPE##_1x1, fl_tile_##TYPE##_1x2, fl_tile_##TYPE##_1x3,              \
         fl_tile_##TYPE##_1x4},                                                            \
        {0, fl_tile_##TYPE##_2x1, fl_tile_##TYPE##_2x2, fl_tile_##TYPE##_2x3, 0},          \
        {0, fl_tile_##TYPE##_3x1, fl_tile_##TYPE##_3x2, 0, 0},                             \
        {0, fl_tile_##TYPE##_4x1, 0, 0, 0},                                                \
        {0, fl_tile_##TYPE##_5x1, 0, 0, 0},                                                \
        {0, fl_tile_##TYPE##_6x1, 0, 0, 0},                                                \
    };
FL_TILES(FL_F32)
FL_TILES(FL_F16)
FL_TILES(FL_BF16)
#undef FL_TILES
#undef FL_TILE_FN

/* The tile for mr rows (1..6) and np panels (1 .. fl_tile_panels(mr)). */
static inline fl_tile_fn fl_tile_avx2_for(int type, int mr, int np)
{
    switch (type) {
    case FL_F16: return fl_tiles_FL_F16[mr][np];
    case FL_BF16: return fl_tiles_FL_BF16[mr][np];
    default: return fl_tiles_FL_F32[mr][np];
    }
}

/* Panels per tile for a block of mr rows: about 12 accumulators, 8 at least so that
 * enough independent FMA chains hide the FMA latency. */
static inline int fl_tile_panels(int mr)
{
    static const int panels[7] = {0, 4, 3, 2, 1, 1, 1};
    return panels[mr];
}

/* Panels per group for panels of panel_bytes each.  The tiles walk the panels in
 * groups of about 512 KB, which stay in L2 while every block of rows runs over them; x is
 * re-read once per group.  Above 12 panels a group is a multiple of 12, so the 4-, 3- and
 * 2-panel tiles have no leftovers. */
static inline int fl_panel_group(size_t panel_bytes)
{
    int group = panel_bytes ? (int)((512 * 1024) / panel_bytes) : 12;
    return group < 4 ? 4 : group < 12 ? group : group / 12 * 12;
}

static FL_AVX2 void fl_matmul_avx2(int m, const fl_matrix *W, const float *x, int ldx,
                                   const float *bias, int accumulate, float *y, int ldy)
{
    int np = (W->n + FL_PANEL - 1) / FL_PANEL;
    int group = fl_panel_group((size_t)W->k * FL_PANEL * fl_wtype_size(W->type));
    for (int g0 = 0; g0 < np; g0 += group) {
        int g1 = g0 + group < np ? g0 + group : np;
        for (int r0 = 0; r0 < m; r0 += 6) {
            int mr = m - r0 < 6 ? m - r0 : 6;
            int tp = fl_tile_panels(mr);
            const float *xr = x + (size_t)r0 * ldx;
            float *yr = y + (size_t)r0 * ldy;
            for (int p = g0; p < g1; p += tp) {
                int cnt = g1 - p < tp ? g1 - p : tp;
                fl_tile_avx2_for(W->type, mr, cnt)(W, p, xr, ldx, bias, accumulate, yr, ldy);
            }
        }
    }
}

/* Two quads of xq (8 int16, in k order) as the tiles read them, 8 bytes per quad, whose
 * first and second 32-bit words each tile broadcasts:
 *   AVX2 (vnni = 0): int16 (x0, x2, x1, x3), the pairs that meet a quad's weight bytes
 *                    k0, k2 and k1, k3 (fl_tile_i8_avx2);
 *   VNNI (vnni = 1): the bytes of u = xq + 32768, (L0, L1, L2, L3, H0, H1, H2, H3) with
 *                    L = u & 255, H = u >> 8 (fl_tile_i8_vnni). */
FL_AVX2_INLINE __m128i fl_i8_arrange(__m128i xq8, int vnni)
{
    if (vnni) { /* xor 0x8000 adds 32768 modulo 2^16: u = xq + 32768 as an unsigned word */
        const __m128i bytes = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
        return _mm_shuffle_epi8(_mm_xor_si128(xq8, _mm_set1_epi16((short)0x8000)), bytes);
    }
    return _mm_shuffle_epi8(xq8,
                            _mm_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15));
}

/* fl_i8_quantize_row_scalar, vectorized (the same values: max is exact in any order, and
 * cvtpd2dq rounds as lrint does, in the current rounding mode), stored as fl_i8_arrange
 * says: kp int16 elements (2 kp bytes), x rounded to 0 past k. */
static FL_AVX2 double fl_i8_quantize_row_avx2(const float *x, int k, int kp, int16_t *xq,
                                              int vnni)
{
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 largest = _mm256_set1_ps(FLT_MAX);
    __m256 vmax = _mm256_setzero_ps(), vbad = _mm256_setzero_ps();
    int k8 = k / 8 * 8;
    for (int kk = 0; kk < k8; kk += 8) {
        __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + kk), magnitude);
        vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(a, largest, _CMP_NLE_UQ)); /* inf, NaN */
        vmax = _mm256_max_ps(vmax, a);
    }
    float lanes[8], amax = 0.0f;
    int finite = fl_i8_row_max_scalar(x + k8, k - k8, &amax) && !_mm256_movemask_ps(vbad);
    _mm256_storeu_ps(lanes, vmax);
    for (int l = 0; l < 8; l++)
        amax = lanes[l] > amax ? lanes[l] : amax;
    double inverse, sx = fl_i8_scales(amax, finite, &inverse);
    int kk = 0;
    if (inverse != 0.0) {
        __m256d f = _mm256_set1_pd(inverse);
        for (; kk < k8; kk += 8) {
            __m128i lo =
                _mm256_cvtpd_epi32(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + kk)), f));
            __m128i hi =
                _mm256_cvtpd_epi32(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + kk + 4)), f));
            _mm_storeu_si128((__m128i *)(xq + kk), fl_i8_arrange(_mm_packs_epi32(lo, hi), vnni));
        }
    }
    for (; kk < kp; kk += 8) { /* the rest (all of it for a zero, inf or NaN row), 8 by 8 */
        int16_t part[8];
        for (int i = 0; i < 8; i++)
            part[i] = kk + i < k ? fl_i8_quantize(x[kk + i], inverse) : 0;
        __m128i v = fl_i8_arrange(_mm_loadu_si128((const __m128i *)part), vnni);
        memcpy(xq + kk, &v, (size_t)(kp - kk < 8 ? kp - kk : 8) * sizeof(int16_t));
    }
    return sx;
}

typedef void (*fl_tile_i8_fn)(const fl_matrix *, int, const int16_t *, int, const double *,
                              const float *, int, float *, int);

#define FL_I8_NAME(f) f##_avx2
#define FL_I8_TARGET "avx2,fma,f16c"
#define FL_I8_VNNI 0
#include "tile_i8.h"
#undef FL_I8_NAME
#undef FL_I8_TARGET
#undef FL_I8_VNNI

#define FL_VNNI_TARGET "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
/* vpdpbusd accumulates in place; written as asm so that GCC keeps each accumulator in one
 * register.  With the intrinsic (vpdpwssd, before), GCC 12 copied all 12 accumulators of the
 * 6x1 tile every iteration: 75 GMAC/s at 64x2048x512 on Zen 4 against 104 with the asm. */
static inline __attribute__((always_inline, target(FL_VNNI_TARGET))) __m256i
fl_dpbusd(__m256i acc, __m256i u8, __m256i s8)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
    return acc;
}
#define FL_I8_NAME(f) f##_vnni
#define FL_I8_TARGET FL_VNNI_TARGET
#define FL_I8_VNNI 1
#include "tile_i8.h"
#undef FL_I8_NAME
#undef FL_I8_TARGET
#undef FL_I8_VNNI

/* Bytes of int8 panels from which a single row of x runs the 1x1 tile, one panel after
 * another, instead of 4 panels at a time: a matrix this large rarely stays in L2 between
 * two calls (a decode step multiplies several), and one stream comes faster from L3 than
 * four.  Batch 1, Zen 4, VNNI: decode +10% (char LSTM 2x512, 1 MB matrices) and +15% (word
 * LSTM 2x650; AVX2 +2% and +4%); 4 matrices of 512 KB in turn 72 -> 79 GMAC/s, but one
 * alone, which L2 keeps, 94 -> 88, and 4 of 256 KB in turn 78 -> 73, hence the bound. */
#define FL_I8_STREAM_BYTES (512u << 10)

/* fl_i8_block_scalar on the tiles, walked as fl_matmul_avx2 walks them (one row: see
 * FL_I8_STREAM_BYTES); xq as fl_i8_quantize_row_avx2 stores it for the tiles' path. */
static FL_AVX2 void fl_i8_block_avx2(const fl_tile_i8_fn (*tiles)[5], int mb,
                                     const fl_matrix *W, const int16_t *xq, int kp,
                                     const double *sx, const float *bias, int accumulate,
                                     float *y, int ldy)
{
    int np = (W->n + FL_PANEL - 1) / FL_PANEL;
    int group = fl_panel_group((size_t)kp * FL_PANEL);
    int stream = (size_t)np * FL_PANEL * kp >= FL_I8_STREAM_BYTES;
    for (int g0 = 0; g0 < np; g0 += group) {
        int g1 = g0 + group < np ? g0 + group : np;
        for (int r0 = 0; r0 < mb; r0 += 6) {
            int mr = mb - r0 < 6 ? mb - r0 : 6;
            int tp = mr == 1 && stream ? 1 : fl_tile_panels(mr);
            for (int p = g0; p < g1; p += tp) {
                int cnt = g1 - p < tp ? g1 - p : tp;
                tiles[mr][cnt](W, p, xq + (size_t)r0 * kp, kp, sx + r0, bias, accumulate,
                               y + (size_t)r0 * ldy, ldy);
            }
        }
    }
}

/* The int8 functions of the AVX2 and the AVX-512 paths' tables (kernels.h). */
static double fl_i8_quantize_row_for_avx2(const float *x, int k, int kp, int16_t *xq)
{
    return fl_i8_quantize_row_avx2(x, k, kp, xq, 0);
}

static double fl_i8_quantize_row_for_vnni(const float *x, int k, int kp, int16_t *xq)
{
    return fl_i8_quantize_row_avx2(x, k, kp, xq, 1);
}

static void fl_i8_block_tiles_avx2(int mb, const fl_matrix *W, const int16_t *xq, int kp,
                                   const double *sx, const float *bias, int accumulate,
                                   float *y, int ldy)
{
    fl_i8_block_avx2(fl_tiles_i8_avx2, mb, W, xq, kp, sx, bias, accumulate, y, ldy);
}

static void fl_i8_block_tiles_vnni(int mb, const fl_matrix *W, const int16_t *xq, int kp,
                                   const double *sx, const float *bias, int accumulate,
                                   float *y, int ldy)
{
    fl_i8_block_avx2(fl_tiles_i8_vnni, mb, W, xq, kp, sx, bias, accumulate, y, ldy);
}

static FL_AVX2 void fl_gather_rows_avx2(const void *table, int type, const float *scale,
                                        int n, const int64_t *ids, int count, float *rows,
                                        int ld)
{
    int n8 = n / 8 * 8;
    for (int i = 0; i < count; i++) {
        const char *src = (const char *)table + (size_t)ids[i] * n * fl_wtype_size(type);
        float *dst = rows + (size_t)i * ld;
        if (type == FL_F32) {
            memcpy(dst, src, (size_t)n * sizeof(float));
            continue;
        }
        __m256 s = _mm256_set1_ps(type == FL_I8 ? scale[ids[i]] : 1.0f);
        for (int j = 0; j < n8; j += 8) {
            __m256 v;
            if (type == FL_F16) {
                v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * (size_t)j)));
            } else if (type == FL_BF16) {
                __m256i b = _mm256_cvtepu16_epi32(
                    _mm_loadu_si128((const __m128i *)(src + 2 * (size_t)j)));
                v = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
            } else {
                v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                      _mm_loadl_epi64((const __m128i *)(src + j)))), s);
            }
            _mm256_storeu_ps(dst + j, v);
        }
        for (int j = n8; j < n; j++) {
            float v = fl_element(src, type, (size_t)j);
            dst[j] = type == FL_I8 ? v * scale[ids[i]] : v;
        }
    }
}

#endif /* FL_HAVE_AVX2_PATH */

/* --------------------------------------------------------------------------- entry */

/* fl_matmul for int8 weights (see "int8 weights"): x quantized up to FL_I8_BLOCK rows at a
 * time into a 32 KB buffer on the stack (in the layout the path's tiles read), then the
 * path's block product. */
static void fl_matmul_i8(const fl_kernel_table *path, int m, const fl_matrix *W,
                         const float *x, int ldx, const float *bias, int accumulate, float *y,
                         int ldy)
{
    int k = W->k, kp = fl_packed_k(FL_I8, k);
    int block = FL_I8_STACK_XQ / kp;
    if (block == 0) {
        fl_i8_unbuffered_scalar(m, W, x, ldx, bias, accumulate, y, ldy);
        return;
    }
    if (block > FL_I8_BLOCK)
        block = FL_I8_BLOCK;
    int16_t xq[FL_I8_STACK_XQ];
    double sx[FL_I8_BLOCK];
    for (int r0 = 0; r0 < m; r0 += block) {
        int mb = m - r0 < block ? m - r0 : block;
        for (int i = 0; i < mb; i++)
            sx[i] = path->i8_quantize_row(x + (size_t)(r0 + i) * ldx, k, kp, xq + (size_t)i * kp);
        path->i8_block(mb, W, xq, kp, sx, bias, accumulate, y + (size_t)r0 * ldy, ldy);
    }
}

/* fl_matmul on the kernels of `path`. */
static inline void fl_matmul_on(const fl_kernel_table *path, int m, const fl_matrix *W,
                                const float *x, int ldx, const float *bias, int accumulate,
                                float *y, int ldy)
{
    if (m <= 0 || W->n <= 0)
        return;
    if (W->type == FL_I8)
        fl_matmul_i8(path, m, W, x, ldx, bias, accumulate, y, ldy);
    else
        path->matmul_float(m, W, x, ldx, bias, accumulate, y, ldy);
}

/* y[r, j] := v, or y[r, j] + v when accumulate, where v = sum_kk x[r, kk] * W[j, kk]
 * (+ bias[j]) is the fixed fma chain described above (int8: the exact integer sum), for
 * r < m, j < W->n.
 * x (m, k) has rows ldx floats apart, y (m, n) rows ldy apart; bias (n,) or NULL.
 * Single-threaded and stateless: callers split rows (or panels, fl_matmul_part) across
 * threads.  Runs on the process's kernel path (isa.h's fl_kernels). */
static inline void fl_matmul(int m, const fl_matrix *W, const float *x, int ldx,
                             const float *bias, int accumulate, float *y, int ldy)
{
    fl_matmul_on(fl_kernels, m, W, x, ldx, bias, accumulate, y, ldy);
}

/* Part `part` of `parts` of fl_matmul: the outputs of panels [np * part / parts,
 * np * (part + 1) / parts), np = W's panel count, for threads that share one product.
 * Each output is the same chain whichever part computes it, so the parts together give
 * bitwise fl_matmul's result. */
static inline void fl_matmul_part(int part, int parts, int m, const fl_matrix *W,
                                  const float *x, int ldx, const float *bias, int accumulate,
                                  float *y, int ldy)
{
    if (parts <= 1) {
        fl_matmul(m, W, x, ldx, bias, accumulate, y, ldy);
        return;
    }
    int np = (W->n + FL_PANEL - 1) / FL_PANEL;
    int p0 = (int)((long long)np * part / parts), p1 = (int)((long long)np * (part + 1) / parts);
    if (p1 <= p0)
        return;
    int j0 = p0 * FL_PANEL, j1 = p1 * FL_PANEL < W->n ? p1 * FL_PANEL : W->n;
    fl_matrix sub = *W;
    sub.panels = (const char *)W->panels +
                 (size_t)p0 * FL_PANEL * fl_packed_k(W->type, W->k) * fl_wtype_size(W->type);
    sub.scale = W->scale ? W->scale + j0 : NULL;
    sub.qsum = W->qsum ? W->qsum + j0 : NULL;
    sub.n = j1 - j0;
    fl_matmul(m, &sub, x, ldx, bias ? bias + j0 : NULL, accumulate, y + j0, ldy);
}

/* rows[i, 0:n] := row ids[i] of `table` (count, n) as floats, times scale[ids[i]] for int8:
 * embedding and lookup-table rows, stored row-major in the model's precision. */
static inline void fl_gather_rows(const void *table, int type, const float *scale, int n,
                                  const int64_t *ids, int count, float *rows, int ld)
{
    fl_kernels->gather_rows(table, type, scale, n, ids, count, rows, ld);
}

#endif /* FASTLSTM_MATMUL_H */
