"""Model files are untrusted input: fuzzing the loader, and the bugs fuzzing found.

Property: `fastlstm.load` on a mutated model file either returns a Model that runs (finite
logits on valid ids, generated ids in range, text from its tokenizer) or raises ValueError;
never another exception, a crash, a hang, or an allocation far beyond the file's size.

The hypothesis tests here are CI's short run (derandomized, a fixed number of examples each);
tests/fuzz/fuzz_model_files.py is the long run with the same mutators (tests/fuzz/RESULTS.md).
Below them: each bug the fuzzing found, as a regular test, and memory bounds for hostile files.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import fastlstm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import model_mutators as mm  # noqa: E402

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _give_memory_back():
    """The hostile files below make the loader allocate (and free) tens of MB; hand the freed
    heap back to the OS afterwards, so RSS-based tests later in the session (test_memory.py)
    start from a heap without slack that would hide their growth."""
    yield
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return mm.build_seed_files(str(tmp_path_factory.mktemp("fuzz_seeds")))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz_inputs") / "input.safetensors")


def check(path: str, blob: bytes, rnn_type=None) -> str:
    with open(path, "wb") as f:
        f.write(blob)
    outcome = mm.check_file(path, rnn_type)
    event(outcome)  # --hypothesis-show-statistics shows how many loaded
    return outcome


# --------------------------------------------------------------------------- hypothesis


@pytest.mark.slow
@settings(FUZZ, max_examples=800)
@given(name=st.sampled_from(mm.SEED_NAMES), seed=st.integers(0, 2**64 - 1),
       rnn_type=st.sampled_from([None, None, None, "LSTM", "GRU", "RNN_TANH", "RNN_RELU"]))
def test_mutation_chains(seeds, scratch, name, seed, rnn_type):
    """1-3 mutators of every level (bytes, header JSON, model), as the long run picks them."""
    blob, _ = mm.mutate(seeds[name], random.Random(seed))
    check(scratch, blob, rnn_type)


@pytest.mark.slow
@settings(FUZZ, max_examples=500)
@given(name=st.sampled_from(mm.SEED_NAMES), seed=st.integers(0, 2**64 - 1),
       mutator=st.sampled_from(mm.MUTATORS))
def test_each_mutator(seeds, scratch, name, seed, mutator):
    check(scratch, mutator(seeds[name], random.Random(seed)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "BOOL"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(name=st.sampled_from(mm.SEED_NAMES), which=st.integers(0, 100),
       field=st.sampled_from(["dtype", "shape", "data_offsets", "extra", "__entry__"]),
       value=json_values)
def test_header_fields(seeds, scratch, name, which, field, value):
    """Any JSON value for a tensor's dtype, shape or data_offsets, an extra key, or the entry."""
    header_bytes, data = mm.split_header(seeds[name])
    header = json.loads(header_bytes)
    names = sorted(k for k in header if k != "__metadata__")
    tensor = names[which % len(names)]
    if field == "__entry__":
        header[tensor] = value
    else:
        header[tensor][field] = value
    check(scratch, mm.with_header(json.dumps(header).encode(), data))


@FUZZ
@given(name=st.sampled_from(mm.SEED_NAMES),
       key=st.sampled_from(["rnn_type", "format", "format_version", "tokenizer", "encoder.weight",
                            "decoder.weight", "rnn.weight_ih_l1", "x"]),
       value=st.one_of(st.text(max_size=20), json_values.map(json.dumps),
                       st.sampled_from(["LSTM", "GRU", "RNN_TANH", "RNN_RELU", "1", "fastlstm",
                                        "encoder.weight", "decoder.weight", "rnn.weight_ih_l0",
                                        '{"type":"byte"}', '{"type":"char","vocab":["a"]}'])))
def test_metadata_values(seeds, scratch, name, key, value):
    """Any string for a metadata entry: rnn_type, format, version, tokenizer JSON, aliases."""
    tensors, metadata = mm.parse(seeds[name])
    metadata = dict(metadata or {}, **{key: value})
    check(scratch, mm.serialize(tensors, metadata))


@FUZZ
@given(name=st.sampled_from(mm.SEED_NAMES), position=st.integers(0, 10**6),
       edit=st.sampled_from(["insert", "overwrite", "delete", "truncate"]),
       payload=st.binary(min_size=1, max_size=16))
def test_byte_edits(seeds, scratch, name, position, edit, payload):
    blob = seeds[name]
    i = position % (len(blob) + 1)
    blob = {"insert": blob[:i] + payload + blob[i:],
            "overwrite": blob[:i] + payload + blob[i + len(payload):],
            "delete": blob[:i] + blob[i + len(payload):],
            "truncate": blob[:i]}[edit]
    check(scratch, blob)


@FUZZ
@given(name=st.sampled_from(mm.SEED_NAMES), length=st.integers(0, 2**64 - 1))
def test_header_length_field(seeds, scratch, name, length):
    blob = seeds[name]
    outcome = check(scratch, struct.pack("<Q", length) + blob[8:])
    assert outcome == "ValueError" or blob[:8] == struct.pack("<Q", length)


@FUZZ
@given(name=st.sampled_from(mm.SEED_NAMES), which=st.integers(0, 100),
       element=st.integers(0, 10**6),
       value=st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_non_finite_weights_are_refused(seeds, scratch, name, which, element, value):
    """NaN or Inf anywhere in any tensor, in any of the stored dtypes: a ValueError naming it."""
    tensors, metadata = mm.parse(seeds[name])
    t = tensors[which % len(tensors)]
    size = mm.ITEMSIZE[t.dtype]
    i = element % (len(t.data) // size)
    t.data = t.data[: i * size] + mm._encode([value], t.dtype) + t.data[(i + 1) * size:]
    with open(scratch, "wb") as f:
        f.write(mm.serialize(tensors, metadata))
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastlstm.load(scratch)


@FUZZ
@given(name=st.sampled_from(mm.SEED_NAMES), which=st.integers(0, 100),
       factor=st.sampled_from([1e10, 1e20, 1e30, 1e38, -1e38]))
def test_huge_finite_weights_load_and_stay_finite_or_are_refused(seeds, scratch, name, which,
                                                                  factor):
    tensors, metadata = mm.parse(seeds[name])
    t = tensors[which % len(tensors)]
    with np.errstate(all="ignore"):
        t.data = mm._encode(mm._decode(t).astype(np.float64) * factor, t.dtype)
    check(scratch, mm.serialize(tensors, metadata))


def test_long_run_script_runs(tmp_path, capsys):
    """tests/fuzz/fuzz_model_files.py itself (a few inputs), so the long run does not rot."""
    import fuzz_model_files

    code = fuzz_model_files.main(["--count", "40", "--seed", "7", "--workdir", str(tmp_path),
                                  "--progress", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "inputs:   40" in out and "result:   OK" in out


# --------------------------------------------------------------------------- what fuzzing found

V, E, H = 5, 4, 3


def small_lstm(seed=0, layers=1, scale=0.3, **extra):
    r = np.random.default_rng(seed)
    t = {"encoder.weight": r.uniform(-1, 1, (V, E)), "decoder.weight": r.uniform(-1, 1, (V, H)),
         "decoder.bias": r.uniform(-1, 1, V)}
    for k in range(layers):
        t[f"rnn.weight_ih_l{k}"] = r.uniform(-scale, scale, (4 * H, E if k == 0 else H))
        t[f"rnn.weight_hh_l{k}"] = r.uniform(-scale, scale, (4 * H, H))
    t.update(extra)
    return {k: np.asarray(v, np.float32) for k, v in t.items()}


def write_raw(tmp_path, header: bytes, data: bytes = b"", name="m.safetensors") -> str:
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return str(path)


def write(tmp_path, tensors, metadata=None, name="m.safetensors") -> str:
    path = str(tmp_path / name)
    save_file(tensors, path, metadata=metadata)
    return path


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_header_is_a_value_error(tmp_path, depth):
    """Was RecursionError from json.loads."""
    header = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ValueError, match="JSON"):
        fastlstm.load(write_raw(tmp_path, header))


@pytest.mark.parametrize("tokenizer", ["[" * 100_000, '{"type":' + "[" * 5000 + "]" * 5000 + "}",
                                       '{"type":"char","vocab":' + "[" * 3000 + "]" * 3000 + "}"])
def test_deeply_nested_tokenizer_json_is_a_value_error(tmp_path, tokenizer):
    """Was RecursionError from json.loads in tokenizer_from_json."""
    path = write(tmp_path, small_lstm(), {"tokenizer": tokenizer})
    with pytest.raises(ValueError, match="tokenizer"):
        fastlstm.load(path)
    with pytest.raises(ValueError):
        fastlstm.tokenizers.tokenizer_from_json(tokenizer)


@pytest.mark.parametrize("kind", ["[]", "{}", '["char"]', "1", "null"])
def test_tokenizer_type_that_is_not_a_string(tmp_path, kind):
    """Was TypeError (unhashable type: 'list') from `kind not in _KINDS`."""
    tokenizer = '{"type": %s, "vocab": ["a", "b", "c", "d", "e"]}' % kind
    with pytest.raises(ValueError, match="tokenizer type"):
        fastlstm.load(write(tmp_path, small_lstm(), {"tokenizer": tokenizer}))


@pytest.mark.parametrize("impostor", ["rnn.weight_hh_l0\n", "rnn.weight_hh_l00",
                                      "rnn.weight_hh_l\u0660"])
def test_second_spelling_of_a_layer_name_is_refused(tmp_path, impostor):
    """`$` matched before a final newline, `\\d` any Unicode digit, and leading zeros parsed:
    each made a second "layer 0" whose weights silently replaced the real ones."""
    tensors = small_lstm()
    tensors[impostor] = np.full((4 * H, H), 7.0, np.float32)
    with pytest.raises(ValueError, match="expected two matrices"):
        fastlstm.load(write(tmp_path, tensors))


def test_recurrent_aliases_cannot_repeat_a_layer(tmp_path):
    """Metadata aliases {"rnn.weight_ih_l{k}": "rnn.weight_ih_l0", ...} made a k-layer model
    out of one stored layer: 60 bytes of metadata per layer of any size (a 380 KB file built
    a 3,000-layer model of 400 MB).  Only an embedding/head pair may be stored once now."""
    big = 64
    r = np.random.default_rng(0)
    tensors = {"encoder.weight": r.uniform(-0.1, 0.1, (V, big)),
               "rnn.weight_ih_l0": r.uniform(-0.1, 0.1, (4 * big, big)),
               "rnn.weight_hh_l0": r.uniform(-0.1, 0.1, (4 * big, big)),
               "decoder.weight": r.uniform(-0.1, 0.1, (V, big))}
    tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
    metadata = {}
    for k in range(1, 3000):
        metadata[f"rnn.weight_ih_l{k}"] = "rnn.weight_ih_l0"
        metadata[f"rnn.weight_hh_l{k}"] = "rnn.weight_hh_l0"
    path = write(tmp_path, tensors, metadata)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="share no weights"):
            fastlstm.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * os.path.getsize(path)


def test_aliases_only_name_stored_tensors(tmp_path):
    """An alias of an alias, of itself, or of a missing tensor adds nothing (as before), and the
    order of the metadata does not matter."""
    tensors = small_lstm()
    head = tensors.pop("decoder.weight")
    del tensors["decoder.bias"]
    tensors["encoder.weight"] = np.ascontiguousarray(np.resize(head, (V, E)))
    path = write(tmp_path, tensors, {"a": "decoder.weight", "decoder.weight": "b", "x": "x",
                                     "y": "missing"})
    with pytest.raises(ValueError):  # no head: "decoder.weight" -> "b" names nothing stored
        fastlstm.load(path)


def test_overflowing_finite_weights_are_refused(tmp_path):
    """Finite weights whose products overflow float32 gave NaN logits (inf - inf); a flipped
    exponent bit is enough.  Now refused as too large, with the layer named."""
    tensors = small_lstm()
    tensors["encoder.weight"][:, 0] = 1e30
    tensors["rnn.weight_ih_l0"][:, 0] = 1e30
    tensors["rnn.weight_ih_l0"][::2, 1] = -1e30
    with pytest.raises(ValueError, match="weights too large: a gate of layer 0"):
        fastlstm.load(write(tmp_path, tensors))
    tensors = small_lstm()
    tensors["decoder.weight"][1, :] = [3e38, 3e38, -3e38]
    with pytest.raises(ValueError, match="weights too large: a logit"):
        fastlstm.load(write(tmp_path, tensors))


def test_large_but_sane_weights_load(tmp_path):
    """The bound is far from trained models: weights of 1e4 still load and run finitely."""
    tensors = small_lstm(scale=1e4)
    tensors["encoder.weight"] *= 1e4
    tensors["decoder.weight"] *= 1e4
    model = fastlstm.load(write(tmp_path, tensors))
    assert np.isfinite(model.forward([[0, 1, 2]])[0]).all()


@pytest.mark.parametrize("shape", [[0, 2**62], [0, 4], [3, 0]])
def test_empty_tensors_are_refused(tmp_path, shape):
    """An empty embedding (E = 0) reached the matmul packer's own ValueError, without the file
    name; a [0, 2**62] shape reached NumPy's "array is too big"."""
    tensors = small_lstm()
    header = {"encoder.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}
    offset = 0
    data = b""
    for name, array in tensors.items():
        if name == "encoder.weight":
            continue
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        data += array.tobytes()
    with pytest.raises(ValueError, match="empty"):
        fastlstm.load(write_raw(tmp_path, json.dumps(header).encode(), data))


def test_lone_surrogate_in_a_vocabulary_is_refused(tmp_path):
    path = write(tmp_path, small_lstm(),
                 {"tokenizer": '{"type": "char", "vocab": ["a", "b", "c", "d", "\\ud800"]}'})
    with pytest.raises(ValueError, match="surrogate"):
        fastlstm.load(path)


@pytest.mark.parametrize("header", [
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
    b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',  # a key twice
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}',
    b'{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}',
    b'{"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}',
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, NaN]}}',
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}',
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}',
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}',
    b'{"a": {"dtype": "F32", "shape": [' + b"1," * 64 + b'1], "data_offsets": [0, 4]}}',
    b'{"a": {"dtype": "F32", "shape": [2147483648, 2147483648], "data_offsets": [0, 4]}}',
    b'{"a": {"dtype": 32, "shape": [1], "data_offsets": [0, 4]}}',
    b'{"' + b"a" * 70_000 + b'": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
    b'{"a": [], "b": 1}',
    b'{"__metadata__": {"rnn_type": ["LSTM"]}}',
    b'\xef\xbb\xbf{}',
    b'{"a": "\xff"}',
    b'[]',
])
def test_malformed_headers(tmp_path, header):
    with pytest.raises(ValueError, match="safetensors|metadata"):
        fastlstm.load(write_raw(tmp_path, header, b"\0" * 4))


# --------------------------------------------------------------------------- memory bounds

# A model file of S bytes makes fastlstm hold at most ~40 S bytes: fp16 weights become float32
# (2x; int8 ones stay int8, but a matrix of another quantizer is quantized again from float32:
# 4x), the kernels' panels pad matrices to 16 rows (at most 16x, for a 1-row matrix), layer
# 0's lookup table holds at most 2 floats per parameter.  Hostile headers are
# measured and refused before they are parsed, at a few times their size.
MEMORY_FACTOR = 40


def _peak_of_load(path):
    tracemalloc.start()
    try:
        try:
            fastlstm.load(path)
            outcome = "loaded"
        except ValueError as e:
            outcome = str(e)
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


def _hostile_files(tmp_path):
    n = 400_000

    def raw(header: dict | bytes, data=b""):
        text = header if isinstance(header, bytes) else json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + data

    yield "nested arrays", raw(b'{"a":' + b"[" * n + b"]" * n + b"}")
    yield "many empty arrays", raw({"a": [[]] * n})
    yield "long shape", raw({"a": {"dtype": "F32", "shape": [1] * n, "data_offsets": [0, 4]}},
                            b"\0" * 4)
    yield "many metadata entries", raw({"__metadata__": {f"{i:x}": "" for i in range(n // 4)}})
    yield "many tensors", raw({f"{i:x}": {"dtype": "F32", "shape": [1],
                                          "data_offsets": [4 * i, 4 * i + 4]}
                               for i in range(n // 20)}, b"\0" * (n // 5))
    yield "huge shape, no data", raw({"a": {"dtype": "F32", "shape": [0, 2**62],
                                            "data_offsets": [0, 0]}})
    yield "header length 2**64-1", struct.pack("<Q", 2**64 - 1) + b"{}"
    tensors = small_lstm()
    words = json.dumps({"type": "word", "vocab": [f"{i:x}" for i in range(n)], "eos": None,
                        "unk": None})
    yield "vocab of 400k words, model of 5", open(write(tmp_path, tensors, {"tokenizer": words},
                                                       "w.safetensors"), "rb").read()
    tiny = json.dumps({"type": "char", "vocab": [[]] * n})
    yield "vocab of 400k lists", open(write(tmp_path, tensors, {"tokenizer": tiny},
                                            "t.safetensors"), "rb").read()
    aliases = {f"alias{i}": "encoder.weight" for i in range(n // 8)}
    yield "50k aliases", open(write(tmp_path, tensors, aliases, "a.safetensors"), "rb").read()
    r = np.random.default_rng(0)
    degenerate = {"encoder.weight": r.uniform(-1e-3, 1e-3, (1, 100_000)).astype(np.float16),
                  "rnn.weight_ih_l0": r.uniform(-1e-3, 1e-3, (1, 100_000)).astype(np.float16),
                  "rnn.weight_hh_l0": np.ones((1, 1), np.float16),
                  "decoder.weight": np.ones((1, 1), np.float16)}
    yield "valid RNN, hidden 1, E 100k, fp16", open(write(tmp_path, degenerate,
                                                          {"rnn_type": "RNN_TANH"},
                                                          "d.safetensors"), "rb").read()
    from fastlstm.file_format import read_safetensors, write_model_file
    as_int8 = tmp_path / "d8.safetensors"
    write_model_file(as_int8, read_safetensors(tmp_path / "d.safetensors")[0],
                     {"rnn_type": "RNN_TANH"}, "int8")
    yield "valid RNN, hidden 1, E 100k, int8", as_int8.read_bytes()


def test_memory_stays_proportional_to_the_file(tmp_path):
    """tracemalloc's peak during load (NumPy's buffers included) for hostile files."""
    report = []
    for what, blob in _hostile_files(tmp_path):
        path = tmp_path / "hostile.safetensors"
        path.write_bytes(blob)
        peak, outcome = _peak_of_load(str(path))
        report.append(f"{what}: {len(blob):,} bytes, peak {peak:,} ({peak / len(blob):.1f}x): "
                      f"{outcome[-90:]}")
        assert peak <= MEMORY_FACTOR * len(blob) + 2**20, "\n".join(report)
        if "valid" not in what:
            assert outcome != "loaded", what
    print("\n".join(report))


def test_json_structure_counts_outside_strings():
    js = fastlstm.untrusted_json.json_structure
    assert js('{"a\\"[":[1,2,{}], "b":"[[,,"}') == (3, 3)
    assert js('["\\\\", [], "\\\\\\"[", {}]') == (3, 3)
    assert js("") == (0, 0)
    text = json.dumps({"x": ["[", "{", ",", "\\", '"'] * 1000, "y": [[]] * 7})
    assert js(text) == (1 + 1 + 1 + 7, 1 + 4999 + 6)
    assert math.isfinite(len(text))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """Model files are read as safetensors only: no pickle is involved in load, ever."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("fastlstm.load unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    model = fastlstm.load(write(tmp_path, small_lstm()))
    assert model.config.vocab_size == V
    assert fastlstm.load().config.vocab_size > 0  # the bundled model too
