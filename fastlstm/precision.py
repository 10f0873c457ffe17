"""Weight precisions: how a model's weights are stored, in memory and in files.

A precision says how many bytes each weight takes, which at batch 1 is what sets the
speed (every token reads every weight once).  float16 and bfloat16 weights are widened to
float32 and multiplied in float32; int8 weights are multiplied in integers, by each input
vector rounded to int16 on its own scale (max |x| -> 32767), with exact sums scaled back
once (src_pyx/matmul.h, "int8 weights").

- "float32": 4 bytes, exact.
- "float16": 2 bytes, IEEE half (round to nearest even); |w| must stay below 65504.
- "bfloat16": 2 bytes, the top half of a float32 (round to nearest even): float32's range,
  8 bits of mantissa.
- "int8": 1 byte, symmetric per output row: W[j, :] = q[j, :] * scale[j], q in [-127, 127],
  scale[j] = max |W[j, :]| / 127 (float32).  Converting an int8 model back to float32 and
  quantizing again gives the same q and scales, so an int8 file loads exactly as written.
  An int8 file is read as int8 (fastlstm.file_format), and `store` keeps such a matrix as
  it is, with no float32 copy, when quantizing its values again would give back its q and
  scales, as for the matrices fastlstm writes (`_quantizes_to_itself`); another
  quantizer's matrix is quantized again from its float values.  Either way the model is
  the one the file's float values make at int8.

Matrices (embedding, recurrent weights, head) take the model's precision; biases stay
float32 (a few KB, added once per output), and so does the layer-0 lookup table, which is
computed from the rounded weights and read one row per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastlstm._matmul import WEIGHT_TYPES  # the kernels' own table (matmul.h, matmul.pxd)

DTYPES = tuple(WEIGHT_TYPES)  # "float32", "float16", "bfloat16", "int8"
# matmul.h's enum fl_wtype
TYPE_CODES = {name: code for name, (code, _) in WEIGHT_TYPES.items()}
# NumPy's type for the stored elements (bfloat16 as its raw 16 bits)
STORAGE = {name: storage.type for name, (_, storage) in WEIGHT_TYPES.items()}

FLOAT16_MAX = 65504.0


_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16",
            "half": "float16", "bf16": "bfloat16", "i8": "int8"}


def check_dtype(dtype) -> str:
    """`dtype` as one of DTYPES ("fp16", "bf16", ... and NumPy's float32/float16 accepted)."""
    name = dtype
    if not isinstance(dtype, str) and dtype is not None:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    name = _ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return name


@dataclass(frozen=True)
class Stored:
    """A weight in a given precision: `data` holds the elements (float32, float16, the raw
    bits of bfloat16 as uint16, or int8), `scale` the per-row float32 scales of int8."""

    data: np.ndarray  # same shape as the weight
    scale: np.ndarray | None  # (rows,) int8 only
    dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scale is None else self.scale.nbytes)

    @property
    def type_code(self) -> int:
        """matmul.h's enum fl_wtype for this precision."""
        return TYPE_CODES[self.dtype]

    def __getitem__(self, rows: slice) -> Stored:
        """Rows of the weight, each with its own int8 scale (GRU_RESET_BEFORE's W_hh split):
        the same values as the rows of to_float32(), stored as `store` stores those rows."""
        if not isinstance(rows, slice):
            raise TypeError(f"a Stored weight is sliced by rows only, e.g. w[:n]; got {rows!r}")
        return Stored(self.data[rows], None if self.scale is None else self.scale[rows],
                      self.dtype)

    def to_float32(self) -> np.ndarray:
        """The weight's values as float32 (exact: every stored value is a float32)."""
        if self.dtype == "int8":
            # q * scale overflows to inf for a file's huge scale; fastlstm.roles refuses it
            with np.errstate(over="ignore"):
                return self.data.astype(np.float32) * self.scale[:, None]
        if self.dtype == "bfloat16":
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        return self.data.astype(np.float32)


def store(w: np.ndarray | Stored, dtype: str, what: str = "a weight") -> Stored:
    """Store float32 `w` in `dtype` (rounding to nearest even; int8: per-row symmetric).

    int8 needs a 2-D `w` (one scale per row).  Raises ValueError for float16 when |w|
    exceeds its range; `what` names the weight in that message.  A `w` already Stored (an
    int8 file's matrix) is stored as its float32 values would be: an int8 one that is what
    quantizing those values gives is returned as it is, with no float32 copy.
    """
    if isinstance(w, Stored):
        if w.dtype == dtype == "int8" and _quantizes_to_itself(w):
            return w
        w = w.to_float32()
    w = np.ascontiguousarray(w, dtype=np.float32)
    if dtype == "float32":
        return Stored(w, None, dtype)
    if dtype == "float16":
        big = float(np.abs(w).max(initial=0.0))
        if big > FLOAT16_MAX:
            raise ValueError(f"{what} holds {big:.4g}, beyond float16's range (±65504): "
                             "store this model as bfloat16 or float32")
        return Stored(w.astype(np.float16), None, dtype)
    if dtype == "bfloat16":
        return Stored(_to_bfloat16_bits(w), None, dtype)
    if dtype == "int8":
        if w.ndim != 2:
            raise ValueError(f"int8 stores matrices (one scale per row); {what} has shape {w.shape}")
        return _quantize_rows(w)
    raise ValueError(f"unknown dtype {dtype!r}")


def _to_bfloat16_bits(w: np.ndarray) -> np.ndarray:
    """The bfloat16 nearest to each float32 (ties to even), as its 16 bits."""
    bits = w.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def _quantize_rows(w: np.ndarray) -> Stored:
    absmax = np.abs(w).max(axis=1)
    scale = (absmax / np.float32(127)).astype(np.float32)
    # Take each scale to the nearest float s with fl(fl(127 s) / 127) == s (one step up at
    # most, for under 1% of values): then the row maximum of q * s gives back s, and
    # quantizing the dequantized weights reproduces q and scale exactly.
    for _ in range(8):
        moved = (scale * np.float32(127)) / np.float32(127) != scale
        if not moved.any():
            break
        scale[moved] = np.nextafter(scale[moved], np.float32(np.inf))
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.rint(w / safe[:, None])
    q = np.clip(q, -127, 127).astype(np.int8)
    return Stored(q, scale, "int8")


def _quantizes_to_itself(w: Stored) -> bool:
    """Whether `_quantize_rows(w.to_float32())` gives back w's q and scales, found from q's
    row extremes without a float32 copy: every row is all zeros with scale +0.0, or has
    q in [-127, 127] with max |q| = 127 and a scale s > 0 with fl(fl(127 s) / 127) == s.
    Then the row's largest |q * s| is fl(127 s), whose scale is s again, and each fl(q * s)
    divided by s is within 127 * 2^-23 of q (q * s is exact when subnormal), which rounds
    back to q.  Every matrix `store` quantizes passes, but for rows whose weights are all
    below ~1e-40; a row of another quantizer (max |q| < 127, a -128, a scale rounded
    otherwise) does not."""
    q, scale = w.data, w.scale
    high = q.max(axis=1).astype(np.int16)  # int8 reductions: nothing the size of q
    low = q.min(axis=1).astype(np.int16)
    with np.errstate(over="ignore"):  # a huge scale: 127 s is inf, and s fails the test
        grid = (scale * np.float32(127)) / np.float32(127) == scale
    full = (np.maximum(high, -low) == 127) & (low >= -127) & (scale > 0) & grid
    zero = (scale.view(np.uint32) == 0) & (high == 0) & (low == 0)
    return bool(np.all(full | zero))
