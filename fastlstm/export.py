"""Write fastlstm model files: `export` from PyTorch (needs `pip install fastlstm[torch]`), and
`convert` from one file to another precision (no torch).

A fastlstm model file is a safetensors file holding the model's state_dict tensors under
their own PyTorch names, plus `__metadata__`:

    "format": "fastlstm", "format_version": "1",
    "rnn_type": "LSTM" | "GRU" | "RNN_TANH" | "RNN_RELU",
    "tokenizer": Tokenizer.to_json()            (optional),
    "<dropped name>": "<kept name>"             (a tied head, stored once, as save_model does).

Matrices are float32, float16, bfloat16 or int8; an int8 matrix `name` has its per-row
float32 scales in `name_scale` (W = q * scale[:, None]); biases are float32.

torch is imported inside functions only, so `import fastlstm` never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from fastlstm.config import check_rnn_type
from fastlstm.precision import check_dtype
from fastlstm.tokenizers import Tokenizer, make_tokenizer
from fastlstm.weights import FORMAT_VERSION, find_roles, write_model_file

__all__ = ["export", "convert"]

FORMAT = "fastlstm"


def export(module_or_state_dict, path, *, vocab=None, tokenizer=None, rnn_type=None,
           dtype=None) -> None:
    """Write a PyTorch `Embedding -> LSTM/GRU/RNN -> Linear` language model as a fastlstm file.

    Args:
        module_or_state_dict: an `nn.Module` holding exactly one `nn.Embedding`, one
            `nn.LSTM`/`nn.GRU`/`nn.RNN` and one `nn.Linear` (like the `RNNModel` of PyTorch's
            word_language_model example; dropout and `batch_first` do not matter), or a
            state_dict mapping names to torch tensors or NumPy arrays.
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
    if isinstance(module_or_state_dict, torch.nn.Module):
        tensors, rnn_type = _from_module(module_or_state_dict, rnn_type)
    elif isinstance(module_or_state_dict, Mapping):
        tensors = _from_state_dict(module_or_state_dict)
    else:
        raise ValueError(
            f"expected an nn.Module or a state_dict, got {type(module_or_state_dict).__name__}"
        )
    _check_dtypes(tensors)
    tok = _resolve_tokenizer(tokenizer, vocab)

    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION}
    if tok is not None:
        metadata["tokenizer"] = tok.to_json()
    arrays = {name: t.float().numpy() for name, t in tensors.items()}  # float() reads bf16 too
    weights = find_roles(arrays, metadata, rnn_type)
    config, names = weights.config, weights.names
    metadata["rnn_type"] = config.rnn_type
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
    if dtype is None:
        kinds = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.ndim == 2}
        dtype = kinds.pop() if len(kinds) == 1 else "float32"
    write_model_file(path, arrays, metadata, dtype)


def convert(path, out, *, dtype: str, rnn_type: str | None = None) -> None:
    """Write the model file at `path` again at `out` with its matrices in `dtype`
    ("float32", "float16", "bfloat16" or "int8"); no torch needed.

    The file is checked as `fastlstm.load` checks it; names, tokenizer and tied weights are
    kept.  `fastlstm.load(out)` then gives exactly `fastlstm.load(path, dtype=dtype)`.
    rnn_type is needed only for plain RNN files without metadata, as for `load`.
    """
    from fastlstm.weights import check_model_tensors, read_safetensors

    dtype = check_dtype(dtype)
    tensors, metadata, _ = read_safetensors(path)
    weights = check_model_tensors(path, tensors, metadata, rnn_type)
    metadata = {**metadata, "format": FORMAT, "format_version": FORMAT_VERSION,
                "rnn_type": weights.config.rnn_type}
    write_model_file(out, tensors, metadata, dtype)


def import_torch():
    """Import and return torch, or raise ImportError saying how to install it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"exporting needs PyTorch ({e}): pip install fastlstm[torch]") from e
    return torch


def _from_module(module, rnn_type):
    """Return (tensors, rnn_type) of the embedding, recurrent layer and head of `module`."""
    from torch import nn

    found = {"nn.Embedding": [], "nn.LSTM, nn.GRU or nn.RNN": [], "nn.Linear": []}
    for name, m in module.named_modules():
        if isinstance(m, nn.Embedding):
            found["nn.Embedding"].append((name, m))
        elif isinstance(m, nn.RNNBase):
            found["nn.LSTM, nn.GRU or nn.RNN"].append((name, m))
        elif isinstance(m, nn.Linear):
            found["nn.Linear"].append((name, m))
    for kind, hits in found.items():
        if len(hits) != 1:
            names = ", ".join(repr(n or "<root>") for n, _ in hits) or "none"
            raise ValueError(
                f"expected exactly one {kind} in the module, found {len(hits)}: {names}"
            )
    (emb_name, emb), (rnn_name, rnn), (head_name, head) = (hits[0] for hits in found.values())

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
        raise ValueError(f"{rnn_name!r} is bidirectional; a language model must be unidirectional")
    if emb.max_norm is not None:
        # max_norm renormalises rows at lookup time, which the stored weights do not capture.
        raise ValueError(f"{emb_name!r} has max_norm set, which fastlstm does not support")

    # Anything else with parameters would take part in forward() and be silently lost.
    ours = {id(p) for m in (emb, rnn, head) for p in m.parameters()}
    others = [n for n, p in module.named_parameters() if id(p) not in ours]
    if others:
        raise ValueError(
            "the module has parameters outside its embedding, recurrent layer and head: "
            + ", ".join(others)
        )

    tensors = {}
    for prefix, m in ((emb_name, emb), (rnn_name, rnn), (head_name, head)):
        for pname, p in m.named_parameters():
            tensors[f"{prefix}.{pname}" if prefix else pname] = p.detach().cpu()
    return tensors, module_type


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
