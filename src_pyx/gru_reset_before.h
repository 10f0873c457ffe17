/* fastlstm gate math for the GRU that resets before its recurrent product: Keras's
 * GRU(reset_after=False), the cell of Cho et al. (2014).  fastlstm's rnn_type GRU_RESET_BEFORE.
 *
 * Gate blocks in PyTorch's order (r, z, n), xw = W_ih x + b_ih + b_hh (every bias joins the
 * input side: none is multiplied by r), hw = W_hh h_prev for the r and z rows:
 *
 *   r = sigmoid(xr + hr);  z = sigmoid(xz + hz)
 *   n = tanh(xn + W_hn (r * h_prev))                 (nn.GRU has r * (W_hn h_prev + b_hn))
 *   h = (1 - z) * n + z * h_prev
 *
 * so a step takes two products: W_hh's r and z rows by h_prev, then, once r is known, W_hn by
 * r * h_prev.  fl_gru_rb_reset computes r * h_prev between them; fl_gru_rb_update the rest.
 * Both work on rows x units [j0, j1) (threads sharing a row split its units), and are written
 * twice, AVX2 and plain C, with the same operations in the same order (gates.h's rule): every
 * path and every split of the units gives bitwise the same state.
 */
#ifndef FASTLSTM_GRU_RESET_BEFORE_H
#define FASTLSTM_GRU_RESET_BEFORE_H

#include "gates.h"

#if FL_HAVE_X86_PATHS
__attribute__((target("avx2,fma"))) static int fl_gru_rb_reset_avx2(int j0, int j1,
                                                                      const float *x,
                                                                      const float *y,
                                                                      const float *h_prev,
                                                                      float *rh)
{
    int j = j0;
    for (; j + 8 <= j1; j += 8) {
        __m256 r = fl_sigmoid8(fl_sum8(x + j, y + j));
        _mm256_storeu_ps(rh + j, _mm256_mul_ps(r, _mm256_loadu_ps(h_prev + j)));
    }
    return j;
}

__attribute__((target("avx2,fma"))) static int fl_gru_rb_update_avx2(int hidden, int j0, int j1,
                                                                       const float *x,
                                                                       const float *y,
                                                                       const float *h_prev,
                                                                       float *h)
{
    int j = j0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; j + 8 <= j1; j += 8) {
        __m256 z = fl_sigmoid8(fl_sum8(x + hidden + j, y + hidden + j));
        __m256 n = fl_tanh8(fl_sum8(x + 2 * hidden + j, y + 2 * hidden + j));
        __m256 hv = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(one, z), n),
                                  _mm256_mul_ps(z, _mm256_loadu_ps(h_prev + j)));
        _mm256_storeu_ps(h + j, hv);
    }
    return j;
}
#endif

/* rh := sigmoid(xr + hr) * h_prev.  xw, hw (rows, 3*hidden), r in columns [0, hidden);
 * h_prev, rh (rows, hidden); units [j0, j1) of each row. */
static inline void fl_gru_rb_reset(int rows, int hidden, int j0, int j1, const float *xw,
                                   const float *hw, const float *h_prev, float *rh)
{
    for (int r = 0; r < rows; r++) {
        const float *x = xw + (size_t)r * 3 * hidden, *y = hw + (size_t)r * 3 * hidden;
        const float *hp = h_prev + (size_t)r * hidden;
        float *out = rh + (size_t)r * hidden;
        int j = j0;
        if (fl_kernels->gru_rb_reset_units)
            j = fl_kernels->gru_rb_reset_units(j0, j1, x, y, hp, out);
        for (; j < j1; j++)
            out[j] = fl_sigmoid1(x[j] + y[j]) * hp[j];
    }
}

/* h := (1 - z) * tanh(xn + hn) + z * h_prev, z = sigmoid(xz + hz).  xw (rows, 3*hidden);
 * hw (rows, 3*hidden) with hz = W_hz h_prev and hn = W_hn (r * h_prev); h_prev, h (rows,
 * hidden), which may be one buffer; units [j0, j1) of each row. */
static inline void fl_gru_rb_update(int rows, int hidden, int j0, int j1, const float *xw,
                                    const float *hw, const float *h_prev, float *h)
{
    for (int r = 0; r < rows; r++) {
        const float *x = xw + (size_t)r * 3 * hidden, *y = hw + (size_t)r * 3 * hidden;
        const float *hp = h_prev + (size_t)r * hidden;
        float *hr = h + (size_t)r * hidden;
        int j = j0;
        if (fl_kernels->gru_rb_update_units)
            j = fl_kernels->gru_rb_update_units(hidden, j0, j1, x, y, hp, hr);
        for (; j < j1; j++) {
            float z = fl_sigmoid1(x[hidden + j] + y[hidden + j]);
            float n = fl_tanh1(x[2 * hidden + j] + y[2 * hidden + j]);
            hr[j] = (1.0f - z) * n + z * hp[j];
        }
    }
}

#endif /* FASTLSTM_GRU_RESET_BEFORE_H */
