"""fastlstm.train and `fastlstm train`: tiny runs whose files load, tokenize, and reproduce the
trained PyTorch model's logits and the reported validation loss with fastlstm's own kernels."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fastlstm
from fastlstm.cli import main
from fastlstm.train import build_vocab, split_corpus, train, val_streams, validation_rows


# Tiny models: a run takes well under a second.
TINY = dict(num_layers=2, hidden_size=16, embedding_dim=8, seq_len=16, batch_size=4, steps=12,
            progress=False)


def make_corpus(n_lines: int = 400, seed: int = 0, last_line: str = "") -> str:
    """Seeded pseudo-English, one short sentence per line (about 30 characters a line)."""
    rng = np.random.default_rng(seed)
    subjects = ["the king", "the queen", "my lord", "thy son", "a fool", "good sir"]
    verbs = ["speaks", "loves", "sees", "hath", "fears", "calls"]
    objects = ["the night", "thy face", "his crown", "no man", "my heart", "the sea"]
    ends = [".", "!", "?", ",", ";"]
    lines = []
    for _ in range(n_lines):
        s, v, o, e = (rng.choice(x) for x in (subjects, verbs, objects, ends))
        line = f"{s} {v} {o}{e}"
        lines.append(line[0].upper() + line[1:])
    if last_line:
        lines.append(last_line)
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    # 'zebra' is only in the held-out end: word models must map it to <unk>.
    path.write_text(make_corpus(last_line="The zebra speaks."), encoding="utf-8")
    return path


def nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log likelihood (nats) of `targets` under `logits`, in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-np.take_along_axis(log_probs, targets[..., None], axis=-1).mean())


def torch_logits(module, ids) -> np.ndarray:
    with torch.no_grad():
        logits, _ = module(torch.as_tensor(np.asarray(ids), dtype=torch.long))
    return logits.numpy()


def check_trained_file(path, result, corpus_text: str, kind: str):
    """The file loads, its tokenizer is the training one, and fastlstm reproduces both the
    trained module's logits and the reported validation loss."""
    model = fastlstm.load(path)
    c = model.config
    cfg = result["config"]
    assert (c.rnn_type, c.num_layers, c.hidden_size, c.embedding_dim, c.vocab_size) == (
        cfg["rnn_type"], cfg["num_layers"], cfg["hidden_size"], cfg["embedding_dim"],
        result["vocab_size"])
    assert c.num_parameters == result["params"]
    assert result["file_bytes"] == os.path.getsize(path)

    # The tokenizer in the file is the one the ids were made with.
    tok = model.tokenizer
    assert tok == result["tokenizer"]
    _, val_text = split_corpus(corpus_text, cfg["val_fraction"], kind)
    assert tok.encode(val_text) == result["val_ids"].tolist()

    # fastlstm's logits on held-out text are the trained PyTorch module's.
    ids = result["val_ids"][:40][None, :]
    expected = torch_logits(result["model"], ids)
    actual, _ = model.forward(ids)
    diff = float(np.max(np.abs(actual - expected)))
    assert diff <= 1e-4 * float(np.max(np.abs(expected))), diff

    # The reported validation loss is the loss of fastlstm's logits on the validation rows.
    rows = validation_rows(result["val_ids"])
    assert rows.shape[0] == val_streams(len(result["val_ids"]))
    logits, _ = model.forward(rows[:, :-1])
    assert abs(nll(logits, rows[:, 1:]) - result["val_loss"]) <= 1e-3
    return model


# --------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_train_char(tmp_path, corpus, rnn_type):
    out = tmp_path / "model.safetensors"
    result = train(corpus, out, tokenizer="char", rnn_type=rnn_type, val_fraction=0.25, **TINY)
    text = corpus.read_text(encoding="utf-8")
    model = check_trained_file(out, result, text, "char")

    assert model.tokenizer.vocab == sorted(set(text))
    assert model.tokenizer.decode(model.tokenizer.encode(text)) == text
    assert len(result["val_ids"]) >= 2048  # several validation rows: the multi-row path runs
    assert result["steps"] == 12 and result["tokens"] == 12 * 4 * 16
    assert result["history"][-1]["step"] == 12
    assert math.isfinite(result["train_loss"]) and result["seconds"] > 0
    # 12 steps of Adam already beat the uniform distribution.
    assert result["val_loss"] < math.log(len(model.tokenizer.vocab))


def test_train_word(tmp_path, corpus):
    out = tmp_path / "words.safetensors"
    result = train(corpus, out, tokenizer="word", val_fraction=0.1, **TINY)
    text = corpus.read_text(encoding="utf-8")
    model = check_trained_file(out, result, text, "word")

    tok = model.tokenizer
    assert "<eos>" in tok.vocab and "<unk>" in tok.vocab
    assert "zebra" not in tok.vocab  # only in the validation split
    train_text, val_text = split_corpus(text, 0.1, "word")
    assert train_text.endswith("\n") and train_text + val_text == text  # cut at a line start
    assert tok.decode(tok.encode(train_text)) == train_text  # one space between words already
    assert tok.vocab.index("<unk>") in result["val_ids"]
    expected = [[w if w in tok.vocab else "<unk>" for w in line.split()]
                for line in val_text.splitlines()]
    assert [line.split() for line in tok.decode(tok.encode(val_text)).splitlines()] == expected


def test_build_vocab_word_order():
    text = "b a b\n\nc a\n"
    assert build_vocab(text, "zzz\n", "word") == ["b", "a", "<eos>", "c", "<unk>"]
    assert build_vocab("ba\n", "c", "char") == ["\n", "a", "b", "c"]


def test_split_corpus():
    text = "0123456789" * 10
    assert split_corpus(text, 0.1, "char") == (text[:90], text[90:])
    assert split_corpus(text, 0.0, "char") == (text, "")
    lines = "aaaa\nbbbb\ncccc\n"
    assert split_corpus(lines, 0.2, "word") == ("aaaa\nbbbb\n", "cccc\n")


def test_validation_rows():
    ids = np.arange(5000)
    rows = validation_rows(ids)
    assert rows.shape == (4, 1250) and rows[1, 0] == 1250
    assert validation_rows(np.arange(7)).shape == (1, 7)


def test_train_is_deterministic(tmp_path, corpus):
    a = train(corpus, tmp_path / "a.safetensors", **TINY)
    b = train(corpus, tmp_path / "b.safetensors", **TINY)
    assert a["val_loss"] == b["val_loss"]
    wa, wb = (load_file(tmp_path / name) for name in ("a.safetensors", "b.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_keeps_best_and_restores_threads(tmp_path, corpus):
    before = torch.get_num_threads()
    args = dict(TINY, steps=20)
    result = train(corpus, tmp_path / "m.safetensors", eval_every=5, lr=0.05, threads=1, **{
        k: v for k, v in args.items()})
    assert torch.get_num_threads() == before
    history = result["history"]
    assert [h["step"] for h in history] == [5, 10, 15, 20]
    best = min(history, key=lambda h: h["val_loss"])
    assert (result["best_step"], result["val_loss"]) == (best["step"], best["val_loss"])


def test_train_time_budget_and_no_validation(tmp_path, corpus):
    out = tmp_path / "m.safetensors"
    result = train(corpus, out, minutes=1e-6, val_fraction=0.0,
                   **{k: v for k, v in TINY.items() if k != "steps"})
    assert result["steps"] == 1  # the budget is checked after each step
    assert result["val_loss"] is None and len(result["val_ids"]) == 0
    fastlstm.load(out)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tokenizer="byte"), "tokenizer must be 'char' or 'word'"),
        (dict(rnn_type="LSTMX"), "unknown rnn_type"),
        (dict(val_fraction=1.0), "val_fraction must be in"),
        (dict(hidden_size=0), "hidden_size must be a positive integer"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(batch_size=4, seq_len=5000), "too few for batch_size=4 streams of seq_len=5000"),
    ],
)
def test_train_rejects(tmp_path, corpus, kwargs, message):
    args = dict(TINY, **kwargs)
    with pytest.raises(ValueError, match=message):
        train(corpus, tmp_path / "m.safetensors", **args)
    assert not (tmp_path / "m.safetensors").exists()


# --------------------------------------------------------------------------- the command line


def test_cli_train(tmp_path, corpus, capsys):
    out = tmp_path / "cli.safetensors"
    code = main(["train", str(corpus), "-o", str(out), "--layers", "1", "--hidden", "16",
                 "--embedding", "8", "--seq-len", "16", "--batch-size", "4", "--steps", "6",
                 "--val-fraction", "0.1", "--rnn-type", "GRU", "--seed", "3", "-q"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "validation loss" in printed and f"wrote {out}" in printed
    model = fastlstm.load(out)
    assert (model.config.rnn_type, model.config.num_layers, model.config.hidden_size) == (
        "GRU", 1, 16)

    # The printed loss is the one the Python API reports for the same arguments.
    result = train(corpus, tmp_path / "api.safetensors", rnn_type="GRU", num_layers=1,
                   hidden_size=16, embedding_dim=8, seq_len=16, batch_size=4, steps=6,
                   val_fraction=0.1, seed=3, progress=False)
    assert f"validation loss {result['val_loss']:.4f}" in printed


def test_cli_train_word(tmp_path, corpus, capsys):
    out = tmp_path / "w.safetensors"
    assert main(["train", str(corpus), "-o", str(out), "--tokenizer", "word", "--layers", "1",
                 "--hidden", "8", "--embedding", "8", "--batch-size", "2", "--seq-len", "8",
                 "--steps", "3", "-q"]) == 0
    assert fastlstm.load(out).tokenizer.encode("the king\n")[-1] == fastlstm.load(
        out).tokenizer.vocab.index("<eos>")


def test_cli_train_errors(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "m.st")]) == 2
    assert "fastlstm: error:" in capsys.readouterr().err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    assert main(["train", str(bad), "-o", str(tmp_path / "m.st")]) == 2
    assert "is not UTF-8" in capsys.readouterr().err


def test_cli_train_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--tokenizer", "--rnn-type", "--layers", "--hidden", "--embedding", "--dropout",
                 "--seq-len", "--batch-size", "--lr", "--steps", "--minutes", "--val-fraction",
                 "--seed", "--threads", "examples:"):
        assert flag in text
