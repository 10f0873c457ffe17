# fastlstm._forecast: the forecasting loop of a float-input model (recurrent stack -> linear
# head), which feeds each prediction back as the next input.  Per step, for every series:
#
#   previous prediction (or, first, nothing: the state after the history is given)
#   -> layer 0: x . W_ih^T + bias   -> each layer: gate product (matmul.h) -> fused cell update
#   -> head: h_top . W_head^T + b_head  -> the prediction, written to the output and fed back
#
# all inside one nogil loop, with the weights in the model's precision (matmul.h's panels,
# whose result for a row does not depend on the other rows).  Series ("rows") are split
# across OpenMP threads; with fewer rows than threads, all threads form one team that shares
# every product (stack.pxd's Team).  The history itself runs before, in fastlstm._rnn.forward
# (one GEMM per layer for all its input projections).
#
# fastlstm.forecaster validates every input and allocates every output; this module trusts them.

from cython.parallel cimport parallel
from libc.stdlib cimport free, malloc

cimport openmp

from stack cimport (Layer, Stack, Team, float_ptr, gates_of, head_product, run_split, stack_step,
                    sync, team_matmul, team_of, fl_team, fl_team_free, fl_team_new)
from fastlstm._packed cimport PackedModel

import numpy as np

include "isa.pxi"


cdef struct Run:
    const Stack *model       # the weights (fastlstm._packed.PackedModel), with a head
    int batch, steps, features
    float *h                 # (num_layers, batch, out_size): the state after the history
    float *c                 # (num_layers, batch, hidden), LSTM only; else NULL
    float *out               # (batch, steps, features): the predictions


cdef struct Scratch:
    # One thread's (or one team's) activations of a step, for `rows` series.
    float *xw                # (rows, gates*hidden)
    float *hw                # (rows, gates*hidden)
    float *hfull             # (rows, hidden)


cdef bint scratch_alloc(Scratch *s, const Run *run, int rows) noexcept nogil:
    """Allocate s for `rows` series; False (everything freed) if memory ran out."""
    cdef int gw = run.model.max_gates, hid = run.model.max_hidden
    s.xw = <float *> malloc(<size_t> rows * gw * sizeof(float))
    s.hw = <float *> malloc(<size_t> rows * gw * sizeof(float))
    s.hfull = <float *> malloc(<size_t> rows * hid * sizeof(float))
    if s.xw and s.hw and s.hfull:
        return True
    scratch_free(s)
    return False


cdef void scratch_free(Scratch *s) noexcept nogil:
    free(s.xw); free(s.hw); free(s.hfull)
    s.xw = s.hw = s.hfull = NULL


cdef void forecast_rows(const Run *run, int b0, int b1, Scratch *s, const Team *team) noexcept nogil:
    """Predictions for series [b0, b1): step 0 is the head on the state after the history;
    each later step feeds the previous prediction through the stack.  Every thread of `team`
    calls this with the same arguments (s shared) and takes its share of every product."""
    cdef const Stack *m = run.model
    cdef int n = b1 - b0, step, G = gates_of(m.cell), F = run.features
    cdef size_t row_stride = <size_t> run.steps * F  # floats between series in out
    cdef const Layer *L0 = &m.layers[0]
    cdef const Layer *top = &m.layers[m.num_layers - 1]
    cdef float *h_top = run.h + (<size_t> (m.num_layers - 1) * run.batch + b0) * top.out_size
    cdef float *prediction
    for step in range(run.steps):
        prediction = run.out + <size_t> b0 * row_stride + <size_t> step * F
        if step > 0:
            # Layer 0's input projections: the last prediction . W_ih^T + bias_x.
            team_matmul(team, n, &L0.w_ih_p, prediction - F, <int> row_stride, L0.bias_x,
                        s.xw, G * L0.hidden)
            stack_step(m, b0, n, run.batch, run.h, run.c, s.xw, s.hw, s.hfull, team)
        # prediction := h_top . W_head^T + b_head; the next step's layer 0 reads all of it.
        head_product(m, False, team, n, h_top, top.out_size, prediction, <int> row_stride)
        sync(team)


cdef int forecast_alone(const Run *run, int b0, int b1) noexcept nogil:
    """forecast_rows for one thread with series of its own.  0, or -1 if out of memory."""
    cdef Scratch s
    cdef Team alone = team_of(0, 1, NULL)
    if b1 <= b0:
        return 0
    if not scratch_alloc(&s, run, b1 - b0):
        return -1
    forecast_rows(run, b0, b1, &s, &alone)
    scratch_free(&s)
    return 0


cdef void forecast_member(const Run *run, Scratch *s, fl_team *shared) noexcept nogil:
    """forecast_rows over every series, as this thread's part of the enclosing team."""
    cdef Team team = team_of(openmp.omp_get_thread_num(), openmp.omp_get_num_threads(), shared)
    forecast_rows(run, 0, run.batch, s, &team)


cdef int forecast_team(const Run *run, int team_size) noexcept nogil:
    """forecast_rows over every series by a team of team_size threads (fewer if OpenMP grants
    fewer) sharing every product.  0, or -1 if out of memory."""
    cdef Scratch s
    cdef fl_team *shared = fl_team_new(team_size)
    if shared == NULL or not scratch_alloc(&s, run, run.batch):
        fl_team_free(shared)
        return -1
    with parallel(num_threads=team_size):
        forecast_member(run, &s, shared)
    # end: with parallel
    scratch_free(&s)
    fl_team_free(shared)
    return 0


cdef int series_alone(const void *run, int b0, int b1) noexcept nogil:
    return forecast_alone(<const Run *> run, b0, b1)


cdef int series_team(const void *run, int team_size) noexcept nogil:
    return forecast_team(<const Run *> run, team_size)


def forecast(PackedModel model, *, h, c, out, int num_threads=1):
    """Fill `out` (batch, steps, features) float32 with predictions fed back as inputs.

    `model`: a stack whose layer 0 takes `features` inputs and whose head gives `features`
    outputs.  `h` (num_layers, batch, out) and `c` (num_layers, batch, hidden; LSTM only)
    hold the state after the history and receive the state after the last prediction was
    fed back, i.e. after steps - 1 steps.  out[:, 0] is the head on the given state;
    out[:, s] the head after feeding out[:, s - 1].  All arrays C-contiguous; the caller
    checked every shape.
    """
    cdef Run run
    cdef int failed
    run.model = &model.stack
    run.batch, run.steps, run.features = out.shape[0], out.shape[1], out.shape[2]
    run.h = <float *> float_ptr(h, "h")
    run.c = <float *> float_ptr(c, "c", True)
    run.out = <float *> float_ptr(out, "out")
    if (model.stack.head.panels == NULL or model.stack.layers[0].in_size != run.features
            or model.stack.head.n != run.features):
        raise ValueError("forecasting feeds each prediction back: the head's outputs and "
                         "layer 0's inputs must be the same features")
    with nogil:
        failed = run_split(&run, run.batch, num_threads, series_alone, series_team)
    if failed:
        raise MemoryError("fastlstm: could not allocate the forecasting loop's scratch buffers")
