"""Lay weights out once, at load, the way the kernels read them, in the model's precision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastlstm._matmul import PANEL  # outputs per panel (matmul.h's FL_PANEL)
from fastlstm.precision import STORAGE, TYPE_CODES, Stored, store
from fastlstm.roles import LayerWeights, RecurrentWeights

ALIGNMENT = 64  # bytes: panels start on a cache line
# bfloat16 panel rows interleave the two halves of the panel: position 2i holds output i,
# 2i + 1 holds output 8 + i (matmul.h's fl_panel_slot), so one load gives both halves.
# int8 panels hold quads of k, k padded with zeros to a multiple of 4: 64 bytes per quad,
# outputs 0..7 then 8..15, each output's 4 k together (matmul.h's fl_i8_slot):
# panels[p][kk // 4][l // 8][l % 8][kk % 4], what vpdpbusd multiplies per 32-bit lane.
_BF16_ORDER = np.array([o for i in range(8) for o in (i, 8 + i)])


def distinct_nbytes(arrays) -> int:
    """Bytes of the distinct arrays among `arrays` (None skipped; one held twice, as a tied
    embedding and head, counted once): what a model's nbytes reports."""
    unique = {id(a): a for a in arrays if a is not None}
    return sum(a.nbytes for a in unique.values())


def aligned_empty(count: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array of `count` elements whose data is 64-byte aligned."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(count + ALIGNMENT // itemsize, dtype=dtype)
    offset = (-raw.ctypes.data % ALIGNMENT) // itemsize
    return raw[offset:offset + count]


@dataclass(frozen=True)
class PackedMatrix:
    """A weight W (n, k) in matmul.h's panels: panels[p][kk][slot] = W[16p + l, kk] (int8:
    panels[p][kk // 4][l // 8][l % 8][kk % 4])."""

    panels: np.ndarray  # 1-D, 64-byte aligned, ceil(n/16)*16*k elements of the dtype's storage
    #                     (int8: k rounded up to a multiple of 4)
    scale: np.ndarray | None  # (n,) float32, int8 only
    dtype: str
    n: int
    k: int
    # (n,) int32, int8 only: each output's sum of q over k, which the AVX512-VNNI kernels
    # subtract (32768 times) after multiplying q by x rounded to int16 and offset to unsigned.
    # Exact for k < 2^31 / 127; the kernels read it only for k <= 16384.
    qsum: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.panels, self.scale, self.qsum) if a is not None)

    @property
    def type_code(self) -> int:
        """matmul.h's enum fl_wtype for this precision."""
        return TYPE_CODES[self.dtype]

    @property
    def arrays(self) -> list[np.ndarray]:
        """Every array this matrix holds."""
        return [a for a in (self.panels, self.scale, self.qsum) if a is not None]


def pack_matrix(w: Stored | np.ndarray, dtype: str | None = None) -> PackedMatrix:
    """W (n, k), float32 (converted to `dtype`) or already `Stored`, packed into panels."""
    stored = w if isinstance(w, Stored) else store(w, dtype or "float32")
    data = stored.data
    n, k = data.shape
    padded_n = -(-n // PANEL) * PANEL
    padded_k = -(-k // 4) * 4 if stored.dtype == "int8" else k
    if (padded_n, padded_k) == (n, k):
        padded = data
    else:
        padded = np.zeros((padded_n, padded_k), dtype=data.dtype)
        padded[:n, :k] = data
    qsum = None
    if stored.dtype == "int8":  # quads of k: panels[p][kk // 4][l // 8][l % 8][kk % 4]
        panels = padded.reshape(padded_n // PANEL, 2, 8, padded_k // 4, 4).transpose(0, 3, 1, 2, 4)
        qsum = np.ascontiguousarray(data.sum(axis=1, dtype=np.int64).astype(np.int32))
    else:
        panels = padded.reshape(padded_n // PANEL, PANEL, padded_k).transpose(0, 2, 1)  # np,k,16
        if stored.dtype == "bfloat16":
            panels = panels[:, :, _BF16_ORDER]
    out = aligned_empty(panels.size, STORAGE[stored.dtype])
    out.reshape(panels.shape)[...] = panels  # one copy, no contiguous temporary
    return PackedMatrix(out, stored.scale, stored.dtype, n, k, qsum)


@dataclass(frozen=True)
class PackedLayer:
    """One recurrent layer as fastlstm._rnn and fastlstm._generate read it (PyTorch gate
    order throughout)."""

    hidden_size: int
    bias_x: np.ndarray  # (gates*hidden,) b_ih + b_hh, added to the input projections once
    bias_hn: np.ndarray | None  # (hidden,) GRU: b_hh's n part, which r multiplies
    # The weights in matmul.h's panels, in the model's precision: every product of the decode
    # loop, and of forward/prefill below float32.  They do not depend on how many rows run
    # together, which seeded reproducibility needs.
    w_ih_panels: PackedMatrix  # (gates*hidden, in_size)
    w_hh_panels: PackedMatrix  # (gates*hidden, out_size)
    w_hr_panels: PackedMatrix | None  # (proj_size, hidden) LSTM projection
    # GRU_RESET_BEFORE: W_hh's n rows, multiplied by r * h once r is known; w_hh_panels then
    # holds the r and z rows only (2*hidden, out_size).  None for every other cell.
    w_hn_panels: PackedMatrix | None = None  # (hidden, out_size)
    # Row-major float32 copies for BLAS in forward(), kept only for float32 models on CPUs
    # without fastlstm's vector kernels (pack_layer's row_major).
    w_ih: np.ndarray | None = None  # (gates*hidden, in_size)
    w_hh: np.ndarray | None = None  # (gates*hidden, out_size)
    w_hr: np.ndarray | None = None  # (proj_size, hidden)

    @property
    def arrays(self) -> list[np.ndarray]:
        """Every array this layer holds (for Model.nbytes)."""
        out = [self.bias_x, self.bias_hn, self.w_ih, self.w_hh, self.w_hr]
        for m in (self.w_ih_panels, self.w_hh_panels, self.w_hr_panels, self.w_hn_panels):
            if m is not None:
                out += m.arrays
        return [a for a in out if a is not None]


def _c_float32(array: np.ndarray | Stored) -> np.ndarray:
    if isinstance(array, Stored):  # an int8 file's matrix, for a float32 model's BLAS copies
        return array.to_float32()
    return np.ascontiguousarray(array, dtype=np.float32)


def pack_layer(rnn_type: str, hidden: int, layer: LayerWeights, dtype: str = "float32",
               index: int = 0, row_major: bool = False) -> PackedLayer:
    gates_hidden = layer.weight_hh.shape[0]
    b_ih = layer.bias_ih if layer.bias_ih is not None else np.zeros(gates_hidden, np.float32)
    b_hh = layer.bias_hh if layer.bias_hh is not None else np.zeros(gates_hidden, np.float32)
    bias_x = b_ih + b_hh
    bias_hn = None
    if rnn_type == "GRU":
        # n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): b_hn cannot join the input side.
        bias_x[2 * hidden:] = b_ih[2 * hidden:]
        bias_hn = _c_float32(b_hh[2 * hidden:])

    def packed(w, name):
        return None if w is None else pack_matrix(store(w, dtype, f"{name}_l{index}"))

    if rnn_type == "GRU_RESET_BEFORE":
        # n = tanh(W_in x + b_in + W_hn (r * h) + b_hn): every bias joins the input side, and
        # W_hh splits in two products, the second after r (always on the panels: no BLAS copies).
        # Each row is rounded on its own (int8: its own scale), so splitting changes no value.
        return PackedLayer(hidden_size=hidden, bias_x=_c_float32(bias_x), bias_hn=None,
                           w_ih_panels=packed(layer.weight_ih, "weight_ih"),
                           w_hh_panels=packed(layer.weight_hh[:2 * hidden], "weight_hh"),
                           w_hr_panels=None,
                           w_hn_panels=packed(layer.weight_hh[2 * hidden:], "weight_hh"))

    copies = {}
    if row_major and dtype == "float32":
        copies = {"w_ih": _c_float32(layer.weight_ih), "w_hh": _c_float32(layer.weight_hh),
                  "w_hr": None if layer.weight_hr is None else _c_float32(layer.weight_hr)}
    return PackedLayer(hidden_size=hidden, bias_x=_c_float32(bias_x), bias_hn=bias_hn,
                       w_ih_panels=packed(layer.weight_ih, "weight_ih"),
                       w_hh_panels=packed(layer.weight_hh, "weight_hh"),
                       w_hr_panels=packed(layer.weight_hr, "weight_hr"), **copies)


def pack_layers(recurrent: RecurrentWeights, dtype: str = "float32",
                row_major: bool = False) -> list[PackedLayer]:
    """Every layer packed; `row_major`: float32 layers also keep row-major copies for BLAS."""
    return [pack_layer(recurrent.rnn_type, recurrent.hidden_size, layer, dtype, i, row_major)
            for i, layer in enumerate(recurrent.layers)]


def input_table(embedding: np.ndarray, w_ih: np.ndarray, bias_x: np.ndarray,
                budget: int) -> np.ndarray | None:
    """Layer 0's input projection of every token, `embedding . W_ih^T + bias_x` (vocab,
    gates*hidden), float32, so a step reads one row instead of multiplying; None when it
    would hold more than `budget` values (large vocabularies, where it would outgrow the
    weights).  `embedding` and `w_ih` as the model's precision rounded them; the products
    are summed in float64 and rounded once."""
    vocab, gates_hidden = embedding.shape[0], w_ih.shape[0]
    if vocab * gates_hidden > budget:
        return None
    return _c_float32(embedding.astype(np.float64) @ w_ih.T.astype(np.float64) + bias_x)


def step_weights(layers: list[PackedLayer], head: PackedMatrix | None = None) -> int:
    """Weights one time step of one sequence multiplies: every layer's matrices, the head's."""
    matrices = [head] + [m for layer in layers for m in
                         (layer.w_ih_panels, layer.w_hh_panels, layer.w_hr_panels, layer.w_hn_panels)]
    return sum(m.n * m.k for m in matrices if m is not None)
