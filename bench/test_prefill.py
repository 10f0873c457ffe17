"""Prefill throughput: the model over (1, S) ids (S = 1,000) from a zero state, all S logits.

Group f"{config}|prefill|B=1|T={threads}"; tokens per round = S.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.competitors import PREFILL
from bench.conftest import PREFILL_TOKENS, THREADS, measure

CASES = [pytest.param(threads, runtime, id=f"T{threads}-{runtime}")
         for threads in THREADS for runtime in PREFILL]


@pytest.mark.parametrize("threads, runtime", CASES)
def test_prefill(benchmark, lm, threads, runtime):
    cfg = lm.cfg
    with PREFILL[runtime](lm, PREFILL_TOKENS, threads) as run:
        logits = measure(benchmark, run, tokens=PREFILL_TOKENS,
                         group=f"{cfg.name}|prefill|B=1|T={threads}", runtime=runtime,
                         config=cfg.name, mode="prefill", batch=1, threads=threads,
                         steps=PREFILL_TOKENS)
    logits = np.asarray(logits)
    assert logits.shape == (1, PREFILL_TOKENS, cfg.vocab_size), logits.shape
    assert np.all(np.isfinite(logits))
