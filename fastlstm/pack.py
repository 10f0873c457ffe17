"""Lay weights out once, at load, the way the kernels read them, in the model's precision.

    fastlstm.roles (what each weight is) -> fastlstm.precision.store (float32, float16,
    bfloat16 or int8) -> pack_matrix: panels of 16 outputs, written by matmul.h's fl_pack
    (the layout's one writer) -> pack_layer: a PackedLayer per recurrent layer (biases
    merged, GRU's b_hn apart) -> fastlstm._packed.PackedModel, which gathers them with layer
    0's input (input_table, or the embedding) and the head for the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastlstm._matmul import pack_panels, packed_size  # matmul.h's panel layout
from fastlstm.precision import STORAGE, TYPE_CODES, Stored, store
from fastlstm.roles import LayerWeights, RecurrentWeights

ALIGNMENT = 64  # bytes: panels start on a cache line


def aligned_empty(count: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array of `count` elements whose data is 64-byte aligned."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(count + ALIGNMENT // itemsize, dtype=dtype)
    offset = (-raw.ctypes.data % ALIGNMENT) // itemsize
    return raw[offset:offset + count]


@dataclass(frozen=True)
class PackedMatrix:
    """A weight W (n, k) in matmul.h's panels (its header gives the layout; its fl_pack
    writes them): panels[p][kk][slot] = W[16p + l, kk], or int8 quads of k."""

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
    data = np.ascontiguousarray(stored.data)
    n, k = data.shape
    panels = aligned_empty(packed_size(n, k, stored.dtype), STORAGE[stored.dtype])
    pack_panels(data, panels)
    qsum = None
    if stored.dtype == "int8":
        qsum = np.ascontiguousarray(data.sum(axis=1, dtype=np.int64).astype(np.int32))
    return PackedMatrix(panels, stored.scale, stored.dtype, n, k, qsum)


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


def input_table(embedding: Stored, w_ih: Stored, bias_x: np.ndarray,
                budget: int) -> np.ndarray | None:
    """Layer 0's input projection of every token, `embedding . W_ih^T + bias_x` (vocab,
    gates*hidden), float32, so a step reads one row instead of multiplying; None when it
    would hold more than `budget` values (large vocabularies, where it would outgrow the
    weights).  `embedding` and `w_ih` in the model's precision; the products of their
    values are summed in float64 and rounded once."""
    vocab, gates_hidden = embedding.shape[0], w_ih.shape[0]
    if vocab * gates_hidden > budget:
        return None
    x, w = embedding.to_float32().astype(np.float64), w_ih.to_float32().astype(np.float64)
    return _c_float32(x @ w.T + bias_x)
