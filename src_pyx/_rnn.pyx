# fastlstm._rnn: the forward pass of a stack of recurrent layers over whole sequences.
#
# Data flow for one call (all in C, GIL released):
#   input rows (floats, or token ids -> embedding rows, or ids -> layer-0 lookup table)
#   -> per layer: one GEMM for the input projections of a chunk of time steps,
#                 then per step one GEMM/GEMV with W_hh and the fused cell update
#   -> output rows (floats), or the head GEMM straight into the caller's logits.
# Batch rows are split across OpenMP threads; each thread runs the whole stack for its rows
# with its own scratch, allocated once per call.  With fewer rows than threads (batch 1),
# the threads form one team that shares every product by panels and every cell update by
# hidden units (stack.pxd's Team), meeting at a barrier between them.  Products run on
# matmul.h's kernels on the panels, so a row's bits depend neither on the batch nor on the
# thread count; only float32 models on CPUs without matmul.h's vector paths hold row-major
# copies too, which forward() then multiplies with single-threaded BLAS when each thread
# has rows of its own (prefill never does: its bits must not depend on the thread count).
#
# The Python layer (fastlstm.model, fastlstm.forecaster, fastlstm.layers) validates every
# argument and allocates the outputs; the weights come as a fastlstm._packed.PackedModel,
# checked when it was built.  run_rows walks a chunk of steps at a time: gather_input,
# layer_chunk per layer, write_output.

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from stack cimport (Layer, Stack, Team, float_ptr, gates_of, gather_rows, head_product,
                    input_projection, layer_step, run_split, sync, sync_after_solo, team_end,
                    team_of, team_solo_over, team_solo_now, team_take_waits, team_wants_solo,
                    fl_get_team_solo_until, fl_team, fl_team_free, fl_team_new)
from fastlstm._packed cimport PackedModel

cimport openmp

import numpy as np

include "isa.pxi"

# Rows (time steps x batch rows) per input-projection GEMM: large enough for BLAS to run at
# full speed, small enough that a thread's scratch stays a few MB.  A team asks whether
# thread 0 should work alone (stack.pxd's team_wants_solo) every TEAM_CHECK_STEPS steps.
cdef enum:
    ROWS_PER_CHUNK = 256
    TEAM_CHECK_STEPS = 8


cdef struct Job:
    const Stack *model     # the weights (fastlstm._packed.PackedModel)
    int batch, steps
    bint blas              # multiply with BLAS (float32 row-major weights), else matmul.h
    # Input: x (batch, steps, in0), or ids (batch, steps) for the model's emb or table.
    const float *x
    const int64_t *ids
    # Output: y (batch, steps, out_last), or logits (batch, steps, vocab) through the head.
    float *y
    float *logits          # (batch, steps, model.head.n)
    # State, read as the initial state and overwritten with the final one.
    float *h               # (num_layers, batch, out_size)
    float *c               # (num_layers, batch, hidden)   LSTM only


cdef struct Scratch:
    # One thread's (or one team's) buffers for nb batch rows, time-major: row (s, r) of a
    # chunk is step t0+s of batch row b0+r, so all rows of one step are contiguous and h_prev
    # for step s is simply out[s-1].
    int chunk              # time steps per chunk
    float *inp             # (chunk, nb, width)
    float *out             # (chunk, nb, width)
    float *xw              # (chunk, nb, gates*hidden)
    float *hw              # (nb, gates*hidden)
    float *hfull           # (nb, hidden)
    # A team's word from thread 0 (steps_alone): whether it works alone, and from which step
    # the team goes on.
    int solo
    int resume


cdef bint scratch_alloc(Scratch *s, const Job *job, int nb) noexcept nogil:
    """Allocate s for nb batch rows; False (everything freed) if memory ran out."""
    cdef int width = job.model.max_width, gw = job.model.max_gates, hid = job.model.max_hidden
    s.chunk = min(ROWS_PER_CHUNK // nb if nb < ROWS_PER_CHUNK else 1, job.steps)
    s.inp = <float *> malloc(<size_t> s.chunk * nb * width * sizeof(float))
    s.out = <float *> malloc(<size_t> s.chunk * nb * width * sizeof(float))
    s.xw = <float *> malloc(<size_t> s.chunk * nb * gw * sizeof(float))
    s.hw = <float *> malloc(<size_t> nb * gw * sizeof(float))
    s.hfull = <float *> malloc(<size_t> nb * hid * sizeof(float))
    if s.inp and s.out and s.xw and s.hw and s.hfull:
        return True
    scratch_free(s)
    return False


cdef void scratch_free(Scratch *s) noexcept nogil:
    free(s.inp); free(s.out); free(s.xw); free(s.hw); free(s.hfull)
    s.inp = s.out = s.xw = s.hw = s.hfull = NULL


cdef void gather_input(const Job *job, int b0, int nb, int t0, int tc, float *inp,
                       Scratch *s) noexcept nogil:
    """Layer 0's input rows for steps [t0, t0 + tc): table rows into s.xw, or embedding rows
    or the caller's floats into `inp`, the buffer layer 0 reads this chunk (s.inp or s.out:
    run_rows swaps them after every layer, so with an odd number of layers they alternate
    from chunk to chunk)."""
    cdef int st, r, T = job.steps
    cdef const Stack *m = job.model
    cdef const Layer *L0 = &m.layers[0]
    cdef int G = gates_of(m.cell)
    for st in range(tc):
        for r in range(nb):
            if job.x == NULL and m.table.data != NULL:
                gather_rows(&m.table, &job.ids[<size_t> (b0 + r) * T + t0 + st], 1,
                            s.xw + (<size_t> st * nb + r) * G * L0.hidden, 0)
            elif job.x == NULL:
                gather_rows(&m.emb, &job.ids[<size_t> (b0 + r) * T + t0 + st], 1,
                            inp + (<size_t> st * nb + r) * L0.in_size, 0)
            else:
                memcpy(inp + (<size_t> st * nb + r) * L0.in_size,
                       job.x + (<size_t> (b0 + r) * T + t0 + st) * L0.in_size,
                       L0.in_size * sizeof(float))


cdef void write_output(const Job *job, int b0, int nb, int t0, int tc, const float *top,
                       const Team *team) noexcept nogil:
    """The chunk's top-layer output `top`, time-major (tc, nb, out_last), to the caller: through
    the head into logits[b0:b0+nb, t0:t0+tc], or (thread 0) copied into y.  The head takes as
    few products as the layouts allow: one per batch row (its steps are nb rows apart in top,
    contiguous in the logits), or one per step (its rows are steps * vocab apart in the
    caller's logits)."""
    cdef const Stack *m = job.model
    cdef int r, st, T = job.steps, V = m.head.n
    cdef int width = m.layers[m.num_layers - 1].out_size
    cdef bint blas = job.blas and team.size == 1
    if job.logits != NULL and tc >= nb:
        for r in range(nb):
            head_product(m, blas, team, tc, top + <size_t> r * width, nb * width,
                         job.logits + (<size_t> (b0 + r) * T + t0) * V, V)
    elif job.logits != NULL:
        for st in range(tc):
            head_product(m, blas, team, nb, top + <size_t> st * nb * width, width,
                         job.logits + (<size_t> b0 * T + t0 + st) * V, T * V)
    elif job.y != NULL and team.tid == 0:
        for st in range(tc):
            for r in range(nb):
                memcpy(job.y + (<size_t> (b0 + r) * T + t0 + st) * width,
                       top + (<size_t> st * nb + r) * width, width * sizeof(float))


cdef inline void step_layer(const Job *job, const Layer *L, int nb, int st, float *h_state,
                            float *c_state, float *out, Scratch *s, bint panels,
                            const Team *team) noexcept nogil:
    """Step st of the chunk for layer L: out[st] from out[st-1] (h_state at st = 0), the
    time-major layout making each step's rows contiguous."""
    cdef int G = gates_of(job.model.cell)
    layer_step(job.model.cell, L, nb, s.xw + <size_t> st * nb * G * L.hidden,
               h_state if st == 0 else out + <size_t> (st - 1) * nb * L.out_size,
               out + <size_t> st * nb * L.out_size, c_state, s.hw, s.hfull, panels, team)


cdef int steps_alone(const Job *job, const Layer *L, int nb, int st, int tc, float *h_state,
                     float *c_state, float *out, Scratch *s, Team *team) noexcept nogil:
    """Step st of a team's chunk, and maybe more: thread 0 asks team_wants_solo (stack.pxd);
    if so, it runs the steps from st alone until its time alone is up or the chunk ends,
    while the others wait; if not, the team runs step st.  Returns, to every thread, the
    next step."""
    cdef Team alone = team_of(0, 1, NULL)
    if team.tid == 0:
        s.solo = team_wants_solo(team)
    sync(team)
    if not s.solo:
        step_layer(job, L, nb, st, h_state, c_state, out, s, True, team)
        return st + 1
    if team.tid == 0:
        while st < tc:
            step_layer(job, L, nb, st, h_state, c_state, out, s, True, &alone)
            st += 1
            if team_solo_over(team):
                break
        s.resume = st
    sync_after_solo(team)
    if team.tid == 0:
        team_take_waits(team)  # a new window, without the time alone
    return s.resume


cdef void layer_chunk(const Job *job, int l, int b0, int nb, int tc, const float *inp,
                      float *out, Scratch *s, bint panels, Team *team) noexcept nogil:
    """Layer l over the chunk's tc steps for batch rows [b0, b0 + nb): out[st] (time-major)
    from inp[st], one product for all the input projections (none for layer 0 with a lookup
    table: gather_input put them in s.xw), then step by step; the layer's state in job.h/c
    moves to the end of the chunk."""
    cdef const Layer *L = &job.model.layers[l]
    cdef float *h_state = job.h + (<size_t> l * job.batch + b0) * L.out_size
    cdef float *c_state = job.c + (<size_t> l * job.batch + b0) * L.hidden if job.c != NULL else NULL
    cdef int st = 0
    if not (l == 0 and job.x == NULL and job.model.table.data != NULL):
        input_projection(L, gates_of(job.model.cell), tc * nb, inp, s.xw, panels, team)
    while st < tc:
        if team.size > 1 and st % TEAM_CHECK_STEPS == 0:
            st = steps_alone(job, L, nb, st, tc, h_state, c_state, out, s, team)
            continue
        step_layer(job, L, nb, st, h_state, c_state, out, s, panels, team)
        st += 1
    if team.tid == 0:
        memcpy(h_state, out + <size_t> (tc - 1) * nb * L.out_size,
               <size_t> nb * L.out_size * sizeof(float))


cdef void run_rows(const Job *job, int b0, int b1, Scratch *s, Team *team) noexcept nogil:
    """Run the whole stack over all time steps for batch rows [b0, b1), with scratch s for
    them, a chunk of steps at a time: layer 0's input, each layer (its output the next one's
    input), then the output.  Every thread of `team` calls this with the same arguments (s
    shared): the team shares every product and cell update, thread 0 moves the rows between
    buffers."""
    cdef int nb = b1 - b0, l, t0 = 0, tc
    cdef bint panels = not job.blas or team.size > 1
    cdef float *inp = s.inp
    cdef float *out = s.out
    cdef float *tmp
    while t0 < job.steps:
        tc = min(s.chunk, job.steps - t0)
        if team.tid == 0:
            gather_input(job, b0, nb, t0, tc, inp, s)
        sync(team)
        for l in range(job.model.num_layers):
            layer_chunk(job, l, b0, nb, tc, inp, out, s, panels, team)
            tmp = inp
            inp = out
            out = tmp
        write_output(job, b0, nb, t0, tc, inp, team)  # inp: the top layer's output
        # The next chunk overwrites inp, out and xw, which threads may still read.
        sync(team)
        t0 += tc


cdef int run_alone(const Job *job, int b0, int b1) noexcept nogil:
    """run_rows for one thread with rows of its own.  Returns 0, or -1 if the scratch could
    not be allocated."""
    cdef Scratch s
    cdef Team alone = team_of(0, 1, NULL)
    if not scratch_alloc(&s, job, b1 - b0):
        return -1
    run_rows(job, b0, b1, &s, &alone)
    scratch_free(&s)
    return 0


cdef void run_member(const Job *jobs, int n_jobs, Scratch *s, fl_team *shared) noexcept nogil:
    """run_rows over each job as this thread's part of the enclosing parallel region's team."""
    cdef Team team = team_of(openmp.omp_get_thread_num(), openmp.omp_get_num_threads(), shared)
    cdef int j
    for j in range(n_jobs):
        run_rows(&jobs[j], 0, jobs[j].batch, s, &team)
    if team.tid == 0:
        team_end(&team)


cdef int run_team(const Job *jobs, int n_jobs, int team_size) noexcept nogil:
    """run_rows over all rows of each job in turn, by a team of team_size threads (fewer if
    OpenMP grants fewer) sharing every product.  Returns 0, or -1 if out of memory."""
    cdef Scratch s
    cdef int j
    cdef int max_steps = 0
    cdef Job widest
    for j in range(n_jobs):
        max_steps = max(max_steps, jobs[j].steps)
    widest = jobs[0]
    widest.steps = max_steps
    cdef fl_team *shared = fl_team_new(team_size)
    if shared == NULL or not scratch_alloc(&s, &widest, widest.batch):
        fl_team_free(shared)
        return -1
    with parallel(num_threads=team_size):
        run_member(jobs, n_jobs, &s, shared)
    # end: with parallel
    scratch_free(&s)
    fl_team_free(shared)
    return 0


def team_solo_until():
    """When (CLOCK_MONOTONIC ns) this module's teams go back to sharing work after thread 0
    last found them kept off their cores (0: never): for tests."""
    return fl_get_team_solo_until()


def max_threads():
    """omp_get_max_threads(): OMP_NUM_THREADS if set, else the cores this process may use."""
    return openmp.omp_get_max_threads()


cdef int rows_alone(const void *job, int b0, int b1) noexcept nogil:
    return run_alone(<const Job *> job, b0, b1)


cdef int rows_team(const void *job, int team_size) noexcept nogil:
    return run_team(<const Job *> job, 1, team_size)


def forward(PackedModel model, *, h, c=None, x=None, ids=None, y=None, logits=None,
            int num_threads=1, bint panels_only=False):
    """Run `model`'s stack over a batch of sequences.

    The input is `x` (batch, steps, in0) float32, or `ids` (batch, steps) int64 for the
    model's embedding or lookup table.  The output goes to `y` (batch, steps, out_last), or
    through the model's head into `logits` (batch, steps, outputs); with neither, only the
    state is computed.  `h` (num_layers, batch, out) and `c` (num_layers, batch, hidden)
    hold the initial state and receive the final one.  All arrays C-contiguous; every shape
    was checked by the caller.  `panels_only`: multiply on matmul.h's panels even where the
    model also holds row-major copies for BLAS (a row's bits then do not depend on the batch).
    """
    cdef Job job
    cdef int failed
    cdef const int64_t[:, ::1] ids_view
    job.model = &model.stack
    job.h = <float *> float_ptr(h, "h")
    job.c = <float *> float_ptr(c, "c", True)
    job.x = float_ptr(x, "x", True)
    job.y = <float *> float_ptr(y, "y", True)
    job.logits = <float *> float_ptr(logits, "logits", True)
    job.blas = model.stack.row_major and not panels_only
    if logits is not None and model.stack.head.panels == NULL:
        raise ValueError("logits need a model with a head")
    job.ids = NULL
    if ids is not None:
        if model.stack.emb.data == NULL and model.stack.table.data == NULL:
            raise ValueError("token ids need a model with an embedding or a lookup table")
        ids_view = ids
        job.batch, job.steps = ids_view.shape[0], ids_view.shape[1]
        job.ids = &ids_view[0, 0]
    elif x is not None:
        job.batch, job.steps = x.shape[0], x.shape[1]
    else:
        raise ValueError("forward needs x or ids")

    with nogil:
        failed = run_split(&job, job.batch, num_threads, rows_alone, rows_team)
    if failed:
        raise MemoryError("fastlstm: could not allocate the kernel's scratch buffers")


def prefill(PackedModel model, *, ids, offsets, h, c=None, int num_threads=1):
    """Run each prompt of a ragged batch on its own, from a zero state, and keep only the
    final state: prompt p is ids[offsets[p]:offsets[p+1]] (at least one id) and its state
    goes to h[p] (num_layers, out_size) and c[p] (num_layers, hidden).

    A prompt's state is computed exactly as if it were alone, on matmul.h's row-independent
    kernels, whatever else is in the batch and however many threads run: what makes seeded
    generation reproducible.  Prompts are spread over threads; with fewer prompts than
    threads, all threads share each prompt's products.
    """
    cdef Job base
    cdef const int64_t[::1] ids_view = ids
    cdef const int64_t[::1] offsets_view = offsets
    cdef int p, n_prompts = offsets_view.shape[0] - 1, failed = 0
    cdef int[::1] status = np.zeros(max(n_prompts, 1), dtype=np.intc)
    cdef Job *jobs
    if model.stack.emb.data == NULL and model.stack.table.data == NULL:
        raise ValueError("prefill needs a model with an embedding or a lookup table")
    base.model = &model.stack
    base.batch = 1
    base.x = NULL
    base.blas = False  # matmul.h for every precision: the same bits for any thread count
    base.y = NULL
    base.logits = NULL
    cdef float *h_all = <float *> float_ptr(h, "h")
    cdef float *c_all = <float *> float_ptr(c, "c", True)
    cdef int h_stride = h.shape[1] * h.shape[2], c_stride = c.shape[1] * c.shape[2] if c is not None else 0
    if n_prompts <= 0:
        return
    jobs = <Job *> malloc(n_prompts * sizeof(Job))
    if jobs == NULL:
        raise MemoryError()
    try:
        for p in range(n_prompts):
            jobs[p] = base
            jobs[p].ids = &ids_view[offsets_view[p]]
            jobs[p].steps = <int> (offsets_view[p + 1] - offsets_view[p])
            jobs[p].h = h_all + <size_t> p * h_stride
            jobs[p].c = c_all + <size_t> p * c_stride if c_all != NULL else NULL
        with nogil:
            if n_prompts < num_threads and not team_solo_now():  # all threads share each
                status[0] = run_team(jobs, n_prompts, num_threads)
            else:
                for p in prange(n_prompts, num_threads=num_threads, schedule="dynamic"):
                    status[p] = run_alone(&jobs[p], 0, 1)
        for p in range(n_prompts):
            failed |= status[p]
    finally:
        free(jobs)
    if failed:
        raise MemoryError("fastlstm: could not allocate the kernel's scratch buffers")
