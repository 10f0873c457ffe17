"""Generation: prompts in, new tokens out, through the nogil decode loop (fastlstm._generate).

A `Decoder` holds one generation run: the recurrent state of every sequence after its prompt
(prefilled by fastlstm._rnn.prefill), the random streams, the stop conditions and the output
buffer, gathered once into a `fastlstm._generate.DecodeState`.  `run(steps)` enters C once,
`decode(model.packed, state, params, steps)`, and generates up to `steps` tokens for every
running sequence; generate calls it once, streaming calls it once per chunk.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from fastlstm import _generate, _rnn
from fastlstm.params import GenerationParams, check_output_fits
from fastlstm.threads import call_threads

# Why a row stopped, by the decode loop's code (fastlstm._generate's finish codes).
FINISH_REASONS = (None, "length", "stop")


class Decoder:
    """One generation run over `prompts` (token ids: lists, or an int array (batch, steps);
    each prompt at least one id long, every id in the vocabulary: checked here).

    Rows are the sequences generated: prompt p's j-th sample is row p * n + j, where
    n = params.num_return_sequences.  Row r draws its random numbers from the stream
    (seed of its prompt, j), so its output does not depend on the batch or on threads.
    """

    def __init__(self, model, prompts: Sequence[Sequence[int]], params: GenerationParams,
                 num_threads: int):
        cfg = model.config
        prompts = check_prompt_ids(prompts, cfg.vocab_size)
        n = params.num_return_sequences
        rows = len(prompts) * n
        check_output_fits(rows, params.max_new_tokens)
        self.model, self.params = model, params
        self.prompts = prompts

        # Per row: seed and stream (see the class docstring).
        if params.seed is None:
            seeds = np.full(len(prompts), secrets.randbits(64), np.uint64)
            streams = np.arange(rows, dtype=np.uint64)  # fresh entropy: every row differs
        else:
            seeds = np.array(params.seed if isinstance(params.seed, tuple)
                             else [params.seed] * len(prompts), np.uint64)
            if len(seeds) != len(prompts):
                raise ValueError(f"seed has {len(seeds)} values for {len(prompts)} prompts")
            streams = np.tile(np.arange(n, dtype=np.uint64), len(prompts))

        eos = np.array(params.eos_token_id, np.int64)
        if np.any(eos >= cfg.vocab_size):
            raise ValueError(f"eos_token_id {int(eos.max())} is out of range for a "
                             f"vocabulary of {cfg.vocab_size}")
        stop_ids = [_stop_ids(model.tokenizer, s) for s in params.stop]

        # State after each prompt but its last token, which the first decode step feeds.
        h, c = _prefill(model, self.prompts, n)
        self.out = np.full((rows, params.max_new_tokens), -1, np.int64)
        self.length = np.zeros(rows, np.int64)
        self.finish = np.zeros(rows, np.uint8)  # FINISH_REASONS' codes, from the decode loop
        seen = None
        if params.repetition_penalty != 1.0:
            seen = np.zeros((rows, cfg.vocab_size), np.uint8)
            for p, prompt in enumerate(self.prompts):
                seen[p * n:(p + 1) * n, prompt] = 1

        # Thread t owns slots [slot_begin[t], slot_begin[t+1]); its running rows come first.
        # With fewer rows than threads (and steps big enough to share, threads.call_threads),
        # the threads form one team that shares every product of all rows instead (the same
        # bits either way).
        num_threads = call_threads(num_threads, rows, model.packed.step_weights)
        team_size = num_threads if rows < num_threads else 1
        threads = max(1, min(num_threads, rows)) if team_size == 1 else 1
        slot_begin = np.array([t * rows // threads for t in range(threads + 1)], np.intc)

        self.state = _generate.DecodeState(
            model.packed, h=h, c=c,
            last=np.array([p[-1] for p in self.prompts for _ in range(n)], np.int64),
            out=self.out, length=self.length, finish=self.finish, seen=seen,
            seed=np.repeat(seeds, n), stream=streams, eos=eos,
            stops=np.array([i for ids in stop_ids for i in ids], np.int64),
            stop_end=np.cumsum([len(ids) for ids in stop_ids]).astype(np.int64),
            slot_begin=slot_begin, n_active=np.diff(slot_begin).astype(np.intc),
            team_size=team_size)

    @property
    def done(self) -> bool:
        """Whether every sequence has stopped or reached max_new_tokens."""
        return self.state.done

    def run(self, steps: int) -> None:
        """Generate up to `steps` more tokens for every running sequence (GIL released)."""
        _generate.decode(self.model.packed, self.state, self.params, steps,
                         watch_signals=threading.current_thread() is threading.main_thread())

    def row_ids(self, row: int, start: int = 0) -> np.ndarray:
        """The ids generated so far for `row`, from position `start`."""
        return self.out[row, start:self.length[row]]

    def finish_reason(self, row: int) -> str | None:
        """Why `row` stopped: "stop" (an eos id or a stop string), "length" (max_new_tokens),
        or None while it runs."""
        return FINISH_REASONS[self.finish[row]]


def _prefill(model, prompts: list[list[int]], copies: int):
    """Run every prompt but its last token; return the states (h, c), `copies` rows each.

    Each prompt runs as if alone (fastlstm._rnn.prefill), so its state does not depend on the
    other prompts: the first half of seeded reproducibility (the decode loop is the other)."""
    cfg = model.config
    P = len(prompts)
    h = np.zeros((P, cfg.num_layers, cfg.output_size), np.float32)
    c = np.zeros((P, cfg.num_layers, cfg.hidden_size), np.float32) \
        if cfg.rnn_type == "LSTM" else None
    heads = [p for p in range(P) if len(prompts[p]) > 1]
    if heads:
        ids = np.array([i for p in heads for i in prompts[p][:-1]], np.int64)
        offsets = np.cumsum([0] + [len(prompts[p]) - 1 for p in heads]).astype(np.int64)
        gh, gc = h[heads], (c[heads] if c is not None else None)
        _rnn.prefill(model.packed, ids=ids, offsets=offsets, h=gh, c=gc,
                     num_threads=call_threads(model.num_threads, len(heads),
                                              model.packed.step_weights))
        h[heads] = gh
        if c is not None:
            c[heads] = gc
    # (prompt, layer, size) -> (layer, row, size), `copies` rows per prompt.
    h = np.ascontiguousarray(np.repeat(h, copies, axis=0).transpose(1, 0, 2))
    if c is not None:
        c = np.ascontiguousarray(np.repeat(c, copies, axis=0).transpose(1, 0, 2))
    return h, c


def _stop_ids(tokenizer, stop: str) -> list[int]:
    if tokenizer is None:
        raise ValueError("stop strings need a tokenizer; this model has none (use eos_token_id)")
    try:
        ids = tokenizer.encode(stop)
    except ValueError as e:
        raise ValueError(f"stop string {stop!r} can never be generated: {e}") from None
    if not ids:
        raise ValueError(f"stop string {stop!r} encodes to no tokens")
    # Text outside the vocabulary encodes as the unk token, which must not stand in for it.
    unk = getattr(tokenizer, "unk", None)
    vocab = getattr(tokenizer, "vocab", [])
    if unk is not None and unk in vocab and unk not in stop and vocab.index(unk) in ids:
        raise ValueError(f"stop string {stop!r} holds text outside the vocabulary, so it can "
                         "never be generated")
    return ids


# ---------------------------------------------------------------------------------------------
# The three ways in: ids, text, streamed text
# ---------------------------------------------------------------------------------------------

def check_prompt_ids(ids, vocab_size: int) -> list[list[int]]:
    """Token-id prompts as lists of ints: an int array (B, T) or a list of lists."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"ids must be an int array of shape (batch, steps); got dtype "
                             f"{ids.dtype} and shape {ids.shape}")
        prompts = ids.tolist()
    else:
        if not isinstance(ids, Sequence) or not all(isinstance(p, (Sequence, np.ndarray))
                                                    and not isinstance(p, str) for p in ids):
            raise ValueError("ids must be an int array (batch, steps) or a list of lists of ints")
        prompts = [np.asarray(p).tolist() if isinstance(p, np.ndarray) else list(p) for p in ids]
    if not prompts:
        raise ValueError("no prompts given")
    for b, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {b} is empty: generation needs at least one token to "
                             "condition on")
        for i in prompt:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise ValueError(f"prompt {b} holds {i!r}, not a token id")
            if not 0 <= i < vocab_size:
                raise ValueError(f"token id {i} in prompt {b} is out of range for a vocabulary "
                                 f"of {vocab_size} (0..{vocab_size - 1})")
    return prompts


def generate_all(model, prompts, params: GenerationParams) -> Decoder:
    """Generate every row of `prompts` (token ids, as Decoder takes them) to its end, in one
    call; the Decoder holds the ids (`out`, `row_ids`) and why each row stopped."""
    decoder = Decoder(model, prompts, params, model.num_threads)
    decoder.run(params.max_new_tokens)
    return decoder


def generate_ids(model, ids, params: GenerationParams) -> np.ndarray:
    return generate_all(model, ids, params).out


def encode_prompts(model, prompts: list[str]) -> list[list[int]]:
    if model.tokenizer is None:
        raise ValueError("this model file has no tokenizer: use generate_ids with token ids")
    encoded = []
    for b, text in enumerate(prompts):
        if not isinstance(text, str):
            raise ValueError(f"prompt {b} is {type(text).__name__}, not str")
        ids = model.tokenizer.encode(text)
        if not ids:
            raise ValueError(f"prompt {b} ({text!r}) is empty after tokenizing: generation "
                             "needs at least one token to condition on")
        encoded.append(ids)
    return encoded


def generate_text(model, prompts: list[str], params: GenerationParams) -> list[str]:
    encoded = encode_prompts(model, prompts)
    decoder = generate_all(model, encoded, params)
    n = params.num_return_sequences
    texts = []
    for row in range(len(encoded) * n):
        stream = model.tokenizer.stream_decoder(previous=encoded[row // n])
        texts.append(stream.decode(decoder.row_ids(row)) + stream.flush())
    return texts


def stream_text(model, prompt: str, params: GenerationParams,
                chunk_tokens: int = 16) -> Iterator[str]:
    """Check everything and prefill now; return an iterator that generates on demand."""
    if not isinstance(prompt, str):
        raise ValueError("stream takes one prompt (a str)")
    if params.num_return_sequences != 1:
        raise ValueError("stream generates one sequence: num_return_sequences must be 1")
    (encoded,) = encode_prompts(model, [prompt])
    decoder = Decoder(model, [encoded], params, model.num_threads)
    return _stream_pieces(decoder, model.tokenizer.stream_decoder(previous=encoded), chunk_tokens)


def _stream_pieces(decoder: Decoder, text, chunk_tokens: int) -> Iterator[str]:
    emitted = 0
    while not decoder.done:
        decoder.run(chunk_tokens)
        piece = text.decode(decoder.row_ids(0, emitted))
        emitted = int(decoder.length[0])
        if piece:
            yield piece
    tail = text.flush()
    if tail:
        yield tail
