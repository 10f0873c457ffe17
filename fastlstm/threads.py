"""How many threads a call uses: resolved once in Python, passed down to the kernels as an int.

A call over at least as many sequences as threads gives each thread whole sequences.  With
fewer, the threads can share each sequence's products (a team, stack.pxd), meeting at a
barrier several times a step; that pays only when a step multiplies enough weights.  On
Zen 4, two threads decoded 2-layer models of 0.18M-0.24M weights per step 0.86-1.01x as
fast as one, and prefilled them 0.79-0.85x; from 0.35M weights on, 1.3-2x.
"""

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


# Weights one step of one sequence multiplies, from which threads share a sequence.
TEAM_MIN_WEIGHTS = 300_000


def call_threads(num_threads: int, rows: int, step_weights: int) -> int:
    """The threads for a call over `rows` sequences whose step multiplies `step_weights`
    weights: `num_threads`, unless there are fewer rows than that and the steps are too
    small to share (then one thread a row)."""
    if rows >= num_threads or step_weights >= TEAM_MIN_WEIGHTS:
        return num_threads
    return max(1, rows)
