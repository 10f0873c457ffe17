"""Read a model file's weights: the file read (fastlstm.file_format for safetensors,
fastlstm.keras_reader for Keras files), then the roles found and checked (fastlstm.roles).
"""

from __future__ import annotations

import os

import numpy as np

from fastlstm.file_format import FORMAT_VERSIONS, KINDS, read_safetensors
from fastlstm.roles import ForecasterWeights, ModelWeights, find_forecaster_roles, find_roles
from fastlstm.untrusted_json import json_structure


def read_model_file(path, rnn_type: str | None = None
                    ) -> tuple[ModelWeights | ForecasterWeights, dict[str, str], str]:
    """Read and check a model file: returns (weights, metadata, dtype).  Keras files
    (`.keras`, legacy `.h5`) are read by fastlstm.keras_reader, safetensors files here."""
    from fastlstm.keras_reader import keras_file_kind, read_keras

    if keras_file_kind(path) is not None:
        tensors, metadata, dtype = read_keras(path)
    else:
        tensors, metadata, dtype = read_safetensors(path)
    return check_model_tensors(path, tensors, metadata, rnn_type), metadata, dtype


def model_kind(metadata: dict[str, str]) -> str:
    """"forecaster" or "language_model" (the default: files before forecasters had no kind)."""
    kind = metadata.get("kind", "language_model")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} in the metadata: expected one of "
                         f"{', '.join(KINDS)}")
    return kind


def check_model_tensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str],
                        rnn_type: str | None = None) -> ModelWeights | ForecasterWeights:
    """The checks and roles of read_model_file, on tensors read by read_safetensors(path)."""
    try:
        if (metadata.get("format") == "fastlstm"
                and metadata.get("format_version") not in FORMAT_VERSIONS):
            raise ValueError(f"format_version {metadata.get('format_version')!r} is not one this "
                             f"fastlstm reads ({', '.join(map(repr, FORMAT_VERSIONS))}); "
                             "upgrade fastlstm")
        if model_kind(metadata) == "forecaster":
            if "tokenizer" in metadata:
                raise ValueError("a forecaster has float inputs: it takes no tokenizer")
            return find_forecaster_roles(tensors, metadata, rnn_type)
        weights = find_roles(tensors, metadata, rnn_type)
        if "tokenizer" in metadata:
            _check_tokenizer_size(metadata["tokenizer"], weights.config.vocab_size)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from None
    return weights


def _check_tokenizer_size(tokenizer_json: str, vocab_size: int) -> None:
    """Before the tokenizer is built (fastlstm.tokenizers.tokenizer_from_json): its JSON must
    not list more tokens than the model has rows, so the Python objects of its vocabulary stay
    proportional to the tensor data.  A vocab of n tokens has n - 1 commas; the object, up to
    3 more.  (Whether it has exactly vocab_size tokens is checked once it is built.)"""
    _, separators = json_structure(tokenizer_json)
    if separators > vocab_size + 3:
        raise ValueError(f"bad tokenizer metadata: its JSON lists about {separators - 2:,} "
                         f"tokens, but the model's vocabulary is {vocab_size:,}")
