# The fused gate non-linearities and state updates of one time step, for a block of rows:
# gates.h (AVX2 with a libm fallback) for LSTM, GRU and RNN tanh; relu here.
# Inputs are the two pre-activations PyTorch adds up: xw = W_ih x + biases (precomputed for
# the whole sequence) and hw = W_hh h_prev (this step's product).  Gate order is PyTorch's.

cdef extern from "gates.h" nogil:
    # i, f, g, o = split(xw + hw); c = f*c + i*g; h = o*tanh(c)   (nn.LSTM)
    # xw, hw: (rows, 4*hidden); c: (rows, hidden), updated in place; h: (rows, hidden).
    void lstm_step "fl_lstm_step"(int rows, int hidden, const float *xw, const float *hw,
                                  float *c, float *h)
    # r = s(xr + hr); z = s(xz + hz); n = tanh(xn + r*(hn + b_hn)); h = (1-z)*n + z*h_prev
    # (nn.GRU).  xw: b_ih and b_hh's r, z parts included; bias_hn: (hidden,), b_hh's n part.
    void gru_step "fl_gru_step"(int rows, int hidden, const float *xw, const float *hw,
                                const float *bias_hn, const float *h_prev, float *h)
    # h = tanh(xw + hw)   (nn.RNN, nonlinearity="tanh"); all (rows, hidden).
    void rnn_tanh_step "fl_rnn_tanh_step"(int rows, int hidden, const float *xw,
                                          const float *hw, float *h)


cdef inline void rnn_step(int rows, int hidden, const float *xw, const float *hw,
                          bint relu, float *h) noexcept nogil:
    """nn.RNN: h = tanh(xw + hw), or relu(xw + hw).  All arrays (rows, hidden)."""
    cdef int k
    cdef float v
    if not relu:
        rnn_tanh_step(rows, hidden, xw, hw, h)
        return
    for k in range(rows * hidden):
        v = xw[k] + hw[k]
        h[k] = 0.0 if v < 0.0 else v  # NaN stays NaN, as in torch.relu
