"""Find what each tensor of a model file is, and check that they make one model.

Roles are found from key suffixes and shapes, never from module prefixes:

    <prefix>weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}, weight_hr_l{k}
                                      the recurrent stack (nn.LSTM / nn.GRU / nn.RNN)
    one (V, E) matrix                 the embedding, E = weight_ih_l0's columns
    one (V, H_out) matrix, one (V,)   the output head and its bias

so PyTorch's word_language_model checkpoints (`encoder.`, `rnn.`, `decoder.`) load as they are,
and so do files written by `safetensors.torch.save_model`, which drops one name of a tied pair
and records `{dropped: kept}` in the metadata.  Anything that does not fit exactly one such
model is a ValueError that says what is wrong.

A forecaster (metadata `kind` "forecaster": float inputs, no embedding) holds the recurrent
stack and one (output_size, H_out) head with its optional (output_size,) bias.

Tensors are float32 arrays, but the matrices of an int8 file, which stay int8
(fastlstm.precision.Stored): their values are checked a block of rows at a time
(`_row_blocks`), never as a float32 copy of a whole matrix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from fastlstm.config import GATES, ForecasterConfig, ModelConfig, check_rnn_type
from fastlstm.file_format import MAX_DIM, METADATA_KEYS
from fastlstm.precision import Stored

# PyTorch's own names only: layer numbers in ASCII without leading zeros, nothing after them
# (`$` would also match before a final newline, and `\d` any Unicode digit, so "..._l1\n",
# "..._l01" and "..._l\u0661" would each have been a second layer 1).
_RECURRENT_KEY = re.compile(r"(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
                            r"_l(?P<layer>0|[1-9][0-9]{0,5})(?P<reverse>_reverse)?\Z",
                            re.ASCII | re.DOTALL)

# The largest pre-activation or logit the weights may produce, from |w| row sums: weights
# beyond this are corrupt (trained models stay below 1e3), and would overflow float32 into
# inf and NaN.  1e20 leaves 1e18 of headroom below float32's 3.4e38.
MAX_ACTIVATION = 1e20
# The float32 values `_row_blocks` makes of an int8 matrix at a time (256 KB).
BLOCK_VALUES = 1 << 16


@dataclass
class LayerWeights:
    """One recurrent layer's PyTorch parameters, float32 (an int8 file's matrices: int8
    Stored), gates stacked in PyTorch's order."""

    weight_ih: np.ndarray  # (gates*hidden, in_size)
    weight_hh: np.ndarray  # (gates*hidden, out_size)
    bias_ih: np.ndarray | None = None  # (gates*hidden,)
    bias_hh: np.ndarray | None = None  # (gates*hidden,)
    weight_hr: np.ndarray | None = None  # (proj_size, hidden), LSTM with proj_size only


@dataclass
class RecurrentWeights:
    """A stack of recurrent layers as nn.LSTM/nn.GRU/nn.RNN holds it."""

    rnn_type: str
    input_size: int
    hidden_size: int
    proj_size: int
    bias: bool
    layers: list[LayerWeights]

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size


@dataclass
class ModelWeights:
    """A whole language model: embedding, recurrent stack, head, and the names they came from."""

    config: ModelConfig
    embedding: np.ndarray  # (vocab, embedding_dim)
    recurrent: RecurrentWeights
    head_weight: np.ndarray  # (vocab, output_size)
    head_bias: np.ndarray | None  # (vocab,)
    names: dict[str, str] = field(default_factory=dict)  # role -> tensor name in the file


@dataclass
class ForecasterWeights:
    """A float-input model: recurrent stack and linear head, and the names they came from."""

    config: ForecasterConfig
    recurrent: RecurrentWeights
    head_weight: np.ndarray  # (output_size, out)
    head_bias: np.ndarray | None  # (output_size,)
    names: dict[str, str] = field(default_factory=dict)  # role -> tensor name in the file


def find_recurrent_layers(tensors: dict[str, np.ndarray], rnn_type: str | None,
                          prefix: str = "") -> RecurrentWeights:
    """Collect `prefix + weight_ih_l{k}`-style tensors into a checked stack of layers.

    `rnn_type` settles what shapes cannot (plain RNN: tanh or relu) and must agree with them.
    """
    by_layer: dict[int, dict[str, np.ndarray]] = {}
    for name, array in tensors.items():
        m = _RECURRENT_KEY.match(name)
        if m is None or m["prefix"] != prefix:
            continue
        if m["reverse"]:
            raise ValueError(f"tensor {name!r} belongs to a bidirectional layer; fastlstm runs "
                             "unidirectional models only (generation reads left to right)")
        by_layer.setdefault(int(m["layer"]), {})[m["kind"]] = array
    if not by_layer:
        raise ValueError(f"no recurrent layer found: expected tensors named like "
                         f"'{prefix}weight_ih_l0' and '{prefix}weight_hh_l0'")
    num_layers = max(by_layer) + 1

    def tensor(layer: int, kind: str, ndim: int) -> np.ndarray | None:
        array = by_layer.get(layer, {}).get(kind)
        if array is not None and array.ndim != ndim:
            raise ValueError(f"tensor '{prefix}{kind}_l{layer}' has shape {array.shape}; "
                             f"expected a {ndim}-D tensor")
        return array

    w_hh0, w_hr0 = tensor(0, "weight_hh", 2), tensor(0, "weight_hr", 2)
    if w_hh0 is None or tensor(0, "weight_ih", 2) is None:
        missing = "weight_hh" if w_hh0 is None else "weight_ih"
        raise ValueError(f"missing tensor '{prefix}{missing}_l0'")
    # Sizes come from layer 0: weight_hh is (gates*hidden, out); weight_hr (out, hidden).
    if w_hr0 is not None:
        proj_size, hidden = w_hr0.shape
        if w_hh0.shape[1] != proj_size:
            raise ValueError(f"shape mismatch: '{prefix}weight_hh_l0' {w_hh0.shape} should have "
                             f"{proj_size} columns (proj_size, from '{prefix}weight_hr_l0')")
    else:
        proj_size, hidden = 0, w_hh0.shape[1]
    if hidden == 0 or w_hh0.shape[0] % hidden:
        raise ValueError(f"shape mismatch: '{prefix}weight_hh_l0' {w_hh0.shape} is not "
                         f"(gates * hidden, hidden) for 4 (LSTM), 3 (GRU) or 1 (RNN) gates")
    gates = w_hh0.shape[0] // hidden
    by_gates = {4: "LSTM", 3: "GRU"}
    if rnn_type is None:
        if gates == 1:
            raise ValueError("these are plain RNN weights: their shapes cannot tell tanh from "
                             "relu, so pass rnn_type='RNN_TANH' or 'RNN_RELU' (or store it in "
                             "the file's metadata, as fastlstm.export does)")
        if gates not in by_gates:
            raise ValueError(f"shape mismatch: '{prefix}weight_hh_l0' {w_hh0.shape} stacks "
                             f"{gates} gates; LSTM has 4, GRU 3, RNN 1")
        rnn_type = by_gates[gates]
    rnn_type = check_rnn_type(rnn_type)
    if GATES[rnn_type] != gates:
        raise ValueError(f"rnn_type {rnn_type} does not match the weights: '{prefix}weight_hh_l0' "
                         f"{w_hh0.shape} stacks {gates} gates of {hidden}, {rnn_type} has "
                         f"{GATES[rnn_type]}")
    if proj_size and rnn_type != "LSTM":
        raise ValueError("weight_hr (proj_size) only exists in LSTM layers")

    has_bias = "bias_ih" in by_layer.get(0, {}) or "bias_hh" in by_layer.get(0, {})
    out = proj_size or hidden
    input_size = by_layer[0]["weight_ih"].shape[1]
    layers = []
    for k in range(num_layers):
        found = by_layer.get(k, {})
        expected = {
            "weight_ih": (gates * hidden, input_size if k == 0 else out),
            "weight_hh": (gates * hidden, out),
        }
        if has_bias:
            expected.update(bias_ih=(gates * hidden,), bias_hh=(gates * hidden,))
        if proj_size:
            expected["weight_hr"] = (proj_size, hidden)
        for kind, shape in expected.items():
            if kind not in found:
                raise ValueError(f"missing tensor '{prefix}{kind}_l{k}' (layer {k} of "
                                 f"{num_layers})")
            if found[kind].shape != shape:
                raise ValueError(f"shape mismatch: '{prefix}{kind}_l{k}' is "
                                 f"{found[kind].shape}, expected {shape}")
        for kind in found.keys() - expected.keys():
            raise ValueError(f"unexpected tensor '{prefix}{kind}_l{k}': layer 0 has no "
                             f"{kind}, so no layer may have one")
        layers.append(LayerWeights(**{kind: found.get(kind) for kind in expected}))
    return RecurrentWeights(rnn_type, input_size, hidden, proj_size, has_bias, layers)


def _recurrent_prefix(names) -> str:
    prefixes = {m["prefix"] for m in map(_RECURRENT_KEY.match, names) if m}
    if not prefixes:
        raise ValueError("no recurrent layer found: expected tensors named like "
                         "'rnn.weight_ih_l0' and 'rnn.weight_hh_l0'")
    if len(prefixes) > 1:
        shown = ", ".join(repr(p.rstrip(".") or "(no prefix)") for p in sorted(prefixes))
        raise ValueError(f"ambiguous roles: recurrent weights under several modules ({shown}); "
                         "fastlstm models have one recurrent module")
    return prefixes.pop()


def _split_tensors(tensors: dict[str, np.ndarray], rnn_type: str | None, model: str
                   ) -> tuple[str, RecurrentWeights, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(prefix, recurrent stack, other matrices, other vectors) of a model's tensors; any
    other tensor is a ValueError that says what the `model` is."""
    prefix = _recurrent_prefix(tensors)
    recurrent = find_recurrent_layers(tensors, rnn_type, prefix)
    rest = {n: a for n, a in tensors.items()
            if not (m := _RECURRENT_KEY.match(n)) or m["prefix"] != prefix}
    matrices = {n: a for n, a in rest.items() if a.ndim == 2}
    vectors = {n: a for n, a in rest.items() if a.ndim == 1}
    for name in rest.keys() - matrices.keys() - vectors.keys():
        raise ValueError(f"unexpected tensor {name!r} with shape {rest[name].shape}: {model}")
    return prefix, recurrent, matrices, vectors


def _head_bias(vectors: dict[str, np.ndarray], head_name: str, size: int, model: str
               ) -> tuple[np.ndarray | None, str | None]:
    """(bias, name) of the head `head_name` among the non-recurrent vectors, or (None, None):
    its name is the head's with "bias" for "weight", its shape (size,).  Any other vector is
    a ValueError."""
    expected = head_name[: -len("weight")] + "bias" if head_name.endswith("weight") else None
    head_bias, bias_name = None, None
    for name, vector in vectors.items():
        if name != expected:
            raise ValueError(f"unexpected tensor {name!r} with shape {vector.shape}: the only "
                             f"1-D tensor {model} may have besides the recurrent biases is "
                             f"the head bias {expected!r}")
        if vector.shape != (size,):
            raise ValueError(f"shape mismatch: head bias {name!r} is {vector.shape}, expected "
                             f"({size},)")
        head_bias, bias_name = vector, name
    return head_bias, bias_name


def _row_blocks(w: np.ndarray | Stored):
    """The values of a tensor as float32 arrays: a vector whole, a matrix a block of rows
    at a time (BLOCK_VALUES values), so an int8 one is never whole in float32.  Row by row
    the values, and NumPy's sums along rows, are those of the whole matrix."""
    if w.ndim != 2:
        yield w
        return
    rows = max(1, BLOCK_VALUES // w.shape[1])
    for start in range(0, w.shape[0], rows):
        block = w[start:start + rows]
        yield block.to_float32() if isinstance(block, Stored) else block


def _equal(a, b) -> bool:
    """np.array_equal of two tensors' values, float32 or int8 (Stored)."""
    return a.shape == b.shape and all(np.array_equal(x, y)
                                      for x, y in zip(_row_blocks(a), _row_blocks(b)))


def _check_finite(tensors: dict[str, np.ndarray | Stored]) -> None:
    for name, array in tensors.items():
        if not all(np.isfinite(block).all() for block in _row_blocks(array)):
            raise ValueError(f"tensor {name!r} contains NaN or Inf")


_EMBEDDING_HINTS = re.compile(r"embed|encoder|emb\b|wte|tok", re.I)
_HEAD_HINTS = re.compile(r"decoder|fc|head|linear|out|proj|classifier|logit", re.I)


def find_roles(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
               rnn_type: str | None = None) -> ModelWeights:
    """Identify embedding, recurrent layers and head among a state_dict's tensors.

    `metadata` may hold `rnn_type` and save_model's `{dropped: kept}` aliases; an `rnn_type`
    argument must agree with it.  Raises ValueError for anything but exactly one
    `Embedding -> LSTM/GRU/RNN -> Linear` model.
    """
    metadata = dict(metadata or {})
    rnn_type = _resolve_rnn_type(metadata, rnn_type)
    _check_sizes(tensors)
    # save_model's {dropped: kept}: only a stored tensor can be kept (no chains), and only
    # the embedding/head pair is ever shared.  A recurrent weight standing for another would
    # let a few bytes of metadata repeat one layer thousands of times at load.
    stored = tensors
    tensors, aliases = dict(stored), {}
    for dropped, kept in metadata.items():
        if dropped in METADATA_KEYS or dropped in stored or kept not in stored:
            continue
        if _RECURRENT_KEY.match(dropped) or _RECURRENT_KEY.match(kept):
            raise ValueError(f"the metadata stores {dropped!r} as {kept!r}, but recurrent "
                             "layers share no weights: only a head tied to its embedding may "
                             "be stored once")
        tensors[dropped] = stored[kept]
        aliases[dropped] = kept

    prefix, recurrent, matrices, vectors = _split_tensors(
        tensors, rnn_type, "fastlstm models are Embedding -> LSTM/GRU/RNN -> Linear")

    E, out = recurrent.input_size, recurrent.output_size
    if len(matrices) != 2:
        found = ", ".join(f"{n!r} {a.shape}" for n, a in matrices.items()) or "none"
        hint = ""
        if len(matrices) == 1:
            hint = (" (missing embedding or head; a forecaster, with float inputs and no "
                    "embedding, is written by fastlstm.export(..., input_size=...))")
        elif not matrices:
            hint = " (missing embedding or head)"
        raise ValueError(f"expected two matrices besides the recurrent layers, an embedding "
                         f"(vocab, {E}) and a head (vocab, {out}); found {found}" + hint)
    (name_a, a), (name_b, b) = matrices.items()
    options = [(e, h) for e, h in ((name_a, name_b), (name_b, name_a))
               if matrices[e].shape[1] == E and matrices[h].shape[1] == out
               and matrices[e].shape[0] == matrices[h].shape[0]]
    if not options:
        raise ValueError(f"shape mismatch: {name_a!r} {a.shape} and {name_b!r} {b.shape} are not "
                         f"an embedding (vocab, {E}) and a head (vocab, {out}) of one vocabulary "
                         f"(E from '{prefix}weight_ih_l0', {out} from '{prefix}weight_hh_l0')")
    if len(options) == 2:
        options = _break_tie(options, matrices, vectors)
    emb_name, head_name = options[0]
    embedding, head_weight = matrices[emb_name], matrices[head_name]
    vocab = embedding.shape[0]

    head_bias, bias_name = _head_bias(vectors, head_name, vocab, "a model")
    _check_finite(tensors)
    _check_magnitudes(embedding, recurrent, head_weight, head_bias, prefix, head_name)

    tied = aliases.get(head_name) == emb_name or aliases.get(emb_name) == head_name or (
        _equal(embedding, head_weight))
    config = ModelConfig(rnn_type=recurrent.rnn_type, num_layers=len(recurrent.layers),
                         vocab_size=vocab, embedding_dim=E, hidden_size=recurrent.hidden_size,
                         proj_size=recurrent.proj_size, bias=recurrent.bias,
                         head_bias=head_bias is not None, tied=bool(tied))
    names = {"embedding": emb_name, "recurrent": prefix, "head_weight": head_name}
    if bias_name:
        names["head_bias"] = bias_name
    return ModelWeights(config, embedding, recurrent, head_weight, head_bias, names)


def _check_magnitudes(embedding, recurrent: RecurrentWeights, head_weight, head_bias,
                      prefix: str, head_name: str) -> None:
    """Refuse weights whose pre-activations or logits could leave float32's range.

    |W x + b| <= max row sum of |W| * max |x| + max |b|, and the states that feed each layer
    are bounded by the cell itself (|h| <= 1 for LSTM, GRU and tanh RNN; a projection scales
    it by its row sums).  Beyond MAX_ACTIVATION the sums overflow to inf and NaN, which a
    finite but corrupted weight (one flipped exponent bit makes 0.3 into 1e38) would cause.
    A ReLU RNN's state has no bound over time, as in PyTorch, so only its first step is checked.
    `embedding` None (a forecaster): layer 0's inputs are taken as |x| <= 1, the scale
    forecasting inputs are normalised to (larger data scales the sums, not the weights' fault).
    """
    def row_sum(w) -> float:
        return max(float(np.abs(b).sum(axis=1, dtype=np.float64).max()) for b in _row_blocks(w))

    def largest(v) -> float:
        return 0.0 if v is None else max(float(np.abs(b).max()) for b in _row_blocks(v))

    def check(bound: float, what: str) -> None:
        if not bound <= MAX_ACTIVATION:
            raise ValueError(f"weights too large: {what} can reach {bound:.3g}, beyond the "
                             f"{MAX_ACTIVATION:.0e} fastlstm computes safely in float32 "
                             "(a corrupted file?)")

    relu = recurrent.rnn_type == "RNN_RELU"
    x = 1.0 if embedding is None else largest(embedding)  # what layer 0 reads
    for k, layer in enumerate(recurrent.layers):
        h = 0.0 if relu else 1.0  # the recurrent input: |h| before any projection
        if layer.weight_hr is not None:
            h *= row_sum(layer.weight_hr)
        check(row_sum(layer.weight_ih) * x + row_sum(layer.weight_hh) * h
              + largest(layer.bias_ih) + largest(layer.bias_hh),
              f"a gate of layer {k} ('{prefix}weight_ih_l{k}' ...)")
        if relu:
            return
        x = h
    check(row_sum(head_weight) * x + largest(head_bias),
          f"{'a logit' if embedding is not None else 'an output of the head'} ({head_name!r})")


def _resolve_rnn_type(metadata: dict[str, str], rnn_type: str | None) -> str | None:
    """The rnn_type argument and the metadata's, which must agree (None: shapes decide)."""
    stored_type = metadata.get("rnn_type")
    if stored_type is not None:
        stored_type = check_rnn_type(stored_type)
        if rnn_type is not None and check_rnn_type(rnn_type) != stored_type:
            raise ValueError(f"rnn_type={rnn_type!r} contradicts the file's metadata "
                             f"rnn_type={stored_type!r}")
    return rnn_type or stored_type


def _check_sizes(tensors: dict[str, np.ndarray]) -> None:
    for name, array in tensors.items():
        if array.size == 0:
            raise ValueError(f"tensor {name!r} is empty (shape {array.shape}); every tensor of "
                             "a model holds at least one value")
        if max(array.shape, default=1) > MAX_DIM:
            raise ValueError(f"tensor {name!r} has shape {array.shape}: fastlstm's kernels "
                             f"take at most {MAX_DIM:,} rows or columns")


def find_forecaster_roles(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
                          rnn_type: str | None = None) -> ForecasterWeights:
    """Identify the recurrent layers and the linear head of a float-input model.

    Exactly one matrix besides the recurrent layers, the head (output_size, H_out), and at
    most one vector, its bias (output_size,), named like the head with "bias" for "weight".
    The metadata's `input_size` and `output_size`, when present, must agree with the shapes.
    Raises ValueError for anything else.
    """
    metadata = dict(metadata or {})
    rnn_type = _resolve_rnn_type(metadata, rnn_type)
    _check_sizes(tensors)
    prefix, recurrent, matrices, vectors = _split_tensors(
        tensors, rnn_type, "a forecaster is LSTM/GRU/RNN -> Linear")
    out = recurrent.output_size
    if len(matrices) != 1:
        found = ", ".join(f"{n!r} {a.shape}" for n, a in matrices.items()) or "none"
        raise ValueError(f"a forecaster has one matrix besides the recurrent layers, its head "
                         f"(outputs, {out}); found {found}")
    ((head_name, head_weight),) = matrices.items()
    if head_weight.shape[1] != out:
        raise ValueError(f"shape mismatch: the head {head_name!r} is {head_weight.shape}; "
                         f"expected (outputs, {out}) (the recurrent layers' output size)")
    outputs = head_weight.shape[0]
    head_bias, bias_name = _head_bias(vectors, head_name, outputs, "a forecaster")
    for key, actual in (("input_size", recurrent.input_size), ("output_size", outputs)):
        if key in metadata and metadata[key] != str(actual):
            raise ValueError(f"the metadata's {key} {metadata[key]!r} does not match the "
                             f"weights, which have {actual}")
    _check_finite(tensors)
    _check_magnitudes(None, recurrent, head_weight, head_bias, prefix, head_name)
    config = ForecasterConfig(rnn_type=recurrent.rnn_type, num_layers=len(recurrent.layers),
                              input_size=recurrent.input_size, hidden_size=recurrent.hidden_size,
                              output_size=outputs, proj_size=recurrent.proj_size,
                              bias=recurrent.bias, head_bias=head_bias is not None)
    names = {"recurrent": prefix, "head_weight": head_name}
    if bias_name:
        names["head_bias"] = bias_name
    return ForecasterWeights(config, recurrent, head_weight, head_bias, names)


def _break_tie(options, matrices, vectors):
    """Both matrices fit both roles (E == H_out).  The head is the one with a bias, else the
    one whose name says so; identical matrices (a tied head) make the choice moot."""
    with_bias = [o for o in options if o[1].endswith("weight") and o[1][:-6] + "bias" in vectors]
    if len(with_bias) == 1:
        return with_bias
    by_name = [o for o in options if _EMBEDDING_HINTS.search(o[0]) and _HEAD_HINTS.search(o[1])
               and not _EMBEDDING_HINTS.search(o[1])]
    if len(by_name) == 1:
        return by_name
    (e, h) = options[0]
    if _equal(matrices[e], matrices[h]):
        return options[:1]
    raise ValueError(f"ambiguous roles: {e!r} and {h!r} both fit the embedding and the head, "
                     "and neither has a bias or a telling name")
