# The gate math of the GRU that resets before its recurrent product (gru_reset_before.h):
# Keras's GRU(reset_after=False), fastlstm's rnn_type GRU_RESET_BEFORE.  PyTorch's gate
# order (r, z, n); xw = W_ih x + b_ih + b_hh (every bias on the input side).

cdef extern from "kernels.h" nogil:  # gru_reset_before.h
    # rh = sigmoid(xr + hr) * h_prev; xw, hw: (rows, 3*hidden); h_prev, rh: (rows, hidden).
    void gru_rb_reset "fl_gru_rb_reset"(int rows, int hidden, int j0, int j1, const float *xw,
                                        const float *hw, const float *h_prev, float *rh)
    # z = sigmoid(xz + hz); n = tanh(xn + hn) with hn = W_hn rh; h = (1-z)*n + z*h_prev.
    void gru_rb_update "fl_gru_rb_update"(int rows, int hidden, int j0, int j1,
                                          const float *xw, const float *hw,
                                          const float *h_prev, float *h)
