# A stack of recurrent layers as the kernels see it: raw pointers into the arrays of
# fastlstm.pack.PackedLayer, which the Python side keeps alive for the duration of a call.

from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from blas cimport matmul_wt
from matmul cimport fl_matmul_packed
from cells cimport gru_step, lstm_step, rnn_step

import numpy as np


cdef enum Cell:
    CELL_LSTM = 0
    CELL_GRU = 1
    CELL_RNN_TANH = 2
    CELL_RNN_RELU = 3


cdef struct Layer:
    const float *w_ih      # (gates*hidden, in_size)   PyTorch gate order
    const float *w_hh      # (gates*hidden, out_size)
    const float *bias_x    # (gates*hidden,)  b_ih + b_hh (GRU: without b_hh's n part)
    const float *bias_hn   # (hidden,)  GRU only: b_hh's n part; NULL otherwise
    const float *w_hr      # (out_size, hidden)  LSTM projection; NULL without proj_size
    # The same three weights in matmul.h's panels, for the decode loop's deterministic products.
    const float *w_ih_panels
    const float *w_hh_panels
    const float *w_hr_panels
    int in_size
    int hidden
    int out_size


cdef inline int cell_code(str rnn_type) except -1:
    return {"LSTM": CELL_LSTM, "GRU": CELL_GRU, "RNN_TANH": CELL_RNN_TANH,
            "RNN_RELU": CELL_RNN_RELU}[rnn_type]


cdef inline int gates_of(int cell) noexcept nogil:
    if cell == CELL_LSTM:
        return 4
    if cell == CELL_GRU:
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


cdef inline Layer *layers_from_packed(list packed) except NULL:
    """A malloc'd Layer array (the caller frees it) pointing into PackedLayer arrays."""
    cdef int i, n = len(packed)
    if n == 0:
        raise ValueError("no layers")
    cdef Layer *layers = <Layer *> malloc(n * sizeof(Layer))
    if layers == NULL:
        raise MemoryError()
    try:
        for i, layer in enumerate(packed):
            layers[i].w_ih = float_ptr(layer.w_ih, "w_ih")
            layers[i].w_hh = float_ptr(layer.w_hh, "w_hh")
            layers[i].bias_x = float_ptr(layer.bias_x, "bias_x")
            layers[i].bias_hn = float_ptr(layer.bias_hn, "bias_hn", True)
            layers[i].w_hr = float_ptr(layer.w_hr, "w_hr", True)
            layers[i].w_ih_panels = float_ptr(layer.w_ih_panels, "w_ih_panels")
            layers[i].w_hh_panels = float_ptr(layer.w_hh_panels, "w_hh_panels")
            layers[i].w_hr_panels = float_ptr(layer.w_hr_panels, "w_hr_panels", True)
            layers[i].in_size = layer.w_ih.shape[1]
            layers[i].hidden = layer.hidden_size
            layers[i].out_size = layer.w_hh.shape[1]
    except BaseException:
        free(layers)
        raise
    return layers


cdef inline void layer_step(int cell, const Layer *L, int rows, const float *xw,
                            const float *h_prev, float *h_new, float *c, float *hw,
                            float *hfull, bint panels) noexcept nogil:
    """One time step of one layer for `rows` sequences (PyTorch's cell equations).

    xw: (rows, gates*hidden) input projections with biases; h_prev, h_new: (rows, out_size)
    (they may be the same buffer); c: (rows, hidden) LSTM cell state, updated in place;
    hw: (rows, gates*hidden) and hfull: (rows, hidden) scratch.  `panels`: multiply with
    matmul.h's row-independent kernel instead of BLAS.
    """
    cdef int G = gates_of(cell)
    # hw := h_prev . W_hh^T
    if panels:
        fl_matmul_packed(rows, G * L.hidden, L.out_size, h_prev, L.out_size, L.w_hh_panels,
                         NULL, 0, hw, G * L.hidden)
    else:
        matmul_wt(rows, G * L.hidden, L.out_size, h_prev, L.out_size, L.w_hh, 0.0, hw, G * L.hidden)
    if cell == CELL_LSTM:
        if L.w_hr != NULL:
            lstm_step(rows, L.hidden, xw, hw, c, hfull)
            # h = W_hr (o * tanh(c))
            if panels:
                fl_matmul_packed(rows, L.out_size, L.hidden, hfull, L.hidden, L.w_hr_panels,
                                 NULL, 0, h_new, L.out_size)
            else:
                matmul_wt(rows, L.out_size, L.hidden, hfull, L.hidden, L.w_hr, 0.0, h_new, L.out_size)
        else:
            lstm_step(rows, L.hidden, xw, hw, c, h_new)
    elif cell == CELL_GRU:
        gru_step(rows, L.hidden, xw, hw, L.bias_hn, h_prev, h_new)
    else:
        rnn_step(rows, L.hidden, xw, hw, cell == CELL_RNN_RELU, h_new)


cdef inline void input_projection(const Layer *L, int gates, int rows, const float *x,
                                  float *xw, bint panels) noexcept nogil:
    """xw (rows, gates*hidden) := x (rows, in_size) . W_ih^T + bias_x."""
    cdef int r, width = gates * L.hidden
    if panels:
        fl_matmul_packed(rows, width, L.in_size, x, L.in_size, L.w_ih_panels, L.bias_x, 0,
                         xw, width)
        return
    for r in range(rows):
        memcpy(xw + <size_t> r * width, L.bias_x, width * sizeof(float))
    matmul_wt(rows, width, L.in_size, x, L.in_size, L.w_ih, 1.0, xw, width)
