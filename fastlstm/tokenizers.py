"""Tokenizers: text <-> token ids, stored as JSON in a model file's metadata.

A fastlstm model file keeps its tokenizer under the safetensors `__metadata__` key
"tokenizer", as the JSON string that `Tokenizer.to_json()` returns:

    {"type": "char", "vocab": ["\\n", " ", "a", ...], "unk": null}
    {"type": "word", "vocab": ["<eos>", "the", ...], "eos": "<eos>", "unk": "<unk>"}
    {"type": "byte"}

In a vocabulary the index of a token is its id. Text that the vocabulary cannot represent
maps to the `unk` token when there is one, and raises ValueError otherwise: a tokenizer never
returns silently wrong ids.
"""

from __future__ import annotations

import codecs
import json
import operator
import re
from collections.abc import Iterable, Sequence

from fastlstm.untrusted_json import loads_untrusted_json

__all__ = [
    "ByteTokenizer",
    "CharTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "WordTokenizer",
    "make_tokenizer",
    "tokenizer_from_json",
]


class Tokenizer:
    """Base class: `encode` text to ids, `decode` ids to text, `to_json` for the model file."""

    @property
    def vocab_size(self) -> int:
        """Number of ids; valid ids are 0 .. vocab_size - 1."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Return the token ids of `text`; ValueError if it cannot be represented."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of `ids`; ValueError for an id outside [0, vocab_size)."""
        raise NotImplementedError

    def stream_decoder(self, previous: Sequence[int] = ()) -> StreamDecoder:
        """A decoder for ids that arrive in pieces (streaming), continuing after `previous`
        (the prompt): `previous text + every piece it returns` reads as one text."""
        return StreamDecoder(self.decode)

    def to_json(self) -> str:
        """Return the JSON string that `tokenizer_from_json` turns back into this tokenizer."""
        return json.dumps(self._spec(), ensure_ascii=False)

    def _spec(self) -> dict:
        raise NotImplementedError

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        # operator.index accepts Python and NumPy integers but refuses floats and strings.
        checked = []
        for position, i in enumerate(ids):
            try:
                i = operator.index(i)
            except TypeError:
                message = f"token id at position {position} is not an integer: {i!r}"
                raise ValueError(message) from None
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"token id {i} at position {position} is out of range [0, {self.vocab_size})"
                )
            checked.append(i)
        return checked

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._spec() == self._spec()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class StreamDecoder:
    """Turns successive chunks of ids into successive pieces of text (see
    `Tokenizer.stream_decoder`); `flush()` returns whatever is still held back."""

    def __init__(self, decode_chunk):
        self._decode_chunk = decode_chunk

    def decode(self, ids: Iterable[int]) -> str:
        return self._decode_chunk(ids)

    def flush(self) -> str:
        return ""


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_vocab(vocab: Iterable[str]) -> list[str]:
    """Return `vocab` as a list; ValueError if it is empty, has a non-string or a duplicate."""
    if isinstance(vocab, str):
        raise ValueError("vocab must be a list of tokens, not a string")
    try:
        vocab = list(vocab)
    except TypeError:
        raise ValueError(f"vocab must be a list of tokens, got {type(vocab).__name__}") from None
    if not vocab:
        raise ValueError("vocab is empty")
    seen: dict[str, int] = {}
    for i, token in enumerate(vocab):
        if not isinstance(token, str):
            raise ValueError(f"vocab token at index {i} is not a string: {token!r}")
        if _SURROGATE.search(token):
            # JSON can spell one ("\\ud800"), but no text holds it and it cannot be printed.
            raise ValueError(f"vocab token at index {i} is not valid Unicode text (it holds a "
                             f"lone surrogate): {token!r}")
        if token in seen:
            raise ValueError(
                f"vocab token {token!r} appears twice, at indices {seen[token]} and {i}"
            )
        seen[token] = i
    return vocab


def _check_special(vocab: list[str], name: str, token: str | None) -> None:
    if token is not None and not isinstance(token, str):
        raise ValueError(f"{name} must be a string or None, got {token!r}")
    if token is not None and token not in vocab:
        raise ValueError(f"{name} token {token!r} is not in the vocabulary")


class CharTokenizer(Tokenizer):
    """One token per character, e.g. for char-rnn models.

    Args:
        vocab: the characters, index = id; each entry must be exactly one character.
        unk: a character of `vocab` that unknown characters map to. With None (the default),
            `encode` raises ValueError naming the first unknown character and its position.
    """

    def __init__(self, vocab: list[str], unk: str | None = None):
        self.vocab = _check_vocab(vocab)
        for i, token in enumerate(self.vocab):
            if len(token) != 1:
                raise ValueError(f"char vocab token at index {i} is not one character: {token!r}")
        _check_special(self.vocab, "unk", unk)
        self.unk = unk
        self._ids = {c: i for i, c in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        if self.unk is not None:
            unk_id = ids[self.unk]
            return [ids.get(c, unk_id) for c in text]
        try:
            return [ids[c] for c in text]
        except KeyError:
            position = next(p for p, c in enumerate(text) if c not in ids)
            raise ValueError(
                f"character {text[position]!r} at position {position} is not in the vocabulary "
                "(and the tokenizer has no unk token)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        vocab = self.vocab
        return "".join(vocab[i] for i in self._check_ids(ids))

    def _spec(self) -> dict:
        return {"type": "char", "vocab": self.vocab, "unk": self.unk}


class WordTokenizer(Tokenizer):
    """Whitespace-separated words, as PyTorch's examples/word_language_model (data.py) reads text.

    data.py turns each line of a file into `line.split() + ['<eos>']`. `encode` does the same
    for every line that ends with a newline; the final line, when it does not end with one,
    gets no eos, so that a prompt like "the meaning of" is continued rather than ended.
    `decode` joins words with single spaces and renders eos as "\\n", so
    `decode(encode(text))` gives `text` with its whitespace normalised.

    Args:
        vocab: the words, index = id; no word may be empty or contain whitespace.
        eos: the end-of-line token, which must be in `vocab`; None treats newlines as spaces.
        unk: the token unknown words map to, if it is in `vocab`; otherwise `encode` raises
            ValueError naming the first unknown word.
    """

    def __init__(self, vocab: list[str], eos: str | None = "<eos>", unk: str | None = "<unk>"):
        self.vocab = _check_vocab(vocab)
        for i, token in enumerate(self.vocab):
            # encode splits on whitespace, so such a token could never be produced.
            if not token or token.split() != [token]:
                raise ValueError(
                    f"word vocab token at index {i} is empty or contains whitespace: {token!r}"
                )
        _check_special(self.vocab, "eos", eos)
        if unk is not None and not isinstance(unk, str):
            raise ValueError(f"unk must be a string or None, got {unk!r}")
        self.eos = eos
        self.unk = unk
        self._ids = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        unk_id = ids.get(self.unk) if self.unk is not None else None
        eos_id = ids[self.eos] if self.eos is not None else None
        # Universal newlines, like iterating over a file opened in text mode.
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        out: list[int] = []
        for number, line in enumerate(lines, start=1):
            for word in line.split():
                i = ids.get(word, unk_id)
                if i is None:
                    raise ValueError(
                        f"word {word!r} on line {number} is not in the vocabulary "
                        f"(and {self.unk!r} is not in it either)"
                    )
                out.append(i)
            if eos_id is not None and number < len(lines):
                out.append(eos_id)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.stream_decoder().decode(ids)

    def stream_decoder(self, previous: Sequence[int] = ()) -> StreamDecoder:
        eos_id = self._ids[self.eos] if self.eos is not None else None
        # A word after a word needs a space before it; after eos (or at the start) it does not.
        at_line_start = not previous or previous[-1] == eos_id

        def decode_chunk(ids: Iterable[int]) -> str:
            nonlocal at_line_start
            pieces: list[str] = []
            for i in self._check_ids(ids):
                if i == eos_id:
                    pieces.append("\n")
                    at_line_start = True
                else:
                    if not at_line_start:
                        pieces.append(" ")
                    pieces.append(self.vocab[i])
                    at_line_start = False
            return "".join(pieces)

        return StreamDecoder(decode_chunk)

    def _spec(self) -> dict:
        return {"type": "word", "vocab": self.vocab, "eos": self.eos, "unk": self.unk}


class ByteTokenizer(Tokenizer):
    """The 256 byte values of the UTF-8 encoding: any text encodes, with no vocabulary to store.

    `decode` decodes the bytes as UTF-8 with errors="replace": a byte sequence that is not
    valid UTF-8 (for instance a character cut in the middle) shows as U+FFFD rather than
    raising, so decode whole sequences when exact text matters.
    """

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(self._check_ids(ids)).decode("utf-8", errors="replace")

    def stream_decoder(self, previous: Sequence[int] = ()) -> StreamDecoder:
        # Holds back the first bytes of a character until its last byte arrives.
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        decoder = StreamDecoder(lambda ids: utf8.decode(bytes(self._check_ids(ids))))
        decoder.flush = lambda: utf8.decode(b"", final=True)
        return decoder

    def _spec(self) -> dict:
        return {"type": "byte"}


# name in JSON -> (class, keys the JSON object may hold besides "type")
_KINDS = {
    "char": (CharTokenizer, {"vocab", "unk"}),
    "word": (WordTokenizer, {"vocab", "eos", "unk"}),
    "byte": (ByteTokenizer, set()),
}


# A tokenizer's JSON is one object holding at most one list.
_TOKENIZER_CONTAINERS = 4


def tokenizer_from_json(s: str) -> Tokenizer:
    """Build a tokenizer from the JSON string that `Tokenizer.to_json()` wrote.

    Raises ValueError for malformed JSON, an unknown "type", unknown keys, or an invalid
    vocabulary (duplicate or non-string tokens, ...).  The JSON may come from an untrusted
    model file: nested or repeated structure is refused before it is parsed.
    """
    if not isinstance(s, str):
        raise ValueError(f"tokenizer JSON must be a string, got {type(s).__name__}")
    spec = loads_untrusted_json(s, "tokenizer", _TOKENIZER_CONTAINERS)
    if not isinstance(spec, dict):
        raise ValueError(f"tokenizer JSON must be an object, got {type(spec).__name__}")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"unknown tokenizer type {kind!r}: expected one of {', '.join(_KINDS)}")
    cls, allowed = _KINDS[kind]
    args = {k: v for k, v in spec.items() if k != "type"}
    # Refuse what we do not understand rather than ignore a setting that changes the ids.
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in {kind} tokenizer JSON")
    if "vocab" in allowed and "vocab" not in args:
        raise ValueError(f"{kind} tokenizer JSON has no 'vocab'")
    if "vocab" in args and not isinstance(args["vocab"], list):
        raise ValueError(f"{kind} tokenizer 'vocab' must be a JSON list")
    return cls(**args)


def make_tokenizer(kind: str | None, vocab: list[str] | None = None) -> Tokenizer:
    """Build a tokenizer from a kind ("char", "word", "byte") and a vocabulary.

    With kind None the vocabulary decides: all tokens single characters -> char, else word.
    A word tokenizer uses "<eos>" and "<unk>" as its special tokens when the vocabulary has
    them (newlines become spaces without "<eos>"; unknown words raise without "<unk>").
    """
    if kind is None:
        if vocab is None:
            raise ValueError("give a vocab or a tokenizer kind ('char', 'word' or 'byte')")
        vocab = _check_vocab(vocab)
        kind = "char" if all(len(t) == 1 for t in vocab) else "word"
    if kind == "byte":
        if vocab is not None:
            raise ValueError("the byte tokenizer has a fixed vocabulary of 256 bytes; "
                             "do not pass a vocab")
        return ByteTokenizer()
    if kind not in ("char", "word"):
        raise ValueError(f"unknown tokenizer kind {kind!r}: expected 'char', 'word' or 'byte'")
    if vocab is None:
        raise ValueError(f"a {kind} tokenizer needs a vocab")
    if kind == "char":
        return CharTokenizer(vocab)
    vocab = _check_vocab(vocab)
    return WordTokenizer(vocab, eos="<eos>" if "<eos>" in vocab else None)
