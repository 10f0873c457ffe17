"""Write fastlstm model files: `export` from PyTorch (needs `pip install fastlstm[torch]`), and
`convert` from any file `fastlstm.load` reads (a fastlstm file, a safetensors state_dict, a
Keras `.keras` / `.h5` model) to a fastlstm file, optionally in another precision (no torch).

A fastlstm model file is a safetensors file holding the model's state_dict tensors under
their own PyTorch names, plus `__metadata__`:

    "format": "fastlstm", "format_version": "1" or "2" (forecasters, GRU_RESET_BEFORE),
    "rnn_type": "LSTM" | "GRU" | "GRU_RESET_BEFORE" | "RNN_TANH" | "RNN_RELU",
    "tokenizer": Tokenizer.to_json()            (optional, language models),
    "<dropped name>": "<kept name>"             (a tied head, stored once, as save_model does),
    "kind": "forecaster", "input_size": "F", "output_size": "O"   (forecasters only).

Matrices are float32, float16, bfloat16 or int8; an int8 matrix `name` has its per-row
float32 scales in `name_scale` (W = q * scale[:, None]); biases are float32.

torch is imported inside functions only, so `import fastlstm` never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fastlstm.config import check_rnn_type
from fastlstm.precision import DTYPES, check_dtype
from fastlstm.tokenizers import Tokenizer, make_tokenizer
from fastlstm.file_format import FORMAT_VERSION, format_version, write_model_file
from fastlstm.roles import ForecasterWeights, find_forecaster_roles, find_roles

__all__ = ["export", "convert"]

FORMAT = "fastlstm"


def export(module_or_state_dict, path, *, vocab=None, tokenizer=None, rnn_type=None,
           dtype=None, input_size=None) -> None:
    """Write a PyTorch `Embedding -> LSTM/GRU/RNN -> Linear` language model, or a
    `LSTM/GRU/RNN -> Linear` forecaster (float inputs), as a fastlstm file.

    Args:
        module_or_state_dict: an `nn.Module` holding exactly one `nn.Embedding`, one
            `nn.LSTM`/`nn.GRU`/`nn.RNN` and one `nn.Linear` (like the `RNNModel` of PyTorch's
            word_language_model example; dropout and `batch_first` do not matter), or without
            the `nn.Embedding`, a forecaster; or a state_dict mapping names to torch tensors
            or NumPy arrays.
        input_size: a forecaster's features per step.  A state_dict with it is written as a
            forecaster (its recurrent layers and one head, no embedding); a module's, or the
            weights', must match it.
        path: the file to write (conventionally `*.safetensors`).
        vocab: the tokens, index = id; its length must equal the model's vocab_size.
        tokenizer: a `Tokenizer`, or a kind "char", "word" or "byte" built with `vocab`.
            With a vocab and no kind: char if every token is one character, else word.
        rnn_type: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU". Taken from the module when
            exporting one (a contradicting value is an error); a state_dict of a plain RNN
            needs it, because shapes cannot tell tanh from relu.
        dtype: the precision of the matrices in the file: "float32", "float16", "bfloat16"
            or "int8" (per-row scales; see fastlstm.precision).  None keeps the module's own
            (float16 or bfloat16 when all its matrices are, else float32).  Biases are
            written as float32.

    A head tied to the embedding (or
    equal to it) is stored once: the head's name is dropped and the metadata maps it to the
    embedding's name, e.g. {"decoder.weight": "encoder.weight"}.
    The result is validated with fastlstm's own loader before anything is written, so every
    file written loads. Raises ValueError for anything that is not such a model.
    """
    torch = import_torch()

    if dtype is not None:
        dtype = check_dtype(dtype)
    if rnn_type is not None:
        rnn_type = check_rnn_type(rnn_type)
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or input_size < 1):
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    if isinstance(module_or_state_dict, torch.nn.Module):
        tensors, rnn_type, forecaster = _from_module(module_or_state_dict, rnn_type)
        if input_size is not None and not forecaster:
            raise ValueError("input_size is for forecasters, but the module has an nn.Embedding "
                             "(a language model)")
    elif isinstance(module_or_state_dict, Mapping):
        tensors = _from_state_dict(module_or_state_dict)
        forecaster = input_size is not None
    else:
        raise ValueError(
            f"expected an nn.Module or a state_dict, got {type(module_or_state_dict).__name__}"
        )
    _check_dtypes(tensors)
    arrays = {name: t.float().numpy() for name, t in tensors.items()}  # float() reads bf16 too
    if dtype is None:
        kinds = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.ndim == 2}
        dtype = kinds.pop() if len(kinds) == 1 else "float32"
    if forecaster:
        if vocab is not None or tokenizer is not None:
            raise ValueError("a forecaster has float inputs: vocab and tokenizer do not apply")
        weights = find_forecaster_roles(arrays, {}, rnn_type)
        if input_size is not None and weights.config.input_size != input_size:
            raise ValueError(f"input_size={input_size}, but the recurrent layers take "
                             f"{weights.config.input_size} inputs")
        write_model_file(path, arrays, forecaster_metadata(weights), dtype)
        return
    tok = _resolve_tokenizer(tokenizer, vocab)

    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION}
    if tok is not None:
        metadata["tokenizer"] = tok.to_json()
    weights = find_roles(arrays, metadata, rnn_type)
    config, names = weights.config, weights.names
    metadata["rnn_type"] = config.rnn_type
    metadata["format_version"] = format_version("language_model", config.rnn_type)
    if tok is not None and tok.vocab_size != config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
            f"{config.vocab_size}"
        )
    if config.tied:
        # The loader found the head equal to the embedding (a shared Parameter, or the same
        # values): store it once, as safetensors.torch.save_model does, under the embedding's name.
        head, emb = names["head_weight"], names["embedding"]
        del tensors[head], arrays[head]
        metadata[head] = emb
    find_roles(arrays, metadata)  # what is written is exactly what was checked
    write_model_file(path, arrays, metadata, dtype)


def forecaster_metadata(weights: ForecasterWeights) -> dict[str, str]:
    """The metadata of a forecaster file: its kind, cell and sizes."""
    c = weights.config
    return {"format": FORMAT, "format_version": format_version("forecaster", c.rnn_type),
            "rnn_type": c.rnn_type, "kind": "forecaster", "input_size": str(c.input_size),
            "output_size": str(c.output_size)}


def convert(path, out, *, dtype: str | None = None, rnn_type: str | None = None, vocab=None,
            tokenizer=None) -> None:
    """Write the model at `path` as a fastlstm file at `out`; no torch needed.

    `path` is any file `fastlstm.load` reads: a fastlstm file, a safetensors state_dict, or a
    Keras model (`.keras`, legacy `.h5`; needs h5py).  The model is checked as `load` checks
    it; names, tokenizer and tied weights are kept.

    Args:
        dtype: the precision of the matrices in `out`: "float32", "float16", "bfloat16" or
            "int8".  None keeps the file's own (float64 and mixed files: float32).
            `fastlstm.load(out)` then gives exactly `fastlstm.load(path, dtype=dtype)`.
        rnn_type: only for plain RNN files without metadata, as for `load`.
        vocab, tokenizer: a language model's tokenizer, as `export` takes them (a Keras file
            has none); replaces the file's own.
    """
    from fastlstm.keras_reader import keras_file_kind, read_keras
    from fastlstm.file_format import read_safetensors
    from fastlstm.weights import check_model_tensors

    if dtype is not None:
        dtype = check_dtype(dtype)
    if keras_file_kind(path) is not None:
        tensors, metadata, stored_dtype = read_keras(path)
    else:
        tensors, metadata, stored_dtype = read_safetensors(path)
    if dtype is None:
        dtype = stored_dtype if stored_dtype in DTYPES else "float32"
    weights = check_model_tensors(path, tensors, metadata, rnn_type)
    if isinstance(weights, ForecasterWeights):
        if vocab is not None or tokenizer is not None:
            raise ValueError(f"{path} is a forecaster (float inputs): vocab and tokenizer do "
                             "not apply")
        metadata = forecaster_metadata(weights)
    else:
        config = weights.config
        metadata = {**metadata, "format": FORMAT, "rnn_type": config.rnn_type,
                    "format_version": format_version("language_model", config.rnn_type)}
        tok = _resolve_tokenizer(tokenizer, vocab)
        if tok is not None:
            if tok.vocab_size != config.vocab_size:
                raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model's "
                                 f"vocab_size is {config.vocab_size}")
            metadata["tokenizer"] = tok.to_json()
    write_model_file(out, tensors, metadata, dtype)


def import_torch():
    """Import and return torch, or raise ImportError saying how to install it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"exporting needs PyTorch ({e}): pip install fastlstm[torch]") from e
    return torch


def _from_module(module, rnn_type):
    """Return (tensors, rnn_type, is_forecaster) of the embedding (none for a forecaster),
    recurrent layer and head of `module`."""
    from torch import nn

    found = {"nn.Embedding": [], "nn.LSTM, nn.GRU or nn.RNN": [], "nn.Linear": []}
    for name, m in module.named_modules():
        if isinstance(m, nn.Embedding):
            found["nn.Embedding"].append((name, m))
        elif isinstance(m, nn.RNNBase):
            found["nn.LSTM, nn.GRU or nn.RNN"].append((name, m))
        elif isinstance(m, nn.Linear):
            found["nn.Linear"].append((name, m))
    forecaster = not found["nn.Embedding"]  # float inputs straight into the recurrent layer
    if forecaster:
        del found["nn.Embedding"]
    for kind, hits in found.items():
        if len(hits) != 1:
            names = ", ".join(repr(n or "<root>") for n, _ in hits) or "none"
            raise ValueError(
                f"expected exactly one {kind} in the module, found {len(hits)}: {names}"
            )
    emb_name, emb = (None, None) if forecaster else found["nn.Embedding"][0]
    (rnn_name, rnn), = found["nn.LSTM, nn.GRU or nn.RNN"]
    (head_name, head), = found["nn.Linear"]

    if isinstance(rnn, nn.LSTM):
        module_type = "LSTM"
    elif isinstance(rnn, nn.GRU):
        module_type = "GRU"
    elif isinstance(rnn, nn.RNN):
        module_type = "RNN_TANH" if rnn.nonlinearity == "tanh" else "RNN_RELU"
    else:
        raise ValueError(f"unsupported recurrent module {type(rnn).__name__} at {rnn_name!r}")
    if rnn_type is not None and rnn_type != module_type:
        raise ValueError(
            f"rnn_type={rnn_type!r} contradicts the module's {rnn_name!r}, which is {module_type}"
        )
    if rnn.bidirectional:
        raise ValueError(f"{rnn_name!r} is bidirectional; fastlstm runs unidirectional models")
    if emb is not None and emb.max_norm is not None:
        # max_norm renormalises rows at lookup time, which the stored weights do not capture.
        raise ValueError(f"{emb_name!r} has max_norm set, which fastlstm does not support")

    # Anything else with parameters would take part in forward() and be silently lost.
    parts = [(rnn_name, rnn), (head_name, head)] + ([] if forecaster else [(emb_name, emb)])
    ours = {id(p) for _, m in parts for p in m.parameters()}
    others = [n for n, p in module.named_parameters() if id(p) not in ours]
    if others:
        raise ValueError(
            "the module has parameters outside its "
            + ("" if forecaster else "embedding, ") + "recurrent layer and head: "
            + ", ".join(others)
        )

    tensors = {}
    for prefix, m in parts:
        for pname, p in m.named_parameters():
            tensors[f"{prefix}.{pname}" if prefix else pname] = p.detach().cpu()
    return tensors, module_type, forecaster


def _from_state_dict(state_dict):
    """Return the state_dict as CPU torch tensors."""
    import torch

    tensors = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise ValueError(f"state_dict keys must be strings, got {name!r}")
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu()
        elif isinstance(value, np.ndarray):
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
        else:
            raise ValueError(
                f"state_dict[{name!r}] is a {type(value).__name__}, not a tensor or array"
            )
    return tensors


def _check_dtypes(tensors):
    import torch

    supported = (torch.float32, torch.float16, torch.bfloat16)
    for name, t in tensors.items():
        if t.dtype not in supported:
            raise ValueError(
                f"{name!r} has dtype {str(t.dtype).removeprefix('torch.')}; fastlstm files hold "
                "float32, float16 or bfloat16 weights (convert first, e.g. with model.float())"
            )


def _resolve_tokenizer(tokenizer, vocab):
    if isinstance(tokenizer, Tokenizer):
        if vocab is not None:
            raise ValueError(
                "pass vocab with a tokenizer kind ('char', 'word'), not with a Tokenizer instance"
            )
        return tokenizer
    if tokenizer is None and vocab is None:
        return None
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise ValueError(
            f"tokenizer must be a Tokenizer or 'char', 'word' or 'byte', got {tokenizer!r}"
        )
    return make_tokenizer(tokenizer, vocab)
