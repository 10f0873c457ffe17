# A stack of recurrent layers as the kernels see it: raw pointers into the arrays of
# fastlstm.pack's PackedLayer and PackedMatrix, gathered once at load into a Stack
# (fastlstm._packed.PackedModel, which keeps the arrays alive), and the steps every kernel
# loop (_rnn, _generate, _forecast) is built from:
#
#   Stack, Layer, Rows          the weights (checked once: fill_matrix, fill_rows)
#   Team, sync, team_*          threads sharing one sequence, and when thread 0 goes alone
#   run_split                   rows across threads, or one team
#   input_projection            xw := x . W_ih^T + bias
#   layer_step                  one layer's step: W_hh product, then the cell (cells.pxd)
#   stack_step                  every layer's step, on the panels (decode, forecast)
#   head_product                logits := h_top . W_head^T + bias

from libc.stdint cimport int32_t, int64_t
from cython.parallel cimport prange
from libc.string cimport memcpy

from blas cimport matmul_wt
from matmul cimport (FL_I8, fl_gather_rows, fl_matmul_part, fl_matrix, fl_packed_size,
                     wtype_numpy_char)
from cells cimport gru_step, lstm_step, rnn_step
from gru_reset_before cimport gru_rb_reset, gru_rb_update

import numpy as np


cdef enum Cell:
    CELL_LSTM = 0
    CELL_GRU = 1
    CELL_RNN_TANH = 2
    CELL_RNN_RELU = 3
    CELL_GRU_RESET_BEFORE = 4  # Keras's GRU(reset_after=False): gru_reset_before.h


cdef struct Layer:
    # The weights in matmul.h's panels, in the model's precision (PyTorch gate order):
    fl_matrix w_ih_p       # (gates*hidden, in_size)
    fl_matrix w_hh_p       # (gates*hidden, out_size)
    fl_matrix w_hr_p       # (out_size, hidden)  LSTM projection; .panels NULL without proj_size
    # The same weights row-major, float32 models only (BLAS in forward/prefill); else NULL.
    const float *w_ih
    const float *w_hh
    const float *w_hr
    const float *bias_x    # (gates*hidden,)  b_ih + b_hh (GRU: without b_hh's n part)
    const float *bias_hn   # (hidden,)  GRU only: b_hh's n part; NULL otherwise
    # GRU_RESET_BEFORE only: W_hh's n rows, multiplied by r * h_prev once r is known (w_hh_p
    # then holds the r and z rows alone); .panels NULL for every other cell.
    fl_matrix w_hn_p       # (hidden, out_size)
    int in_size
    int hidden
    int out_size


cdef struct Rows:
    # An embedding or layer-0 lookup table, row-major in the model's precision.
    const void *data       # (vocab, width)
    const float *scale     # (vocab,) int8 only
    int type               # matmul.h's enum fl_wtype
    int width


cdef struct Stack:
    # A whole model as the kernels read it: built once at load, read-only afterwards.
    int cell               # enum Cell
    int num_layers
    Layer *layers          # (num_layers,)
    # Layer 0's input from token ids (language models; both .data NULL for float inputs):
    Rows emb               # embedding rows (vocab, in0), multiplied by W_ih each step; or
    Rows table             # its input projections per token (vocab, gates*hidden0)
    fl_matrix head         # (outputs, out_last) in panels; .panels NULL without a head
    const float *head_w    # the same row-major float32, for BLAS; or NULL
    const float *head_b    # (outputs,) or NULL
    bint row_major         # every weight is also row-major float32, so BLAS may multiply
    # The widest activations of any layer, which size the loops' scratch buffers:
    int max_width          # max(in_size, out_size)
    int max_gates          # gates * hidden
    int max_hidden


cdef extern from "team.h" nogil:
    ctypedef struct fl_team:
        pass
    fl_team *fl_team_new(int size)
    void fl_team_free(fl_team *team)
    void fl_team_join(fl_team *team, int size)
    void fl_team_barrier(fl_team *team, int tid, bint long_wait)
    long long fl_team_take_wait(fl_team *team, int t)
    long long fl_now_ns()
    long long fl_get_team_solo_until()
    long long fl_team_judge(long long now, long long elapsed, long long wait,
                            long long window_ns, int lagging_windows, long long solo_min_ns,
                            long long solo_max_ns)


cdef struct Team:
    # The threads working on the same rows: this thread's index in the team, and its size.
    # A team of one is a thread with rows of its own (no barriers, every product whole).
    int tid
    int size
    fl_team *shared        # the team's barrier and wait counters (team.h); NULL for one
    # Thread 0 only: when its window of measure began, and until when it works alone
    # (CLOCK_MONOTONIC ns; see team_wants_solo).
    long long since
    long long solo_until


cdef inline Team team_of(int tid, int size, fl_team *shared) noexcept nogil:
    """Thread tid's view of a team of `size` threads sharing `shared` (NULL for one)."""
    cdef Team team
    if shared != NULL:
        fl_team_join(shared, size)
    team.tid = tid
    team.size = size
    team.shared = shared
    team.since = team.solo_until = 0
    return team


cdef inline void sync(const Team *team) noexcept nogil:
    """Wait until every thread of the team is here (nothing for a team of one)."""
    if team.size > 1:
        fl_team_barrier(team.shared, team.tid, False)


cdef inline void sync_after_solo(const Team *team) noexcept nogil:
    """sync at the end of thread 0's time alone, where the others waited for it, asleep:
    that wait is not a sign of lagging, so it is not counted."""
    if team.size > 1:
        fl_team_barrier(team.shared, team.tid, True)


# When other processes take the team's cores, a member is off its core for a scheduler
# time slice (milliseconds) at a time, and every barrier waits for it: beside one busy
# process on two cores, two threads decoded 8x and prefilled 5x slower than one.  So
# thread 0 looks at how long the team waits (team.h counts it), over windows of 4 ms of
# team time.  When some thread waited more than half of LAGGING_WINDOWS windows in a row
# (one alone can be a passing hiccup: on a virtual machine a core can vanish for a 4 ms
# scheduler tick now and then, with no other process in sight), thread 0 works alone for a
# while (a step then costs at most twice the team's), the others waiting at one barrier,
# and then tries the team again: alone for 20 ms the first time, twice as long each time
# the team is still found lagging (up to 320 ms), so that a brief load costs little and a
# lasting one is rarely retried.  The window, the count of lagging windows and the time
# alone are kept per module, across calls, so that short calls (a stream's chunks) add up
# to a judgement too.  The split changes no bits, so neither does the switch.
cdef enum:
    TEAM_CHECK_NS = 1_000_000    # thread 0 adds the team's waits to the window every 1 ms...
    TEAM_WINDOW_NS = 4_000_000   # ...and at the end of a call; a window holds 4 ms
    LAGGING_WINDOWS = 3
    SOLO_MIN_NS = 20_000_000     # thread 0 then works alone for 20 ms, 40, ... 320 ms
    SOLO_MAX_NS = 320_000_000


cdef inline long long team_take_waits(Team *team) noexcept nogil:
    """Thread 0: the longest wait of any thread since the last call, and a new stretch."""
    cdef long long most = 0
    cdef int t
    for t in range(team.size):
        most = max(most, fl_team_take_wait(team.shared, t))
    team.since = fl_now_ns()
    return most


cdef inline bint team_add_to_window(Team *team, long long now) noexcept nogil:
    """Thread 0: add the team time since team.since, and its longest wait, to the module's
    window, which team.h's fl_team_judge judges once full.  True if thread 0 should now
    work alone (team.solo_until then says until when)."""
    cdef long long elapsed = now - team.since  # before team_take_waits starts a new stretch
    cdef long long until = fl_team_judge(now, elapsed, team_take_waits(team), TEAM_WINDOW_NS,
                                         LAGGING_WINDOWS, SOLO_MIN_NS, SOLO_MAX_NS)
    if until == 0:
        return False
    team.solo_until = until
    return True


cdef inline bint team_wants_solo(Team *team) noexcept nogil:
    """Thread 0 of a team, between steps: whether to do the next steps alone."""
    cdef long long t = fl_now_ns()
    if t < team.solo_until:
        return True
    if t < fl_get_team_solo_until():  # another call of this module found the team lagging
        team.solo_until = fl_get_team_solo_until()
        return True
    if team.since == 0:
        team_take_waits(team)
        return False
    if t - team.since < TEAM_CHECK_NS:
        return False
    return team_add_to_window(team, t)


cdef inline bint team_solo_now() noexcept nogil:
    """Whether a call about to form a team should run on one thread instead: a team of
    this module was found lagging, and its time alone is not over (forming one would cost a
    wait for every member at the start and the end of the call)."""
    return fl_now_ns() < fl_get_team_solo_until()


cdef inline void team_end(Team *team) noexcept nogil:
    """Thread 0, when the team's call is done: add its last stretch to the window."""
    cdef long long t = fl_now_ns()
    if team.size > 1 and team.since != 0 and t >= team.solo_until:
        team_add_to_window(team, t)


cdef inline bint team_solo_over(const Team *team) noexcept nogil:
    """Thread 0, working alone: whether its time alone is up."""
    return fl_now_ns() >= team.solo_until


cdef inline void team_units(const Team *team, int hidden, int *j0, int *j1) noexcept nogil:
    """This thread's hidden units [j0, j1): an even share, in blocks of 8 (the vector width)."""
    cdef int blocks = (hidden + 7) // 8
    j0[0] = min(hidden, 8 * (blocks * team.tid // team.size))
    j1[0] = min(hidden, 8 * (blocks * (team.tid + 1) // team.size))


cdef inline void team_matmul(const Team *team, int m, const fl_matrix *W, const float *x,
                             int ldx, const float *bias, float *y, int ldy) noexcept nogil:
    """y := x . W^T (+ bias): this thread's share of the panels (all of them in a team of one)."""
    fl_matmul_part(team.tid, team.size, m, W, x, ldx, bias, 0, y, ldy)


cdef inline void gather_rows(const Rows *t, const int64_t *ids, int count, float *rows,
                             int ld) noexcept nogil:
    """rows[i, :width] := row ids[i] of t, as float32 (rows ld floats apart)."""
    fl_gather_rows(t.data, t.type, t.scale, t.width, ids, count, rows, ld)


cdef inline int cell_code(str rnn_type) except -1:
    return {"LSTM": CELL_LSTM, "GRU": CELL_GRU, "RNN_TANH": CELL_RNN_TANH,
            "RNN_RELU": CELL_RNN_RELU, "GRU_RESET_BEFORE": CELL_GRU_RESET_BEFORE}[rnn_type]


cdef inline int gates_of(int cell) noexcept nogil:
    if cell == CELL_LSTM:
        return 4
    if cell == CELL_GRU or cell == CELL_GRU_RESET_BEFORE:
        return 3
    return 1


cdef inline const float *float_ptr(object array, str name, bint optional=False) except? NULL:
    """The data pointer of a C-contiguous float32 array (NULL for an optional None)."""
    if array is None:
        if optional:
            return NULL
        raise ValueError(f"{name} is required")
    if array.dtype != np.float32 or not array.flags.c_contiguous or array.size == 0:
        raise ValueError(f"{name} must be a non-empty C-contiguous float32 array")
    cdef const float[::1] flat = array.reshape(-1)
    return &flat[0]


cdef inline int fill_matrix(fl_matrix *m, object packed, str name, bint optional=False) except -1:
    """Point `m` at a fastlstm.pack.PackedMatrix (panels NULL for an optional None)."""
    if packed is None:
        if not optional:
            raise ValueError(f"{name} is required")
        m.panels, m.scale, m.qsum, m.type, m.n, m.k = NULL, NULL, NULL, 0, 0, 0
        return 0
    panels = packed.panels
    m.type = packed.type_code
    m.n, m.k = packed.n, packed.k
    if m.n < 1 or m.k < 1:
        raise ValueError(f"{name}: an empty matrix ({m.n}, {m.k})")
    if (panels.dtype.char != wtype_numpy_char(m.type) or panels.ndim != 1
            or panels.size != fl_packed_size(m.type, m.n, m.k)
            or panels.ctypes.data % 64 or not panels.flags.c_contiguous):
        raise ValueError(f"{name}: panels of the wrong size or alignment")
    m.panels = <const void *> <size_t> panels.ctypes.data
    m.scale = NULL
    m.qsum = NULL
    if m.type == FL_I8:
        if packed.scale is None or packed.scale.shape != (m.n,):
            raise ValueError(f"{name}: int8 weights need one scale per output")
        m.scale = float_ptr(packed.scale, f"{name} scale")
        qsum = packed.qsum
        if (qsum is None or qsum.dtype != np.int32 or qsum.shape != (m.n,)
                or not qsum.flags.c_contiguous):
            raise ValueError(f"{name}: int8 weights need one int32 qsum per output")
        m.qsum = <const int32_t *> <size_t> qsum.ctypes.data
    return 0


cdef inline int fill_rows(Rows *t, object stored, str name) except -1:
    """Point `t` at a fastlstm.precision.Stored 2-D array (vocab, width)."""
    data = stored.data
    t.type = stored.type_code
    if (data.dtype.char != wtype_numpy_char(t.type) or data.ndim != 2
            or not data.flags.c_contiguous or data.size == 0):
        raise ValueError(f"{name} must be a non-empty C-contiguous 2-D array")
    t.width = data.shape[1]
    t.data = <const void *> <size_t> data.ctypes.data
    t.scale = NULL
    if t.type == FL_I8:
        if stored.scale is None or stored.scale.shape != (data.shape[0],):
            raise ValueError(f"{name}: int8 rows need one scale per row")
        t.scale = float_ptr(stored.scale, f"{name} scale")
    return 0


cdef inline void gru_reset_before_step(const Layer *L, int rows, const float *xw,
                                       const float *h_prev, float *h_new, float *hw,
                                       float *rh, const Team *team) noexcept nogil:
    """layer_step for CELL_GRU_RESET_BEFORE, always on the panels (no row-major copies):
    hw's r, z columns := h_prev . W_hh[r, z]^T; rh := r * h_prev; hw's n columns :=
    rh . W_hn^T; then the update.  rh: (rows, hidden) scratch (layer_step's hfull)."""
    cdef int j0, j1, width = 3 * L.hidden
    team_matmul(team, rows, &L.w_hh_p, h_prev, L.out_size, NULL, hw, width)
    sync(team)
    team_units(team, L.hidden, &j0, &j1)
    gru_rb_reset(rows, L.hidden, j0, j1, xw, hw, h_prev, rh)
    sync(team)
    team_matmul(team, rows, &L.w_hn_p, rh, L.hidden, NULL, hw + 2 * L.hidden, width)
    sync(team)
    gru_rb_update(rows, L.hidden, j0, j1, xw, hw, h_prev, h_new)
    sync(team)


cdef inline void layer_step(int cell, const Layer *L, int rows, const float *xw,
                            const float *h_prev, float *h_new, float *c, float *hw,
                            float *hfull, bint panels, const Team *team) noexcept nogil:
    """One time step of one layer for `rows` sequences (PyTorch's cell equations).

    xw: (rows, gates*hidden) input projections with biases; h_prev, h_new: (rows, out_size)
    (they may be the same buffer); c: (rows, hidden) LSTM cell state, updated in place;
    hw: (rows, gates*hidden) and hfull: (rows, hidden) scratch.  `panels`: multiply with
    matmul.h's kernel on the panels (row-independent, any precision) instead of BLAS (teams
    of more than one always use the panels).  The team splits the products by panels and
    the cell update by units; xw must be complete at the first sync, h_new is at return.
    """
    cdef int G = gates_of(cell), j0, j1
    if cell == CELL_GRU_RESET_BEFORE:
        gru_reset_before_step(L, rows, xw, h_prev, h_new, hw, hfull, team)
        return
    # hw := h_prev . W_hh^T
    if panels or team.size > 1:
        team_matmul(team, rows, &L.w_hh_p, h_prev, L.out_size, NULL, hw, G * L.hidden)
    else:
        matmul_wt(rows, G * L.hidden, L.out_size, h_prev, L.out_size, L.w_hh, 0.0, hw, G * L.hidden)
    sync(team)
    team_units(team, L.hidden, &j0, &j1)
    if cell == CELL_LSTM:
        if L.w_hr_p.panels != NULL:  # proj_size
            lstm_step(rows, L.hidden, j0, j1, xw, hw, c, hfull)
            sync(team)
            # h = W_hr (o * tanh(c))
            if panels or team.size > 1:
                team_matmul(team, rows, &L.w_hr_p, hfull, L.hidden, NULL, h_new, L.out_size)
            else:
                matmul_wt(rows, L.out_size, L.hidden, hfull, L.hidden, L.w_hr, 0.0, h_new, L.out_size)
        else:
            lstm_step(rows, L.hidden, j0, j1, xw, hw, c, h_new)
    elif cell == CELL_GRU:
        gru_step(rows, L.hidden, j0, j1, xw, hw, L.bias_hn, h_prev, h_new)
    else:
        rnn_step(rows, L.hidden, j0, j1, cell == CELL_RNN_RELU, xw, hw, h_new)
    sync(team)


cdef inline void input_projection(const Layer *L, int gates, int rows, const float *x,
                                  float *xw, bint panels, const Team *team) noexcept nogil:
    """xw (rows, gates*hidden) := x (rows, in_size) . W_ih^T + bias_x (the team's share of
    the panels; no sync: layer_step's first one covers it)."""
    cdef int r, width = gates * L.hidden
    if panels or team.size > 1:
        team_matmul(team, rows, &L.w_ih_p, x, L.in_size, L.bias_x, xw, width)
        return
    for r in range(rows):
        memcpy(xw + <size_t> r * width, L.bias_x, width * sizeof(float))
    matmul_wt(rows, width, L.in_size, x, L.in_size, L.w_ih, 1.0, xw, width)


cdef inline void head_product(const Stack *m, bint blas, const Team *team, int rows,
                              const float *x, int ldx, float *y, int ldy) noexcept nogil:
    """y (rows, outputs) := x (rows, out_last) . W_head^T + b_head, rows ldx and ldy floats
    apart: with BLAS on the row-major copy (`blas`: float32 models on CPUs without the
    vector paths, a team of one), else this thread's share of the head's panels."""
    cdef int r, V = m.head.n
    if not blas:
        team_matmul(team, rows, &m.head, x, ldx, m.head_b, y, ldy)
        return
    if m.head_b != NULL:
        for r in range(rows):
            memcpy(y + <size_t> r * ldy, m.head_b, V * sizeof(float))
    matmul_wt(rows, V, m.head.k, x, ldx, m.head_w, 1.0 if m.head_b != NULL else 0.0, y, ldy)


cdef inline void stack_step(const Stack *m, int begin, int n, int batch, float *h, float *c,
                            float *xw, float *hw, float *hfull, const Team *team) noexcept nogil:
    """One time step of every layer, on the panels, for state rows [begin, begin + n) of h
    (num_layers, batch, out_size) and c (num_layers, batch, hidden; NULL but for LSTMs),
    updated in place.  xw (n, gates*hidden0) holds layer 0's input projections, biases
    included (complete by layer_step's first sync); each layer above takes the new h of the
    one below.  hw, hfull: layer_step's scratch."""
    cdef int l, G = gates_of(m.cell)
    cdef const Layer *L
    for l in range(m.num_layers):
        L = &m.layers[l]
        if l > 0:
            input_projection(L, G, n, h + (<size_t> (l - 1) * batch + begin) * L.in_size, xw,
                             True, team)
        layer_step(m.cell, L, n, xw, h + (<size_t> l * batch + begin) * L.out_size,
                   h + (<size_t> l * batch + begin) * L.out_size,
                   c + (<size_t> l * batch + begin) * L.hidden if c != NULL else NULL,
                   hw, hfull, True, team)


# A loop over rows, as run_split runs it: on rows [b0, b1) alone, or every row as one team
# of team_size threads.  Each returns 0, or -1 if it could not allocate its scratch.
ctypedef int (*rows_alone_fn)(const void *work, int b0, int b1) noexcept nogil
ctypedef int (*rows_team_fn)(const void *work, int team_size) noexcept nogil


cdef inline int run_split(const void *work, int batch, int num_threads, rows_alone_fn alone,
                          rows_team_fn team) noexcept nogil:
    """Run `work` over `batch` rows on num_threads threads: with fewer rows than threads, as
    one team (unless this module's teams were found lagging: then on one thread); else each
    thread on an even share of whole rows, thread t on [t*per + min(t, extra), ...), one more
    row if t < extra.  Returns 0, or -1 if a thread ran out of memory."""
    cdef int t, nthreads = max(1, min(num_threads, batch)), failed = 0
    cdef int per = batch // nthreads, extra = batch % nthreads
    if batch < num_threads and not team_solo_now():
        return team(work, num_threads)
    for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
        failed |= alone(work, t * per + min(t, extra), (t + 1) * per + min(t + 1, extra))
    return -1 if failed else 0
