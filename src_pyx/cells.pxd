# The fused gate non-linearities and state updates of one time step (gates.h), for a block of
# rows and hidden units [j0, j1) of each: threads that share a sequence split its units, and
# every unit gets the same result whichever thread and kernel path computes it.
# Inputs are the two pre-activations PyTorch adds up: xw = W_ih x + biases (precomputed for
# the whole sequence) and hw = W_hh h_prev (this step's product).  Gate order is PyTorch's.

cdef extern from "kernels.h" nogil:  # gates.h
    # i, f, g, o = split(xw + hw); c = f*c + i*g; h = o*tanh(c)   (nn.LSTM)
    # xw, hw: (rows, 4*hidden); c: (rows, hidden), updated in place; h: (rows, hidden).
    void lstm_step "fl_lstm_step"(int rows, int hidden, int j0, int j1, const float *xw,
                                  const float *hw, float *c, float *h)
    # r = s(xr + hr); z = s(xz + hz); n = tanh(xn + r*(hn + b_hn)); h = (1-z)*n + z*h_prev
    # (nn.GRU).  xw: b_ih and b_hh's r, z parts included; bias_hn: (hidden,), b_hh's n part.
    void gru_step "fl_gru_step"(int rows, int hidden, int j0, int j1, const float *xw,
                                const float *hw, const float *bias_hn, const float *h_prev,
                                float *h)
    # h = tanh(xw + hw), or relu(xw + hw)   (nn.RNN); all (rows, hidden).
    void rnn_step "fl_rnn_step"(int rows, int hidden, int j0, int j1, bint relu,
                                const float *xw, const float *hw, float *h)
