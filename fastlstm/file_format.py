"""The fastlstm model file: a safetensors file, read as untrusted input, and written.

A fastlstm model file is a safetensors file holding a PyTorch state_dict under its own names,
with fastlstm's metadata (METADATA_KEYS).  `read_safetensors` checks every header field
against the file's bytes (`_read_header`, bounded by the MAX_* limits below) before any tensor
data is touched, then reads every tensor as float32, but int8 matrices: those stay int8, with
their per-row scales, as a fastlstm.precision.Stored, so that an int8 model loads without a
float32 copy of its weights (fastlstm.precision.store keeps them as they are).
`write_model_file` stores float32 tensors in a weight precision, and `write_safetensors`
writes the bytes.  What each tensor is, is found by fastlstm.roles.
"""

from __future__ import annotations

import math
import os
import struct

import numpy as np

from fastlstm.precision import Stored
from fastlstm.untrusted_json import loads_untrusted_json

# Metadata keys fastlstm writes; every other metadata entry may be a save_model alias.
METADATA_KEYS = ("format", "format_version", "rnn_type", "tokenizer", "kind", "input_size",
                 "output_size")
# Version 1: language models of PyTorch's cells, which every fastlstm reads.  Version 2 adds
# forecasters (kind "forecaster") and the GRU_RESET_BEFORE cell; fastlstm writes it only for
# those, so a fastlstm that predates them says "upgrade" instead of misreading the file.
FORMAT_VERSION = "1"
FORMAT_VERSIONS = ("1", "2")
KINDS = ("language_model", "forecaster")


def format_version(kind: str, rnn_type: str) -> str:
    """The oldest format version that holds a model of this kind and cell."""
    return "2" if kind == "forecaster" or rnn_type == "GRU_RESET_BEFORE" else FORMAT_VERSION


_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": None,
           "I8": np.dtype("i1")}
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                "I8": "int8"}
# An int8 matrix `name` (rows, cols) comes with its float32 scales `name + SCALE_SUFFIX`
# (rows,): W = q * scale[:, None] (fastlstm.precision).
SCALE_SUFFIX = "_scale"
_DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1}
# Model files are untrusted input.  What a file may ask for is bounded, so that memory and
# time stay proportional to its size (see tests/test_fuzz.py for the measured factors):
MAX_HEADER_BYTES = 100_000_000  # the JSON header; safetensors' own limit
MAX_TENSORS = 10_000  # a 2,000-layer stack; real models have a few dozen tensors
# JSON objects/arrays and values in the header, counted before it is parsed: each tensor entry
# has 3 of the first and 7 of the second, each metadata entry (an alias) one value.
MAX_HEADER_CONTAINERS = 3 * MAX_TENSORS + 2
MAX_HEADER_SEPARATORS = 8 * MAX_TENSORS + 10_000
MAX_NAME_CHARS = 65_536  # tensor names and metadata keys (state_dict keys are module paths)
MAX_NDIM = 8  # model tensors are 1-D or 2-D; a few more dims get a clear "unexpected tensor"
MAX_DIM = 2**31 - 64  # the kernels index rows and columns with C ints (panels pad to 16)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def read_safetensors(path: str | os.PathLike
                     ) -> tuple[dict[str, np.ndarray | Stored], dict[str, str], str]:
    """Read every tensor of a safetensors file as float32, but int8 matrices, which are read
    as int8 `Stored` values (q and per-row scales, read-only views of the file's bytes).

    Returns (tensors, metadata, dtype) where dtype names the file's weight precision
    ("float32", "float16", "bfloat16", "int8", or "mixed").  Raises FileNotFoundError for a
    missing file and ValueError for anything that is not a well-formed safetensors file of
    float tensors (or int8 matrices with their scales).

    The file is untrusted: every header field is checked here (`_read_header`) before any
    tensor data is touched, and then safetensors itself must read the header the same way.
    """
    import safetensors  # deferred: keeps `import fastlstm` cheap

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    header, metadata = _read_header(path, data)
    try:
        entries = safetensors.deserialize(data)  # the format's own reader must agree
    except (ValueError, safetensors.SafetensorError) as e:
        raise ValueError(f"{path}: not a valid safetensors file: {e}") from None
    seen = {name: (entry["dtype"], tuple(entry["shape"])) for name, entry in entries}
    if seen != header:
        raise ValueError(f"{path}: not a valid safetensors file: safetensors reads its header "
                         f"differently from fastlstm")

    tensors, raw = {}, dict(entries)
    int8 = [name for name, (dtype, _) in header.items() if dtype == "I8"]
    scales = {name + SCALE_SUFFIX: name for name in int8}
    with np.errstate(all="ignore"):  # float64 beyond float32's range becomes inf, refused later
        for name, entry in entries:
            dtype, shape = entry["dtype"], tuple(entry["shape"])
            if name in scales:
                continue
            if dtype == "BF16":  # NumPy has no bfloat16: its bits are the top half of a float32
                bits = np.frombuffer(entry["data"], dtype="<u2").astype(np.uint32) << 16
                array = bits.view(np.float32)
            elif dtype == "I8":
                tensors[name] = _int8_matrix(path, name, entry, raw.get(name + SCALE_SUFFIX))
                continue
            else:
                array = np.frombuffer(entry["data"], dtype=_DTYPES[dtype]).astype(np.float32)
            tensors[name] = array.reshape(shape)
    # The file's precision is that of its matrices (biases may be kept in float32).
    matrices = {dtype for name, (dtype, shape) in header.items()
                if len(shape) == 2 and name not in scales}
    dtypes = {_DTYPE_NAMES[d] for d in (matrices or {d for d, _ in header.values()})}
    return tensors, metadata, dtypes.pop() if len(dtypes) == 1 else "mixed"


def _int8_matrix(path: str, name: str, entry: dict, scale_entry: dict | None) -> Stored:
    """An int8 matrix with its per-row scales, W = q * scale[:, None], checked."""
    shape = tuple(entry["shape"])
    if len(shape) != 2:
        raise ValueError(f"{path}: int8 tensor {name!r} has shape {shape}; fastlstm stores "
                         "only matrices in int8, each with one float32 scale per row")
    expected = f"a float32 tensor {name + SCALE_SUFFIX!r} of shape ({shape[0]},)"
    if scale_entry is None:
        raise ValueError(f"{path}: int8 tensor {name!r} has no scales: expected {expected}")
    if scale_entry["dtype"] != "F32" or tuple(scale_entry["shape"]) != (shape[0],):
        raise ValueError(f"{path}: the scales of int8 tensor {name!r} are "
                         f"{scale_entry['dtype']} {tuple(scale_entry['shape'])}; expected {expected}")
    scale = np.frombuffer(scale_entry["data"], dtype="<f4")
    if not (np.isfinite(scale).all() and (scale >= 0).all()):
        raise ValueError(f"{path}: the scales of int8 tensor {name!r} must be finite and >= 0")
    q = np.frombuffer(entry["data"], dtype="i1").reshape(shape)
    return Stored(q, scale, "int8")


def _read_header(path: str, data: bytes) -> tuple[dict[str, tuple[str, tuple[int, ...]]],
                                                   dict[str, str]]:
    """Check a safetensors file's 8-byte length and JSON header against the file's bytes.

    Returns ({tensor name: (dtype, shape)}, metadata).  Every tensor must be a float dtype
    fastlstm reads, with a shape of 1..MAX_NDIM non-zero dimensions whose bytes are exactly
    its data_offsets span, and the spans must tile the data that follows the header with no
    gap or overlap; the header's size and number of entries are bounded.
    """
    def bad(message: str) -> ValueError:
        return ValueError(f"{path}: not a valid safetensors file: {message}")

    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (only {len(data)} bytes)")
    (header_len,) = struct.unpack_from("<Q", data)
    if header_len > len(data) - 8:
        raise ValueError(f"{path}: truncated or not a safetensors file: the header claims "
                         f"{header_len} bytes but the file has {len(data) - 8} after the length")
    if header_len > MAX_HEADER_BYTES:
        raise bad(f"the header claims {header_len:,} bytes; at most {MAX_HEADER_BYTES:,} "
                  "are allowed")
    try:
        text = str(memoryview(data)[8:8 + header_len], "utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"the header is not UTF-8 text ({e})") from None
    if not text.startswith("{"):
        raise bad("the header is not a JSON object (it must start with '{')")
    try:
        header = loads_untrusted_json(text, "the header", MAX_HEADER_CONTAINERS,
                                      MAX_HEADER_SEPARATORS)
    except ValueError as e:
        raise bad(str(e)) from None
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object")

    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise bad(f"{len(header):,} tensors; fastlstm models have at most {MAX_TENSORS:,}")
    for name in (*header, *metadata):
        if len(name) > MAX_NAME_CHARS:
            raise bad(f"a tensor name or metadata key of {len(name):,} characters "
                      f"({name[:40]!r}...); at most {MAX_NAME_CHARS:,} are allowed")

    data_len = len(data) - 8 - header_len
    spans, found = [], {}
    for name, entry in header.items():
        what = f"tensor {name!r}"
        if not isinstance(entry, dict):
            raise bad(f"{what}: its header entry is a JSON {type(entry).__name__}, not an "
                      "object with dtype, shape and data_offsets")
        missing = {"dtype", "shape", "data_offsets"} - entry.keys()
        unknown = entry.keys() - {"dtype", "shape", "data_offsets"}
        if missing or unknown:
            raise bad(f"{what}: its header entry must hold exactly dtype, shape and "
                      f"data_offsets (missing: {sorted(missing)}, unknown: {sorted(unknown)})")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise bad(f"{what}: dtype {dtype!r} is not a string")
        if dtype not in _DTYPE_SIZES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}; fastlstm reads "
                             f"{', '.join(_DTYPE_NAMES)} tensors only")
        if not _is_int_list(shape) or any(d < 0 for d in shape):
            raise bad(f"{what}: shape {shape!r} is not a list of non-negative integers")
        if len(shape) > MAX_NDIM:
            raise bad(f"{what} has {len(shape)} dimensions; model tensors have 1 or 2")
        if 0 in shape:
            raise ValueError(f"{path}: tensor {name!r} is empty (shape {tuple(shape)}); every "
                             "tensor of a model holds at least one value")
        if max(shape, default=1) > MAX_DIM:
            raise bad(f"{what}: shape {tuple(shape)} has a dimension over {MAX_DIM:,}")
        if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
            raise bad(f"{what}: data_offsets {offsets!r} is not a [begin, end] pair of "
                      "integers with 0 <= begin <= end")
        begin, end = offsets
        nbytes = math.prod(shape) * _DTYPE_SIZES[dtype]
        if end - begin != nbytes:
            raise bad(f"{what}: data_offsets [{begin}, {end}] span {end - begin} bytes, but "
                      f"{dtype} {tuple(shape)} takes {nbytes}")
        if end > data_len:
            raise bad(f"truncated or corrupted: {what} ends at byte {end} of the data, which "
                      f"holds {data_len} bytes")
        spans.append((begin, end, name))
        found[name] = (dtype, tuple(shape))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise bad(f"tensor {name!r} begins at byte {begin} of the data, where "
                      f"{'the previous tensor still runs' if begin < position else 'nothing'} "
                      f"ends: tensors must be stored back to back (byte {position})")
        position = end
    if position != data_len:
        raise bad(f"{data_len - position} bytes after the last tensor's data (a corrupted "
                  "header or a concatenated file)")
    return found, metadata


def _is_int_list(value) -> bool:
    return isinstance(value, list) and all(type(v) is int for v in value)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPE = {name: code for code, name in _DTYPE_NAMES.items()}  # "int8" -> "I8", ...


def write_model_file(path, tensors: dict[str, np.ndarray], metadata: dict[str, str],
                     dtype: str) -> None:
    """Write float32 `tensors` as a safetensors file in the precision `dtype`.

    Matrices are stored in `dtype` (int8: with their per-row float32 scales under
    `name + "_scale"`); vectors (biases) stay float32, as fastlstm holds them in memory, so
    the file loads exactly as `fastlstm.load(float32 file, dtype=dtype)`.  See
    fastlstm.precision for the rounding.
    """
    from fastlstm.precision import check_dtype, store

    dtype = check_dtype(dtype)
    stored = {}
    for name, array in tensors.items():
        kind = dtype if array.ndim == 2 else "float32"
        value = store(array, kind, repr(name))
        stored[name] = (_SAFETENSORS_DTYPE[kind], value.data)
        if value.scale is not None:
            stored[name + SCALE_SUFFIX] = ("F32", value.scale)
    write_safetensors(path, stored, metadata)


def write_safetensors(path, tensors: dict[str, tuple[str, np.ndarray]],
                      metadata: dict[str, str]) -> None:
    """Write {name: (safetensors dtype, array of that type's bytes)} in the safetensors format:
    an 8-byte little-endian header length, the JSON header (padded with spaces to a multiple
    of 8 bytes), then each tensor's bytes back to back, little-endian, C order.  Written to a
    temporary file and renamed, so an interrupted write never leaves half a model."""
    import json

    header, offset = {}, 0
    for name, (code, array) in tensors.items():
        nbytes = array.nbytes
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for _, array in tensors.values():
                f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"),
                                                          copy=False).tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
