/* fastlstm's kernel paths as tables of functions (isa.h's fl_kernel_table), one per path,
 * and the choice between them: the one header the compiled modules include (through the
 * .pxd files), so that every module holds the tables and its own fl_kernels.
 *
 *   portable  the scalar loops alone (the reference every path matches bitwise)
 *   avx2      the AVX2/FMA/F16C tiles and gate loops
 *   avx512    avx2, with the int8 products on AVX512-VNNI (vpdpbusd)
 */
#ifndef FASTLSTM_KERNELS_H
#define FASTLSTM_KERNELS_H

#include "isa.h"
#include "matmul.h"
#include "gates.h"
#include "gru_reset_before.h"

static const fl_kernel_table fl_kernels_portable = {
    .isa = FL_ISA_PORTABLE,
    .matmul_float = fl_matmul_float_scalar,
    .i8_quantize_row = fl_i8_quantize_row_scalar,
    .i8_block = fl_i8_block_scalar,
    .gather_rows = fl_gather_rows_scalar,
    /* the gate loops: the scalar ones alone (NULL vector loops) */
};

#if FL_HAVE_X86_PATHS
/* The vector paths: the AVX2 float tiles (they reach Zen 4's FMA peak at 256 bits), row
 * gathers and gate loops, with the int8 products of the path's instruction set. */
#define FL_VECTOR_PATH(ISA, I8_QUANTIZE_ROW, I8_BLOCK)                                          \
    {                                                                                           \
        .isa = ISA, .matmul_float = fl_matmul_avx2, .i8_quantize_row = I8_QUANTIZE_ROW,         \
        .i8_block = I8_BLOCK, .gather_rows = fl_gather_rows_avx2, .lstm_units = fl_lstm_avx2,   \
        .gru_units = fl_gru_avx2, .tanh_units = fl_tanh_avx2,                                   \
        .gru_rb_reset_units = fl_gru_rb_reset_avx2,                                             \
        .gru_rb_update_units = fl_gru_rb_update_avx2, .exp_scaled_units = fl_exp_scaled_avx2,   \
    }

static const fl_kernel_table fl_kernels_avx2 =
    FL_VECTOR_PATH(FL_ISA_AVX2, fl_i8_quantize_row_for_avx2, fl_i8_block_tiles_avx2);
static const fl_kernel_table fl_kernels_avx512 =  /* int8 on AVX512-VNNI's vpdpbusd */
    FL_VECTOR_PATH(FL_ISA_AVX512, fl_i8_quantize_row_for_vnni, fl_i8_block_tiles_vnni);
#undef FL_VECTOR_PATH
#endif

static const fl_kernel_table *fl_kernels = &fl_kernels_portable;

/* Run this module's kernels on path `isa` (enum fl_isa); returns 0, or -1 (and changes
 * nothing) if the CPU lacks it. */
static inline int fl_set_isa(int isa)
{
    if (!fl_isa_supported(isa))
        return -1;
#if FL_HAVE_X86_PATHS
    if (isa == FL_ISA_AVX2)
        fl_kernels = &fl_kernels_avx2;
    else if (isa == FL_ISA_AVX512)
        fl_kernels = &fl_kernels_avx512;
    else
#endif
        fl_kernels = &fl_kernels_portable;
    return 0;
}

/* This module's path (enum fl_isa). */
static inline int fl_active_isa(void) { return fl_kernels->isa; }

/* Whether fl_matmul and fl_gather_rows run vector kernels (the AVX2 or AVX-512 path). */
static inline int fl_matmul_has_avx2(void) { return fl_kernels->isa >= FL_ISA_AVX2; }

/* fl_matmul on the portable path, whatever the CPU: for tests. */
static inline void fl_matmul_scalar(int m, const fl_matrix *W, const float *x, int ldx,
                                    const float *bias, int accumulate, float *y, int ldy)
{
    fl_matmul_on(&fl_kernels_portable, m, W, x, ldx, bias, accumulate, y, ldy);
}

#endif /* FASTLSTM_KERNELS_H */
