/* The int8 register tiles of matmul.h, written once and compiled once per instruction set:
 * matmul.h includes this file twice, with
 *
 *   FL_I8_NAME(f)   f's name on this path (f_avx2, f_vnni)
 *   FL_I8_TARGET    the target attribute of the path's functions
 *   FL_I8_VNNI      0: vpmaddwd on int16 x (AVX2); 1: vpdpbusd on x's bytes (AVX512-VNNI)
 *
 * Both read the int8 panels (a quad of k is 64 bytes per panel: two 32-byte vectors of 8
 * outputs x 4 k) and, per row of x and quad, two 32-bit words of x as fl_i8_arrange stores
 * them.  "int8 weights" in matmul.h says why each path's sums are exact.
 */

#define FL_I8_INLINE static inline __attribute__((always_inline, target(FL_I8_TARGET)))

#if FL_I8_VNNI
#define FL_I8_ACCS 2 /* accumulators per 8 outputs: the L and the H byte sums */
#define FL_I8_CHUNK FL_I8_CHUNK_VNNI
#else
#define FL_I8_ACCS 1
#define FL_I8_CHUNK FL_I8_CHUNK_AVX2
#endif

/* The operands of fl_i8_dot from 32 weight bytes (8 outputs x 4 k) in *hi: VNNI uses them as
 * they are; AVX2 sign-extends them in place to int16, *hi := bytes k1, k3 of each output,
 * *lo := k0, k2 (3 shifts per 32 bytes and no shuffle, unlike vpmovsxbw). */
FL_I8_INLINE void FL_I8_NAME(fl_i8_operands)(__m256i *hi, __m256i *lo)
{
#if FL_I8_VNNI
    *lo = *hi;
#else
    *lo = _mm256_srai_epi16(_mm256_slli_epi16(*hi, 8), 8);
    *hi = _mm256_srai_epi16(*hi, 8);
#endif
}

/* a[0 .. FL_I8_ACCS) += one quad of one row of x (its 8 bytes at quad, as fl_i8_arrange
 * stores them) times 8 outputs' weights (fl_i8_operands). */
FL_I8_INLINE void FL_I8_NAME(fl_i8_dot)(__m256i *a, const int16_t *quad, __m256i hi, __m256i lo)
{
    int32_t word0, word1; /* AVX2: int16 (x0, x2), (x1, x3); VNNI: bytes L0..L3, H0..H3 */
    memcpy(&word0, quad, 4);
    memcpy(&word1, quad + 2, 4);
    const __m256i b0 = _mm256_set1_epi32(word0), b1 = _mm256_set1_epi32(word1);
#if FL_I8_VNNI
    a[0] = fl_dpbusd(a[0], b0, lo);
    a[1] = fl_dpbusd(a[1], b1, hi);
#else
    a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(lo, b0));
    a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(hi, b1));
#endif
}

/* int8 register tile: MR rows x NP panels, 2*FL_I8_ACCS*MR*NP ymm int32 accumulators (8
 * outputs each), over quantized rows xq (ldq int16 apart, scales sx) and panels
 * p0 .. p0+NP-1. */
FL_I8_INLINE void FL_I8_NAME(fl_tile_i8)(const int MR, const int NP, const fl_matrix *W, int p0,
                                    const int16_t *xq, int ldq, const double *sx,
                                    const float *bias, int accumulate, float *y, int ldy)
{
    __m256i acc[6][8 * FL_I8_ACCS];
    double sums[6][4 * FL_PANEL];
    const int8_t *w[4];
    const int n = W->n, quads = fl_packed_k(FL_I8, W->k) / 4;
    const size_t quad_bytes = 4 * FL_PANEL, pstride = (size_t)quads * quad_bytes;
    const size_t ahead = FL_PREFETCH_BYTES;

#pragma GCC unroll 4
    for (int q = 0; q < NP; q++)
        w[q] = (const int8_t *)W->panels + (size_t)(p0 + q) * pstride;

    for (int c0 = 0; c0 < quads; c0 += FL_I8_CHUNK) {
        const int c1 = quads - c0 < FL_I8_CHUNK ? quads : c0 + FL_I8_CHUNK;
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
            for (int a = 0; a < 2 * NP * FL_I8_ACCS; a++)
                acc[i][a] = _mm256_setzero_si256();
        int c = c0;
        if (MR == 1 && NP == 1) {
            /* One row and one panel (batch 1 on large matrices, FL_I8_STREAM_BYTES): two
             * quads at a time into two sets of accumulators, added at the chunk's end
             * (exact), so that 8 (VNNI) or 4 product chains hide the latency.  No prefetch:
             * measured slower, the hardware keeps one stream fed. */
#pragma GCC unroll 8
            for (int a = 2 * FL_I8_ACCS; a < 4 * FL_I8_ACCS; a++)
                acc[0][a] = _mm256_setzero_si256();
            for (; c + 1 < c1; c += 2) {
#pragma GCC unroll 4
                for (int h = 0; h < 4; h++) { /* quad c + h / 2, outputs 8 (h % 2) .. */
                    const int8_t *wh = w[0] + (size_t)c * quad_bytes + 32 * h;
                    __m256i lo, hi = _mm256_loadu_si256((const __m256i *)wh);
                    FL_I8_NAME(fl_i8_operands)(&hi, &lo);
                    FL_I8_NAME(fl_i8_dot)(acc[0] + FL_I8_ACCS * h, xq + 4 * (size_t)(c + h / 2),
                                          hi, lo);
                }
            }
#pragma GCC unroll 4
            for (int a = 0; a < 2 * FL_I8_ACCS; a++)
                acc[0][a] = _mm256_add_epi32(acc[0][a], acc[0][a + 2 * FL_I8_ACCS]);
        }
        for (; c < c1; c++) {
            const size_t off = (size_t)c * quad_bytes;
            const int16_t *xc = xq + 4 * (size_t)c; /* row i's quad: xc + i * ldq */
            if (NP == 1 && MR > 1) /* see fl_tile_avx2; every quad is one cache line */
                _mm_prefetch((const char *)w[0] + off + ahead, _MM_HINT_T0);
            /* Two loop orders, each the faster where it is used (GCC 12, Zen 4, measured
             * at n=2048 k=512): up to 2 rows, one weight vector at a time against both rows'
             * words (VNNI 2x3: 101 GMAC/s against 89, which spills; AVX2 +4%)... */
            if (MR <= 2) {
#pragma GCC unroll 8
                for (int h = 0; h < 2 * NP; h++) {
                    const int8_t *wh = w[h >> 1] + off + 32 * (h & 1);
                    __m256i lo, hi = _mm256_loadu_si256((const __m256i *)wh);
                    FL_I8_NAME(fl_i8_operands)(&hi, &lo);
#pragma GCC unroll 2
                    for (int i = 0; i < MR; i++)
                        FL_I8_NAME(fl_i8_dot)(acc[i] + FL_I8_ACCS * h, xc + (size_t)i * ldq, hi,
                                              lo);
                }
            } else {
                /* ...from 3 rows, every panel's weights first, then row by row (VNNI 6x1:
                 * 104 against 88; AVX2 +3 to 10%). */
                __m256i hi[8], lo[8];
#pragma GCC unroll 8
                for (int h = 0; h < 2 * NP; h++) {
                    hi[h] = _mm256_loadu_si256((const __m256i *)(w[h >> 1] + off + 32 * (h & 1)));
                    FL_I8_NAME(fl_i8_operands)(&hi[h], &lo[h]);
                }
#pragma GCC unroll 6
                for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
                    for (int h = 0; h < 2 * NP; h++)
                        FL_I8_NAME(fl_i8_dot)(acc[i] + FL_I8_ACCS * h, xc + (size_t)i * ldq, hi[h],
                                              lo[h]);
            }
        }
        /* sums += this chunk's sums, exactly in double (VNNI: 256 * H + L) */
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
            for (int h = 0; h < 2 * NP; h++) {
                double *d = sums[i] + 8 * h;
#if FL_I8_VNNI
                const __m256d f256 = _mm256_set1_pd(256.0);
                const __m256i L = acc[i][2 * h], H = acc[i][2 * h + 1];
                __m256d lo = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(H)), f256,
                                             _mm256_cvtepi32_pd(_mm256_castsi256_si128(L)));
                __m256d hi =
                    _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(H, 1)), f256,
                                    _mm256_cvtepi32_pd(_mm256_extracti128_si256(L, 1)));
#else
                __m256d lo = _mm256_cvtepi32_pd(_mm256_castsi256_si128(acc[i][h]));
                __m256d hi = _mm256_cvtepi32_pd(_mm256_extracti128_si256(acc[i][h], 1));
#endif
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
            double *d = sums[i] + 8 * h;
            if (j + 8 <= n) {
                __m256d d0 = _mm256_loadu_pd(d), d1 = _mm256_loadu_pd(d + 4);
#if FL_I8_VNNI
                /* s = 256 * sum q H + sum q L - 32768 * qsum, exact */
                const __m256d f = _mm256_set1_pd(-32768.0);
                const __m128i *qs = (const __m128i *)(W->qsum + j);
                d0 = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm_loadu_si128(qs)), f, d0);
                d1 = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm_loadu_si128(qs + 1)), f, d1);
#endif
                /* (float)(sum * ((double)scale[j] * sx)), 4 at a time */
                __m256d c0 = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(W->scale + j)), s);
                __m256d c1 = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(W->scale + j + 4)), s);
                __m128 v0 = _mm256_cvtpd_ps(_mm256_mul_pd(d0, c0));
                __m128 v1 = _mm256_cvtpd_ps(_mm256_mul_pd(d1, c1));
                fl_finish8(_mm256_set_m128(v1, v0), bias ? bias + j : NULL, accumulate, yr + j);
            } else if (j < n) {
#if FL_I8_VNNI
                for (int l = 0; l < n - j; l++)
                    d[l] = d[l] - 32768.0 * W->qsum[j + l];
#endif
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
    {0, FL_I8_NAME(fl_tile_i8_1x1), FL_I8_NAME(fl_tile_i8_1x2), FL_I8_NAME(fl_tile_i8_1x3),
     FL_I8_NAME(fl_tile_i8_1x4)},
    {0, FL_I8_NAME(fl_tile_i8_2x1), FL_I8_NAME(fl_tile_i8_2x2), FL_I8_NAME(fl_tile_i8_2x3),
     0},
    {0, FL_I8_NAME(fl_tile_i8_3x1), FL_I8_NAME(fl_tile_i8_3x2), 0, 0},
    {0, FL_I8_NAME(fl_tile_i8_4x1), 0, 0, 0},
    {0, FL_I8_NAME(fl_tile_i8_5x1), 0, 0, 0},
    {0, FL_I8_NAME(fl_tile_i8_6x1), 0, 0, 0},
};

#undef FL_I8_INLINE
#undef FL_I8_ACCS
#undef FL_I8_CHUNK
