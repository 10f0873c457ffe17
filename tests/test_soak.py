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
import os
import subprocess
import sys

import pytest

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

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/statm and glibc's malloc statistics")


# --------------------------------------------------------------------------- the worker
# Runs in the child process: `python test_soak.py LEAK_BYTES`; prints JSON.

def _worker(leak_bytes: int) -> dict:
    import ctypes
    import gc
    import threading

    import fastlstm

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        libc.malloc_trim(0)  # freed pages back first, so RSS counts memory in use
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    def malloc_in_use() -> int | None:
        if not hasattr(libc, "mallinfo2"):  # glibc < 2.33
            return None
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

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
                ctypes.memset(libc.malloc(leak_bytes), 1, leak_bytes)  # never freed
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
    before, in_use_before = rss(), malloc_in_use()
    samples = []
    for _ in range(ROUNDS):
        one_round()
        samples.append(rss())
    gc.collect()
    after, in_use_after = rss(), malloc_in_use()
    return {"fastlstm": fastlstm.__file__, "calls": ROUNDS * THREADS * len(per_thread[0]),
            "mismatches": mismatches[:10], "mismatch_count": len(mismatches),
            "before": before, "after": after, "samples": samples,
            "malloc_growth": None if in_use_before is None else in_use_after - in_use_before}


# --------------------------------------------------------------------------- the tests


def _start(leak_bytes: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path)
    env.setdefault("OMP_WAIT_POLICY", "passive")  # 32 OpenMP threads share the machine's cores
    return subprocess.Popen([sys.executable, __file__, str(leak_bytes)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs():
    """Both workers at once (clean, leaking): {leak_bytes: result}."""
    import fastlstm

    procs = {0: _start(0), LEAK_BYTES: _start(LEAK_BYTES)}
    results = {}
    for leak, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            raise
        assert proc.returncode == 0, f"worker (leak {leak}) failed:\n{err}"
        result = json.loads(out.strip().splitlines()[-1])
        assert result["fastlstm"] == fastlstm.__file__, "the worker imported another fastlstm"
        results[leak] = result
    return results


def _growth_mb(result) -> float:
    return (result["after"] - result["before"]) / 2**20


def _describe(result) -> str:
    steps = " ".join(f"{(s - result['before']) / 2**20:+.2f}" for s in result["samples"])
    malloc = ("unknown" if result["malloc_growth"] is None
              else f"{result['malloc_growth'] / 2**20:+.3f} MB")
    return (f"{result['calls']} calls in {THREADS} threads: RSS {result['before'] / 2**20:.1f} "
            f"MB after the warm-up, growth {_growth_mb(result):+.2f} MB (per round: {steps}); "
            f"bytes in use by malloc {malloc}")


def test_sixteen_threads_get_what_they_get_alone(runs):
    result = runs[0]
    assert result["mismatch_count"] == 0, result["mismatches"]


def test_sixteen_threads_leave_memory_flat(runs, record_property):
    result = runs[0]
    record_property("soak_rss_growth_mb", round(_growth_mb(result), 3))
    print("\n" + _describe(result))
    assert _growth_mb(result) < BOUND_MB, _describe(result)
    if result["malloc_growth"] is not None:
        assert result["malloc_growth"] / 2**20 < MALLOC_BOUND_MB, _describe(result)


def test_the_soak_measurement_sees_a_leak(runs):
    """The same calls leaking LEAK_BYTES each must exceed the bounds (and agree still)."""
    result = runs[LEAK_BYTES]
    print("\nwith a leak: " + _describe(result))
    expected = result["calls"] * LEAK_BYTES / 2**20
    assert result["mismatch_count"] == 0, result["mismatches"]
    assert _growth_mb(result) > max(BOUND_MB, 0.8 * expected), _describe(result)
    if result["malloc_growth"] is not None:
        assert result["malloc_growth"] / 2**20 > max(MALLOC_BOUND_MB, 0.9 * expected)


if __name__ == "__main__":
    print(json.dumps(_worker(int(sys.argv[1]))))
