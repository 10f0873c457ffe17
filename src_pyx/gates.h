/* fastlstm gate math: the fused non-linearities and state updates of one time step.
 *
 * PyTorch's cell equations, for `rows` sequences at once and hidden units [j0, j1) of each
 * (threads that share one sequence split its units); xw = W_ih x + biases (precomputed),
 * hw = W_hh h_prev (this step's product), gate blocks in PyTorch's order:
 *
 *   LSTM (i, f, g, o):  c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c)
 *   GRU  (r, z, n):     n = tanh(xn + sigmoid(r) * (hn + b_hn));  h = (1 - z) * n + z * h_prev
 *   RNN:                h = tanh(xw + hw)  or  relu(xw + hw)
 *
 * exp is a Cephes-style polynomial (relative error ~1e-7) written twice with the same IEEE
 * operations in the same order: 8 units at a time with AVX2/FMA, and one at a time in plain
 * C (fmaf, floorf, the exponent bits).  The two give bitwise the same result for every
 * input, so every unit, every path (isa.h) and every split of the units across threads give
 * the same state: seeded generation relies on that.  tanh(x) = 2 sigmoid(2x) - 1 here
 * (absolute error ~1e-7, like rounding a value near 1).  A NaN input gives a NaN output, so
 * the sampler can refuse it.
 *
 * Products and sums are written as separate operations (no a * b + c left to contract):
 * the modules are built with -ffp-contract=off, so the compiler fuses nothing on either path.
 */
#ifndef FASTLSTM_GATES_H
#define FASTLSTM_GATES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "isa.h"

/* ------------------------------------------------------------ the scalar reference */

#define FL_EXP_LIMIT 88.3762626647949f

/* exp(x), as fl_exp8 computes it. */
static inline float fl_exp1(float x)
{
    /* max(-limit, x), then min(limit, .), keeping a NaN (as maxps/minps do here). */
    x = -FL_EXP_LIMIT > x ? -FL_EXP_LIMIT : x;
    x = FL_EXP_LIMIT < x ? FL_EXP_LIMIT : x;
    if (x != x)
        return x;
    /* x = n ln2 + r, |r| <= ln2 / 2, with ln2 split in two for an exact reduction. */
    float n = floorf(fmaf(x, 1.44269504088896341f, 0.5f));
    float r = fmaf(-n, 0.693359375f, x);
    r = fmaf(-n, -2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r + 1.0f);
    /* 2^n through the exponent bits (n >= -127: exp(-88.38) underflows to 0, as it should). */
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float e;
    memcpy(&e, &bits, sizeof e);
    return p * e;
}

static inline float fl_sigmoid1(float x) { return 1.0f / (1.0f + fl_exp1(0.0f - x)); }

static inline float fl_tanh1(float x) { return fmaf(2.0f, fl_sigmoid1(2.0f * x), -1.0f); }

/* ------------------------------------------------------------------------ AVX2 + FMA */

#if FL_HAVE_X86_PATHS
#include <immintrin.h>
#define FL_GATES_AVX2 static inline __attribute__((always_inline, target("avx2,fma")))

FL_GATES_AVX2 __m256 fl_exp8(__m256 x)
{
    const __m256 limit = _mm256_set1_ps(FL_EXP_LIMIT);
    /* max(lo, x) and min(hi, .) return their second operand when it is NaN: NaN stays NaN. */
    x = _mm256_min_ps(limit, _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), limit), x));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
                                               _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

FL_GATES_AVX2 __m256 fl_sigmoid8(__m256 x)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, fl_exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

FL_GATES_AVX2 __m256 fl_tanh8(__m256 x)
{
    const __m256 two = _mm256_set1_ps(2.0f);
    return _mm256_fmsub_ps(two, fl_sigmoid8(_mm256_mul_ps(two, x)), _mm256_set1_ps(1.0f));
}

/* a[j] + b[j] for 8 units. */
FL_GATES_AVX2 __m256 fl_sum8(const float *a, const float *b)
{
    return _mm256_add_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(b));
}
#endif

/* The vector loops below cover units [j0, j0 + 8k) and return where they stopped; the
 * scalar loops finish the rest with the same results.  Each step calls its vector loop
 * through the kernel path's table (isa.h's fl_kernels; NULL on the portable path). */

/* ------------------------------------------------------------------------------ LSTM */

#if FL_HAVE_X86_PATHS
__attribute__((target("avx2,fma"))) static int fl_lstm_avx2(int hidden, int j0, int j1,
                                                              const float *x, const float *y,
                                                              float *c, float *h)
{
    int j = j0;
    for (; j + 8 <= j1; j += 8) {
        __m256 i = fl_sigmoid8(fl_sum8(x + j, y + j));
        __m256 f = fl_sigmoid8(fl_sum8(x + hidden + j, y + hidden + j));
        __m256 g = fl_tanh8(fl_sum8(x + 2 * hidden + j, y + 2 * hidden + j));
        __m256 o = fl_sigmoid8(fl_sum8(x + 3 * hidden + j, y + 3 * hidden + j));
        __m256 cn = _mm256_add_ps(_mm256_mul_ps(f, _mm256_loadu_ps(c + j)), _mm256_mul_ps(i, g));
        _mm256_storeu_ps(c + j, cn);
        _mm256_storeu_ps(h + j, _mm256_mul_ps(o, fl_tanh8(cn)));
    }
    return j;
}
#endif

/* LSTM: xw, hw (rows, 4*hidden); c (rows, hidden) updated in place; h (rows, hidden) out;
 * units [j0, j1) of each row. */
static inline void fl_lstm_step(int rows, int hidden, int j0, int j1, const float *xw,
                                const float *hw, float *c, float *h)
{
    for (int r = 0; r < rows; r++) {
        const float *x = xw + (size_t)r * 4 * hidden, *y = hw + (size_t)r * 4 * hidden;
        float *cr = c + (size_t)r * hidden, *hr = h + (size_t)r * hidden;
        int j = j0;
        if (fl_kernels->lstm_units)
            j = fl_kernels->lstm_units(hidden, j0, j1, x, y, cr, hr);
        for (; j < j1; j++) {
            float i = fl_sigmoid1(x[j] + y[j]);
            float f = fl_sigmoid1(x[hidden + j] + y[hidden + j]);
            float g = fl_tanh1(x[2 * hidden + j] + y[2 * hidden + j]);
            float o = fl_sigmoid1(x[3 * hidden + j] + y[3 * hidden + j]);
            float cn = f * cr[j] + i * g;
            cr[j] = cn;
            hr[j] = o * fl_tanh1(cn);
        }
    }
}

/* ------------------------------------------------------------------------------- GRU */

#if FL_HAVE_X86_PATHS
__attribute__((target("avx2,fma"))) static int fl_gru_avx2(int hidden, int j0, int j1,
                                                             const float *x, const float *y,
                                                             const float *bias_hn,
                                                             const float *h_prev, float *h)
{
    int j = j0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; j + 8 <= j1; j += 8) {
        __m256 r = fl_sigmoid8(fl_sum8(x + j, y + j));
        __m256 z = fl_sigmoid8(fl_sum8(x + hidden + j, y + hidden + j));
        __m256 hn = fl_sum8(y + 2 * hidden + j, bias_hn + j);
        __m256 n = fl_tanh8(_mm256_add_ps(_mm256_loadu_ps(x + 2 * hidden + j), _mm256_mul_ps(r, hn)));
        __m256 hv = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(one, z), n),
                                  _mm256_mul_ps(z, _mm256_loadu_ps(h_prev + j)));
        _mm256_storeu_ps(h + j, hv);
    }
    return j;
}
#endif

/* GRU: xw (rows, 3*hidden) with b_ih and b_hh's r, z parts; hw (rows, 3*hidden) = W_hh h_prev;
 * bias_hn (hidden,) = b_hh's n part; h_prev, h (rows, hidden), which may be one buffer;
 * units [j0, j1) of each row. */
static inline void fl_gru_step(int rows, int hidden, int j0, int j1, const float *xw,
                               const float *hw, const float *bias_hn, const float *h_prev,
                               float *h)
{
    for (int r = 0; r < rows; r++) {
        const float *x = xw + (size_t)r * 3 * hidden, *y = hw + (size_t)r * 3 * hidden;
        const float *hp = h_prev + (size_t)r * hidden;
        float *hr = h + (size_t)r * hidden;
        int j = j0;
        if (fl_kernels->gru_units)
            j = fl_kernels->gru_units(hidden, j0, j1, x, y, bias_hn, hp, hr);
        for (; j < j1; j++) {
            float rg = fl_sigmoid1(x[j] + y[j]);
            float z = fl_sigmoid1(x[hidden + j] + y[hidden + j]);
            float n = fl_tanh1(x[2 * hidden + j] + rg * (y[2 * hidden + j] + bias_hn[j]));
            hr[j] = (1.0f - z) * n + z * hp[j];
        }
    }
}

/* ------------------------------------------------------------------------------- RNN */

#if FL_HAVE_X86_PATHS
__attribute__((target("avx2,fma"))) static int fl_tanh_avx2(int j0, int j1, const float *x,
                                                              const float *y, float *h)
{
    int j = j0;
    for (; j + 8 <= j1; j += 8)
        _mm256_storeu_ps(h + j, fl_tanh8(fl_sum8(x + j, y + j)));
    return j;
}
#endif

/* RNN: h = tanh(xw + hw), or relu(xw + hw) (NaN stays NaN, as in torch.relu); all
 * (rows, hidden); units [j0, j1) of each row. */
static inline void fl_rnn_step(int rows, int hidden, int j0, int j1, int relu, const float *xw,
                               const float *hw, float *h)
{
    for (int r = 0; r < rows; r++) {
        const float *x = xw + (size_t)r * hidden, *y = hw + (size_t)r * hidden;
        float *hr = h + (size_t)r * hidden;
        int j = j0;
        if (relu) {
            for (; j < j1; j++) {
                float v = x[j] + y[j];
                hr[j] = v < 0.0f ? 0.0f : v;
            }
            continue;
        }
        if (fl_kernels->tanh_units)
            j = fl_kernels->tanh_units(j0, j1, x, y, hr);
        for (; j < j1; j++)
            hr[j] = fl_tanh1(x[j] + y[j]);
    }
}

/* ------------------------------------------------------------------- sampler weights */

#if FL_HAVE_X86_PATHS
__attribute__((target("avx2,fma"))) static int fl_exp_scaled_avx2(int count, const float *x,
                                                                    float shift, float scale,
                                                                    float *out)
{
    int j = 0;
    const __m256 s = _mm256_set1_ps(shift), k = _mm256_set1_ps(scale);
    for (; j + 8 <= count; j += 8)
        _mm256_storeu_ps(out + j, fl_exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), s), k)));
    return j;
}
#endif

/* out[i] = exp((x[i] - shift) * scale), for the sampler's softmax weights. */
static inline void fl_exp_scaled(int count, const float *x, float shift, float scale, float *out)
{
    int j = 0;
    if (fl_kernels->exp_scaled_units)
        j = fl_kernels->exp_scaled_units(count, x, shift, scale, out);
    for (; j < count; j++)
        out[j] = fl_exp1((x[j] - shift) * scale);
}

#endif /* FASTLSTM_GATES_H */
