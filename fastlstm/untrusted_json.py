"""JSON from files fastlstm did not write: measured before it is parsed.

A model file's header and its tokenizer metadata are JSON that anyone may have written.
`loads_untrusted_json` bounds what parsing them may build (json_structure counts a text's
objects, arrays and commas without parsing it), refuses duplicate keys and NaN/Infinity, and
raises only ValueError.
"""

from __future__ import annotations

import json


def json_structure(text: str | bytes) -> tuple[int, int]:
    """(containers, separators): how many objects/arrays and how many commas a JSON text has
    outside its strings, counted without parsing it.

    Parsing allocates a Python object per value, about 20x the bytes of a text made of small
    values (`[[],[],...]`), so untrusted JSON is measured first; this costs two copies of the
    text at most.  For malformed JSON the counts still bound what the parser builds before it
    stops: up to its first error, the parser and this count agree on where strings are.
    """
    import numpy as np  # deferred, like the rest of the loader's imports

    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    # Inside a string `\\` is one escaped backslash; once those pairs are gone, a backslash
    # escapes the next character, so every quote left after dropping `\"` delimits a string.
    # (Outside strings a backslash is not JSON at all, and the parser stops there.)
    text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(text, dtype=np.uint8)
    containers = separators = 0
    quotes_before = 0
    for start in range(0, len(codes), 1 << 20):
        chunk = codes[start:start + (1 << 20)]
        quote = chunk == ord('"')
        outside = ((np.cumsum(quote, dtype=np.int32) + quotes_before) & 1) == 0
        containers += int(np.count_nonzero(((chunk == ord("[")) | (chunk == ord("{"))) & outside))
        separators += int(np.count_nonzero((chunk == ord(",")) & outside))
        quotes_before += int(np.count_nonzero(quote))
    return containers, separators


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list) -> dict:
    """object_pairs_hook: a JSON object that names a key twice is refused, never half-read."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {duplicate!r} appears twice in one JSON object")
    return obj


def loads_untrusted_json(text: str, what: str, max_containers: int,
                         max_separators: int | None = None):
    """json.loads for text from a file: bounded size of what it builds, no duplicate keys, no
    NaN/Infinity, and only ValueError (never RecursionError) for anything wrong."""
    containers, separators = json_structure(text)
    if containers > max_containers:
        raise ValueError(f"{what} has {containers:,} JSON objects/arrays; at most "
                         f"{max_containers:,} are expected")
    if max_separators is not None and separators > max_separators:
        raise ValueError(f"{what} has {separators + 1:,} JSON values in its objects and "
                         f"arrays; at most {max_separators + 1:,} are expected")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"{what} nests JSON too deeply") from None
    except ValueError as e:  # json.JSONDecodeError, duplicate keys, NaN, huge integers
        raise ValueError(f"{what} is not valid JSON: {e}") from None
