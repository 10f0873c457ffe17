# The fused gate non-linearities and state updates of one time step, for a block of rows.
# Inputs are the two pre-activations PyTorch adds up: xw = W_ih x + biases (precomputed for
# the whole sequence) and hw = W_hh h_prev (this step's product).  Gate order is PyTorch's.

from libc.math cimport expf, tanhf


cdef inline float sigmoid(float x) noexcept nogil:
    return 1.0 / (1.0 + expf(-x))


cdef inline void lstm_step(int rows, int hidden, const float *xw, const float *hw,
                           float *c, float *h) noexcept nogil:
    """i, f, g, o = split(xw + hw); c = f*c + i*g; h = o*tanh(c)   (nn.LSTM, gates i,f,g,o).

    xw, hw: (rows, 4*hidden); c: (rows, hidden), updated in place; h: (rows, hidden) output.
    """
    cdef int r, j, G = 4 * hidden
    cdef const float *x
    cdef const float *y
    cdef float i_gate, f_gate, g_gate, o_gate, c_new
    for r in range(rows):
        x = xw + r * G
        y = hw + r * G
        for j in range(hidden):
            i_gate = sigmoid(x[j] + y[j])
            f_gate = sigmoid(x[hidden + j] + y[hidden + j])
            g_gate = tanhf(x[2 * hidden + j] + y[2 * hidden + j])
            o_gate = sigmoid(x[3 * hidden + j] + y[3 * hidden + j])
            c_new = f_gate * c[r * hidden + j] + i_gate * g_gate
            c[r * hidden + j] = c_new
            h[r * hidden + j] = o_gate * tanhf(c_new)


cdef inline void gru_step(int rows, int hidden, const float *xw, const float *hw,
                          const float *bias_hn, const float *h_prev, float *h) noexcept nogil:
    """nn.GRU, gates r,z,n:  r = s(xr + hr); z = s(xz + hz); n = tanh(xn + r*(hn + b_hn));
    h = (1 - z)*n + z*h_prev.

    xw: (rows, 3*hidden) with b_ih and the r, z parts of b_hh; hw: (rows, 3*hidden) = W_hh h_prev;
    bias_hn: (hidden,), the n part of b_hh, which sits inside r * (...); h_prev, h: (rows, hidden).
    """
    cdef int r, j, G = 3 * hidden
    cdef const float *x
    cdef const float *y
    cdef float r_gate, z_gate, n_gate
    for r in range(rows):
        x = xw + r * G
        y = hw + r * G
        for j in range(hidden):
            r_gate = sigmoid(x[j] + y[j])
            z_gate = sigmoid(x[hidden + j] + y[hidden + j])
            n_gate = tanhf(x[2 * hidden + j] + r_gate * (y[2 * hidden + j] + bias_hn[j]))
            h[r * hidden + j] = (1.0 - z_gate) * n_gate + z_gate * h_prev[r * hidden + j]


cdef inline void rnn_step(int rows, int hidden, const float *xw, const float *hw,
                          bint relu, float *h) noexcept nogil:
    """nn.RNN: h = tanh(xw + hw), or relu(xw + hw).  All arrays (rows, hidden)."""
    cdef int k
    cdef float v
    for k in range(rows * hidden):
        v = xw[k] + hw[k]
        if relu:
            h[k] = 0.0 if v < 0.0 else v  # NaN stays NaN, as in torch.relu
        else:
            h[k] = tanhf(v)
