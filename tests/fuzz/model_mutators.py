"""Mutators for fuzzing fastlstm's model loader, shared by tests/test_fuzz.py (hypothesis, in CI)
and tests/fuzz/fuzz_model_files.py (the long run).

Every mutator takes the bytes of a model file and a `random.Random` and returns new bytes.
They work at three levels:

- bytes: bit flips, overwrites, insertions, deletions, truncations, the 8-byte header length;
- the JSON header as text or as a dict (dtypes, shapes, offsets, entries, metadata), written
  back with the data as it was, so sizes and offsets disagree in every possible way;
- the model (tensors with their data, metadata, tokenizer JSON), written back as a well-formed
  safetensors file, so that role inference and the value checks are what is exercised
  (renamed, reshaped, dropped, added and retyped tensors, aliases, NaN/Inf/huge values).

`check_file` is the property: fastlstm.load returns a Model that runs (finite logits, token ids
in range) or raises ValueError; anything else is a failure.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import tempfile
import traceback
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------- seed files

SEED_NAMES = ["gru_word_f16", "lstm_char", "lstm_proj_plain", "lstm_tied_save_model",
              "rnn_byte_bf16_tied"]


def build_seed_files(directory: str) -> dict[str, bytes]:
    """Small valid model files made with PyTorch: fastlstm.export (LSTM with a char tokenizer,
    GRU with a word tokenizer in float16, tied RNN_TANH with the byte tokenizer in bfloat16),
    and plain state_dicts from safetensors' save_file (LSTM with proj_size) and save_model
    (a tied LSTM, whose metadata holds the {dropped: kept} alias)."""
    import torch
    from safetensors.torch import save_file, save_model
    from torch import nn

    import fastlstm

    class LM(nn.Module):
        def __init__(self, cell, vocab, emb, hidden, layers, tied=False, **kw):
            super().__init__()
            self.encoder = nn.Embedding(vocab, emb)
            self.rnn = cell(emb, hidden, layers, batch_first=True, **kw)
            out = kw.get("proj_size") or hidden
            self.decoder = nn.Linear(out, vocab)
            if tied:
                self.decoder.weight = self.encoder.weight

    torch.manual_seed(0)
    seeds = {}

    def path(name):
        return os.path.join(directory, name + ".safetensors")

    chars = list("\nabcdefghi ")  # 11
    fastlstm.export(LM(nn.LSTM, 11, 5, 6, 2), path("lstm_char"), vocab=chars, tokenizer="char")
    words = ["<eos>", "<unk>", "the", "cat", "sat", "on", "mat"]
    fastlstm.export(LM(nn.GRU, 7, 4, 5, 1).half(), path("gru_word_f16"), vocab=words,
                    tokenizer="word")
    fastlstm.export(LM(nn.RNN, 256, 3, 3, 1, tied=True, nonlinearity="tanh").bfloat16(),
                    path("rnn_byte_bf16_tied"), tokenizer="byte")
    proj = LM(nn.LSTM, 9, 4, 5, 2, proj_size=3)
    save_file({k: v.contiguous() for k, v in proj.state_dict().items()}, path("lstm_proj_plain"))
    save_model(LM(nn.LSTM, 8, 4, 4, 1, tied=True), path("lstm_tied_save_model"),
               metadata={"rnn_type": "LSTM"})
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            with open(os.path.join(directory, name), "rb") as f:
                tensors, metadata = parse(f.read())
            # safetensors writes __metadata__ in a Rust HashMap's order, which changes from
            # one process to the next: rewrite it sorted, so input i is the same in every run.
            metadata = None if metadata is None else dict(sorted(metadata.items()))
            seeds[name[: -len(".safetensors")]] = serialize(tensors, metadata)
    assert sorted(seeds) == SEED_NAMES, sorted(seeds)
    for name, blob in seeds.items():  # every seed must load: the mutations start from valid
        assert check_file(_write_temp(directory, blob)) == "loaded", name
    return dict(sorted(seeds.items()))


def _write_temp(directory, blob):
    path = os.path.join(directory, "check.safetensors")
    with open(path, "wb") as f:
        f.write(blob)
    return path


# --------------------------------------------------------------------------- a parsed file


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: list
    data: bytes


ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "BOOL": 1,
            "I8": 1, "F8_E4M3": 1, "I16": 2, "U16": 2}


def parse(blob: bytes):
    """(tensors, metadata) of a well-formed file, or None."""
    try:
        (n,) = struct.unpack_from("<Q", blob)
        header = json.loads(blob[8:8 + n])
        base = 8 + n
        metadata = header.pop("__metadata__", None)
        tensors = []
        for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            b, end = e["data_offsets"]
            if not (isinstance(e["dtype"], str) and isinstance(e["shape"], list)
                    and all(type(d) is int for d in e["shape"]) and type(b) is int
                    and type(end) is int and 0 <= b <= end <= len(blob) - base
                    and e["dtype"] in ITEMSIZE
                    and end - b == math.prod(e["shape"]) * ITEMSIZE[e["dtype"]]):
                return None
            tensors.append(Tensor(name, e["dtype"], list(e["shape"]), blob[base + b: base + end]))
        if metadata is not None and not isinstance(metadata, dict):
            return None
        return tensors, metadata
    except Exception:
        return None


def serialize(tensors: list[Tensor], metadata: dict | None, *, header_extra=None) -> bytes:
    """A safetensors file: offsets laid back to back in list order, header padded to 8."""
    header, offset = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": t.shape,
                          "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
    if header_extra:
        header.update(header_extra)
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t.data for t in tensors)


def split_header(blob: bytes):
    """(header bytes, data bytes) when the length field fits the file, else None."""
    if len(blob) < 8:
        return None
    (n,) = struct.unpack_from("<Q", blob)
    if n > len(blob) - 8:
        return None
    return blob[8:8 + n], blob[8 + n:]


def with_header(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


# --------------------------------------------------------------------------- interesting values

INTERESTING_INTS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 17, 24, 255, 256, 1023, 4096, 65535,
                    2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**40, 2**53, 2**62, 2**63 - 1, 2**63,
                    2**64 - 1, 2**64, 10**30, -1, -2, -(2**63)]
INTERESTING_FLOATS = [float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e38, 1e30,
                      1e20, 1e10, 65504.0, -65504.0, 1e-45, -0.0, 0.0, 1.0]
JSON_JUNK = [None, True, False, 0, -1, 1.5, "", "x", [], {}, [1], [[]], {"a": 1}, "F32",
             float("nan"), 2**64, "\u0000", "\ud800"]
DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "I8", "C64",
          "F4", "Q", "f32", "", " F32"]
RNN_TYPES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU", "lstm", "rnn", "relu", "tanh", "", "LSTM ",
             "TRANSFORMER", "ＬＳＴＭ", "ı", "\u0000"]
NAME_PARTS = ["encoder.weight", "decoder.weight", "decoder.bias", "rnn.weight_ih_l0",
              "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0", "rnn.weight_hr_l0",
              "rnn.weight_ih_l1", "rnn.weight_hh_l1", "rnn.weight_ih_l2",
              "rnn.weight_hh_l0_reverse",
              "rnn.weight_ih_l01", "rnn.weight_ih_l\u0661", "rnn.weight_ih_l1\n",
              "rnn.weight_ih_l99999999999", "rnn2.weight_ih_l0", "weight_ih_l0", "x", "",
              "embedding.weight", "fc.weight", "fc.bias", "head.weight", "__metadata__",
              "format", "rnn_type", "tokenizer", "a" * 300, "rnn.weight_ih_l" + "9" * 5000]


def _randbytes(rng, n):
    return bytes(rng.randrange(256) for _ in range(n))


def _pick(rng, seq):
    return seq[rng.randrange(len(seq))]


# --------------------------------------------------------------------------- byte level


def flip_bits(blob, rng):
    out = bytearray(blob)
    for _ in range(rng.randint(1, 8)):
        if out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def flip_bits_in_header(blob, rng):
    parts = split_header(blob)
    if parts is None or not parts[0]:
        return flip_bits(blob, rng)
    header, data = parts
    return with_header(flip_bits(header, rng), data)


def overwrite_bytes(blob, rng):
    out = bytearray(blob)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        i = rng.randrange(len(out))
        value = _pick(rng, [0, 0xFF, 0x7F, 0x80, 0x7F800000, ord("{"), ord("["), ord('"'),
                            ord("\\"), ord(","), ord(":"), ord("0"), ord("9"), ord("-"), 0xC0,
                            0xED, rng.randrange(256)])
        raw = value.to_bytes(4, "little") if value > 0xFF else bytes([value])
        out[i:i + len(raw)] = raw
    return bytes(out)


def insert_bytes(blob, rng):
    i = rng.randrange(len(blob) + 1)
    chunk = _pick(rng, [b"\x00", b"{", b"[" * rng.randint(1, 2000), b'"', b",", b"}",
                        _randbytes(rng, rng.randint(1, 64)), blob[i:i + rng.randint(1, 200)]])
    return blob[:i] + chunk + blob[i:]


def delete_bytes(blob, rng):
    if not blob:
        return blob
    i = rng.randrange(len(blob))
    return blob[:i] + blob[i + rng.randint(1, 64):]


def truncate(blob, rng):
    return blob[: rng.randrange(len(blob) + 1)]


def append_bytes(blob, rng):
    return blob + _pick(rng, [b"\x00" * rng.randint(1, 16), _randbytes(rng, rng.randint(1, 256)),
                              blob[8:]])


def set_header_length(blob, rng):
    if len(blob) < 8:
        return blob + b"\x00" * (8 - len(blob))
    (n,) = struct.unpack_from("<Q", blob)
    value = _pick(rng, [n + rng.randint(-16, 16), len(blob) - 8, len(blob) - 7, len(blob),
                        rng.randrange(2**64), _pick(rng, INTERESTING_INTS) % 2**64,
                        n * 2, n // 2, 100_000_001])
    return struct.pack("<Q", max(0, value) % 2**64) + blob[8:]


# --------------------------------------------------------------------------- header JSON


def _header_dict(blob):
    parts = split_header(blob)
    if parts is None:
        return None
    try:
        header = json.loads(parts[0])
    except (ValueError, RecursionError):
        return None
    return (header, parts[1]) if isinstance(header, dict) else None


def _dump_header(header, data, rng=None):
    text = json.dumps(header, ensure_ascii=False, allow_nan=True)
    raw = text.encode("utf-8", "surrogatepass")
    if rng is not None and rng.random() < 0.5:
        raw += b" " * (-len(raw) % 8)
    return with_header(raw, data)


def mutate_header_fields(blob, rng):
    """Change one dtype, shape or data_offsets in place; the data stays as it is."""
    parsed = _header_dict(blob)
    if parsed is None:
        return flip_bits(blob, rng)
    header, data = parsed
    names = [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]
    if not names:
        return insert_bytes(blob, rng)
    entry = header[_pick(rng, names)]
    field = _pick(rng, ["dtype", "shape", "shape", "data_offsets", "data_offsets", "extra",
                        "delete"])
    if field == "dtype":
        entry["dtype"] = _pick(rng, DTYPES + JSON_JUNK)
    elif field == "shape":
        shape = entry.get("shape")
        shape = list(shape) if isinstance(shape, list) else []
        op = rng.randrange(8)
        if op == 0 and shape:
            shape[rng.randrange(len(shape))] = _pick(rng, INTERESTING_INTS)
        elif op == 1:
            shape.reverse()
        elif op == 2:
            shape.append(_pick(rng, [1, 0, 2, 2**63]))
        elif op == 3 and shape:
            shape.pop(rng.randrange(len(shape)))
        elif op == 4:
            shape = [math.prod(x for x in shape if isinstance(x, int))]
        elif op == 5 and shape:
            shape[rng.randrange(len(shape))] = _pick(rng, JSON_JUNK)
        elif op == 6:
            shape = [1] * rng.choice([9, 64, 65, 1000])
        else:
            shape = _pick(rng, JSON_JUNK)
        entry["shape"] = shape
    elif field == "data_offsets":
        offsets = entry.get("data_offsets")
        offsets = list(offsets) if isinstance(offsets, list) else [0, 0]
        op = rng.randrange(6)
        if op == 0 and offsets:
            offsets[rng.randrange(len(offsets))] = _pick(rng, INTERESTING_INTS)
        elif op == 1 and len(offsets) == 2:
            shift = rng.randint(-8, 8)
            offsets = [offsets[0] + shift, offsets[1] + shift]
        elif op == 2:
            offsets.reverse()
        elif op == 3:
            offsets.append(0)
        elif op == 4 and offsets:
            offsets[rng.randrange(len(offsets))] = _pick(rng, JSON_JUNK)
        else:
            offsets = _pick(rng, JSON_JUNK)
        entry["data_offsets"] = offsets
    elif field == "extra":
        entry[_pick(rng, ["extra", "dtype ", "offsets"])] = _pick(rng, JSON_JUNK)
    else:
        entry.pop(_pick(rng, ["dtype", "shape", "data_offsets"]), None)
    return _dump_header(header, data, rng)


def mutate_header_entries(blob, rng):
    """Add, drop, rename or replace whole header entries (the data stays as it is)."""
    parsed = _header_dict(blob)
    if parsed is None:
        return flip_bits(blob, rng)
    header, data = parsed
    keys = list(header)
    op = rng.randrange(6)
    if op == 0 and keys:
        del header[_pick(rng, keys)]
    elif op == 1 and keys:
        key = _pick(rng, keys)
        header[_pick(rng, NAME_PARTS)] = header.pop(key)
    elif op == 2 and keys:
        header[_pick(rng, NAME_PARTS) + str(rng.randrange(3))] = header[_pick(rng, keys)]
    elif op == 3 and keys:
        header[_pick(rng, keys)] = _pick(rng, JSON_JUNK)
    elif op == 4:
        header["__metadata__"] = _pick(rng, JSON_JUNK + [{"rnn_type": 1}, {"a": None}])
    else:
        n = rng.choice([1, 10, 1000, 20000])
        header.update({f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
                       for i in range(n)})
    return _dump_header(header, data, rng)


def mutate_header_text(blob, rng):
    """Edit the header as text (then fix its length): duplicate keys, deep nesting, bad UTF-8,
    NaN literals, BOMs, huge numbers..."""
    parts = split_header(blob)
    if parts is None:
        return insert_bytes(blob, rng)
    header, data = parts
    text = header
    op = rng.randrange(10)
    if op == 0:  # a duplicate key: the same entry twice, possibly different
        i = text.find(b'"', 1)
        j = text.find(b"}", i)
        if i > 0 and j > 0:
            text = text[:1] + text[i:j + 1] + b"," + text[1:]
    elif op == 1:
        depth = rng.choice([50, 999, 1001, 5000, 100000])
        text = b'{"a":' + b"[" * depth + b"]" * depth + b"," + text[1:]
    elif op == 2:
        text = b"\xef\xbb\xbf" + text
    elif op == 3:
        i = rng.randrange(len(text) + 1)
        text = text[:i] + _pick(rng, [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\u0000",
                                      b"NaN", b"Infinity", b"1e999", b"9" * 5000, b"-0"]) + text[i:]
    elif op == 4:
        text = text.replace(b'"F32"', _pick(rng, [b'"F16"', b'"BF16"', b'"F64"', b'"I8"']))
    elif op == 5:
        text = b'{"a":[' + b"[]," * rng.choice([10, 50000]) + b"[]]," + text[1:]
    elif op == 6:
        text = text.rstrip(b" ")[:-1] + b"," + b'"k":"' + b"x" * rng.choice([1, 10**6]) + b'"}'
    elif op == 7:
        text = text.replace(b"data_offsets", b"data_offsetz", 1)
    elif op == 8:
        text = b" " + text
    else:
        i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        text = text[:i] + text[j:]
    return with_header(text, data)


# --------------------------------------------------------------------------- model level


def _model(blob, rng):
    parsed = parse(blob)
    if parsed is None or not parsed[0]:
        return None
    return parsed


def _encode(values, dtype):
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        if dtype == "F32":
            return values.astype("<f4").tobytes()
        if dtype == "F16":
            return values.astype("<f2").tobytes()
        if dtype == "F64":
            return values.astype("<f8").tobytes()
        if dtype == "BF16":
            return (values.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    return None


def _decode(t: Tensor):
    with np.errstate(all="ignore"):
        if t.dtype == "BF16":
            return (np.frombuffer(t.data, "<u2").astype(np.uint32) << 16).view(np.float32)
        dt = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}.get(t.dtype)
        return None if dt is None else np.frombuffer(t.data, dt).astype(np.float32)


def inject_values(blob, rng):
    """NaN, Inf, or a huge finite value (what one flipped exponent bit makes) into tensor data."""
    model = _model(blob, rng)
    if model is None:
        return flip_bits(blob, rng)
    tensors, metadata = model
    for _ in range(rng.randint(1, 3)):
        t = _pick(rng, tensors)
        size = ITEMSIZE.get(t.dtype)
        if not size or len(t.data) < size:
            continue
        i = rng.randrange(len(t.data) // size)
        raw = _encode([_pick(rng, INTERESTING_FLOATS)], t.dtype)
        if raw is None:
            continue
        if rng.random() < 0.1 and t.dtype == "F32":  # a signalling NaN / odd bit pattern
            raw = _pick(rng, [0x7F800001, 0xFF800000, 0x7FC00000, 0x00000001]).to_bytes(4, "little")
        t.data = t.data[: i * size] + raw + t.data[(i + 1) * size:]
    return serialize(tensors, metadata)


def scale_tensor(blob, rng):
    """Multiply a tensor by a large or small factor (finite, but maybe overflowing later)."""
    model = _model(blob, rng)
    if model is None:
        return flip_bits(blob, rng)
    tensors, metadata = model
    t = _pick(rng, tensors)
    values = _decode(t)
    if values is not None:
        with np.errstate(all="ignore"):
            scaled = values.astype(np.float64) * _pick(rng, [1e3, 1e6, 1e12, 1e19, 1e30, 1e-30,
                                                             -1.0, 0.0])
        raw = _encode(scaled, t.dtype)
        if raw is not None:
            t.data = raw
    return serialize(tensors, metadata)


def reshape_tensor(blob, rng):
    """A new shape: the same number of values in another layout, or rows/columns dropped or
    repeated (the data follows, so the file stays well formed)."""
    model = _model(blob, rng)
    if model is None:
        return flip_bits(blob, rng)
    tensors, metadata = model
    t = _pick(rng, tensors)
    size = ITEMSIZE.get(t.dtype, 1)
    count = len(t.data) // size
    op = rng.randrange(5)
    if op == 0:  # same count, another layout
        divisors = [d for d in range(1, count + 1) if count % d == 0]
        d = _pick(rng, divisors)
        t.shape = _pick(rng, [[d, count // d], [count], [count // d, d, 1], [1, count], []])
        if t.shape == [] and count != 1:
            t.shape = [count]
    elif op == 1 and t.shape:  # drop trailing rows
        rows = t.shape[0]
        keep = rng.randrange(rows + 1)
        per = count // max(rows, 1)
        t.shape = [keep] + t.shape[1:]
        t.data = t.data[: keep * per * size]
    elif op == 2 and t.shape:  # repeat rows
        t.shape = [t.shape[0] * 2] + t.shape[1:]
        t.data = t.data * 2
    elif op == 3 and len(t.shape) == 2:  # drop or add a column
        rows, cols = t.shape
        values = np.frombuffer(t.data, np.uint8).reshape(rows, cols * size)
        if rng.random() < 0.5 and cols > 1:
            values = values[:, : (cols - 1) * size]
            t.shape = [rows, cols - 1]
        else:
            values = np.concatenate([values, values[:, :size]], axis=1)
            t.shape = [rows, cols + 1]
        t.data = values.tobytes()
    else:  # a scalar or a 3-D tensor
        t.shape = [1] * rng.randint(0, 3) + list(t.shape)
    if rng.random() < 0.3:
        rng.shuffle(tensors)
    return serialize(tensors, metadata)


def retype_tensor(blob, rng):
    """Change a tensor's dtype, converting its values (a valid mixed-precision file) or keeping
    its bytes (the shape no longer matches) or reinterpreting them (shape adjusted)."""
    model = _model(blob, rng)
    if model is None:
        return flip_bits(blob, rng)
    tensors, metadata = model
    t = _pick(rng, tensors)
    new = _pick(rng, ["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "I64"])
    values = _decode(t)
    op = rng.randrange(3)
    if op == 0 and values is not None and new in ("F32", "F16", "BF16", "F64"):
        t.data, t.dtype = _encode(values, new), new
    elif op == 1:
        t.dtype = new
    else:
        old, now = ITEMSIZE.get(t.dtype, 1), ITEMSIZE.get(new, 1)
        t.dtype = new
        if t.shape and (t.shape[-1] * old) % now == 0:
            t.shape = t.shape[:-1] + [t.shape[-1] * old // now]
    return serialize(tensors, metadata)


def edit_tensors(blob, rng):
    """Drop, duplicate, rename or add tensors; the file stays well formed."""
    model = _model(blob, rng)
    if model is None:
        return flip_bits(blob, rng)
    tensors, metadata = model
    op = rng.randrange(6)
    t = _pick(rng, tensors)
    if op == 0 and len(tensors) > 1:
        tensors.remove(t)
    elif op == 1:
        tensors.append(Tensor(_rename(t.name, rng) + "_copy", t.dtype, list(t.shape), t.data))
    elif op == 2:
        names = {x.name for x in tensors}
        new = _rename(t.name, rng)
        if new not in names:
            t.name = new
    elif op == 3:  # another layer, copied from an existing one
        new = t.name.replace("_l0", "_l" + str(rng.choice([1, 2, 3, 7, 100])))
        if new not in {x.name for x in tensors}:
            tensors.append(Tensor(new, t.dtype, list(t.shape), t.data))
    elif op == 4:  # swap two tensors' names
        u = _pick(rng, tensors)
        t.name, u.name = u.name, t.name
    else:
        name = _pick(rng, NAME_PARTS)
        if name not in {x.name for x in tensors}:
            shape = _pick(rng, [[1], [3], [4, 5], [24, 5], [11, 6], [1, 1], [2, 2, 2]])
            tensors.append(Tensor(name, "F32", shape,
                                  _encode(np.ones(math.prod(shape)), "F32")))
    return serialize(tensors, metadata)


def _rename(name, rng):
    op = rng.randrange(8)
    if op == 0:
        return "x." + name
    if op == 1:
        return name.replace("rnn.", _pick(rng, ["lstm.", "", "rnn2.", "a.b.rnn."]))
    if op == 2:
        return name + _pick(rng, ["\n", "_reverse", "0", " ", "\u0661"])
    if op == 3:
        return name.replace("_l", "_l0")
    if op == 4:
        return name.replace("weight", "bias")
    if op == 5:
        return name.replace("ih", "hh") if "ih" in name else name.replace("hh", "ih")
    if op == 6:
        return _pick(rng, NAME_PARTS)
    return name.upper()


def mutate_metadata(blob, rng):
    """rnn_type, format, format_version, aliases (to missing tensors, to themselves, chains,
    recurrent aliases repeated thousands of times) and odd keys."""
    model = _model(blob, rng)
    if model is None:
        return flip_bits(blob, rng)
    tensors, metadata = model
    metadata = dict(metadata or {})
    names = [t.name for t in tensors]
    op = rng.randrange(9)
    if op == 0:
        metadata["rnn_type"] = _pick(rng, RNN_TYPES)
    elif op == 1:
        metadata["format_version"] = _pick(rng, ["1", "2", "0", "", "1.0", " 1", "v1"])
    elif op == 2:
        metadata["format"] = _pick(rng, ["fastlstm", "pt", "", "FASTLSTM"])
    elif op == 3 and metadata:
        del metadata[_pick(rng, sorted(metadata))]
    elif op == 4:  # an alias: to a tensor, a missing name, itself, or an alias
        dropped = _pick(rng, NAME_PARTS + names)
        metadata[dropped] = _pick(rng, names + [dropped, "missing", *metadata])
    elif op == 5:  # drop a tensor and alias it to another (save_model's way)
        t = _pick(rng, tensors)
        if len(tensors) > 1:
            tensors.remove(t)
            metadata[t.name] = _pick(rng, [x.name for x in tensors])
    elif op == 6:  # thousands of layers that are all layer 0
        n = rng.choice([2, 50, 5000])
        for k in range(1, n):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                metadata[f"rnn.{kind}_l{k}"] = f"rnn.{kind}_l{1 if kind == 'weight_ih' else 0}"
    elif op == 7:
        metadata[_pick(rng, ["", "x" * 1000, "\u0000", "tokenizer ", "__metadata__"])] = \
            _pick(rng, ["", "encoder.weight", "{}", "x"])
    else:
        for _ in range(rng.choice([10, 10000])):
            metadata[f"alias{rng.randrange(10**9)}"] = _pick(rng, names)
    return serialize(tensors, metadata)


def mutate_tokenizer(blob, rng):
    """The tokenizer JSON in the metadata: its type, vocab, specials, keys and syntax."""
    model = _model(blob, rng)
    if model is None:
        return flip_bits(blob, rng)
    tensors, metadata = model
    metadata = dict(metadata or {})
    try:
        spec = json.loads(metadata.get("tokenizer", '{"type": "char", "vocab": []}'))
    except (ValueError, TypeError, RecursionError):
        spec = {"type": "char", "vocab": []}
    if not isinstance(spec, dict):
        spec = {"type": "byte"}
    vocab = spec.get("vocab")
    vocab = list(vocab) if isinstance(vocab, list) else []
    op = rng.randrange(12)
    text = None
    if op == 0:
        spec["type"] = _pick(rng, ["char", "word", "byte", "bpe", None, 1, [], {}, ""])
    elif op == 1 and vocab:
        vocab.pop(rng.randrange(len(vocab)))
    elif op == 2 and vocab:
        vocab.append(_pick(rng, vocab))  # a duplicate
    elif op == 3:
        vocab.append(_pick(rng, ["z", "zz", "", " ", "a b", "\n", "\ud800", "\U0001F600", 1,
                                 None, [], {}, ["x"]]))
    elif op == 4 and vocab:
        vocab[rng.randrange(len(vocab))] = _pick(rng, JSON_JUNK)
    elif op == 5:
        spec[_pick(rng, ["unk", "eos", "extra", "vocab"])] = _pick(rng, JSON_JUNK + vocab[:3])
    elif op == 6:
        spec.pop(_pick(rng, ["unk", "eos", "vocab", "type"]), None)
    elif op == 7:
        text = "[" * rng.choice([10, 1000, 100000]) + "]" * rng.choice([0, 10])
    elif op == 8:
        vocab = vocab + [f"w{i}" for i in range(rng.choice([10, 100000]))]
    elif op == 9:
        text = _pick(rng, ["", "null", "{", '"char"', "NaN", "[]", '{"type":"char","type":"byte"}',
                           '{"type":"char","vocab":[[],[],[],[]]}', "\u0000"])
    elif op == 10:
        text = json.dumps(spec)
        i = rng.randrange(len(text) + 1)
        text = text[:i] + _pick(rng, ["[", "{", '"', ",", "\\", "]"]) + text[i:]
    else:
        metadata.pop("tokenizer", None)
    if text is None and op != 11:
        if vocab or "vocab" in spec:
            spec["vocab"] = vocab
        text = json.dumps(spec, ensure_ascii=False)
    if text is not None:
        metadata["tokenizer"] = text
    return serialize(tensors, metadata)


BYTE_MUTATORS = [flip_bits, flip_bits_in_header, overwrite_bytes, insert_bytes, delete_bytes,
                 truncate, append_bytes, set_header_length]
HEADER_MUTATORS = [mutate_header_fields, mutate_header_entries, mutate_header_text]
MODEL_MUTATORS = [inject_values, scale_tensor, reshape_tensor, retype_tensor, edit_tensors,
                  mutate_metadata, mutate_tokenizer]
MUTATORS = BYTE_MUTATORS + HEADER_MUTATORS + MODEL_MUTATORS
# How often each family is picked: model-level edits reach the deepest code (role inference,
# value checks, building and running a model), so they get the most turns.
FAMILY_WEIGHTS = [(BYTE_MUTATORS, 3), (HEADER_MUTATORS, 3), (MODEL_MUTATORS, 4)]


def mutate(blob: bytes, rng: random.Random, max_steps: int = 3) -> tuple[bytes, list[str]]:
    """Apply 1..max_steps mutators chosen by `rng`; returns (bytes, their names)."""
    applied = []
    families = [f for f, w in FAMILY_WEIGHTS for _ in range(w)]
    steps = min(max_steps, _pick(rng, [1, 1, 1, 2, 2, 3]))
    for _ in range(steps):
        mutator = _pick(rng, _pick(rng, families))
        blob = mutator(blob, rng)
        applied.append(mutator.__name__)
    return blob, applied


# --------------------------------------------------------------------------- the property


class Failure(AssertionError):
    """fastlstm did something other than load a working model or raise ValueError."""


def check_file(path: str, rnn_type: str | None = None) -> str:
    """Load `path`; return "loaded" or "ValueError", or raise Failure.

    A loaded model must run: forward on valid ids gives (1, T, V) logits, finite unless the
    model is a ReLU RNN (whose state may grow without bound, as in PyTorch); generate_ids gives
    ids in [0, V) (or -1 after a stop); a tokenizer's prompt generates text.
    """
    import fastlstm

    try:
        model = fastlstm.load(path, rnn_type=rnn_type, num_threads=1)
    except ValueError:
        return "ValueError"
    except Exception as e:  # noqa: BLE001 - any other exception is the bug we look for
        raise Failure(f"load raised {type(e).__name__}: {e}\n{traceback.format_exc()}") from e
    try:
        _run(model)
    except Failure:
        raise
    except Exception as e:  # noqa: BLE001
        raise Failure(f"a loaded model failed: {type(e).__name__}: {e}\n{model!r}\n"
                      f"{traceback.format_exc()}") from e
    return "loaded"


def _run(model) -> None:
    cfg = model.config
    V = cfg.vocab_size
    relu = cfg.rnn_type == "RNN_RELU"
    ids = [0, V - 1, V // 2]
    logits, _ = model.forward([ids])
    if logits.shape != (1, 3, V):
        raise Failure(f"forward gave logits of shape {logits.shape}, expected (1, 3, {V})")
    if not relu and not np.isfinite(logits).all():
        raise Failure(f"forward gave non-finite logits for {model!r}")
    for params in ({"temperature": 0}, {"temperature": 0.8, "top_k": 3, "seed": 1}):
        try:
            out = model.generate_ids([ids[:2]], max_new_tokens=4, **params)
        except FloatingPointError:
            if relu:
                continue
            raise
        if out.shape != (1, 4) or not ((out >= -1) & (out < V)).all():
            raise Failure(f"generate_ids gave {out!r} for a vocabulary of {V}")
    if model.tokenizer is not None:
        prompt = model.tokenizer.decode(ids[:2])
        if model.tokenizer.encode(prompt):
            try:
                text = model.generate(prompt, max_new_tokens=3, seed=0)
            except FloatingPointError:
                if relu:
                    return
                raise
            if not isinstance(text, str):
                raise Failure(f"generate gave {text!r}")


def fresh_dir() -> str:
    return tempfile.mkdtemp(prefix="fastlstm-fuzz-")
