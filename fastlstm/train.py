"""Train a character- or word-level language model on a text file (needs `pip install fastlstm[torch]`).

    >>> from fastlstm.train import train
    >>> result = train("shakespeare.txt", "shakespeare.safetensors", minutes=10)
    >>> result["val_loss"]          # nats per token on the held-out end of the corpus

The model is PyTorch's examples/word_language_model RNNModel with `batch_first=True`:

    ids (B, T) -> Embedding (V, E) -> dropout -> LSTM/GRU/RNN (L layers of H) -> dropout
               -> Linear (H -> V) -> logits (B, T, V)

trained with Adam, gradient-norm clipping and truncated backpropagation through time over
contiguous batches (the hidden state is carried from one window to the next and detached),
then written with `fastlstm.export`, tokenizer included.

The data, exactly:
- The corpus is read as UTF-8 and cut in two: the last `val_fraction` of its characters is the
  validation split (for word models the cut moves back to the start of its line).
- Vocabulary: char models use the sorted set of every character in the corpus; word models
  use the words of the training split in order of first appearance (as word_language_model's
  Dictionary), with "<eos>" for each line end and "<unk>" for words only seen in validation.
- Both splits are turned into ids by the tokenizer that goes into the file, so the file's
  `tokenizer.encode` reproduces the training ids.

The validation loss, exactly: the validation ids (N of them) are cut into `k` equal contiguous
rows, k = `val_streams(N)`, the last N mod k ids dropped; each row runs from a zero state and
predicts its own tokens 1.. from the tokens before them; the loss is the mean negative log
likelihood (nats) over those k * (N // k - 1) predictions. `validation_rows(ids)` returns the
rows, so anyone can recompute it from the file, e.g. with `fastlstm.load(path).forward(rows)`.

torch is imported inside functions only, so `import fastlstm` never imports it.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from fastlstm.config import check_rnn_type
from fastlstm.tokenizers import make_tokenizer

__all__ = ["build_vocab", "split_corpus", "train", "val_streams", "validation_rows"]

TOKENIZERS = ("char", "word")
EOS, UNK = "<eos>", "<unk>"


# ---------------------------------------------------------------------------------------------
# data: split, vocabulary, ids


def split_corpus(text: str, val_fraction: float, tokenizer: str) -> tuple[str, str]:
    """(train_text, val_text): the last `val_fraction` of the characters is held out; for word
    models the cut moves back to a line start, so no line is split between the two."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return text, ""
    cut = len(text) - max(1, round(len(text) * val_fraction))
    if tokenizer == "word":
        cut = text.rfind("\n", 0, cut) + 1  # 0 when there is no line break before the cut
    return text[:cut], text[cut:]


def build_vocab(text: str, val_text: str, tokenizer: str) -> list[str]:
    """The vocabulary, index = id (see the module docstring for the rules)."""
    if tokenizer == "char":
        return sorted(set(text) | set(val_text))
    # word_language_model's data.py: every line is line.split() + ["<eos>"].
    seen: dict[str, None] = {}
    for line in text.splitlines():
        for word in line.split():
            seen[word] = None
        seen[EOS] = None
    seen.setdefault(EOS, None)
    seen.setdefault(UNK, None)
    return list(seen)


def val_streams(n_tokens: int) -> int:
    """How many rows the validation ids are cut into: about one per 1024 tokens, 1 to 64."""
    return max(1, min(64, n_tokens // 1024))


def validation_rows(val_ids) -> np.ndarray:
    """The validation ids as the (k, N // k) int64 rows the validation loss is computed on."""
    ids = np.asarray(val_ids, dtype=np.int64)
    k = val_streams(len(ids))
    length = len(ids) // k
    return ids[: k * length].reshape(k, length)


# ---------------------------------------------------------------------------------------------
# the model


def _model_class():
    """RNNModel, defined on first use so that torch is imported only when training."""
    from torch import nn

    class RNNModel(nn.Module):
        """Embedding -> LSTM/GRU/RNN -> Linear, as PyTorch's word_language_model (batch_first)."""

        def __init__(self, rnn_type, vocab_size, embedding_dim, hidden_size, num_layers, dropout):
            super().__init__()
            self.rnn_type = rnn_type
            self.drop = nn.Dropout(dropout)
            self.encoder = nn.Embedding(vocab_size, embedding_dim)
            rnn_dropout = dropout if num_layers > 1 else 0.0  # torch warns on 1 layer
            if rnn_type in ("LSTM", "GRU"):
                cell = getattr(nn, rnn_type)
                self.rnn = cell(embedding_dim, hidden_size, num_layers, dropout=rnn_dropout,
                                batch_first=True)
            else:
                nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
                self.rnn = nn.RNN(embedding_dim, hidden_size, num_layers, dropout=rnn_dropout,
                                  nonlinearity=nonlinearity, batch_first=True)
            self.decoder = nn.Linear(hidden_size, vocab_size)
            # word_language_model's init: small uniform embedding and head, zero head bias.
            nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)

        def forward(self, ids, state=None):
            out, state = self.rnn(self.drop(self.encoder(ids)), state)
            return self.decoder(self.drop(out)), state

    return RNNModel


def _detach(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


# ---------------------------------------------------------------------------------------------
# training


def train(
    corpus_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    tokenizer: str = "char",
    rnn_type: str = "LSTM",
    num_layers: int = 2,
    hidden_size: int = 256,
    embedding_dim: int = 64,
    dropout: float = 0.0,
    seq_len: int = 128,
    batch_size: int = 32,
    lr: float = 2e-3,
    steps: int | None = None,
    epochs: float | None = None,
    minutes: float | None = None,
    val_fraction: float = 0.05,
    eval_every: int | None = None,
    clip: float = 1.0,
    seed: int = 0,
    threads: int | None = 1,
    progress: bool = True,
) -> dict:
    """Train a language model on the text file `corpus_path` and write it to `out_path`.

    Args:
        corpus_path: UTF-8 text.
        out_path: the fastlstm file to write (`*.safetensors`); it holds the tokenizer.
        tokenizer: "char" or "word".
        rnn_type: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU".
        num_layers, hidden_size, embedding_dim: the model's sizes.
        dropout: after the embedding, between recurrent layers and before the head.
        seq_len: tokens per truncated-BPTT window.
        batch_size: parallel contiguous streams per step.
        lr: Adam's peak learning rate; it follows a cosine from `lr` down to `lr / 10` over
            the run (its progress is the furthest of steps, epochs and minutes).
        steps, epochs, minutes: stop at whichever is reached first; with none, one epoch.
            `minutes` is wall-clock time for training and periodic validation; the final
            validation and the export come after it.
        val_fraction: fraction of the corpus, from its end, held out for validation; 0 trains
            on everything and writes the final weights.
        eval_every: validate every this many steps; None: about 20 times per run when its
            length in steps is known, else every 200 steps.
        clip: gradient-norm clipping threshold (0 or None: no clipping).
        seed: seeds torch (initialisation, dropout) and the epoch offsets.
        threads: torch threads for the duration of the call (None: leave torch's setting).
        progress: show a tqdm progress bar (loss, validation loss, tokens/s).

    Returns:
        A dict: "val_loss" (nats/token of the written weights, None without validation),
        "train_loss" (mean training loss over the evaluation interval that ended at the
        written weights), "best_step", "steps", "epochs", "tokens", "seconds" (training wall
        time), "params", "file_bytes", "vocab_size", "config" (the arguments), "history"
        (a list of {"step", "train_loss", "val_loss", "seconds"}), "tokenizer" (the
        fastlstm Tokenizer), "val_ids" (the validation ids), "model" (the trained torch
        module with the written weights, in eval mode).
    """
    from fastlstm.export import export, import_torch

    torch = import_torch()

    config = dict(
        tokenizer=tokenizer, rnn_type=rnn_type, num_layers=num_layers, hidden_size=hidden_size,
        embedding_dim=embedding_dim, dropout=dropout, seq_len=seq_len, batch_size=batch_size,
        lr=lr, steps=steps, epochs=epochs, minutes=minutes, val_fraction=val_fraction,
        eval_every=eval_every, clip=clip, seed=seed, threads=threads,
    )
    rnn_type = check_rnn_type(rnn_type)
    config["rnn_type"] = rnn_type
    _check_args(config)

    # -- data ----------------------------------------------------------------------------
    try:
        with open(corpus_path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{os.fspath(corpus_path)} is not UTF-8 text: {e}") from None
    train_text, val_text = split_corpus(text, val_fraction, tokenizer)
    vocab = build_vocab(train_text, val_text, tokenizer)
    tok = make_tokenizer(tokenizer, vocab)
    train_ids = np.asarray(tok.encode(train_text), dtype=np.int64)
    val_ids = np.asarray(tok.encode(val_text), dtype=np.int64)
    # Each of batch_size streams needs one window of seq_len inputs plus its last target.
    stream_len = len(train_ids) // batch_size
    if stream_len < seq_len + 1:
        raise ValueError(
            f"the training split has {len(train_ids):,} tokens, too few for batch_size="
            f"{batch_size} streams of seq_len={seq_len} + 1; use a smaller batch_size or seq_len"
        )
    if val_fraction > 0 and len(val_ids) < 2:
        raise ValueError(
            f"the validation split has {len(val_ids)} token(s); it needs at least 2: "
            "raise val_fraction or use a longer corpus"
        )
    steps_per_epoch = (stream_len - 1) // seq_len

    limit = steps
    if epochs is not None:
        limit = min(limit or math.inf, max(1, math.ceil(epochs * steps_per_epoch)))
    if steps is None and epochs is None and minutes is None:
        limit = steps_per_epoch
    if eval_every is None:
        eval_every = max(1, min(500, limit // 20)) if limit else 200

    # -- model ---------------------------------------------------------------------------
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = _model_class()(rnn_type, len(vocab), embedding_dim, hidden_size, num_layers,
                               dropout)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        val_rows = torch.from_numpy(validation_rows(val_ids)) if val_fraction > 0 else None

        def evaluate() -> float:
            """The validation loss (module docstring), in windows that carry the state, so
            that the logits in memory stay small whatever the vocabulary."""
            model.eval()
            inputs, targets = val_rows[:, :-1], val_rows[:, 1:]
            window = max(1, min(1024, 4_000_000 // (inputs.shape[0] * len(vocab))))
            total, state = 0.0, None
            with torch.no_grad():
                for s in range(0, inputs.shape[1], window):
                    logits, state = model(inputs[:, s: s + window], state)
                    total += float(torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]),
                        targets[:, s: s + window].reshape(-1), reduction="sum"))
            model.train()
            return total / targets.numel()

        def fraction_done(step: int, elapsed: float) -> float:
            done = 0.0
            if limit:
                done = step / limit
            if minutes:
                done = max(done, elapsed / (60 * minutes))
            return min(done, 1.0)

        bar = _progress_bar(limit, progress)
        best = {"val_loss": math.inf, "step": 0, "state": None, "train_loss": math.nan}
        history = []
        interval_loss, interval_steps = 0.0, 0
        step, epoch, position, state, streams = 0, 0, None, None, None
        tokens_per_step = batch_size * seq_len
        start = time.perf_counter()
        model.train()
        finished = False
        while not finished:
            elapsed = time.perf_counter() - start
            # A new epoch: the streams start at a random offset, so windows fall elsewhere.
            if streams is None or position + seq_len + 1 > streams.shape[1]:
                offset = int(rng.integers(0, seq_len)) if epoch > 0 else 0
                usable = (len(train_ids) - offset) // batch_size
                if usable < seq_len + 1:
                    offset, usable = 0, stream_len
                streams = torch.from_numpy(
                    train_ids[offset: offset + usable * batch_size].reshape(batch_size, usable)
                )
                position, state = 0, None
                epoch += 1
            inputs = streams[:, position: position + seq_len]
            targets = streams[:, position + 1: position + seq_len + 1]
            position += seq_len

            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(lr, fraction_done(step, elapsed))
            logits, state = model(inputs, state)
            state = _detach(state)
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            step += 1
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise ValueError(f"the training loss diverged to {loss_value} at step {step}; "
                                 "try a smaller lr")
            interval_loss += loss_value
            interval_steps += 1

            elapsed = time.perf_counter() - start
            finished = (limit is not None and step >= limit) or bool(
                minutes and elapsed >= 60 * minutes)
            if step % eval_every == 0 or finished:
                train_loss = interval_loss / interval_steps
                val_loss = evaluate() if val_rows is not None else None
                elapsed = time.perf_counter() - start
                history.append({"step": step, "train_loss": train_loss, "val_loss": val_loss,
                                "seconds": elapsed})
                if val_loss is None or val_loss < best["val_loss"]:
                    best = {"val_loss": val_loss, "step": step, "train_loss": train_loss,
                            "state": {k: v.detach().clone() for k, v in
                                      model.state_dict().items()}}
                interval_loss, interval_steps = 0.0, 0
                if bar is not None:
                    bar.set_postfix_str(_postfix(loss_value, val_loss, best["val_loss"],
                                                 step * tokens_per_step / elapsed), refresh=False)
            elif bar is not None and step % 10 == 0:
                bar.set_postfix_str(_postfix(loss_value, history[-1]["val_loss"] if history
                                             else None, best["val_loss"],
                                             step * tokens_per_step / elapsed), refresh=False)
            if bar is not None:
                bar.update(1)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()

        model.load_state_dict(best["state"])
        model.eval()
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        export(model, out_path, tokenizer=tok)
    finally:
        torch.set_num_threads(previous_threads)

    return {
        "val_loss": best["val_loss"],
        "train_loss": best["train_loss"],
        "best_step": best["step"],
        "steps": step,
        "epochs": step / steps_per_epoch,
        "tokens": step * tokens_per_step,
        "seconds": seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "file_bytes": os.path.getsize(out_path),
        "vocab_size": len(vocab),
        "config": config,
        "history": history,
        "tokenizer": tok,
        "val_ids": val_ids,
        "model": model,
    }


def _check_args(c: dict) -> None:
    if c["tokenizer"] not in TOKENIZERS:
        raise ValueError(f"tokenizer must be 'char' or 'word', got {c['tokenizer']!r}")
    for name in ("num_layers", "hidden_size", "embedding_dim", "seq_len", "batch_size"):
        if not isinstance(c[name], int) or c[name] < 1:
            raise ValueError(f"{name} must be a positive integer, got {c[name]!r}")
    if not 0 <= c["dropout"] < 1:
        raise ValueError(f"dropout must be in [0, 1), got {c['dropout']}")
    if not c["lr"] > 0:
        raise ValueError(f"lr must be positive, got {c['lr']}")
    for name in ("steps", "eval_every", "threads"):
        if c[name] is not None and (not isinstance(c[name], int) or c[name] < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {c[name]!r}")
    for name in ("epochs", "minutes"):
        if c[name] is not None and not c[name] > 0:
            raise ValueError(f"{name} must be positive or None, got {c[name]!r}")
    if not 0 <= c["val_fraction"] < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {c['val_fraction']}")


def _cosine_lr(lr: float, done: float) -> float:
    """Cosine from lr (done = 0) to lr / 10 (done = 1)."""
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def _postfix(loss: float, val_loss: float | None, best: float, tokens_per_s: float) -> str:
    val = f" val={val_loss:.3f} best={best:.3f}" if val_loss is not None else ""
    return f"loss={loss:.3f}{val} tok/s={tokens_per_s:,.0f}"


def _progress_bar(total: int | None, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None  # tqdm comes with the torch extra; training runs fine without a bar
    return tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=1.0)
