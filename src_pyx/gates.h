/* fastlstm gate math: the fused non-linearities and state updates of one time step.
 *
 * PyTorch's cell equations, for `rows` sequences at once; xw = W_ih x + biases (precomputed),
 * hw = W_hh h_prev (this step's product), gate blocks in PyTorch's order:
 *
 *   LSTM (i, f, g, o):  c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c)
 *   GRU  (r, z, n):     n = tanh(xn + sigmoid(r) * (hn + b_hn));  h = (1 - z) * n + z * h_prev
 *   RNN:                h = tanh(xw + hw)   (relu stays in cells.pxd: it needs no exp)
 *
 * On CPUs with AVX2+FMA (checked at run time), 8 hidden units go at once through a Cephes
 * style expf (relative error ~1e-7); the last hidden % 8 units, and every unit on other
 * CPUs, use libm.  Either way each unit j takes the same path for every row and every call,
 * so results stay independent of the batch (seeded generation relies on that).
 * tanh(x) = 2 sigmoid(2x) - 1 here: absolute error ~1e-7, like rounding a value near 1.
 * A NaN input gives a NaN output (the clamps keep NaN), so the sampler can refuse it.
 */
#ifndef FASTLSTM_GATES_H
#define FASTLSTM_GATES_H

#include <math.h>

static inline float fl_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

#if defined(__GNUC__) && defined(__x86_64__)
#define FL_GATES_HAVE_AVX2 1
#include <immintrin.h>
#define FL_GATES_AVX2 static inline __attribute__((always_inline, target("avx2,fma")))

FL_GATES_AVX2 __m256 fl_exp8(__m256 x) {
    const __m256 limit = _mm256_set1_ps(88.3762626647949f);
    /* max(lo, x) and min(hi, .) return their second operand when it is NaN: NaN stays NaN. */
    x = _mm256_min_ps(limit, _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), limit), x));
    /* x = n ln2 + r, |r| <= ln2 / 2, with ln2 split in two for an exact reduction. */
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
    /* 2^n through the exponent bits (n >= -127: exp(-88.38) underflows to 0, as it should). */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

FL_GATES_AVX2 __m256 fl_sigmoid8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, fl_exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

FL_GATES_AVX2 __m256 fl_tanh8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    return _mm256_fmsub_ps(two, fl_sigmoid8(_mm256_mul_ps(two, x)), one);
}

static int fl_gates_avx2_state = -1;

static inline int fl_gates_use_avx2(void) {
    if (fl_gates_avx2_state < 0)
        fl_gates_avx2_state = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return fl_gates_avx2_state;
}

__attribute__((target("avx2,fma"))) static int fl_lstm_avx2(int hidden, const float *x,
                                                               const float *y, float *c, float *h) {
    int j = 0;
    for (; j + 8 <= hidden; j += 8) {
        __m256 i = fl_sigmoid8(_mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
        __m256 f = fl_sigmoid8(_mm256_add_ps(_mm256_loadu_ps(x + hidden + j), _mm256_loadu_ps(y + hidden + j)));
        __m256 g = fl_tanh8(_mm256_add_ps(_mm256_loadu_ps(x + 2 * hidden + j), _mm256_loadu_ps(y + 2 * hidden + j)));
        __m256 o = fl_sigmoid8(_mm256_add_ps(_mm256_loadu_ps(x + 3 * hidden + j), _mm256_loadu_ps(y + 3 * hidden + j)));
        __m256 cn = _mm256_add_ps(_mm256_mul_ps(f, _mm256_loadu_ps(c + j)), _mm256_mul_ps(i, g));
        _mm256_storeu_ps(c + j, cn);
        _mm256_storeu_ps(h + j, _mm256_mul_ps(o, fl_tanh8(cn)));
    }
    return j;
}

__attribute__((target("avx2,fma"))) static int fl_gru_avx2(int hidden, const float *x,
                                                              const float *y, const float *bias_hn,
                                                              const float *h_prev, float *h) {
    int j = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; j + 8 <= hidden; j += 8) {
        __m256 r = fl_sigmoid8(_mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
        __m256 z = fl_sigmoid8(_mm256_add_ps(_mm256_loadu_ps(x + hidden + j), _mm256_loadu_ps(y + hidden + j)));
        __m256 hn = _mm256_add_ps(_mm256_loadu_ps(y + 2 * hidden + j), _mm256_loadu_ps(bias_hn + j));
        __m256 n = fl_tanh8(_mm256_add_ps(_mm256_loadu_ps(x + 2 * hidden + j), _mm256_mul_ps(r, hn)));
        __m256 hv = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(one, z), n),
                                  _mm256_mul_ps(z, _mm256_loadu_ps(h_prev + j)));
        _mm256_storeu_ps(h + j, hv);
    }
    return j;
}

__attribute__((target("avx2,fma"))) static int fl_tanh_avx2(int count, const float *x,
                                                               const float *y, float *h) {
    int j = 0;
    for (; j + 8 <= count; j += 8)
        _mm256_storeu_ps(h + j, fl_tanh8(_mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j))));
    return j;
}
__attribute__((target("avx2,fma"))) static int fl_exp_scaled_avx2(int count, const float *x,
                                                                    float shift, float scale,
                                                                    float *out) {
    int j = 0;
    const __m256 s = _mm256_set1_ps(shift), k = _mm256_set1_ps(scale);
    for (; j + 8 <= count; j += 8)
        _mm256_storeu_ps(out + j, fl_exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), s), k)));
    return j;
}
#else
#define FL_GATES_HAVE_AVX2 0
static inline int fl_gates_use_avx2(void) { return 0; }
static int fl_lstm_avx2(int hidden, const float *x, const float *y, float *c, float *h) { return 0; }
static int fl_gru_avx2(int hidden, const float *x, const float *y, const float *b, const float *hp,
                       float *h) { return 0; }
static int fl_tanh_avx2(int count, const float *x, const float *y, float *h) { return 0; }
static int fl_exp_scaled_avx2(int count, const float *x, float shift, float scale, float *out) {
    return 0;
}
#endif

/* out[i] = exp((x[i] - shift) * scale), for the sampler's softmax weights. */
static inline void fl_exp_scaled(int count, const float *x, float shift, float scale, float *out) {
    int j = fl_gates_use_avx2() ? fl_exp_scaled_avx2(count, x, shift, scale, out) : 0;
    for (; j < count; j++)
        out[j] = expf((x[j] - shift) * scale);
}

/* LSTM: xw, hw (rows, 4*hidden); c (rows, hidden) updated in place; h (rows, hidden) out. */
static inline void fl_lstm_step(int rows, int hidden, const float *xw, const float *hw, float *c,
                                float *h) {
    int vector = fl_gates_use_avx2();
    for (int r = 0; r < rows; r++) {
        const float *x = xw + (size_t)r * 4 * hidden, *y = hw + (size_t)r * 4 * hidden;
        float *cr = c + (size_t)r * hidden, *hr = h + (size_t)r * hidden;
        int j = vector ? fl_lstm_avx2(hidden, x, y, cr, hr) : 0;
        for (; j < hidden; j++) {
            float i = fl_sigmoidf(x[j] + y[j]);
            float f = fl_sigmoidf(x[hidden + j] + y[hidden + j]);
            float g = tanhf(x[2 * hidden + j] + y[2 * hidden + j]);
            float o = fl_sigmoidf(x[3 * hidden + j] + y[3 * hidden + j]);
            float cn = f * cr[j] + i * g;
            cr[j] = cn;
            hr[j] = o * tanhf(cn);
        }
    }
}

/* GRU: xw (rows, 3*hidden) with b_ih and b_hh's r, z parts; hw (rows, 3*hidden) = W_hh h_prev;
 * bias_hn (hidden,) = b_hh's n part; h_prev, h (rows, hidden), which may be one buffer. */
static inline void fl_gru_step(int rows, int hidden, const float *xw, const float *hw,
                               const float *bias_hn, const float *h_prev, float *h) {
    int vector = fl_gates_use_avx2();
    for (int r = 0; r < rows; r++) {
        const float *x = xw + (size_t)r * 3 * hidden, *y = hw + (size_t)r * 3 * hidden;
        const float *hp = h_prev + (size_t)r * hidden;
        float *hr = h + (size_t)r * hidden;
        int j = vector ? fl_gru_avx2(hidden, x, y, bias_hn, hp, hr) : 0;
        for (; j < hidden; j++) {
            float rg = fl_sigmoidf(x[j] + y[j]);
            float z = fl_sigmoidf(x[hidden + j] + y[hidden + j]);
            float n = tanhf(x[2 * hidden + j] + rg * (y[2 * hidden + j] + bias_hn[j]));
            hr[j] = (1.0f - z) * n + z * hp[j];
        }
    }
}

/* RNN tanh: h = tanh(xw + hw), all (rows, hidden). */
static inline void fl_rnn_tanh_step(int rows, int hidden, const float *xw, const float *hw,
                                    float *h) {
    int vector = fl_gates_use_avx2();
    for (int r = 0; r < rows; r++) {
        const float *x = xw + (size_t)r * hidden, *y = hw + (size_t)r * hidden;
        float *hr = h + (size_t)r * hidden;
        int j = vector ? fl_tanh_avx2(hidden, x, y, hr) : 0;
        for (; j < hidden; j++)
            hr[j] = tanhf(x[j] + y[j]);
    }
}

#endif /* FASTLSTM_GATES_H */
