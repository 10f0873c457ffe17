"""Read Keras models without Keras or TensorFlow: Keras 3's `.keras` archives and the legacy
HDF5 full-model files (`model.save("m.h5")`, tf.keras 2.x's format, which Keras 3 still writes).

    .keras   a zip archive: config.json (the architecture) and model.weights.h5, whose weights
             sit at layers/<class in snake_case, numbered in model.layers order>/vars/<i>
             (recurrent layers: layers/<...>/cell/vars/<i>; TimeDistributed: .../layer/vars)
    .h5      HDF5: attribute model_config (the architecture, JSON), and a group model_weights
             holding per layer (by name) the datasets its attribute weight_names lists, e.g.
             model_weights/lstm/lstm/lstm_cell/kernel:0 (tf.keras 2.x) or
             model_weights/lstm/sequential/lstm/lstm_cell/kernel (Keras 3)

Supported: Sequential models and functional models that are one chain of layers,

    Embedding (or float inputs, Input((None, F))) -> LSTM / GRU / SimpleRNN, one or more, of
    one kind and size -> Dense (linear; softmax for language models) [-> Activation]

with Dropout, SpatialDropout1D, GaussianDropout, GaussianNoise and AlphaDropout anywhere
(identity at inference) and TimeDistributed(Dense) as the head.  Keras's layouts become
PyTorch's, which fastlstm runs (Keras's source, keras/src/layers/rnn/*.py, is the spec):

    LSTM       kernel (in, 4H), recurrent_kernel (H, 4H), bias (4H,), gates i, f, c, o:
               PyTorch's i, f, g, o; weight_ih = kernel^T, bias_ih = bias, bias_hh = 0
    GRU        gates z, r, h: reordered to PyTorch's r, z, n.  reset_after=True (Keras's
               default) has bias (2, 3H), input and recurrent: nn.GRU exactly.
               reset_after=False has bias (3H,) and multiplies W_hn by r * h: the
               GRU_RESET_BEFORE cell
    SimpleRNN  kernel (in, H), recurrent_kernel (H, H), bias (H,): RNN_TANH / RNN_RELU
    Dense      kernel (in, out), bias (out,): the head, weight = kernel^T; a softmax head
               gives its pre-activation (the logits)
    Embedding  embeddings (vocab, E)

Anything else is a ValueError naming the layer and what is unsupported.  The files are data:
no Keras object is built and nothing in them runs; every dataset's shape is checked against
the architecture before it is read, and links out of the file are refused.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile

import numpy as np

from fastlstm.file_format import format_version

__all__ = ["keras_file_kind", "read_keras"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"
MAX_CONFIG_BYTES = 64 * 2**20  # config.json / model_config: a few KB for these models

RECURRENT = ("LSTM", "GRU", "SimpleRNN")
# Identity at inference (Keras runs them only with training=True).
IDENTITY = ("Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout")
# Said precisely when met: layers a user may expect to work.
_REFUSED = {
    "Bidirectional": "bidirectional layers read the sequence backwards too; fastlstm runs "
                     "unidirectional models only",
    "Masking": "masking skips time steps, which fastlstm does not do",
    "Attention": "attention layers are not supported",
    "MultiHeadAttention": "attention layers are not supported",
    "AdditiveAttention": "attention layers are not supported",
    "Lambda": "Lambda layers hold Python code, which fastlstm never runs",
}


def keras_file_kind(path) -> str | None:
    """"keras" for a zip archive holding config.json (Keras 3's .keras; torch.save writes
    zip archives too, without it), "h5" for an HDF5 file, else None."""
    try:
        with open(os.fspath(path), "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head == _HDF5_SIGNATURE:
        return "h5"
    if head.startswith(_ZIP_SIGNATURE):
        try:
            with zipfile.ZipFile(os.fspath(path)) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        return "keras" if "config.json" in names else None
    return None


def read_keras(path) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """Read a Keras model file as fastlstm tensors.

    Returns (tensors, metadata, dtype) as fastlstm.file_format.read_safetensors does: float32
    arrays under PyTorch's names ("embedding.weight", "rnn.weight_ih_l0", ..., "head.weight",
    "head.bias"), the metadata of a fastlstm file (format, rnn_type, and for float-input
    models kind "forecaster" with input_size and output_size), and the precision of the
    stored matrices.  Needs h5py (`pip install fastlstm[keras]`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        import h5py
    except ImportError as e:
        raise ImportError(f"reading Keras files needs h5py ({e}): pip install fastlstm[keras]") from e
    kind = keras_file_kind(path)
    try:
        if kind == "keras":
            with zipfile.ZipFile(path) as archive:
                config = _json(_zip_member(archive, "config.json", MAX_CONFIG_BYTES),
                               "config.json")
                weights_bytes = _zip_member(archive, "model.weights.h5", None)
            with h5py.File(io.BytesIO(weights_bytes), "r") as store:
                return _convert(config, _KerasStore(store, config))
        if kind == "h5":
            with h5py.File(path, "r") as f:
                if "model_config" not in f.attrs:
                    raise ValueError("an HDF5 file without a model_config: weights alone "
                                     "(model.save_weights) have no architecture; save the "
                                     'whole model with model.save("model.keras") or ("model.h5")')
                text = f.attrs["model_config"]
                config = _json(text.decode("utf-8") if isinstance(text, bytes) else str(text),
                               "model_config")
                if "model_weights" not in f:
                    raise ValueError("the HDF5 file has no model_weights group")
                return _convert(config, _LegacyStore(f["model_weights"]))
        raise ValueError("not a Keras file: neither a .keras (zip) archive nor an HDF5 file")
    except (zipfile.BadZipFile, OSError, KeyError) as e:
        raise ValueError(f"{path}: not a readable Keras file: {e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _zip_member(archive: zipfile.ZipFile, name: str, limit: int | None) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"the .keras archive has no {name} (members: "
                         f"{', '.join(archive.namelist()[:10])})") from None
    if limit is not None and info.file_size > limit:
        raise ValueError(f"{name} claims {info.file_size:,} bytes; at most {limit:,} allowed")
    return archive.read(info)


def _json(text: str, what: str):
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{what} holds {len(text):,} characters; at most {MAX_CONFIG_BYTES:,}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from None


# ---------------------------------------------------------------------------------------------
# The architecture: a chain of layers
# ---------------------------------------------------------------------------------------------

class _Layer:
    """One layer of the config: its class, its name, its config, and the index Keras gives
    it in model.layers (which names its weights in a .keras archive)."""

    def __init__(self, entry, index: int):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ValueError(f"layer {index} of the config is not a {{class_name, config}} object")
        self.cls = entry.get("class_name")
        self.config = entry["config"]
        self.name = self.config.get("name", entry.get("name"))
        self.entry = entry
        self.index = index
        if not isinstance(self.cls, str) or not isinstance(self.name, str):
            raise ValueError(f"layer {index} of the config has no class_name or name")

    def __repr__(self) -> str:
        return f"layer {self.name!r} ({self.cls})"

    def get(self, key, default=None):
        return self.config.get(key, default)


def _model_layers(config) -> tuple[list[_Layer], list[_Layer]]:
    """(every layer of model.layers in its order, the chain from input to output)."""
    if not isinstance(config, dict):
        raise ValueError("the model config is not a JSON object")
    cls = config.get("class_name")
    inner = config.get("config")
    if cls == "Sequential":
        entries = inner.get("layers") if isinstance(inner, dict) else inner  # Keras <= 2.2: a list
        if not isinstance(entries, list):
            raise ValueError("the Sequential config has no list of layers")
        layers = [_Layer(e, i) for i, e in enumerate(entries)]
        # Sequential.layers omits the InputLayer at the bottom of the stack.
        body = [layer for layer in layers if layer.cls != "InputLayer"]
        if any(layer.cls == "InputLayer" for layer in body):
            raise ValueError("an InputLayer inside a Sequential model")
        return body, layers
    if cls in ("Functional", "Model") and isinstance(inner, dict) and "layers" in inner:
        layers = [_Layer(e, i) for i, e in enumerate(inner["layers"])]
        for layer in layers:  # said before the graph, whose shape these layers explain
            if layer.cls in _REFUSED:
                raise _unsupported(layer, _REFUSED[layer.cls])
        return layers, _functional_chain(layers, inner)
    raise ValueError(f"a {cls} model is not supported: fastlstm reads Sequential models and "
                     "functional models (keras.Model(inputs, outputs)) whose config lists "
                     "their layers; subclassed models are code, which fastlstm never runs")


def _inbound(layer: _Layer) -> list[str]:
    """The names of the layers whose outputs `layer` is called on (Keras 3 and tf.keras 2.x
    node formats)."""
    nodes = layer.entry.get("inbound_nodes", [])
    if not isinstance(nodes, list):
        raise ValueError(f"{layer}: malformed inbound_nodes")
    if len(nodes) > 1:
        raise ValueError(f"{layer} is called {len(nodes)} times (shared layers are not supported)")
    sources = []

    def walk(value):  # Keras 3: {"class_name": "__keras_tensor__", "config": {"keras_history": [...]}}
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                sources.append(value["config"]["keras_history"][0])
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for node in nodes:
        if isinstance(node, dict):
            walk(node.get("args", []))
            walk(node.get("kwargs", {}))
        elif isinstance(node, list):  # tf.keras 2.x: [[name, node_index, tensor_index, kwargs], ...]
            for tensor in node:
                if not (isinstance(tensor, list) and tensor and isinstance(tensor[0], str)):
                    raise ValueError(f"{layer}: malformed inbound node {tensor!r}")
                sources.append(tensor[0])
                walk(tensor[3:])
        else:
            raise ValueError(f"{layer}: malformed inbound node {node!r}")
    return sources


def _endpoint_names(value, what: str) -> list[str]:
    """input_layers / output_layers: [name, 0, 0] (Keras 3, one tensor) or [[name, 0, 0], ...]."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [value[0]]
    if isinstance(value, list) and all(isinstance(v, list) and v and isinstance(v[0], str)
                                       for v in value):
        return [v[0] for v in value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _endpoint_names(v, what)]
    raise ValueError(f"malformed {what} in the functional config")


def _functional_chain(layers: list[_Layer], config: dict) -> list[_Layer]:
    """The layers from the one input to the one output, each fed by the one before: what a
    functional model must be for fastlstm."""
    by_name = {layer.name: layer for layer in layers}
    inputs = _endpoint_names(config.get("input_layers"), "input_layers")
    outputs = _endpoint_names(config.get("output_layers"), "output_layers")
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                         "fastlstm runs models of one input and one output")
    consumers: dict[str, list[_Layer]] = {}
    for layer in layers:
        sources = _inbound(layer)
        if len(sources) > 1 or (len(sources) == 0 and layer.cls != "InputLayer"):
            raise ValueError(f"{layer} takes {len(sources)} inputs ({', '.join(sources)}): "
                             "fastlstm runs chains of layers, each fed by the one before")
        for source in sources:
            if source not in by_name:
                raise ValueError(f"{layer} is fed by {source!r}, which is not in the model")
            consumers.setdefault(source, []).append(layer)
    chain = [by_name[inputs[0]]]
    while chain[-1].name != outputs[0]:
        following = consumers.get(chain[-1].name, [])
        if len(following) != 1:
            raise ValueError(f"{chain[-1]} feeds {len(following)} layers; fastlstm runs chains "
                             "of layers, each fed by the one before")
        chain.append(following[0])
        if len(chain) > len(layers):
            raise ValueError("the layers form a cycle")
    left_out = [layer for layer in layers if layer not in chain]
    if left_out:
        raise ValueError(f"{left_out[0]} is not on the path from the input to the output")
    return chain


# ---------------------------------------------------------------------------------------------
# The weights
# ---------------------------------------------------------------------------------------------

def _snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case: how a .keras archive names a layer's weights."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _read_dataset(dataset, shape: tuple[int, ...], what: str) -> np.ndarray:
    import h5py

    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"{what} is not a dataset")
    if dataset.is_virtual or dataset.external:
        raise ValueError(f"{what} keeps its data outside the file, which fastlstm does not read")
    if tuple(dataset.shape) != shape:
        raise ValueError(f"{what} has shape {tuple(dataset.shape)}, expected {shape}")
    if dataset.dtype.kind != "f" or dataset.dtype.itemsize not in (2, 4, 8):
        raise ValueError(f"{what} holds {dataset.dtype}, not float16, float32 or float64")
    return np.asarray(dataset[()])


def _hard_child(group, name: str, what: str):
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        raise ValueError(f"{what} is missing")
    if not isinstance(link, h5py.HardLink):
        raise ValueError(f"{what} is a link ({type(link).__name__}); fastlstm reads only data "
                         "stored in the file itself")
    return group[name]


class _KerasStore:
    """model.weights.h5 of a .keras archive: each layer's weights in creation order, under
    layers/<snake_case class name, numbered as Keras numbers repeats>/."""

    def __init__(self, store, config):
        self.store = store
        body, _ = _model_layers(config)
        self.paths, used = {}, {}
        for layer in body:  # _get_unique_name over model.layers, in its order
            base = _snake_case(layer.cls)
            used[base] = used.get(base, -1) + 1
            self.paths[layer.name] = base if used[base] == 0 else f"{base}_{used[base]}"

    def weights(self, layer: _Layer, sub: str, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        where = f"layers/{self.paths[layer.name]}" + (f"/{sub}" if sub else "") + "/vars"
        what = f"{layer}: weights at {where}"
        group = self.store
        for part in where.split("/"):
            group = _hard_child(group, part, what)
        count = len(group.keys())
        if count != len(shapes):
            raise ValueError(f"{what}: {count} arrays, expected {len(shapes)}")
        return [_read_dataset(_hard_child(group, str(i), f"{what}/{i}"), shape, f"{what}/{i}")
                for i, shape in enumerate(shapes)]


class _LegacyStore:
    """model_weights of an .h5 file: the group named like the layer lists its datasets in
    the attribute weight_names, in the layer's order of weights."""

    def __init__(self, group):
        self.group = group

    def weights(self, layer: _Layer, sub: str, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        what = f"{layer}: weights in model_weights/{layer.name}"
        g = _hard_child(self.group, layer.name, what)
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n)
                 for n in np.asarray(g.attrs.get("weight_names", [])).reshape(-1)]
        if len(names) != len(shapes):
            raise ValueError(f"{what}: {len(names)} arrays ({', '.join(names)}), expected "
                             f"{len(shapes)}")
        arrays = []
        for name, shape in zip(names, shapes):
            dataset = g
            for part in name.split("/"):
                dataset = _hard_child(dataset, part, f"{what}/{name}")
            arrays.append(_read_dataset(dataset, shape, f"{what}/{name}"))
        return arrays


# ---------------------------------------------------------------------------------------------
# From Keras's layouts to PyTorch's
# ---------------------------------------------------------------------------------------------

def _unsupported(layer: _Layer, what: str) -> ValueError:
    return ValueError(f"{layer}: {what}")


def _activation(layer: _Layer, key: str) -> str:
    value = layer.get(key)
    if value is None and key == "activation":
        return "linear"
    if isinstance(value, dict):  # Keras 3 may serialize a built-in as {"class_name": ...}
        value = value.get("config", {}).get("name", value.get("class_name"))
    if not isinstance(value, str):
        raise _unsupported(layer, f"{key} {value!r} is not a built-in activation")
    return value


def _check_recurrent(layer: _Layer) -> str:
    """The fastlstm rnn_type of a Keras LSTM/GRU/SimpleRNN; ValueError for what it cannot run."""
    for key, bad in (("go_backwards", "go_backwards=True (reading the sequence backwards)"),
                     ("stateful", "stateful=True (a state kept between calls)"),
                     ("time_major", "time_major=True"),
                     ("return_state", "return_state=True")):
        if layer.get(key):
            raise _unsupported(layer, f"{bad} is not supported")
    activation = _activation(layer, "activation")
    if layer.cls == "SimpleRNN":
        if activation not in ("tanh", "relu"):
            raise _unsupported(layer, f"activation {activation!r} is not supported; "
                               "SimpleRNN runs with tanh or relu")
        return f"RNN_{activation.upper()}"
    recurrent = _activation(layer, "recurrent_activation")
    if activation != "tanh" or recurrent != "sigmoid":
        raise _unsupported(layer, f"activation {activation!r} with recurrent_activation "
                           f"{recurrent!r} is not supported; {layer.cls} runs with tanh and "
                           "sigmoid (Keras's defaults)")
    if layer.cls == "LSTM":
        return "LSTM"
    return "GRU" if layer.get("reset_after", True) else "GRU_RESET_BEFORE"


_GRU_ORDER = (1, 0, 2)  # Keras's z, r, h blocks -> PyTorch's r, z, n


def _gate_blocks(array: np.ndarray, cls: str, units: int) -> np.ndarray:
    """Keras's gate blocks along the last axis in PyTorch's order (GRU: z, r, h -> r, z, n;
    LSTM's i, f, c, o already is)."""
    if cls != "GRU":
        return array
    return np.concatenate([array[..., b * units:(b + 1) * units] for b in _GRU_ORDER], axis=-1)


def _convert(config, store) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    _, chain = _model_layers(config)
    tensors: dict[str, np.ndarray] = {}
    stored: set[str] = set()  # dtypes of the stored matrices

    def keep(array: np.ndarray) -> np.ndarray:
        if array.ndim == 2:
            stored.add(array.dtype.name)
        return np.ascontiguousarray(array, dtype=np.float32)

    layers = [layer for layer in chain if layer.cls not in IDENTITY]
    for layer in layers:
        if layer.cls in _REFUSED:
            raise _unsupported(layer, _REFUSED[layer.cls])
    position = 0
    if layers and layers[0].cls == "InputLayer":
        position = 1
    embedding = None
    if position < len(layers) and layers[position].cls == "Embedding":
        embedding = layers[position]
        position += 1
    rnns = []
    while position < len(layers) and layers[position].cls in RECURRENT:
        rnns.append(layers[position])
        position += 1
    head = layers[position] if position < len(layers) else None
    after = layers[position + 1:]
    if not rnns:
        culprit = layers[position] if position < len(layers) else None
        raise ValueError("no LSTM, GRU or SimpleRNN layer where one was expected"
                         + (f": found {culprit}" if culprit else "")
                         + "; fastlstm runs Embedding (or float inputs) -> LSTM/GRU/SimpleRNN "
                         "-> Dense models")
    if head is None:
        raise ValueError(f"{rnns[-1]} is the last layer: fastlstm models end in a Dense head")
    dense = head
    if head.cls == "TimeDistributed":
        inner = head.get("layer")
        if not (isinstance(inner, dict) and inner.get("class_name") == "Dense"):
            raise _unsupported(head, "TimeDistributed is supported around a Dense layer only")
        dense = _Layer(inner, head.index)
        dense.name = head.name
    elif head.cls != "Dense":
        raise _unsupported(head, "not supported here; fastlstm runs Embedding (or float "
                           "inputs) -> LSTM/GRU/SimpleRNN -> Dense models")
    head_activation = _activation(dense, "activation")
    for extra in after:
        if extra.cls == "Activation" and _activation(extra, "activation") in ("softmax", "linear") \
                and head_activation == "linear":
            head_activation = _activation(extra, "activation")
            continue
        raise _unsupported(extra, "not supported after the Dense head (fastlstm models end in "
                           "one Dense layer, optionally followed by a softmax Activation)")
    if head_activation not in ("linear", "softmax"):
        raise _unsupported(head, f"activation {head_activation!r} is not supported; the head "
                           "is linear or softmax")
    if embedding is None and head_activation == "softmax":
        raise _unsupported(head, "a softmax head on float inputs is a classifier; fastlstm "
                           "forecasters have a linear head")

    # The cells: one kind and one size, as PyTorch's nn.LSTM/GRU/RNN stacks them.
    rnn_type = _check_recurrent(rnns[0])
    units = rnns[0].get("units")
    for layer in rnns[1:]:
        other = _check_recurrent(layer)
        if other != rnn_type or layer.get("units") != units:
            raise _unsupported(layer, f"a {other} of {layer.get('units')} units after a "
                               f"{rnn_type} of {units}: fastlstm stacks layers of one kind and "
                               "size (as nn.LSTM/nn.GRU/nn.RNN do)")
    for layer in rnns[:-1]:
        if not layer.get("return_sequences", False):
            raise _unsupported(layer, "return_sequences=False below another recurrent layer")
    if not isinstance(units, int) or units < 1:
        raise _unsupported(rnns[0], f"units {units!r}")

    metadata = {"format": "fastlstm", "rnn_type": rnn_type}
    if embedding is not None:
        if embedding.get("mask_zero"):
            raise _unsupported(embedding, "mask_zero=True makes the recurrent layers skip the "
                               "steps of token 0, which fastlstm does not do")
        vocab, dim = embedding.get("input_dim"), embedding.get("output_dim")
        if not (isinstance(vocab, int) and isinstance(dim, int) and vocab > 0 and dim > 0):
            raise _unsupported(embedding, f"input_dim {vocab!r} and output_dim {dim!r}")
        (table,) = store.weights(embedding, "", [(vocab, dim)])
        tensors["embedding.weight"] = keep(table)
        in_size = dim
    else:
        in_size = _float_input_size(chain[0], rnns[0])
        metadata.update(kind="forecaster", input_size=str(in_size))

    use_bias = [bool(layer.get("use_bias", True)) for layer in rnns]
    G = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[rnns[0].cls]
    for k, layer in enumerate(rnns):
        shapes = [(in_size, G * units), (units, G * units)]
        reset_after = layer.cls == "GRU" and layer.get("reset_after", True)
        if use_bias[k]:
            shapes.append((2, G * units) if reset_after else (G * units,))
        arrays = store.weights(layer, "cell", shapes)
        kernel, recurrent_kernel = (_gate_blocks(a, layer.cls, units) for a in arrays[:2])
        tensors[f"rnn.weight_ih_l{k}"] = keep(kernel.T)
        tensors[f"rnn.weight_hh_l{k}"] = keep(recurrent_kernel.T)
        if any(use_bias):
            # PyTorch's layout has both biases on every layer; Keras's missing ones are zeros.
            zeros = np.zeros(G * units, np.float32)
            bias = _gate_blocks(arrays[2], layer.cls, units) if use_bias[k] else zeros
            if reset_after and use_bias[k]:
                tensors[f"rnn.bias_ih_l{k}"], tensors[f"rnn.bias_hh_l{k}"] = keep(bias[0]), keep(bias[1])
            else:
                tensors[f"rnn.bias_ih_l{k}"], tensors[f"rnn.bias_hh_l{k}"] = keep(bias), zeros
        in_size = units

    outputs = dense.get("units")
    if not isinstance(outputs, int) or outputs < 1:
        raise _unsupported(dense, f"units {outputs!r}")
    if embedding is not None and outputs != embedding.get("input_dim"):
        raise _unsupported(dense, f"{outputs} outputs for a vocabulary of "
                           f"{embedding.get('input_dim')}: a language model's head scores "
                           "every token")
    shapes = [(units, outputs)] + ([(outputs,)] if dense.get("use_bias", True) else [])
    arrays = store.weights(head, "layer" if head.cls == "TimeDistributed" else "", shapes)
    tensors["head.weight"] = keep(arrays[0].T)
    if len(arrays) > 1:
        tensors["head.bias"] = keep(arrays[1])
    if embedding is None:
        metadata["output_size"] = str(outputs)
    metadata["format_version"] = format_version(metadata.get("kind", "language_model"), rnn_type)
    dtype = stored.pop() if len(stored) == 1 else "mixed"
    return tensors, metadata, dtype


def _float_input_size(first: _Layer, rnn: _Layer) -> int:
    """The features of a model without an embedding, from its InputLayer (or the first
    recurrent layer's declared input shape, for Sequential models of tf.keras 2.x)."""
    if first.cls == "InputLayer":
        shape = first.get("batch_shape", first.get("batch_input_shape"))
        dtype = first.get("dtype", "float32")
        if isinstance(dtype, dict):
            dtype = dtype.get("config", {}).get("name", "float32")
        if isinstance(dtype, str) and "int" in dtype:
            raise _unsupported(first, f"integer inputs ({dtype}) without an Embedding layer")
    else:
        shape = rnn.get("batch_input_shape", rnn.get("batch_shape"))
    if not (isinstance(shape, list) and len(shape) == 3 and isinstance(shape[-1], int)
            and shape[-1] > 0):
        raise _unsupported(first, f"input shape {shape!r}: a model of float inputs takes "
                           "(batch, steps, features), e.g. keras.Input((None, features))")
    return shape[-1]
