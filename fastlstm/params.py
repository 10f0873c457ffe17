"""Generation parameters: Hugging Face's names and meanings, checked before any C code runs."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass


def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return int(value)


def _float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


@dataclass(frozen=True)
class GenerationParams:
    """What to generate and how to sample it (see `Model.generate`).

    max_new_tokens: tokens to generate per sequence (at most; a stop ends a sequence early).
    temperature: logits are divided by it; 0 means greedy (argmax).
    top_k: keep the k most likely tokens (ties at the k-th included); 0 = off.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p; 1 = off.
    min_p: drop tokens less likely than min_p times the most likely one; 0 = off.
    repetition_penalty: logits of tokens already in the sequence (prompt included) are divided
        by it when positive and multiplied when negative (HF / CTRL); 1 = off.
    stop: strings that end a sequence when generated (included in the output).
    eos_token_id: token ids that end a sequence when generated (included in the output).
    seed: fixes the output of each prompt, whatever the batch or thread count; an int for
        all prompts, a list with one per prompt, or None for fresh entropy.
    num_return_sequences: independent samples per prompt.
    """

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    eos_token_id: tuple[int, ...] = ()
    seed: int | tuple[int, ...] | None = None
    num_return_sequences: int = 1

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("max_new_tokens", _int("max_new_tokens", self.max_new_tokens, 1))
        if self.max_new_tokens >= 2**31:
            raise ValueError(f"max_new_tokens must be below 2**31, got {self.max_new_tokens}")
        set_("num_return_sequences", _int("num_return_sequences", self.num_return_sequences, 1))
        set_("top_k", _int("top_k", self.top_k, 0))
        temperature = _float("temperature", self.temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        set_("temperature", temperature)
        top_p = _float("top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        set_("top_p", top_p)
        min_p = _float("min_p", self.min_p)
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        set_("min_p", min_p)
        penalty = _float("repetition_penalty", self.repetition_penalty)
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {penalty}")
        set_("repetition_penalty", penalty)
        stops = _list(self.stop)
        for s in stops:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop must be non-empty strings, got {s!r}")
        set_("stop", tuple(stops))
        set_("eos_token_id", tuple(_int("eos_token_id", i, 0) for i in _list(self.eos_token_id)))
        if self.seed is not None:
            seeds = _list(self.seed)
            seeds = tuple(_int("seed", s, 0) for s in seeds)
            if any(s >= 2**64 for s in seeds):
                raise ValueError("seed must be below 2**64")
            set_("seed", seeds[0] if not isinstance(self.seed, (list, tuple)) else seeds)


def check_output_fits(rows: int, max_new_tokens: int) -> None:
    """Refuse a request whose output array alone would not fit in this machine's memory."""
    needed = rows * max_new_tokens * 8
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 2**40
    if needed > memory // 2:
        raise ValueError(f"max_new_tokens={max_new_tokens} for {rows} sequences needs "
                         f"{needed / 2**30:.1f} GiB for the output ids alone; this machine has "
                         f"{memory / 2**30:.1f} GiB")
