"""A model's recurrent state as PyTorch lays it out: h (num_layers, batch, size), and for
an LSTM the pair (h, c).  What a user passes in is checked and copied here, once, for
Model, Forecaster and the bare layers alike."""

from __future__ import annotations

import numpy as np

# LSTM (h, c), GRU/RNN h; h (num_layers, batch, out), c (num_layers, batch, hidden).
State = "np.ndarray | tuple[np.ndarray, np.ndarray]"


def state_buffers(state, rnn_type: str, num_layers: int, batch: int, out_size: int,
                  hidden: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Check a user's state against PyTorch's layout and copy it into fresh float32 buffers
    (h (num_layers, batch, out_size), c (num_layers, batch, hidden) for LSTM, else None)."""
    h_shape, c_shape = (num_layers, batch, out_size), (num_layers, batch, hidden)
    lstm = rnn_type == "LSTM"
    if state is None:
        return np.zeros(h_shape, np.float32), np.zeros(c_shape, np.float32) if lstm else None
    if lstm:
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError("an LSTM state is a pair (h, c)")
        parts = (("h", state[0], h_shape), ("c", state[1], c_shape))
    else:
        if isinstance(state, (tuple, list)):
            raise ValueError(f"a {rnn_type} state is one array h, not a tuple")
        parts = (("h", state, h_shape),)
    buffers = []
    for name, value, shape in parts:
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise ValueError(f"state {name} must be floating point, got dtype {array.dtype}")
        if array.shape != shape:
            raise ValueError(f"state {name} has shape {array.shape}, expected {shape} "
                             "(num_layers, batch, size)")
        if not np.isfinite(array).all():
            raise ValueError(f"state {name} contains NaN or Inf")
        buffers.append(np.array(array, dtype=np.float32, order="C"))  # a copy: never mutate input
    return buffers[0], buffers[1] if lstm else None
