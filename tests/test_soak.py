"""Load: 16 Python threads share one Model for a fixed number of calls, and nothing drifts.

Each round starts 16 fresh threads (threads come and go, as in a server's pool) that call
generate (one prompt and two), generate_ids and stream on one shared model (num_threads=2,
so each calling thread also runs its own OpenMP team), seeded and greedy, with stop strings;
some streams run to the end, some are abandoned after a piece or before the first (dropped
or closed).  Every result must equal the same call made alone, before any thread started;
and the resident set after the last round must be where the warm-up rounds left it.

As in tests/test_memory.py, the calls run in a fresh Python process, and a second process
runs the same calls plus a deliberate leak of LEAK_BYTES per call, which the measurement
must catch: proof that it can fail.
"""

from __future__ import annotations

import json
import sys

import pytest
from memory_probe import MemoryProbe, growth_mb, malloc_growth, rss_steps, run_workers  # tests/

THREADS = 16
WARMUP_ROUNDS = 4
ROUNDS = 12  # measured: 16 threads x 7 calls x 12 rounds = 1,344 calls
# With 16 threads, glibc spreads the heap over up to 16 arenas, whose pages come and go in
# steps: RSS in clean runs rises by ~1 MB over the warm-up's level and hovers there (+1.0 to
# +1.6 MB over 40 rounds), while the bytes malloc hands out stay flat (+0.003 MB).  Leaking
# 8 kB per call (a forgotten per-call buffer of a few rows' logits) adds ~10.5 MB to both;
# the RSS bound sits at a third of that, the malloc bound at a tenth.
LEAK_BYTES = 8192
BOUND_MB = 3.5
MALLOC_BOUND_MB = 1.0  # bytes malloc hands out and does not get back (glibc mallinfo2)
TIMEOUT_S = 240

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="reads /proc/self/statm and glibc's malloc statistics")]


# --------------------------------------------------------------------------- the worker
# Runs in the child process: `python test_soak.py LEAK_BYTES`; prints JSON.

def _worker(leak_bytes: int) -> dict:
    import gc
    import threading

    import fastlstm

    probe = MemoryProbe()

    model = fastlstm.load(num_threads=2)
    tok = model.tokenizer
    prompts = ["ROMEO.", "JULIET.\nO", "HAMLET.\nTo be, or not", "KING", "First Citizen.\n",
               "GLOSTER.\nNow is the winter", "A", "MACBETH.\nIs this a dagger"]

    def abandoned(prompt, seed, pieces, close):
        it = model.stream(prompt, max_new_tokens=400, temperature=0.9, seed=seed)
        got = [next(it) for _ in range(pieces)]
        if close:
            it.close()
        return got  # else dropped here, mid-generation

    def calls(t: int) -> list:
        mine, other = prompts[t % 8], prompts[(t + 3) % 8]
        seed = 100 + 31 * t
        ids, ids2 = tok.encode(mine), tok.encode(other)
        return [
            lambda: model.generate(mine, max_new_tokens=24, temperature=0.8, top_k=20,
                                   seed=seed),
            lambda: model.generate([mine, other], max_new_tokens=16, temperature=0,
                                   stop=["\n\n"]),
            lambda: model.generate_ids([ids, ids2], max_new_tokens=16, temperature=1.1,
                                       top_p=0.9, min_p=0.02, repetition_penalty=1.2,
                                       seed=(seed, seed + 1)),
            lambda: list(model.stream(mine, max_new_tokens=24, temperature=0.7,
                                      seed=seed + 2)),
            lambda: abandoned(other, seed + 3, pieces=1 + t % 2, close=t % 3 == 0),
            lambda: abandoned(mine, seed + 4, pieces=0, close=t % 2 == 0),
            lambda: model.generate(other, max_new_tokens=20, temperature=0.8, stop=["e"],
                                   seed=seed + 5),
        ]

    per_thread = [calls(t) for t in range(THREADS)]
    alone = [[call() for call in per_thread[t]] for t in range(THREADS)]
    kept = []
    mismatches: list[str] = []

    def thread_work(t: int, barrier: threading.Barrier):
        barrier.wait()
        mine = per_thread[t]
        order = list(range(len(mine)))
        order = order[t % len(order):] + order[:t % len(order)]  # threads in different calls
        for i in order:
            got = mine[i]()
            ok = got == alone[t][i] if not hasattr(got, "shape") else (
                got.shape == alone[t][i].shape and (got == alone[t][i]).all())
            if not ok:
                mismatches.append(f"thread {t}, call {i}: differs from the call alone")
            if leak_bytes:
                probe.leak(leak_bytes)
                kept.append(object())

    def one_round():
        barrier = threading.Barrier(THREADS)
        threads = [threading.Thread(target=thread_work, args=(t, barrier))
                   for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    for _ in range(WARMUP_ROUNDS):
        one_round()
    gc.collect()
    before, in_use_before = probe.rss(), probe.malloc_in_use()
    samples = []
    for _ in range(ROUNDS):
        one_round()
        samples.append(probe.rss())
    gc.collect()
    after, in_use_after = probe.rss(), probe.malloc_in_use()
    return {"fastlstm": fastlstm.__file__, "calls": ROUNDS * THREADS * len(per_thread[0]),
            "mismatches": mismatches[:10], "mismatch_count": len(mismatches),
            "before": before, "after": after, "samples": samples,
            "malloc_growth": None if in_use_before is None else in_use_after - in_use_before}


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def runs():
    """Both workers at once (clean, leaking): {leak_bytes: result}.  32 OpenMP threads
    share the machine's cores (passive: run_workers)."""
    return run_workers(__file__, {0: ["0"], LEAK_BYTES: [str(LEAK_BYTES)]}, TIMEOUT_S)


def _describe(result) -> str:
    return (f"{result['calls']} calls in {THREADS} threads: RSS {result['before'] / 2**20:.1f} "
            f"MB after the warm-up, growth {growth_mb(result):+.2f} MB (per round: "
            f"{rss_steps(result)}); bytes in use by malloc {malloc_growth(result)}")


def test_sixteen_threads_get_what_they_get_alone(runs):
    result = runs[0]
    assert result["mismatch_count"] == 0, result["mismatches"]


def test_sixteen_threads_leave_memory_flat(runs, record_property):
    result = runs[0]
    record_property("soak_rss_growth_mb", round(growth_mb(result), 3))
    print("\n" + _describe(result))
    assert growth_mb(result) < BOUND_MB, _describe(result)
    if result["malloc_growth"] is not None:
        assert result["malloc_growth"] / 2**20 < MALLOC_BOUND_MB, _describe(result)


def test_the_soak_measurement_sees_a_leak(runs):
    """The same calls leaking LEAK_BYTES each must exceed the bounds (and agree still)."""
    result = runs[LEAK_BYTES]
    print("\nwith a leak: " + _describe(result))
    expected = result["calls"] * LEAK_BYTES / 2**20
    assert result["mismatch_count"] == 0, result["mismatches"]
    assert growth_mb(result) > max(BOUND_MB, 0.8 * expected), _describe(result)
    if result["malloc_growth"] is not None:
        assert result["malloc_growth"] / 2**20 > max(MALLOC_BOUND_MB, 0.9 * expected)


if __name__ == "__main__":
    print(json.dumps(_worker(int(sys.argv[1]))))
