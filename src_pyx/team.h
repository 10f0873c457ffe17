/* Threads that share one product: the OpenMP barrier fastlstm's kernels meet at.
 *
 * When a batch has fewer sequences than threads (batch 1 above all), the threads of one
 * OpenMP parallel region work on the same sequences together: each multiplies its share of
 * every weight matrix's panels (matmul.h's fl_matmul_part) and updates its share of the
 * hidden units (gates.h), and they meet here between the steps that read what another
 * thread wrote.  The barrier is orphaned: it binds to the parallel region of the caller.
 */
#ifndef FASTLSTM_TEAM_H
#define FASTLSTM_TEAM_H

static inline void fl_barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}

#endif /* FASTLSTM_TEAM_H */
