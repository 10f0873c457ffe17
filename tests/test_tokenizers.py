"""Tokenizers: round trips, the out-of-vocabulary policy, and the JSON stored in model files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastlstm.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    WordTokenizer,
    make_tokenizer,
    tokenizer_from_json,
)

CHARS = list("\n !',.?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZé")
WORDS = ["<eos>", "<unk>", "the", "cat", "sat", "on", "mat", "."]


# --------------------------------------------------------------------------- char


def test_char_round_trip():
    tok = CharTokenizer(CHARS)
    text = "The cat sat.\nOn the mat, é!"
    ids = tok.encode(text)
    assert ids == [CHARS.index(c) for c in text]
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(CHARS)
    assert repr(tok) == f"CharTokenizer(vocab_size={len(CHARS)})"


def test_char_unknown_raises_naming_character_and_position():
    tok = CharTokenizer(CHARS)
    with pytest.raises(ValueError, match=r"character '#' at position 4"):
        tok.encode("abc #d#")


def test_char_unknown_maps_to_unk():
    tok = CharTokenizer(CHARS, unk="?")
    assert tok.encode("a#b") == [CHARS.index("a"), CHARS.index("?"), CHARS.index("b")]


@pytest.mark.parametrize(
    "vocab, unk, message",
    [
        (["a", "bc"], None, "not one character"),
        (["a", ""], None, "not one character"),
        (["a", "b", "a"], None, "appears twice"),
        (["a", 1], None, "not a string"),
        ([], None, "empty"),
        ("abc", None, "not a string"),
        (["a", "b"], "?", "not in the vocabulary"),
    ],
)
def test_char_invalid(vocab, unk, message):
    with pytest.raises(ValueError, match=message):
        CharTokenizer(vocab, unk=unk)


# --------------------------------------------------------------------------- word


def data_py_tokenize(path, dictionary):
    """PyTorch's examples/word_language_model data.py Corpus.tokenize, given its dictionary."""
    ids = []
    with open(path, encoding="utf8") as f:
        for line in f:
            words = line.split() + ["<eos>"]
            ids += [dictionary.index(word) for word in words]
    return ids


def test_word_matches_word_language_model_data_py(tmp_path):
    text = "the cat sat on the mat .\n\n  the  cat\tsat .\n"
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf8")
    assert WordTokenizer(WORDS).encode(text) == data_py_tokenize(path, WORDS)


def test_word_prompt_without_newline_gets_no_eos():
    tok = WordTokenizer(WORDS)
    assert tok.encode("the cat") == [2, 3]
    assert tok.encode("the cat\n") == [2, 3, 0]
    assert tok.encode("the\r\ncat") == [2, 0, 3]  # universal newlines, like a text-mode file
    assert tok.encode("") == []


def test_word_decode_renders_eos_as_newline():
    tok = WordTokenizer(WORDS)
    assert tok.decode([2, 3, 4, 0, 2, 6, 0]) == "the cat sat\nthe mat\n"
    assert tok.decode([0, 0, 2]) == "\n\nthe"
    text = "the cat sat on the mat .\nthe cat"
    assert tok.decode(tok.encode(text)) == text


def test_word_unknown_maps_to_unk():
    tok = WordTokenizer(WORDS)
    assert tok.encode("the dog sat") == [2, 1, 4]


def test_word_unknown_without_unk_raises_naming_word_and_line():
    tok = WordTokenizer([w for w in WORDS if w != "<unk>"])
    with pytest.raises(ValueError, match=r"word 'dog' on line 2"):
        tok.encode("the cat\nthe dog")


def test_word_without_eos_treats_newlines_as_spaces():
    tok = WordTokenizer(["a", "b"], eos=None, unk=None)
    assert tok.encode("a\nb\n") == [0, 1]
    assert tok.decode([0, 1]) == "a b"


@pytest.mark.parametrize(
    "vocab, eos, message",
    [
        (["the", "<eos>"], "</s>", "eos token '</s>' is not in the vocabulary"),
        (["the", "a cat"], None, "whitespace"),
        (["the", ""], None, "empty"),
        (["the", "the"], None, "appears twice"),
    ],
)
def test_word_invalid(vocab, eos, message):
    with pytest.raises(ValueError, match=message):
        WordTokenizer(vocab, eos=eos)


# --------------------------------------------------------------------------- byte


def test_byte_round_trip():
    tok = ByteTokenizer()
    text = "héllo, 世界\n"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 256
    assert repr(tok) == "ByteTokenizer(vocab_size=256)"


def test_byte_decode_replaces_invalid_utf8():
    # The first two bytes of a three-byte character: not valid UTF-8 on their own.
    assert ByteTokenizer().decode([104, 0xE4, 0xB8]) == "h\ufffd"


# --------------------------------------------------------------------------- decode ids


@pytest.mark.parametrize("tok", [CharTokenizer(CHARS), WordTokenizer(WORDS), ByteTokenizer()], ids=repr)
def test_decode_rejects_bad_ids(tok):
    with pytest.raises(ValueError, match=rf"token id {tok.vocab_size} at position 1 is out of range"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(ValueError, match="token id -1 at position 0 is out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="not an integer"):
        tok.decode([1.0])


def test_decode_accepts_numpy_ids():
    tok = CharTokenizer(CHARS)
    ids = np.array(tok.encode("cat"), dtype=np.int64)
    assert tok.decode(ids) == "cat"


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize(
    "tok",
    [CharTokenizer(CHARS), CharTokenizer(CHARS, unk="?"), WordTokenizer(WORDS),
     WordTokenizer(["a", "b"], eos=None, unk=None), ByteTokenizer()],
    ids=repr,
)
def test_json_round_trip(tok):
    again = tokenizer_from_json(tok.to_json())
    assert again == tok
    text = "the cat sat on the mat .\n"
    if isinstance(tok, WordTokenizer) and tok.eos is None:
        text = "a b"
    assert again.encode(text) == tok.encode(text)


def test_json_layout():
    assert json.loads(CharTokenizer(["a", "b"]).to_json()) == {"type": "char", "vocab": ["a", "b"], "unk": None}
    assert json.loads(WordTokenizer(WORDS).to_json()) == {
        "type": "word", "vocab": WORDS, "eos": "<eos>", "unk": "<unk>"}
    assert json.loads(ByteTokenizer().to_json()) == {"type": "byte"}


@pytest.mark.parametrize(
    "s, message",
    [
        ("{not json", "not valid JSON"),
        ('["char"]', "must be an object"),
        ('{"type": "bpe", "vocab": ["a"]}', "unknown tokenizer type 'bpe'"),
        ('{"vocab": ["a"]}', "unknown tokenizer type None"),
        ('{"type": "char", "vocab": ["a"], "lower": true}', "unknown key.*'lower'"),
        ('{"type": "char"}', "has no 'vocab'"),
        ('{"type": "char", "vocab": "ab"}', "must be a JSON list"),
        ('{"type": "char", "vocab": ["a", "a"]}', "appears twice"),
        ('{"type": "word", "vocab": ["a", 3]}', "not a string"),
        ('{"type": "word", "vocab": ["a"], "eos": "<eos>"}', "eos token"),
        ('{"type": "byte", "vocab": ["a"]}', "unknown key"),
    ],
)
def test_json_invalid(s, message):
    with pytest.raises(ValueError, match=message):
        tokenizer_from_json(s)


# --------------------------------------------------------------------------- make_tokenizer


def test_make_tokenizer_infers_kind_from_vocab():
    assert make_tokenizer(None, CHARS) == CharTokenizer(CHARS)
    assert make_tokenizer(None, WORDS) == WordTokenizer(WORDS)
    # A word vocabulary without <eos>: newlines are plain whitespace rather than an error.
    assert make_tokenizer("word", ["a", "b"]).eos is None
    assert make_tokenizer("word", list("ab")) == WordTokenizer(list("ab"), eos=None)
    assert make_tokenizer("byte", None) == ByteTokenizer()


@pytest.mark.parametrize(
    "kind, vocab, message",
    [
        ("byte", ["a"], "fixed vocabulary"),
        ("char", None, "needs a vocab"),
        (None, None, "give a vocab"),
        ("bpe", ["a"], "unknown tokenizer kind 'bpe'"),
        ("char", ["ab"], "not one character"),
    ],
)
def test_make_tokenizer_invalid(kind, vocab, message):
    with pytest.raises(ValueError, match=message):
        make_tokenizer(kind, vocab)
