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
# called again to continue (streaming): everything it needs lives in a DecodeState.
#
#   decode(model, state, params, steps)
#     model:  fastlstm._packed.PackedModel, the weights (built once at load)
#     state:  DecodeState, one generation run's per-row arrays (built once per run)
#     params: the sampling parameters (fastlstm.params.GenerationParams)
#
# fastlstm.generation validates every input and owns these arrays; this module trusts them.

from cython.parallel cimport parallel, prange
cimport openmp
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from sampler cimport Candidate, SamplingParams, coin, sample_token
from stack cimport (CELL_LSTM, Layer, Stack, Team, float_ptr, gates_of, gather_rows,
                    input_projection, head_product, stack_step, sync, sync_after_solo, team_end,
                    team_of,
                    team_solo_over, team_solo_now, team_take_waits, team_wants_solo,
                    fl_get_team_solo_until, fl_team, fl_team_free, fl_team_new, fl_now_ns)
from fastlstm._packed cimport PackedModel

import numpy as np

include "isa.pxi"


cdef extern from "Python.h":
    # Runs Python's signal handlers; -1 with the exception set if one raised.  Needs the GIL.
    int PyErr_CheckSignals()


cdef inline bint interrupted(int *cancel, bint watch, long long *next_check) noexcept nogil:
    """Whether to stop now.  The watching thread (the Python thread that called, when that is
    the main thread) takes the GIL every 10 ms to run signal handlers; a KeyboardInterrupt
    stays set as the pending exception, and `cancel` stops every thread."""
    cdef long long t
    if watch:
        t = fl_now_ns()
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


# Why a row stopped (DecodeState's `finish`, per row).
cdef enum:
    RUNNING = 0
    FINISH_LENGTH = 1        # max_new_tokens reached
    FINISH_STOP = 2          # an eos id or a stop sequence was generated


cdef struct Run:
    const Stack *model       # the weights (fastlstm._packed.PackedModel); vocab = model.head.n
    int batch, max_new
    SamplingParams params
    # Per slot (slot s holds row order[s]):
    float *h                 # (num_layers, batch, out_size)
    float *c                 # (num_layers, batch, hidden), LSTM only
    int64_t *last            # (batch,)  the token to feed next
    int64_t *order           # (batch,)  slot -> row
    # Per row:
    int64_t *out             # (batch, max_new)  generated ids; -1 past the end
    int64_t *length          # (batch,)  tokens generated so far
    uint8_t *finish          # (batch,)  RUNNING, FINISH_LENGTH or FINISH_STOP
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
    for l in range(run.model.num_layers):
        n = run.model.layers[l].out_size
        pa = run.h + (<size_t> l * run.batch + a) * n
        pb = run.h + (<size_t> l * run.batch + b) * n
        memcpy(tmp, pa, n * sizeof(float)); memcpy(pa, pb, n * sizeof(float)); memcpy(pb, tmp, n * sizeof(float))
        if run.c != NULL:
            n = run.model.layers[l].hidden
            pa = run.c + (<size_t> l * run.batch + a) * n
            pb = run.c + (<size_t> l * run.batch + b) * n
            memcpy(tmp, pa, n * sizeof(float)); memcpy(pa, pb, n * sizeof(float)); memcpy(pb, tmp, n * sizeof(float))
    t = run.last[a]; run.last[a] = run.last[b]; run.last[b] = t
    t = run.order[a]; run.order[a] = run.order[b]; run.order[b] = t


cdef struct Scratch:
    # Activations of one decode step, for `rows` slots (allocated once per call).
    float *x           # (rows, in0): embedding rows, when there is no table
    float *xw          # (rows, gates*hidden)
    float *hw          # (rows, gates*hidden)
    float *hfull       # (rows, hidden)
    float *logits      # (rows, vocab)
    float *scores      # (vocab,)  the sampler's weights
    Candidate *cand    # (vocab,)  the sampler's candidates
    uint8_t *done      # (rows,)


cdef bint scratch_alloc(Scratch *s, const Run *run, int rows) noexcept nogil:
    """Allocate s for `rows` slots; False (everything freed) if memory ran out."""
    cdef int width = run.model.max_width, gw = run.model.max_gates, hid = run.model.max_hidden
    s.x = <float *> malloc(<size_t> rows * width * sizeof(float))
    s.xw = <float *> malloc(<size_t> rows * gw * sizeof(float))
    s.hw = <float *> malloc(<size_t> rows * gw * sizeof(float))
    s.hfull = <float *> malloc(<size_t> rows * hid * sizeof(float))
    cdef int V = run.model.head.n
    s.logits = <float *> malloc(<size_t> rows * V * sizeof(float))
    s.scores = <float *> malloc(<size_t> V * sizeof(float))
    s.cand = <Candidate *> malloc(<size_t> V * sizeof(Candidate))
    s.done = <uint8_t *> malloc(<size_t> rows)
    if s.x and s.xw and s.hw and s.hfull and s.logits and s.scores and s.cand and s.done:
        return True
    scratch_free(s)
    return False


cdef void scratch_free(Scratch *s) noexcept nogil:
    free(s.x); free(s.xw); free(s.hw); free(s.hfull); free(s.logits); free(s.scores)
    free(s.cand); free(s.done)
    s.x = s.xw = s.hw = s.hfull = s.logits = s.scores = NULL
    s.cand = NULL
    s.done = NULL


cdef struct Control:
    # What thread 0 of a team decides for all of it at the top of each step.
    int stop    # nonzero: leave the loop
    int solo    # nonzero: thread 0 takes the next steps alone, the others wait


cdef void step_stack(const Run *run, int begin, int n, Scratch *s, const Team *team) noexcept nogil:
    """Every layer's step for the running slots [begin, begin + n): the new h (and c)."""
    cdef const Stack *m = run.model
    cdef int G = gates_of(m.cell)
    cdef const Layer *L = &m.layers[0]
    # Layer 0's input: a lookup-table row, or an embedding row times W_ih.
    if m.table.data != NULL:
        if team.tid == 0:
            gather_rows(&m.table, run.last + begin, n, s.xw, G * L.hidden)
    else:
        if team.tid == 0:
            gather_rows(&m.emb, run.last + begin, n, s.x, L.in_size)
        sync(team)
        input_projection(L, G, n, s.x, s.xw, True, team)
    stack_step(m, begin, n, run.batch, run.h, run.c, s.xw, s.hw, s.hfull, team)


cdef int sample_and_record(Run *run, int begin, int n, Scratch *s) noexcept nogil:
    """Sample the next token of each running slot from s.logits, record it, and mark in
    s.done the rows that stop.  Returns OK, or NAN_LOGITS."""
    cdef int i, V = run.model.head.n
    cdef int64_t row, token
    for i in range(n):
        row = run.order[begin + i]
        token = sample_token(s.logits + <size_t> i * V, V,
                             run.seen + <size_t> row * V if run.seen != NULL else NULL,
                             &run.params, coin(run.seed[row], run.stream[row], run.length[row]),
                             s.scores, s.cand)
        if token < 0:
            return NAN_LOGITS
        run.out[row * run.max_new + run.length[row]] = token
        run.length[row] += 1
        if run.seen != NULL:
            run.seen[row * V + token] = 1
        run.last[begin + i] = token
        if ends_with_stop(run, run.out + row * run.max_new, run.length[row]):
            run.finish[row] = FINISH_STOP
        elif run.length[row] >= run.max_new:
            run.finish[row] = FINISH_LENGTH
        s.done[i] = run.finish[row] != RUNNING
    return OK


cdef void compact_slots(Run *run, int begin, int *n_active, Scratch *s) noexcept nogil:
    """Move stopped rows behind the running ones (from the back, so indices stay valid)."""
    cdef int i
    for i in range(n_active[0] - 1, -1, -1):
        if s.done[i]:
            n_active[0] -= 1
            if i != n_active[0]:
                swap_slots(run, begin + i, begin + n_active[0], s.hfull)
                s.done[i] = s.done[n_active[0]]


cdef int decode_step(Run *run, int begin, int *n_active, Scratch *s, const Team *team) noexcept nogil:
    """One token for each of the n_active running slots from `begin`: the stack, the head,
    then (thread 0) the sampler and the stop checks.  Returns OK, or NAN_LOGITS."""
    cdef int n = n_active[0], status = OK
    cdef const Stack *m = run.model
    cdef const Layer *top = &m.layers[m.num_layers - 1]
    step_stack(run, begin, n, s, team)
    # Head: logits := h_top . W_head^T + b_head
    head_product(m, False, team, n, run.h + (<size_t> (m.num_layers - 1) * run.batch + begin) * top.out_size,
                 top.out_size, s.logits, m.head.n)
    sync(team)
    if team.tid == 0:
        status = sample_and_record(run, begin, n, s)
        if status == OK:
            compact_slots(run, begin, n_active, s)
    return status


cdef int decode_slots(Run *run, int begin, int *n_active, int steps, int *cancel,
                      bint watch, Scratch *s, Control *ctl, Team *team) noexcept nogil:
    """Generate up to `steps` tokens for the running rows in slots [begin, begin + *n_active).
    Rows that stop are moved behind the running ones and *n_active shrinks.

    Every thread of `team` calls this with the same arguments (s and ctl shared): thread 0
    watches for signals, samples and moves slots, and decides; the team shares every
    product, except while thread 0 works alone (stack.pxd's team_wants_solo) and the others
    wait at the barrier that starts each step.  Returns the status (thread 0's is the one
    that counts)."""
    cdef int done = 0, status = OK
    cdef long long next_check = 0
    cdef Team alone = team_of(0, 1, NULL)
    while True:
        if team.tid == 0:
            if status == OK and interrupted(cancel, watch, &next_check):
                status = INTERRUPTED
            ctl.stop = status != OK or n_active[0] == 0 or done >= steps
            ctl.solo = not ctl.stop and team.size > 1 and team_wants_solo(team)
        sync(team)
        if ctl.stop:
            break
        if ctl.solo:
            if team.tid == 0:
                while status == OK and n_active[0] > 0 and done < steps:
                    status = decode_step(run, begin, n_active, s, &alone)
                    done += 1
                    if team_solo_over(team) or interrupted(cancel, watch, &next_check):
                        break
            # The others wait here; thread 0 rewrites ctl only after every thread read it.
            sync_after_solo(team)
            if team.tid == 0:
                team_take_waits(team)  # a new window, without the time alone
            continue
        status = decode_step(run, begin, n_active, s, team)
        done += 1
    if team.tid == 0:
        team_end(team)
    if status == NAN_LOGITS:
        cancel[0] = 1  # the call fails: the other threads need not finish their rows
    return status


cdef int decode_alone(Run *run, int begin, int *n_active, int steps, int *cancel,
                      bint watch) noexcept nogil:
    """decode_slots for a thread with slots of its own (a team of one), with its own scratch."""
    cdef Scratch s
    cdef Control ctl
    cdef Team alone = team_of(0, 1, NULL)
    cdef int status
    if n_active[0] == 0:
        return OK
    if not scratch_alloc(&s, run, n_active[0]):
        return NO_MEMORY
    status = decode_slots(run, begin, n_active, steps, cancel, watch, &s, &ctl, &alone)
    scratch_free(&s)
    return status


cdef class DecodeState:
    """One generation run's state, as the decode loop reads and writes it: per slot the
    recurrent state and the token to feed next, per row the generated ids and why the row
    stopped, and the stop conditions.  fastlstm.generation.Decoder builds it once per run,
    owns and documents the arrays (which this object keeps alive), and reads them between
    calls of `decode`.

    h (num_layers, rows, out), c (num_layers, rows, hidden) or None: float32; last (rows,)
    int64; out (rows, max_new) int64; length (rows,) int64; finish (rows,) uint8; seen (rows,
    vocab) uint8 or None; seed, stream (rows,) uint64; eos, stops, stop_end int64;
    slot_begin (threads + 1,) and n_active (threads,) intc; team_size: threads sharing one
    range of slots (then one range), else 1.
    """
    cdef Run run
    cdef readonly PackedModel model
    cdef object arrays            # every array run points into, kept alive
    cdef int[::1] slot_begin
    cdef int[::1] n_active
    cdef readonly int team_size

    def __init__(self, PackedModel model, *, h, c, last, out, length, finish, seen, seed,
                 stream, eos, stops, stop_end, slot_begin, n_active, int team_size=1):
        cdef Run *run = &self.run
        cdef const Stack *m = &model.stack
        cdef int64_t[::1] last_v = last, length_v = length
        cdef int64_t[:, ::1] out_v = out
        cdef uint8_t[::1] finish_v = finish
        cdef uint8_t[:, ::1] seen_v
        cdef const uint64_t[::1] seed_v = seed, stream_v = stream
        cdef const int64_t[::1] eos_v = eos, stops_v = stops, stop_end_v = stop_end
        cdef int rows = last_v.shape[0]
        if m.head.panels == NULL or (m.emb.data == NULL and m.table.data == NULL):
            raise ValueError("decoding needs a language model: token ids in, a head out")
        if rows == 0 or out_v.shape[0] != rows or length_v.shape[0] != rows or \
                finish_v.shape[0] != rows or seed_v.shape[0] != rows or stream_v.shape[0] != rows:
            raise ValueError("the per-row arrays must hold one entry per row")
        if out_v.shape[1] == 0:
            raise ValueError("out must hold at least one token per row")
        if h.shape != (m.num_layers, rows, m.layers[m.num_layers - 1].out_size):
            raise ValueError("h must be (num_layers, rows, out_size)")
        if (c is None) != (m.cell != CELL_LSTM):
            raise ValueError("c is the LSTM's cell state: given exactly for LSTMs")
        if c is not None and c.shape != (m.num_layers, rows, m.layers[0].hidden):
            raise ValueError("c must be (num_layers, rows, hidden)")
        if len(slot_begin) != len(n_active) + 1 or slot_begin[len(n_active)] != rows:
            raise ValueError("slot_begin must split the rows among the threads of n_active")
        if team_size > 1 and len(n_active) != 1:
            raise ValueError("a team of threads shares one range of slots")
        if last.min() < 0 or last.max() >= m.head.n:
            raise ValueError("the tokens to feed first must be ids of the vocabulary")
        self.model = model
        order = np.arange(rows, dtype=np.int64)  # slot -> row
        cdef int64_t[::1] order_v = order
        run.model = m
        run.batch = rows
        run.max_new = out_v.shape[1]
        run.h = <float *> float_ptr(h, "h")
        run.c = <float *> float_ptr(c, "c", True)
        run.last = &last_v[0]
        run.order = &order_v[0]
        run.out = &out_v[0, 0]
        run.length = &length_v[0]
        run.finish = &finish_v[0]
        run.seen = NULL
        if seen is not None:
            seen_v = seen
            if seen_v.shape[0] != rows or seen_v.shape[1] != m.head.n:
                raise ValueError("seen must be (rows, vocab)")
            run.seen = &seen_v[0, 0]
        run.seed = &seed_v[0]
        run.stream = &stream_v[0]
        run.n_eos = eos_v.shape[0]
        run.eos = &eos_v[0] if run.n_eos else NULL
        run.n_stops = stop_end_v.shape[0]
        run.stop_end = &stop_end_v[0] if run.n_stops else NULL
        run.stops = &stops_v[0] if stops_v.shape[0] else NULL
        self.slot_begin = slot_begin
        self.n_active = n_active
        self.team_size = team_size
        self.arrays = (h, c, last, order, out, length, finish, seen, seed, stream, eos, stops,
                       stop_end)

    @property
    def done(self) -> bool:
        """Whether every row has stopped."""
        cdef int t
        for t in range(self.n_active.shape[0]):
            if self.n_active[t]:
                return False
        return True


def decode(PackedModel model, DecodeState state, params, int steps, bint watch_signals=False):
    """Run up to `steps` decode steps for every running row of `state` (see
    fastlstm.generation.Decoder), sampling with `params` (temperature, top_k, top_p, min_p,
    repetition_penalty: fastlstm.params.GenerationParams, already checked).  Thread t works
    on slots [slot_begin[t], slot_begin[t+1]), of which the first n_active[t] are running;
    or, with team_size > 1 (one range of slots), team_size threads share every product of
    those slots.  Raises FloatingPointError if the logits of a row hold NaN or +inf, and
    whatever a signal handler raised (Ctrl-C: KeyboardInterrupt) when watch_signals is set;
    the run is then left mid-step.  watch_signals: the caller is Python's main thread, so
    signals can be handled here."""
    cdef Run *run = &state.run
    cdef int cancel = 0
    cdef int t, nthreads = state.n_active.shape[0], failed = OK
    cdef int[::1] status = np.zeros(nthreads, dtype=np.intc)
    cdef int *slot_begin = &state.slot_begin[0]
    cdef int *n_active = &state.n_active[0]
    if state.model is not model:
        raise ValueError("this decode state belongs to another model")
    run.params.temperature = params.temperature
    run.params.top_k = params.top_k if params.top_k < model.stack.head.n else 0
    run.params.top_p = params.top_p
    run.params.min_p = params.min_p
    run.params.repetition_penalty = params.repetition_penalty
    if state.team_size > 1 and not team_solo_now():
        decode_team(run, n_active, steps, &cancel, watch_signals, state.team_size, &status[0])
    else:
        with nogil:
            for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
                status[t] = decode_alone(run, slot_begin[t], &n_active[t], steps, &cancel,
                                         watch_signals and openmp.omp_get_thread_num() == 0)
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


cdef int decode_member(Run *run, int *n_active, int steps, int *cancel, bint watch,
                       Scratch *s, Control *ctl, fl_team *shared) noexcept nogil:
    """decode_slots as this thread's part of the enclosing parallel region's team."""
    cdef Team team = team_of(openmp.omp_get_thread_num(), openmp.omp_get_num_threads(), shared)
    return decode_slots(run, 0, n_active, steps, cancel, watch and team.tid == 0, s, ctl, &team)


cdef void decode_team(Run *run, int *n_active, int steps, int *cancel, bint watch,
                      int team_size, int *status):
    """decode_slots over slots [0, *n_active) by a team of team_size threads (fewer if OpenMP
    grants fewer), with one shared scratch."""
    cdef Scratch s
    cdef Control ctl
    cdef int result
    cdef fl_team *shared
    if n_active[0] == 0:
        return
    shared = fl_team_new(team_size)
    if shared == NULL or not scratch_alloc(&s, run, n_active[0]):
        fl_team_free(shared)
        status[0] = NO_MEMORY
        return
    with nogil, parallel(num_threads=team_size):
        result = decode_member(run, n_active, steps, cancel, watch, &s, &ctl, shared)
        if openmp.omp_get_thread_num() == 0:
            status[0] = result
    # end: with nogil, parallel
    scratch_free(&s)
    fl_team_free(shared)


def team_solo_until():
    """When (CLOCK_MONOTONIC ns) this module's teams go back to sharing work after thread 0
    last found them kept off their cores (0: never): for tests."""
    return fl_get_team_solo_until()


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
