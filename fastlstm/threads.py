"""How many threads a call uses: resolved once in Python, passed down to the kernels as an int."""

from __future__ import annotations

import operator


def resolve_num_threads(num_threads: int | None) -> int:
    """None means OpenMP's default (OMP_NUM_THREADS if set, else the usable cores)."""
    if num_threads is None:
        from fastlstm import _rnn

        return _rnn.max_threads()
    try:
        n = operator.index(num_threads)
    except TypeError:
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}") from None
    if n < 1:
        raise ValueError(f"num_threads must be at least 1, got {n}")
    return n
