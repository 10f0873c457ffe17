/* The int8 register tiles of matmul.h, written once and compiled once per instruction set:
 * matmul.h includes this file twice, with
 *
 *   FL_I8_NAME(f)        f's name on this path (f_avx2, f_vnni)
 *   FL_I8_TARGET         the target attribute of the path's functions
 *   FL_I8_DOT(acc, x, w) acc + the pairwise int16 products of x and w, summed per int32 lane:
 *                        vpmaddwd + vpaddd on AVX2, one vpdpwssd with AVX512-VNNI.  Both are
 *                        exact (|x| <= 32767, |w| <= 127, see "int8 weights" in matmul.h), so
 *                        both paths give the same sums.
 */

#define FL_I8_INLINE static inline __attribute__((always_inline, target(FL_I8_TARGET)))

/* int8 register tile: MR rows x NP panels, 2*MR*NP ymm int32 accumulators (8 outputs each),
 * over quantized rows xq (ldq apart, scales sx) and panels p0 .. p0+NP-1.  Per pair of k,
 * a panel row is 32 bytes: two sign-extends to 16 int16 pairs, one FL_I8_DOT per half and
 * row. */
FL_I8_INLINE void FL_I8_NAME(fl_tile_i8)(const int MR, const int NP, const fl_matrix *W, int p0,
                                    const int16_t *xq, int ldq, const double *sx,
                                    const float *bias, int accumulate, float *y, int ldy)
{
    __m256i acc[6][8];
    double sums[6][4 * FL_PANEL];
    const int8_t *w[4];
    const int n = W->n, pairs = fl_packed_k(FL_I8, W->k) / 2;
    const size_t row_bytes = 2 * FL_PANEL, pstride = (size_t)pairs * row_bytes;
    const size_t ahead = FL_PREFETCH_BYTES;

#pragma GCC unroll 4
    for (int q = 0; q < NP; q++)
        w[q] = (const int8_t *)W->panels + (size_t)(p0 + q) * pstride;

    for (int c0 = 0; c0 < pairs; c0 += FL_I8_CHUNK) {
        const int c1 = pairs - c0 < FL_I8_CHUNK ? pairs : c0 + FL_I8_CHUNK;
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
            for (int h = 0; h < 2 * NP; h++)
                acc[i][h] = _mm256_setzero_si256();
        for (int c = c0; c < c1; c++) {
            const size_t off = (size_t)c * row_bytes;
            __m256i xb[6];
#pragma GCC unroll 6
            for (int i = 0; i < MR; i++) {
                int32_t pair; /* (xq[2c], xq[2c + 1]) */
                memcpy(&pair, xq + (size_t)i * ldq + 2 * (size_t)c, sizeof pair);
                xb[i] = _mm256_set1_epi32(pair);
            }
            if (NP == 1 && (off & 63) == 0) /* see fl_tile_avx2 */
                _mm_prefetch((const char *)w[0] + off + ahead, _MM_HINT_T0);
#pragma GCC unroll 4
            for (int q = 0; q < NP; q++) {
                __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w[q] + off)));
                __m256i w1 =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w[q] + off + 16)));
#pragma GCC unroll 6
                for (int i = 0; i < MR; i++) {
                    acc[i][2 * q] = FL_I8_DOT(acc[i][2 * q], xb[i], w0);
                    acc[i][2 * q + 1] = FL_I8_DOT(acc[i][2 * q + 1], xb[i], w1);
                }
            }
        }
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
            for (int h = 0; h < 2 * NP; h++) {
                double *d = sums[i] + 8 * h;
                __m256d lo = _mm256_cvtepi32_pd(_mm256_castsi256_si128(acc[i][h]));
                __m256d hi = _mm256_cvtepi32_pd(_mm256_extracti128_si256(acc[i][h], 1));
                if (c0) {
                    lo = _mm256_add_pd(_mm256_loadu_pd(d), lo);
                    hi = _mm256_add_pd(_mm256_loadu_pd(d + 4), hi);
                }
                _mm256_storeu_pd(d, lo);
                _mm256_storeu_pd(d + 4, hi);
            }
    }

#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        float *yr = y + (size_t)i * ldy;
        const __m256d s = _mm256_set1_pd(sx[i]);
#pragma GCC unroll 8
        for (int h = 0; h < 2 * NP; h++) {
            int j = (p0 + (h >> 1)) * FL_PANEL + 8 * (h & 1);
            const double *d = sums[i] + 8 * h;
            if (j + 8 <= n) {
                /* (float)(sum * ((double)scale[j] * sx)), 4 at a time */
                __m256d c0 = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(W->scale + j)), s);
                __m256d c1 = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(W->scale + j + 4)), s);
                __m128 v0 = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_loadu_pd(d), c0));
                __m128 v1 = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_loadu_pd(d + 4), c1));
                fl_finish8(_mm256_set_m128(v1, v0), bias ? bias + j : NULL, accumulate, yr + j);
            } else if (j < n) {
                fl_i8_store_scalar(d, n - j, W->scale + j, sx[i], bias ? bias + j : NULL,
                                   accumulate, yr + j);
            }
        }
    }
}

#define FL_TILE_I8_FN(MR, NP)                                                               \
    static __attribute__((noinline, target(FL_I8_TARGET))) void FL_I8_NAME(                 \
        fl_tile_i8_##MR##x##NP)(const fl_matrix *W, int p0, const int16_t *xq, int ldq,      \
                                const double *sx, const float *bias, int accumulate, float *y, \
                                int ldy)                                                    \
    {                                                                                       \
        FL_I8_NAME(fl_tile_i8)(MR, NP, W, p0, xq, ldq, sx, bias, accumulate, y, ldy);        \
    }
FL_TILE_I8_FN(1, 1) FL_TILE_I8_FN(1, 2) FL_TILE_I8_FN(1, 3) FL_TILE_I8_FN(1, 4)
FL_TILE_I8_FN(2, 1) FL_TILE_I8_FN(2, 2) FL_TILE_I8_FN(2, 3) FL_TILE_I8_FN(3, 1)
FL_TILE_I8_FN(3, 2) FL_TILE_I8_FN(4, 1) FL_TILE_I8_FN(5, 1) FL_TILE_I8_FN(6, 1)
#undef FL_TILE_I8_FN
static const fl_tile_i8_fn FL_I8_NAME(fl_tiles_i8)[7][5] = {
    {0, 0, 0, 0, 0},
    {0, FL_I8_NAME(fl_tile_i8_1x1), FL_I8_NAME(fl_tile_i8_1x2), FL_I8_NAME(fl_tile_i8_1x3), FL_I8_NAME(fl_tile_i8_1x4)},
    {0, FL_I8_NAME(fl_tile_i8_2x1), FL_I8_NAME(fl_tile_i8_2x2), FL_I8_NAME(fl_tile_i8_2x3), 0},
    {0, FL_I8_NAME(fl_tile_i8_3x1), FL_I8_NAME(fl_tile_i8_3x2), 0, 0},
    {0, FL_I8_NAME(fl_tile_i8_4x1), 0, 0, 0},
    {0, FL_I8_NAME(fl_tile_i8_5x1), 0, 0, 0},
    {0, FL_I8_NAME(fl_tile_i8_6x1), 0, 0, 0},
};

#undef FL_I8_INLINE
