/* fastlstm's kernel paths: which instruction sets the matrix products and the gate math use.
 *
 *   FL_ISA_PORTABLE  plain C (fmaf, the same operations in the same order)
 *   FL_ISA_AVX2      AVX2 + FMA + F16C: 256-bit tiles and gate math
 *   FL_ISA_AVX512    FL_ISA_AVX2, plus AVX512-VNNI (vpdpbusd on 256-bit registers) for the
 *                    exact int8 sums; needs avx512f, avx512vl, avx512bw and avx512vnni
 *
 * Every path computes bitwise the same results (matmul.h and gates.h say why for each
 * kernel).  The path is chosen once per process, in Python (fastlstm.isa: the best the CPU
 * has, or FASTLSTM_ISA), and handed to each compiled module with fl_set_isa before any kernel
 * runs; the kernels then read fl_isa_active, a plain int that never changes during a call.
 */
#ifndef FASTLSTM_ISA_H
#define FASTLSTM_ISA_H

enum fl_isa { FL_ISA_PORTABLE = 0, FL_ISA_AVX2 = 1, FL_ISA_AVX512 = 2 };

#if defined(__GNUC__) && defined(__x86_64__)
#define FL_HAVE_X86_PATHS 1
#else
#define FL_HAVE_X86_PATHS 0
#endif

/* The path this module's kernels run (each extension module holds its own copy, set at
 * import).  Portable until fl_set_isa says otherwise. */
static int fl_isa_active = FL_ISA_PORTABLE;

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

/* Select the path; returns 0, or -1 (and changes nothing) if the CPU lacks it. */
static inline int fl_set_isa(int isa)
{
    if (isa < FL_ISA_PORTABLE || isa > FL_ISA_AVX512 || !fl_isa_supported(isa))
        return -1;
    fl_isa_active = isa;
    return 0;
}

#endif /* FASTLSTM_ISA_H */
