# fastlstm._generate: the decode loop.  Per generated token, for every running sequence:
#
#   last token -> layer 0 input (lookup-table row, or embedding row . W_ih^T)
#   -> each layer: gate GEMM/GEMV (matmul.h, on the weights in the model's precision)
#      -> fused cell update
#   -> head GEMM -> logits -> sampler (sampler.pxd) -> next id -> stop checks
#
# all inside one nogil loop.  Sequences ("rows") are split across OpenMP threads; each
# thread keeps its running rows packed at the front of its range of state "slots", so rows
# that have stopped cost nothing further.  A call runs at most `steps` tokens and can be
# called again to continue (streaming): everything it needs lives in the Decoder's arrays.
#
# fastlstm.generation validates every input and owns these arrays; this module trusts them.

from cython.parallel cimport prange
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
cimport openmp
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from matmul cimport fl_matmul, fl_matrix
from sampler cimport Candidate, SamplingParams, coin, sample_token
from stack cimport (Layer, Rows, cell_code, fill_layer0_input, fill_matrix, float_ptr,
                    gates_of, gather_rows, input_projection, layer_step, layers_from_packed)

import numpy as np


cdef extern from "Python.h":
    # Runs Python's signal handlers; -1 with the exception set if one raised.  Needs the GIL.
    int PyErr_CheckSignals()


cdef inline long long now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1_000_000_000LL + ts.tv_nsec


cdef inline bint interrupted(int *cancel, bint watch, long long *next_check) noexcept nogil:
    """Whether to stop now.  The watching thread (the Python thread that called, when that is
    the main thread) takes the GIL every 10 ms to run signal handlers; a KeyboardInterrupt
    stays set as the pending exception, and `cancel` stops every thread."""
    cdef long long t
    if watch:
        t = now_ns()
        if t >= next_check[0]:
            next_check[0] = t + SIGNAL_CHECK_NS
            with gil:
                if PyErr_CheckSignals() < 0:
                    cancel[0] = 1
    return cancel[0] != 0


cdef int raise_pending() except -1:
    """Hand the exception a signal handler left pending to Cython's error handling."""
    return -1

cdef enum:
    OK = 0
    NO_MEMORY = -1
    NAN_LOGITS = -2
    INTERRUPTED = -3

# How often the calling thread looks for a pending signal (Ctrl-C) while it generates.
cdef long long SIGNAL_CHECK_NS = 10_000_000


cdef struct Run:
    int cell, num_layers, batch, vocab, max_new
    Layer *layers
    Rows emb                 # (vocab, in0); .data NULL when table is set
    Rows table               # (vocab, gates*hidden0): layer 0's input projection per token
    fl_matrix head           # (vocab, out_last) in matmul.h's panels
    const float *head_b      # (vocab,) or NULL
    SamplingParams params
    # Per slot (slot s holds row order[s]):
    float *h                 # (num_layers, batch, out_size)
    float *c                 # (num_layers, batch, hidden), LSTM only
    int64_t *last            # (batch,)  the token to feed next
    int64_t *order           # (batch,)  slot -> row
    # Per row:
    int64_t *out             # (batch, max_new)  generated ids; -1 past the end
    int64_t *length          # (batch,)  tokens generated so far
    uint8_t *seen            # (batch, vocab)  ids in the sequence, for repetition_penalty; or NULL
    const uint64_t *seed     # (batch,)
    const uint64_t *stream   # (batch,)
    # Stop conditions: eos ids, and token sequences whose appearance ends a row.
    const int64_t *eos
    int n_eos
    const int64_t *stops     # concatenated stop sequences
    const int64_t *stop_end  # (n_stops,) end offset of each in `stops`
    int n_stops


cdef inline bint ends_with_stop(const Run *run, const int64_t *ids, int64_t n) noexcept nogil:
    """Whether the row's generated ids[:n] end with an eos id or a stop sequence."""
    cdef int k, start = 0, m, j
    cdef bint match
    for k in range(run.n_eos):
        if ids[n - 1] == run.eos[k]:
            return True
    for k in range(run.n_stops):
        m = <int> run.stop_end[k] - start
        if m <= n:
            match = True
            for j in range(m):
                if ids[n - m + j] != run.stops[start + j]:
                    match = False
                    break
            if match:
                return True
        start = <int> run.stop_end[k]
    return False


cdef inline void swap_slots(Run *run, int a, int b, float *tmp) noexcept nogil:
    """Exchange everything held per slot between slots a and b."""
    cdef int l, n
    cdef int64_t t
    cdef float *pa
    cdef float *pb
    for l in range(run.num_layers):
        n = run.layers[l].out_size
        pa = run.h + (<size_t> l * run.batch + a) * n
        pb = run.h + (<size_t> l * run.batch + b) * n
        memcpy(tmp, pa, n * sizeof(float)); memcpy(pa, pb, n * sizeof(float)); memcpy(pb, tmp, n * sizeof(float))
        if run.c != NULL:
            n = run.layers[l].hidden
            pa = run.c + (<size_t> l * run.batch + a) * n
            pb = run.c + (<size_t> l * run.batch + b) * n
            memcpy(tmp, pa, n * sizeof(float)); memcpy(pa, pb, n * sizeof(float)); memcpy(pb, tmp, n * sizeof(float))
    t = run.last[a]; run.last[a] = run.last[b]; run.last[b] = t
    t = run.order[a]; run.order[a] = run.order[b]; run.order[b] = t


cdef int decode_slots(Run *run, int begin, int *n_active, int steps, int *cancel,
                      bint watch) noexcept nogil:
    """Generate up to `steps` tokens for the running rows in slots [begin, begin + *n_active).
    Rows that stop are moved behind the running ones and *n_active shrinks."""
    cdef int G = gates_of(run.cell), V = run.vocab
    cdef int l, i, step, n, width = 0, gw = 0, hid = 0, status = OK
    cdef int64_t row, token
    cdef const Layer *L
    cdef float *h_l
    cdef float *x      # (rows, in0): embedding rows, when there is no table
    cdef float *xw     # (rows, gates*hidden)
    cdef float *hw     # (rows, gates*hidden)
    cdef float *hfull  # (rows, hidden)
    cdef float *logits # (rows, vocab)
    cdef float *scores # (vocab,)
    cdef Candidate *cand
    cdef uint8_t *done
    cdef int rows = n_active[0]
    if rows == 0:
        return OK
    for l in range(run.num_layers):
        L = &run.layers[l]
        width = max(width, max(L.in_size, L.out_size))
        gw = max(gw, G * L.hidden)
        hid = max(hid, L.hidden)
    x = <float *> malloc(<size_t> rows * width * sizeof(float))
    xw = <float *> malloc(<size_t> rows * gw * sizeof(float))
    hw = <float *> malloc(<size_t> rows * gw * sizeof(float))
    hfull = <float *> malloc(<size_t> rows * hid * sizeof(float))
    logits = <float *> malloc(<size_t> rows * V * sizeof(float))
    scores = <float *> malloc(<size_t> V * sizeof(float))
    cand = <Candidate *> malloc(<size_t> V * sizeof(Candidate))
    done = <uint8_t *> malloc(<size_t> rows)
    if not (x and xw and hw and hfull and logits and scores and cand and done):
        status = NO_MEMORY
        steps = 0

    cdef long long next_check = 0
    for step in range(steps):
        if interrupted(cancel, watch, &next_check):
            status = INTERRUPTED
            break
        n = n_active[0]
        if n == 0:
            break
        # Layer 0 input of each running slot.
        L = &run.layers[0]
        if run.table.data != NULL:
            gather_rows(&run.table, run.last + begin, n, xw, G * L.hidden)
        else:
            gather_rows(&run.emb, run.last + begin, n, x, L.in_size)
            input_projection(L, G, n, x, xw, True)
        for l in range(run.num_layers):
            L = &run.layers[l]
            h_l = run.h + (<size_t> l * run.batch + begin) * L.out_size
            if l > 0:  # input: the new h of the layer below
                input_projection(L, G, n, run.h + (<size_t> (l - 1) * run.batch + begin) * L.in_size, xw, True)
            layer_step(run.cell, L, n, xw, h_l, h_l,
                       run.c + (<size_t> l * run.batch + begin) * L.hidden if run.c != NULL else NULL,
                       hw, hfull, True)
        # Head: logits := h_top . W_head^T + b_head
        L = &run.layers[run.num_layers - 1]
        fl_matmul(n, &run.head,
                  run.h + (<size_t> (run.num_layers - 1) * run.batch + begin) * L.out_size,
                  L.out_size, run.head_b, 0, logits, V)

        # Sample, record, check stops.
        for i in range(n):
            row = run.order[begin + i]
            token = sample_token(logits + <size_t> i * V, V,
                                 run.seen + <size_t> row * V if run.seen != NULL else NULL,
                                 &run.params, coin(run.seed[row], run.stream[row], run.length[row]),
                                 scores, cand)
            if token < 0:
                status = NAN_LOGITS
                cancel[0] = 1  # the call fails: the other threads need not finish their rows
                break
            run.out[row * run.max_new + run.length[row]] = token
            run.length[row] += 1
            if run.seen != NULL:
                run.seen[row * V + token] = 1
            run.last[begin + i] = token
            done[i] = run.length[row] >= run.max_new or ends_with_stop(
                run, run.out + row * run.max_new, run.length[row])
        if status != OK:
            break
        # Move stopped rows behind the running ones (from the back, so indices stay valid).
        for i in range(n - 1, -1, -1):
            if done[i]:
                n_active[0] -= 1
                if i != n_active[0]:
                    swap_slots(run, begin + i, begin + n_active[0], hfull)
                    done[i] = done[n_active[0]]

    free(x); free(xw); free(hw); free(hfull); free(logits); free(scores); free(cand); free(done)
    return status


def decode(str rnn_type, list layers, *, emb, table, head, int vocab, head_b,
           h, c, last, order, out, length, seen, seed, stream, eos, stops, stop_end,
           slot_begin, n_active, double temperature, int top_k, double top_p, double min_p,
           double repetition_penalty, int steps, bint watch_signals=False):
    """Run up to `steps` decode steps for every running row (see fastlstm.generation.Decoder,
    which owns and documents every array).  Thread t works on slots [slot_begin[t],
    slot_begin[t+1]), of which the first n_active[t] are running.  Raises FloatingPointError
    if the logits of a row hold NaN or +inf, and whatever a signal handler raised (Ctrl-C:
    KeyboardInterrupt) when watch_signals is set; the run is then left mid-step.
    watch_signals: the caller is Python's main thread, so signals can be handled here."""
    cdef Run run
    cdef int cancel = 0
    cdef int t, nthreads = len(n_active), failed = OK
    cdef int64_t[::1] last_v = last, order_v = order, length_v = length
    cdef int64_t[:, ::1] out_v = out
    cdef const uint64_t[::1] seed_v = seed, stream_v = stream
    cdef const int64_t[::1] eos_v = eos, stops_v = stops, stop_end_v = stop_end
    cdef uint8_t[:, ::1] seen_v
    cdef int[::1] begin_v = slot_begin, active_v = n_active
    cdef int[::1] status = np.zeros(nthreads, dtype=np.intc)
    cdef int64_t dummy = 0

    run.cell = cell_code(rnn_type)
    run.num_layers = len(layers)
    run.batch = last_v.shape[0]
    run.vocab = vocab
    run.max_new = out_v.shape[1]
    fill_layer0_input(&run.emb, &run.table, emb, table)
    if run.emb.data == NULL and run.table.data == NULL:
        raise ValueError("layer 0 needs an embedding or a lookup table")
    fill_matrix(&run.head, head, "head")
    run.head_b = float_ptr(head_b, "head_b", True)
    run.params.temperature = temperature
    run.params.top_k = top_k
    run.params.top_p = top_p
    run.params.min_p = min_p
    run.params.repetition_penalty = repetition_penalty
    run.h = <float *> float_ptr(h, "h")
    run.c = <float *> float_ptr(c, "c", True)
    run.last = &last_v[0]
    run.order = &order_v[0]
    run.out = &out_v[0, 0]
    run.length = &length_v[0]
    run.seen = NULL
    if seen is not None:
        seen_v = seen
        run.seen = &seen_v[0, 0]
    run.seed = &seed_v[0]
    run.stream = &stream_v[0]
    run.n_eos = eos_v.shape[0]
    run.eos = &eos_v[0] if run.n_eos else &dummy
    run.n_stops = stop_end_v.shape[0]
    run.stop_end = &stop_end_v[0] if run.n_stops else &dummy
    run.stops = &stops_v[0] if stops_v.shape[0] else &dummy

    run.layers = layers_from_packed(layers)
    try:
        with nogil:
            for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
                status[t] = decode_slots(&run, begin_v[t], &active_v[t], steps, &cancel,
                                         watch_signals and openmp.omp_get_thread_num() == 0)
    finally:
        free(run.layers)
    for t in range(nthreads):
        if status[t] != OK and failed != NAN_LOGITS:
            failed = status[t]
    if failed == NO_MEMORY:
        raise MemoryError("fastlstm: could not allocate the decode loop's scratch buffers")
    if failed == NAN_LOGITS:
        raise FloatingPointError("the model produced NaN or infinite logits; no token was "
                                 "sampled from them")
    if failed == INTERRUPTED or cancel:
        raise_pending()


def sample(logits, seen=None, *, double temperature=1.0, int top_k=0, double top_p=1.0,
           double min_p=0.0, double repetition_penalty=1.0, double coin_value=0.5):
    """The sampler on one row of logits with a given coin, for tests (Python-callable twin of
    the nogil sampler the decode loop runs).  Returns the token id, or -1 for NaN logits."""
    cdef const float[::1] row = np.ascontiguousarray(logits, dtype=np.float32)
    cdef const uint8_t[::1] seen_v
    cdef const uint8_t *seen_p = NULL
    cdef SamplingParams p
    cdef int V = row.shape[0], token
    if V == 0:
        raise ValueError("empty logits")
    if seen is not None:
        seen_v = np.ascontiguousarray(seen, dtype=np.uint8)
        if seen_v.shape[0] != V:
            raise ValueError("seen must have one entry per logit")
        seen_p = &seen_v[0]
    p.temperature = temperature
    p.top_k = top_k
    p.top_p = top_p
    p.min_p = min_p
    p.repetition_penalty = repetition_penalty
    cdef float[::1] scores = np.empty(V, np.float32)
    cdef Candidate *cand = <Candidate *> malloc(V * sizeof(Candidate))
    if cand == NULL:
        raise MemoryError()
    token = sample_token(&row[0], V, seen_p, &p, <float> coin_value, &scores[0], cand)
    free(cand)
    return token


def coins(uint64_t seed, uint64_t stream, int64_t start, int64_t count):
    """The decode loop's random coins for (seed, stream) at steps [start, start + count)."""
    cdef int64_t i
    result = np.empty(count, np.float32)
    cdef float[::1] view = result
    for i in range(count):
        view[i] = coin(seed, stream, start + i)
    return result
