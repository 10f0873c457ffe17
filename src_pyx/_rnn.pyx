# fastlstm._rnn: the forward pass of a stack of recurrent layers over whole sequences.
#
# Data flow for one call (all in C, GIL released):
#   input rows (floats, or token ids -> embedding rows, or ids -> layer-0 lookup table)
#   -> per layer: one GEMM for the input projections of a chunk of time steps,
#                 then per step one GEMM/GEMV with W_hh and the fused cell update
#   -> output rows (floats), or the head GEMM straight into the caller's logits.
# Batch rows are split across OpenMP threads; each thread runs the whole stack for its rows
# with its own scratch, allocated once per call.  float32 models multiply with
# single-threaded BLAS; models stored in float16, bfloat16 or int8 with matmul.h's kernel
# on their panels (BLAS has no such weights).
#
# The Python layer (fastlstm.model, fastlstm.layers) validates every argument, allocates the
# outputs and packs the weights; this module trusts what it is given.

from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from blas cimport matmul_wt
from matmul cimport fl_matmul, fl_matrix
from stack cimport (Layer, Rows, cell_code, fill_layer0_input, fill_matrix, float_ptr,
                    gates_of, gather_rows, input_projection, layer_step, layers_from_packed)

cimport openmp

import numpy as np

# Rows (time steps x batch rows) per input-projection GEMM: large enough for BLAS to run at
# full speed, small enough that a thread's scratch stays a few MB.
cdef enum:
    ROWS_PER_CHUNK = 256


cdef struct Job:
    int cell, num_layers, batch, steps
    Layer *layers
    bint blas              # multiply with BLAS (float32 row-major weights), else matmul.h
    # Input: exactly one of x (batch, steps, in0), emb (vocab, in0), table (vocab, gates*hidden0).
    const float *x
    const int64_t *ids     # (batch, steps), with emb or table
    Rows emb               # .data NULL when absent
    Rows table             # layer 0's input projections precomputed per token; .data NULL if absent
    # Output: y (batch, steps, out_last), or logits (batch, steps, vocab) through the head.
    float *y
    float *logits
    const float *head_w    # (vocab, out_last) row-major, for BLAS
    fl_matrix head_p       # the same in panels, for matmul.h
    const float *head_b    # (vocab,) or NULL
    int vocab
    # State, read as the initial state and overwritten with the final one.
    float *h               # (num_layers, batch, out_size)
    float *c               # (num_layers, batch, hidden)   LSTM only


cdef int run_rows(const Job *job, int b0, int b1) noexcept nogil:
    """Run the whole stack over all time steps for batch rows [b0, b1).  Returns 0, or -1 if
    the scratch could not be allocated."""
    cdef int nb = b1 - b0
    cdef int T = job.steps, G = gates_of(job.cell)
    cdef int l, s, r, t0, tc, width = 0, gw = 0, hid = 0
    cdef int chunk = ROWS_PER_CHUNK // nb if nb < ROWS_PER_CHUNK else 1
    cdef const Layer *L
    cdef float *inp
    cdef float *out
    cdef float *tmp
    cdef float *xw
    cdef float *hw
    cdef float *hfull
    cdef float *h_state
    cdef float *c_state
    cdef float beta

    if chunk > T:
        chunk = T
    for l in range(job.num_layers):
        L = &job.layers[l]
        width = max(width, max(L.in_size, L.out_size))
        gw = max(gw, G * L.hidden)
        hid = max(hid, L.hidden)

    # Time-major scratch: row (s, r) of a chunk is step t0+s of batch row b0+r, so all rows of
    # one step are contiguous and h_prev for step s is simply out[s-1].
    inp = <float *> malloc(<size_t> chunk * nb * width * sizeof(float))
    out = <float *> malloc(<size_t> chunk * nb * width * sizeof(float))
    xw = <float *> malloc(<size_t> chunk * nb * gw * sizeof(float))
    hw = <float *> malloc(<size_t> nb * gw * sizeof(float))
    hfull = <float *> malloc(<size_t> nb * hid * sizeof(float))
    if inp == NULL or out == NULL or xw == NULL or hw == NULL or hfull == NULL:
        free(inp); free(out); free(xw); free(hw); free(hfull)
        return -1

    t0 = 0
    while t0 < T:
        tc = min(chunk, T - t0)

        # Layer 0's input rows for this chunk.
        for s in range(tc):
            for r in range(nb):
                if job.table.data != NULL:
                    gather_rows(&job.table, &job.ids[<size_t> (b0 + r) * T + t0 + s], 1,
                                xw + (<size_t> s * nb + r) * G * job.layers[0].hidden, 0)
                elif job.emb.data != NULL:
                    gather_rows(&job.emb, &job.ids[<size_t> (b0 + r) * T + t0 + s], 1,
                                inp + (<size_t> s * nb + r) * job.layers[0].in_size, 0)
                else:
                    memcpy(inp + (<size_t> s * nb + r) * job.layers[0].in_size,
                           job.x + (<size_t> (b0 + r) * T + t0 + s) * job.layers[0].in_size,
                           job.layers[0].in_size * sizeof(float))

        for l in range(job.num_layers):
            L = &job.layers[l]
            h_state = job.h + (<size_t> l * job.batch + b0) * L.out_size
            c_state = job.c + (<size_t> l * job.batch + b0) * L.hidden if job.c != NULL else NULL

            # xw := inp . W_ih^T + bias_x, one GEMM for the whole chunk.
            if not (l == 0 and job.table.data != NULL):
                input_projection(L, G, tc * nb, inp, xw, not job.blas)
            for s in range(tc):
                # h_prev of step s is out[s-1], contiguous thanks to the time-major layout.
                layer_step(job.cell, L, nb, xw + <size_t> s * nb * G * L.hidden,
                           h_state if s == 0 else out + <size_t> (s - 1) * nb * L.out_size,
                           out + <size_t> s * nb * L.out_size, c_state, hw, hfull, not job.blas)
            memcpy(h_state, out + <size_t> (tc - 1) * nb * L.out_size,
                   <size_t> nb * L.out_size * sizeof(float))
            tmp = inp
            inp = out
            out = tmp

        # inp now holds the top layer's output for the chunk, time-major (tc, nb, out_last).
        L = &job.layers[job.num_layers - 1]
        if job.logits != NULL and not job.blas:
            # logits := top . W_head^T + bias, per batch row or per step as below.
            if tc >= nb:
                for r in range(nb):
                    fl_matmul(tc, &job.head_p, inp + <size_t> r * L.out_size, nb * L.out_size,
                              job.head_b, 0, job.logits + (<size_t> (b0 + r) * T + t0) * job.vocab,
                              job.vocab)
            else:
                for s in range(tc):
                    fl_matmul(nb, &job.head_p, inp + <size_t> s * nb * L.out_size, L.out_size,
                              job.head_b, 0, job.logits + (<size_t> b0 * T + t0 + s) * job.vocab,
                              T * job.vocab)
        elif job.logits != NULL:
            beta = 0.0
            if job.head_b != NULL:
                beta = 1.0
                for r in range(nb):
                    for s in range(tc):
                        memcpy(job.logits + (<size_t> (b0 + r) * T + t0 + s) * job.vocab,
                               job.head_b, job.vocab * sizeof(float))
            # logits := top . W_head^T (+ bias), in as few GEMMs as the layouts allow: one per
            # batch row (its steps are nb rows apart in inp, contiguous in the logits), or one
            # per step (its rows are `steps * vocab` apart in the caller's logits).
            if tc >= nb:
                for r in range(nb):
                    matmul_wt(tc, job.vocab, L.out_size, inp + <size_t> r * L.out_size,
                              nb * L.out_size, job.head_w, beta,
                              job.logits + (<size_t> (b0 + r) * T + t0) * job.vocab, job.vocab)
            else:
                for s in range(tc):
                    matmul_wt(nb, job.vocab, L.out_size, inp + <size_t> s * nb * L.out_size,
                              L.out_size, job.head_w, beta,
                              job.logits + (<size_t> b0 * T + t0 + s) * job.vocab, T * job.vocab)
        elif job.y != NULL:
            for s in range(tc):
                for r in range(nb):
                    memcpy(job.y + (<size_t> (b0 + r) * T + t0 + s) * L.out_size,
                           inp + (<size_t> s * nb + r) * L.out_size, L.out_size * sizeof(float))
        t0 += tc

    free(inp); free(out); free(xw); free(hw); free(hfull)
    return 0


def max_threads():
    """omp_get_max_threads(): OMP_NUM_THREADS if set, else the cores this process may use."""
    return openmp.omp_get_max_threads()


cdef bint use_blas(list layers, head_w, logits) except -1:
    """BLAS when every weight is also held row-major in float32 (float32 models)."""
    return all(layer.w_ih is not None for layer in layers) and (logits is None or head_w is not None)


def forward(str rnn_type, list layers, *, h, c=None, x=None, ids=None, emb=None, table=None,
            y=None, logits=None, head=None, head_w=None, head_b=None, int num_threads=1):
    """Run `layers` (a list of fastlstm.pack.PackedLayer) over a batch of sequences.

    The input is `x` (batch, steps, in0) float32, or `ids` (batch, steps) int64 with `emb`
    (vocab, in0) or with `table` (vocab, gates*hidden0), both fastlstm.precision.Stored.  The
    output goes to `y` (batch, steps, out_last), or through the head (`head`, a PackedMatrix
    (vocab, out_last); `head_w`, the same row-major float32 for BLAS; `head_b` (vocab,)) into
    `logits` (batch, steps, vocab); with neither, only the state is computed.  `h`
    (num_layers, batch, out) and `c` (num_layers, batch, hidden) hold the initial state and
    receive the final one.  All arrays C-contiguous; every shape was checked by the caller.
    """
    cdef Job job
    cdef int n = len(layers), i, tid, nthreads, per, extra, failed = 0
    cdef int[::1] status
    cdef const int64_t[:, ::1] ids_view
    job.cell = cell_code(rnn_type)
    job.num_layers = n
    job.h = <float *> float_ptr(h, "h")
    job.c = <float *> float_ptr(c, "c", True)
    job.x = float_ptr(x, "x", True)
    fill_layer0_input(&job.emb, &job.table, emb, table)
    job.y = <float *> float_ptr(y, "y", True)
    job.logits = <float *> float_ptr(logits, "logits", True)
    job.blas = use_blas(layers, head_w, logits)
    job.head_w = float_ptr(head_w, "head_w", True)
    fill_matrix(&job.head_p, head, "head", True)
    if logits is not None and not job.blas and head is None:
        raise ValueError("logits need the head's panels")
    job.head_b = float_ptr(head_b, "head_b", True)
    job.ids = NULL
    if ids is not None:
        ids_view = ids
        job.batch, job.steps = ids_view.shape[0], ids_view.shape[1]
        job.ids = &ids_view[0, 0]
    else:
        job.batch, job.steps = x.shape[0], x.shape[1]
    job.vocab = logits.shape[2] if logits is not None else 0

    job.layers = layers_from_packed(layers)
    try:
        nthreads = max(1, min(num_threads, job.batch))
        status = np.zeros(nthreads, dtype=np.intc)
        per = job.batch // nthreads
        extra = job.batch % nthreads
        with nogil:
            for tid in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
                # Thread tid takes rows [tid*per + min(tid, extra), ...), one more if tid < extra.
                status[tid] = run_rows(&job, tid * per + min(tid, extra),
                                       (tid + 1) * per + min(tid + 1, extra))
        for i in range(nthreads):
            failed |= status[i]
    finally:
        free(job.layers)
    if failed:
        raise MemoryError("fastlstm: could not allocate the kernel's scratch buffers")


def prefill(str rnn_type, list layers, *, ids, offsets, h, c=None, emb=None, table=None,
            int num_threads=1):
    """Run each prompt of a ragged batch on its own, from a zero state, and keep only the
    final state: prompt p is ids[offsets[p]:offsets[p+1]] (at least one id) and its state
    goes to h[p] (num_layers, out_size) and c[p] (num_layers, hidden).

    A prompt's state is computed exactly as if it were alone (the same GEMM shapes whatever
    else is in the batch), which is what makes seeded generation reproducible.  Prompts are
    spread over threads; each runs with one-row products.
    """
    cdef Job base
    cdef const int64_t[::1] ids_view = ids
    cdef const int64_t[::1] offsets_view = offsets
    cdef int p, n_prompts = offsets_view.shape[0] - 1, failed = 0
    cdef int[::1] status = np.zeros(max(n_prompts, 1), dtype=np.intc)
    cdef Job *jobs
    base.cell = cell_code(rnn_type)
    base.num_layers = len(layers)
    base.batch = 1
    base.x = NULL
    fill_layer0_input(&base.emb, &base.table, emb, table)
    base.blas = use_blas(layers, None, None)
    base.y = NULL
    base.logits = NULL
    base.head_w = NULL
    base.head_p.panels = NULL
    base.head_b = NULL
    base.vocab = 0
    cdef float *h_all = <float *> float_ptr(h, "h")
    cdef float *c_all = <float *> float_ptr(c, "c", True)
    cdef int h_stride = h.shape[1] * h.shape[2], c_stride = c.shape[1] * c.shape[2] if c is not None else 0
    if n_prompts <= 0:
        return
    jobs = <Job *> malloc(n_prompts * sizeof(Job))
    if jobs == NULL:
        raise MemoryError()
    base.layers = NULL
    try:
        base.layers = layers_from_packed(layers)
        for p in range(n_prompts):
            jobs[p] = base
            jobs[p].ids = &ids_view[offsets_view[p]]
            jobs[p].steps = <int> (offsets_view[p + 1] - offsets_view[p])
            jobs[p].h = h_all + <size_t> p * h_stride
            jobs[p].c = c_all + <size_t> p * c_stride if c_all != NULL else NULL
        with nogil:
            for p in prange(n_prompts, num_threads=max(1, min(num_threads, n_prompts)),
                            schedule="dynamic"):
                status[p] = run_rows(&jobs[p], 0, 1)
        for p in range(n_prompts):
            failed |= status[p]
    finally:
        free(base.layers)
        free(jobs)
    if failed:
        raise MemoryError("fastlstm: could not allocate the kernel's scratch buffers")
