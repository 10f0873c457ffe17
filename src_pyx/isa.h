/* fastlstm's kernel paths: which instruction sets the matrix products and the gate math use.
 *
 *   FL_ISA_PORTABLE  plain C (fmaf, the same operations in the same order)
 *   FL_ISA_AVX2      AVX2 + FMA + F16C: 256-bit tiles and gate math
 *   FL_ISA_AVX512    FL_ISA_AVX2, plus AVX512-VNNI (vpdpbusd on 256-bit registers) for the
 *                    exact int8 sums; needs avx512f, avx512vl, avx512bw and avx512vnni
 *
 * Every path computes bitwise the same results (matmul.h and gates.h say why for each
 * kernel).  A path is a table of functions (fl_kernel_table, filled in kernels.h), chosen
 * once per process, in Python (fastlstm.isa: the best the CPU has, or FASTLSTM_ISA), and
 * handed to each compiled module with fl_set_isa before any kernel runs; the products, the
 * row gathers and the gate math then call through fl_kernels, which never changes during a
 * call.
 */
#ifndef FASTLSTM_ISA_H
#define FASTLSTM_ISA_H

#include <stdint.h>

enum fl_isa { FL_ISA_PORTABLE = 0, FL_ISA_AVX2 = 1, FL_ISA_AVX512 = 2 };

#if defined(__GNUC__) && defined(__x86_64__)
#define FL_HAVE_X86_PATHS 1
#else
#define FL_HAVE_X86_PATHS 0
#endif

struct fl_matrix; /* matmul.h */

/* One kernel path: the functions whose code differs between paths. */
typedef struct {
    int isa; /* enum fl_isa */
    /* matmul.h: y (+)= x . W^T (+ bias) for float32, float16 and bfloat16 panels. */
    void (*matmul_float)(int m, const struct fl_matrix *W, const float *x, int ldx,
                         const float *bias, int accumulate, float *y, int ldy);
    /* matmul.h, int8: one row of x rounded to int16 in the layout this path's tiles read
     * (returns its scale), and a block of such rows times the panels. */
    double (*i8_quantize_row)(const float *x, int k, int kp, int16_t *xq);
    void (*i8_block)(int mb, const struct fl_matrix *W, const int16_t *xq, int kp,
                     const double *sx, const float *bias, int accumulate, float *y, int ldy);
    /* matmul.h: embedding and lookup-table rows as floats. */
    void (*gather_rows)(const void *table, int type, const float *scale, int n,
                        const int64_t *ids, int count, float *rows, int ld);
    /* gates.h, gru_reset_before.h: the vector loops over one row's units [j0, j1), which
     * return where they stopped (the scalar loops finish the rest, with the same results);
     * NULL on the portable path, where the scalar loops do every unit. */
    int (*lstm_units)(int hidden, int j0, int j1, const float *x, const float *y, float *c,
                      float *h);
    int (*gru_units)(int hidden, int j0, int j1, const float *x, const float *y,
                     const float *bias_hn, const float *h_prev, float *h);
    int (*tanh_units)(int j0, int j1, const float *x, const float *y, float *h);
    int (*gru_rb_reset_units)(int j0, int j1, const float *x, const float *y,
                              const float *h_prev, float *rh);
    int (*gru_rb_update_units)(int hidden, int j0, int j1, const float *x, const float *y,
                               const float *h_prev, float *h);
    int (*exp_scaled_units)(int count, const float *x, float shift, float scale, float *out);
} fl_kernel_table;

/* This module's path (each extension module holds its own copy, set at import by
 * fl_set_isa; kernels.h defines the tables and starts it on the portable one). */
static const fl_kernel_table *fl_kernels;

/* Whether this CPU can run `isa` (and this build has it). */
static inline int fl_isa_supported(int isa)
{
    if (isa == FL_ISA_PORTABLE)
        return 1;
#if FL_HAVE_X86_PATHS
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (isa == FL_ISA_AVX2)
        return avx2;
    if (isa == FL_ISA_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#endif
    return 0;
}

#endif /* FASTLSTM_ISA_H */
