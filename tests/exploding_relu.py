"""A model file that overflows float32 mid-generation, for the tests of the NaN path.

A ReLU RNN language model whose state grows 1.9x per step (W_hh = 1.9 I, non-negative
inputs): it passes the loader's magnitude check (which bounds only a ReLU RNN's first step)
and its logits overflow to inf / NaN after ~140 steps; a prompt of 150 tokens overflows
already in prefill.  Used by tests/test_memory.py and tests/memcheck/exercise_kernels.py
(tests/test_numerics.py builds its own in torch, to compare with PyTorch).
"""

from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import save_file

from fastlstm.tokenizers import CharTokenizer


def write_exploding_relu(directory, vocab: list[str]) -> str:
    """Write the model with a char tokenizer over `vocab` to `directory`; return its path."""
    rng = np.random.default_rng(7)
    V, E, H = len(vocab), 4, 8
    tensors = {"encoder.weight": rng.uniform(0, 1, (V, E)),
               "rnn.weight_ih_l0": rng.uniform(0, 0.5, (H, E)),
               "rnn.weight_hh_l0": 1.9 * np.eye(H),
               "rnn.bias_ih_l0": np.full(H, 0.1), "rnn.bias_hh_l0": np.zeros(H),
               "decoder.weight": rng.standard_normal((V, H)), "decoder.bias": np.zeros(V)}
    path = os.path.join(directory, "exploding-relu.safetensors")
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, path,
              metadata={"format": "fastlstm", "format_version": "1", "rnn_type": "RNN_RELU",
                        "tokenizer": CharTokenizer(vocab).to_json()})
    return path
