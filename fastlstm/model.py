"""The language model: loading a file, and the forward pass over token ids.

`load` reads a file (fastlstm.weights), then `Model` stores its weights in the chosen
precision and packs them once (fastlstm.pack) into `model.packed`, the
fastlstm._packed.PackedModel every kernel call reads: `forward` (fastlstm._rnn) here, and
generation (fastlstm.generation: prefill, then the decode loop of fastlstm._generate).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from fastlstm import _rnn, isa
from fastlstm import generation
from fastlstm._packed import PackedModel
from fastlstm.config import ModelConfig
from fastlstm.pack import input_table, pack_layers, pack_matrix
from fastlstm.precision import DTYPES, check_dtype, store
from fastlstm.roles import ForecasterWeights, ModelWeights
from fastlstm.params import GenerationParams
from fastlstm.state import State, state_buffers
from fastlstm.threads import call_threads, resolve_num_threads
from fastlstm.weights import read_model_file

if TYPE_CHECKING:
    from fastlstm.forecaster import Forecaster

BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "data", "shakespeare_char_lstm.safetensors")


def load(path: str | os.PathLike | None = None, *, dtype: str | None = None,
         rnn_type: str | None = None, num_threads: int | None = None) -> Model | Forecaster:
    """Load a model from a file (no path: the bundled Shakespeare char-LSTM).

    A language model (token ids in) loads as a `Model`; a forecaster (float inputs, a linear
    head) as a `fastlstm.Forecaster`.

    Args:
        path: a fastlstm file (from `fastlstm.export`, `fastlstm.convert` or `fastlstm
            train`); a PyTorch state_dict saved with `safetensors.torch.save_file` /
            `save_model`, whatever its module prefixes; or a Keras model, `model.keras`
            (Keras 3) or `model.h5` (legacy HDF5, tf.keras 2.x), read without Keras (needs
            h5py: the keras extra; see fastlstm.keras_reader for the supported layers).
            None loads the model that ships with fastlstm.
        dtype: the precision the weights are held in: "float32", "float16", "bfloat16" or
            "int8" (per-output-row scales).  Fewer bytes per weight make batch-1 generation
            faster; float16/bfloat16 multiply in float32, int8 in integers (inputs rounded
            to 16 bits, sums exact): see fastlstm.precision.  None keeps the file's
            precision (float64 and mixed files load as float32).
        rnn_type: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU", for files whose shapes and
            metadata cannot tell (plain RNN weights without metadata); must agree with both.
        num_threads: threads per call; None uses OMP_NUM_THREADS or all usable cores.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a valid model; the message says what is wrong.
    """
    if path is None:
        path = BUNDLED_MODEL
    if dtype is not None:
        dtype = check_dtype(dtype)
    weights, metadata, stored_dtype = read_model_file(path, rnn_type)
    if dtype is None:
        dtype = stored_dtype if stored_dtype in DTYPES else "float32"
    if isinstance(weights, ForecasterWeights):
        from fastlstm.forecaster import Forecaster

        return Forecaster(weights, num_threads=num_threads, dtype=dtype, path=os.fspath(path))
    tokenizer = None
    if "tokenizer" in metadata:
        from fastlstm.tokenizers import tokenizer_from_json

        try:
            tokenizer = tokenizer_from_json(metadata["tokenizer"])
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}: bad tokenizer metadata: {e}") from None
        if tokenizer.vocab_size != weights.config.vocab_size:
            raise ValueError(f"{os.fspath(path)}: the tokenizer has {tokenizer.vocab_size} "
                             f"tokens but the model's vocabulary is {weights.config.vocab_size}")
    return Model(weights, tokenizer=tokenizer, num_threads=num_threads, dtype=dtype,
                 path=os.fspath(path))


class Model:
    """An `Embedding -> LSTM/GRU/RNN -> Linear` language model, ready to run.

    Build it with `fastlstm.load`.  Weights are converted to `dtype` and packed once here,
    into `packed`; every call allocates its outputs and runs the whole stack in one nogil
    kernel.

    Attributes: `config` (ModelConfig), `tokenizer`, `dtype` (the weights' precision),
    `num_threads` (threads per call: a batch with at least as many rows gives each thread
    whole rows, a smaller one, batch 1 above all, splits every product across them),
    `kernel_path` (the instruction sets the kernels use), `packed` (the weights as the
    kernels read them: a `fastlstm._packed.PackedModel`).
    """

    def __init__(self, weights: ModelWeights, *, tokenizer=None, num_threads: int | None = None,
                 dtype: str = "float32", path: str | None = None):
        self.config: ModelConfig = weights.config
        self.tokenizer = tokenizer
        self.num_threads = resolve_num_threads(num_threads)
        self.dtype = dtype = check_dtype(dtype)
        self.path = path
        # Every product runs on fastlstm's kernels (matmul.h's panels); on a CPU without
        # their vector paths, float32 models also keep row-major copies for BLAS in forward().
        blas = dtype == "float32" and not isa.vector_kernels()
        layers = pack_layers(weights.recurrent, dtype, row_major=blas)
        head = store(weights.head_weight, dtype, "the head")  # (V, out)
        head_bias = (None if weights.head_bias is None
                     else np.ascontiguousarray(weights.head_bias, dtype=np.float32))  # (V,)
        embedding = store(weights.embedding, dtype, "the embedding")  # (V, E)
        # Layer 0's input projections for every token, unless that table would hold more than
        # twice the model's parameters (a word model's 10k x 4*650 table still qualifies: it
        # saves a 650 x 2600 product per token, 13% of the bytes a token reads).  It is
        # float32 in every precision, computed from the weights as `dtype` rounded them, so
        # the model computes exactly what its stored weights define; a step reads one row.
        w_ih0 = store(weights.recurrent.layers[0].weight_ih, dtype)
        table = input_table(embedding, w_ih0, layers[0].bias_x, 2 * self.config.num_parameters)
        self.packed = PackedModel(
            self.config.rnn_type, layers,
            emb=embedding if table is None else None,
            table=None if table is None else store(table, "float32"),
            head=pack_matrix(head),
            head_w=head.data if blas else None,  # (V, out) row-major, for BLAS
            head_b=head_bias)

    @property
    def nbytes(self) -> int:
        """Bytes of weights held in memory (the lookup table and any row-major copies for
        BLAS included)."""
        return self.packed.nbytes

    @property
    def kernel_path(self) -> str:
        """The instruction sets the kernels run on: "portable", "avx2" or "avx512" (the same
        for every model in the process; see fastlstm.isa).  Every path gives the same bits."""
        return isa.kernel_path()

    def __repr__(self) -> str:
        c = self.config
        proj = f", proj_size={c.proj_size}" if c.proj_size else ""
        tied = ", tied" if c.tied else ""
        return (f"Model({c.rnn_type}, layers={c.num_layers}, vocab={c.vocab_size}, "
                f"embedding={c.embedding_dim}, hidden={c.hidden_size}{proj}{tied}, "
                f"params={c.num_parameters:,}, dtype={self.dtype}, threads={self.num_threads}, "
                f"kernels={self.kernel_path})")

    # -- state ------------------------------------------------------------------------------

    def initial_state(self, batch_size: int = 1) -> State:
        """Zeros, in PyTorch's layout: LSTM (h, c), GRU/RNN h; (num_layers, batch, size)."""
        c = self.config
        h, cell = state_buffers(None, c.rnn_type, c.num_layers, batch_size, c.output_size,
                                c.hidden_size)
        return (h, cell) if cell is not None else h

    # -- forward ----------------------------------------------------------------------------

    def forward(self, ids, state: State | None = None) -> tuple[np.ndarray, State]:
        """Run the model over token ids.

        Args:
            ids: ints of shape (batch, steps), or (steps,) for a batch of one.
            state: the state returned by a previous call, to continue those sequences;
                None starts from zeros.

        Returns:
            (logits, state): logits float32 (batch, steps, vocab); the final state, which
            continues exactly where these ids end.
        """
        ids = self._check_ids(ids)
        batch, steps = ids.shape
        cfg = self.config
        h, c = state_buffers(state, cfg.rnn_type, cfg.num_layers, batch, cfg.output_size,
                             cfg.hidden_size)
        logits = np.empty((batch, steps, cfg.vocab_size), np.float32)
        _rnn.forward(self.packed, h=h, c=c, ids=ids, logits=logits,
                     num_threads=call_threads(self.num_threads, batch, self.packed.step_weights))
        return logits, ((h, c) if c is not None else h)

    # -- generation -------------------------------------------------------------------------

    def generate(self, prompt: str | list[str], **params) -> str | list[str]:
        """Continue text prompts.

        A str gives a str; a list of str gives a list (num_return_sequences per prompt, in
        order), all prompts in one batched run, of any lengths.  The result is the new text
        only: `prompt + result` reads as one text.  Parameters are `GenerationParams`'
        (Hugging Face names): max_new_tokens, temperature (0 = greedy), top_k, top_p, min_p,
        repetition_penalty, stop, eos_token_id, seed, num_return_sequences.

            >>> model.generate("ROMEO:", max_new_tokens=50, temperature=0.8, seed=1)
        """
        params = GenerationParams(**params)
        if isinstance(prompt, str):
            texts = generation.generate_text(self, [prompt], params)
            return texts[0] if params.num_return_sequences == 1 else texts
        if not isinstance(prompt, (list, tuple)):
            raise ValueError(f"prompt must be a str or a list of str, got {type(prompt).__name__}")
        return generation.generate_text(self, list(prompt), params)

    def generate_ids(self, ids, **params) -> np.ndarray:
        """Continue token-id prompts: an int array (batch, steps) or a list of lists (any lengths).

        Returns int64 (batch * num_return_sequences, max_new_tokens): row p * n + j is prompt
        p's j-th sample.  A sequence that stops early (an eos id or a stop string, which are
        included) is followed by -1 up to max_new_tokens.
        """
        return generation.generate_ids(self, ids, GenerationParams(**params))

    def stream(self, prompt: str, **params):
        """Continue one text prompt, yielding pieces of text as they are generated.

        Same parameters as `generate` (num_return_sequences must be 1).  Breaking out of the
        loop stops the generation; nothing keeps running.
        """
        return generation.stream_text(self, prompt, GenerationParams(**params))

    def _check_ids(self, ids) -> np.ndarray:
        """ids as a C-contiguous int64 (batch, steps) array, every id in [0, vocab)."""
        try:
            array = np.asarray(ids)
        except ValueError:
            raise ValueError("ids must be a rectangular array of integers (rows of equal length)") from None
        if array.dtype.kind not in "iu" or array.ndim not in (1, 2):
            raise ValueError(f"ids must be integers of shape (batch, steps) or (steps,); got "
                             f"dtype {array.dtype} and shape {array.shape}")
        if array.ndim == 1:
            array = array[None, :]
        if array.size == 0:
            raise ValueError(f"ids must hold at least one token per row; got shape {array.shape}")
        V = self.config.vocab_size
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= V:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is out of range for a vocabulary of {V} (0..{V - 1})")
        return np.ascontiguousarray(array, dtype=np.int64)
