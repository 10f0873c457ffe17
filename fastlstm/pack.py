"""Lay weights out once, at load, the way the kernels read them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastlstm import _matmul
from fastlstm.weights import LayerWeights, RecurrentWeights


def _c_float32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass(frozen=True)
class PackedLayer:
    """One recurrent layer as fastlstm._rnn reads it (PyTorch gate order throughout)."""

    hidden_size: int
    w_ih: np.ndarray  # (gates*hidden, in_size)
    w_hh: np.ndarray  # (gates*hidden, out_size)
    bias_x: np.ndarray  # (gates*hidden,) b_ih + b_hh, added to the input projections once
    bias_hn: np.ndarray | None  # (hidden,) GRU: b_hh's n part, which r multiplies
    w_hr: np.ndarray | None  # (proj_size, hidden) LSTM projection
    # w_ih, w_hh, w_hr again in matmul.h's panels of 16 outputs, for the decode loop, whose
    # products must not depend on how many rows run together (seeded reproducibility).
    w_ih_panels: np.ndarray
    w_hh_panels: np.ndarray
    w_hr_panels: np.ndarray | None


def panels(w: np.ndarray | None) -> np.ndarray | None:
    """W (n, k) packed for fastlstm._matmul's kernel (1-D, 64-byte aligned)."""
    return None if w is None else _matmul.pack(w)


def pack_layer(rnn_type: str, hidden: int, layer: LayerWeights) -> PackedLayer:
    gates_hidden = layer.weight_hh.shape[0]
    b_ih = layer.bias_ih if layer.bias_ih is not None else np.zeros(gates_hidden, np.float32)
    b_hh = layer.bias_hh if layer.bias_hh is not None else np.zeros(gates_hidden, np.float32)
    bias_x = b_ih + b_hh
    bias_hn = None
    if rnn_type == "GRU":
        # n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): b_hn cannot join the input side.
        bias_x[2 * hidden:] = b_ih[2 * hidden:]
        bias_hn = _c_float32(b_hh[2 * hidden:])
    w_ih, w_hh = _c_float32(layer.weight_ih), _c_float32(layer.weight_hh)
    w_hr = None if layer.weight_hr is None else _c_float32(layer.weight_hr)
    return PackedLayer(hidden_size=hidden, w_ih=w_ih, w_hh=w_hh, bias_x=_c_float32(bias_x),
                       bias_hn=bias_hn, w_hr=w_hr, w_ih_panels=panels(w_ih),
                       w_hh_panels=panels(w_hh), w_hr_panels=panels(w_hr))


def pack_layers(recurrent: RecurrentWeights) -> list[PackedLayer]:
    return [pack_layer(recurrent.rnn_type, recurrent.hidden_size, layer)
            for layer in recurrent.layers]


def input_table(embedding: np.ndarray, layer0: PackedLayer, budget: int) -> np.ndarray | None:
    """Layer 0's input projection of every token, `embedding . W_ih^T + bias_x` (vocab,
    gates*hidden), so a step reads one row instead of multiplying; None when it would hold
    more than `budget` floats (large vocabularies, where it would outgrow the weights)."""
    vocab, gates_hidden = embedding.shape[0], layer0.w_ih.shape[0]
    if vocab * gates_hidden > budget:
        return None
    return _c_float32(embedding @ layer0.w_ih.T + layer0.bias_x)
