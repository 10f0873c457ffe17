"""Ctrl-C (SIGINT) stops a long generation promptly with KeyboardInterrupt, and the model
stays usable.  Runs in a child process so the signal cannot reach pytest itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fastlstm

PACKAGE_PARENT = Path(fastlstm.__file__).resolve().parents[1]

CHILD = r"""
import os, signal, threading, time
import fastlstm

# Python leaves SIGINT ignored if it started ignored (a test run in a background job of a
# non-interactive shell): restore Ctrl-C's usual KeyboardInterrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)

model = fastlstm.load(num_threads={threads})
expected = model.generate("ROMEO.", max_new_tokens=30, seed=3)
sent = []

def interrupt_soon():
    time.sleep(0.5)
    sent.append(time.perf_counter())
    os.kill(os.getpid(), signal.SIGINT)

for how in ("generate", "stream"):
    threading.Thread(target=interrupt_soon).start()
    try:
        if how == "generate":
            model.generate("ROMEO.", max_new_tokens=1_000_000, seed=1)
        else:
            for _ in model.stream("ROMEO.", max_new_tokens=1_000_000, seed=1):
                pass
        print(how, "finished")
    except KeyboardInterrupt:
        print(how, "interrupted after", round(1000 * (time.perf_counter() - sent[-1]), 1), "ms")
assert model.generate("ROMEO.", max_new_tokens=30, seed=3) == expected
print("usable")
"""


def run_child(threads: int, tmp_path) -> list[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run([sys.executable, "-c", CHILD.format(threads=threads)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_sigint_stops_a_million_token_generation(tmp_path):
    for threads in (1, 2):
        lines = run_child(threads, tmp_path)
        assert lines[-1] == "usable"
        for line in lines[:2]:
            how, word, *rest = line.split()
            assert word == "interrupted", line
            # The loop looks for signals every 10 ms; allow a loaded machine plenty more.
            assert float(rest[1]) < 1000, line
