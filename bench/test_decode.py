"""Decode throughput: the same "step, softmax at temperature 0.8, sample" loop in every runtime.

Group f"{config}|decode|B={batch}|T={threads}"; tokens per round = batch * steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.competitors import DECODE
from bench.conftest import QUICK, THREADS, measure

CASES = [
    pytest.param(batch, threads, runtime, id=f"B{batch}-T{threads}-{runtime}")
    for batch in (1, 64)
    for threads in THREADS
    for runtime in DECODE
    if runtime != "floor_read" or (batch == 1 and threads == 1)
]


@pytest.mark.parametrize("batch, threads, runtime", CASES)
def test_decode(benchmark, lm, batch, threads, runtime):
    cfg = lm.cfg
    steps = cfg.decode_steps(batch, QUICK)
    with DECODE[runtime](lm, batch, steps, threads) as run:
        out = measure(benchmark, run, tokens=batch * steps,
                      group=f"{cfg.name}|decode|B={batch}|T={threads}", runtime=runtime,
                      config=cfg.name, mode="decode", batch=batch, threads=threads, steps=steps)
    if runtime == "floor_matmul":
        assert np.all(np.isfinite(out))
    if runtime.startswith("floor"):
        return
    out = np.asarray(out)
    assert out.shape == (batch, steps) and out.dtype == np.int64, (out.shape, out.dtype)
    assert out.min() >= 0 and out.max() < cfg.vocab_size, (out.min(), out.max())
    if batch * steps >= 512:  # sampling at temperature 0.8 from a random model visits many ids
        assert len(np.unique(out)) > 1
