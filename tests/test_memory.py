"""No memory grows with use: 10,000 generating calls on the bundled model (generate with str
and list prompts, generate_ids, stream run to the end or broken off, seeded and greedy, stop
strings, 1 and 2 threads), mixed with forward calls and calls that fail (ValueError before
any kernel runs, FloatingPointError from inside the decode loop), leave the resident set
where the warm-up calls left it.

Each measurement runs in a fresh Python process, so the heap that earlier tests left behind
(fragmentation, freed arenas given back or not) cannot move the numbers.  A second process
runs the same calls plus a deliberate leak of LEAK_BYTES (and one Python object) per call,
and must be caught: proof that the measurement can fail.
"""

from __future__ import annotations

import json
import sys

import pytest
from memory_probe import MemoryProbe, growth_mb, malloc_growth, rss_steps, run_workers  # tests/

GENERATE_CALLS = 10_000
WARMUP_CALLS = 300
# Per-call buffers of the decode loop on the bundled model (2 x 384 LSTM, vocab 84) are
# ~17 kB per row.  Leaking 1 kB per call (a forgotten free of a small buffer, or a kept
# reference to a few small NumPy arrays) grows RSS by ~10 MB over 10,000 calls; the bound
# sits at a third of that, far above what a clean run shows (~0.15 MB: a slow drift outside
# malloc, pymalloc arenas and page rounding).  Smaller C leaks (the 160-byte Layer array
# handed to the kernels) are for tests/memcheck, where valgrind reports any definite leak.
LEAK_BYTES = 1024
BOUND_MB = 3.5
# glibc also says how many bytes malloc has handed out: a sharper second measure (no page
# rounding, no pymalloc arenas), +0.000 MB in clean runs; 1 MB is 100 bytes per
# call.  The deliberate leak shows there as its exact size.
MALLOC_BOUND_MB = 1.0
# Python objects live in pymalloc's arenas, which neither measure above sees finely; its
# count of blocks in use does.  A clean run adds ~300 (NumPy's cumsum keeps about one small
# object per 1,000 calls); keeping one object every 5 calls (a Decoder's array, say) adds
# 2,000.  The deliberate leak keeps one object per call besides its bytes.
BLOCKS_BOUND = 2_000
TIMEOUT_S = 300

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="reads /proc/self/statm and glibc's malloc statistics")]


# --------------------------------------------------------------------------- the worker
# Runs in the child process: `python test_memory.py CALLS WARMUP LEAK_BYTES`; prints JSON.

def _worker(calls: int, warmup: int, leak_bytes: int) -> dict:
    import gc
    import tempfile

    import fastlstm
    from exploding_relu import write_exploding_relu  # tests/, on sys.path here

    probe = MemoryProbe()

    m1 = fastlstm.load(num_threads=1)
    m2 = fastlstm.load(num_threads=2)
    tmp = tempfile.mkdtemp()
    exploding = fastlstm.load(write_exploding_relu(tmp, list("abcdefghijklmnopqrstuvwxyz")),
                              num_threads=2)
    ids = [m1.tokenizer.encode(p) for p in ("ROMEO:", "to be", "x")]
    state = {"s": None}

    def stream_broken_off():
        for _ in m1.stream("KING", max_new_tokens=200, temperature=0.8):
            break  # abandoned after the first chunk

    def raises(error, call):
        try:
            call()
        except error:
            return
        raise AssertionError(f"expected {error.__name__}")

    # One cycle of generating calls: mostly 1-token prompts and 1-2 new tokens (a token of
    # the bundled model costs ~0.5 ms: reading its weights), the costlier kinds once a cycle.
    cheap = [
        lambda: m1.generate("R", max_new_tokens=1, temperature=0.8, seed=1),
        lambda: m1.generate(["a", "b"], max_new_tokens=2, top_k=5, top_p=0.9, seed=(1, 2)),
        lambda: m1.generate_ids([[5]], max_new_tokens=2, temperature=0),
        lambda: m1.generate_ids([[7], [8]], max_new_tokens=2, repetition_penalty=1.2,
                                min_p=0.05, stop=["e", "\n\n"], eos_token_id=[0]),
        lambda: "".join(m1.stream("J", max_new_tokens=2, temperature=0.9, seed=3)),
    ]
    generating = cheap * 4 + [
        lambda: m2.generate(["to be", "or", "First Citizen:\n"], max_new_tokens=3, top_k=5,
                            top_p=0.9, seed=(1, 2, 3), num_return_sequences=2),
        lambda: m2.generate_ids(ids, max_new_tokens=3, temperature=0),
        stream_broken_off,
        # The NaN path: the decode loop stops and raises; its scratch must still be freed.
        lambda: raises(FloatingPointError, lambda: exploding.generate_ids(
            [[1], [2] * 150, [3, 4]], max_new_tokens=200, temperature=0)),
        lambda: raises(FloatingPointError, lambda: "".join(exploding.stream(
            "abc", max_new_tokens=200, temperature=0.7))),
    ]

    def forward_continue():
        _, s = m1.forward([ids[1]], state["s"])
        state["s"] = s

    other = [
        lambda: m2.forward([ids[0], ids[0][::-1]]),
        forward_continue,
        # Rejected before any kernel runs (each after some allocation in Python).
        lambda: raises(ValueError, lambda: m1.generate_ids([[m1.config.vocab_size]])),
        lambda: raises(ValueError, lambda: m1.generate("x", temperature=-1.0)),
        lambda: raises(ValueError, lambda: m2.generate(["a", "b"], eos_token_id=[10_000])),
        lambda: raises(ValueError, lambda: m1.stream("a", stop=["\x00"])),
    ]

    kept = []

    def one_round(i):
        generating[i % len(generating)]()
        if i % 5 == 0:
            other[(i // 5) % len(other)]()
        if leak_bytes:
            probe.leak(leak_bytes)
            kept.append(object())

    for i in range(warmup):
        one_round(i)
    gc.collect()
    before, in_use_before, blocks_before = probe.rss(), probe.malloc_in_use(), sys.getallocatedblocks()
    samples = []
    for i in range(calls):
        one_round(i)
        if (i + 1) % (calls // 5) == 0:
            samples.append(probe.rss())
    gc.collect()
    after, in_use_after, blocks_after = probe.rss(), probe.malloc_in_use(), sys.getallocatedblocks()
    return {"fastlstm": fastlstm.__file__, "before": before, "after": after,
            "samples": samples, "blocks_growth": blocks_after - blocks_before,
            "malloc_growth": None if in_use_before is None else in_use_after - in_use_before}


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def runs():
    """Both workers at once (clean, leaking): {leak_bytes: result}."""
    calls = [str(GENERATE_CALLS), str(WARMUP_CALLS)]
    return run_workers(__file__, {0: calls + ["0"], LEAK_BYTES: calls + [str(LEAK_BYTES)]},
                       TIMEOUT_S)


def _describe(result) -> str:
    return (f"RSS {result['before'] / 2**20:.1f} MB after the warm-up, growth "
            f"{growth_mb(result):+.2f} MB after {GENERATE_CALLS} generating calls "
            f"(every {GENERATE_CALLS // 5}: {rss_steps(result)}); bytes in use by malloc "
            f"{malloc_growth(result)}; Python object blocks {result['blocks_growth']:+d}")


def test_ten_thousand_generate_calls_do_not_grow_rss(runs, record_property):
    result = runs[0]
    record_property("rss_growth_mb", round(growth_mb(result), 3))
    print("\n" + _describe(result))
    assert growth_mb(result) < BOUND_MB, _describe(result)
    if result["malloc_growth"] is not None:
        assert result["malloc_growth"] / 2**20 < MALLOC_BOUND_MB, _describe(result)
    assert result["blocks_growth"] < BLOCKS_BOUND, _describe(result)


def test_the_measurement_sees_a_leak(runs):
    """The same calls leaking LEAK_BYTES and one object each: every measure must exceed its
    bound, or the test above could not fail for a leak of that size."""
    result = runs[LEAK_BYTES]
    print("\nwith a leak: " + _describe(result))
    expected = GENERATE_CALLS * LEAK_BYTES / 2**20
    assert growth_mb(result) > BOUND_MB, _describe(result)
    assert growth_mb(result) > 0.8 * expected, _describe(result)
    if result["malloc_growth"] is not None:
        assert result["malloc_growth"] / 2**20 > max(MALLOC_BOUND_MB, 0.9 * expected)
    assert result["blocks_growth"] > max(BLOCKS_BOUND, 0.9 * GENERATE_CALLS), _describe(result)


if __name__ == "__main__":
    print(json.dumps(_worker(*(int(a) for a in sys.argv[1:4]))))
