"""Startup: `import fastlstm` in a fresh interpreter, and loading the bundled model plus
generating its first token.  Each round is a fresh subprocess; the times are measured inside
it (interpreter startup excluded) and stored in extra_info, in seconds (the file is in the page
cache after the first, untimed run)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import fastlstm
from fastlstm.model import BUNDLED_MODEL
from bench.conftest import QUICK

ROUNDS = 3 if QUICK else 10
PACKAGE_PARENT = str(Path(fastlstm.__file__).resolve().parents[1])  # the fastlstm under test

IMPORT = """
import time
t0 = time.perf_counter()
import {module}
print(time.perf_counter() - t0)
"""

LOAD_AND_FIRST_TOKEN = """
import time
t0 = time.perf_counter()
import fastlstm
t1 = time.perf_counter()
model = fastlstm.load()
t2 = time.perf_counter()
out = model.generate_ids([[0]], max_new_tokens=1, temperature=0.8, seed=1)
t3 = time.perf_counter()
assert out.shape == (1, 1) and 0 <= out[0, 0] < model.config.vocab_size, out
print(t1 - t0, t2 - t1, t3 - t2)
"""


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, *flags, "-c", code], cwd=PACKAGE_PARENT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def _seconds(code: str) -> list[float]:
    return [float(x) for x in _python(code).stdout.split()]


def import_breakdown(top: int = 6) -> list[tuple[str, float]]:
    """fastlstm's direct imports by cumulative seconds (python -X importtime), largest first,
    and numpy's total wherever it is first imported."""
    stderr = _python("import fastlstm", "-X", "importtime").stderr
    children, found, numpy_s = [], [], 0.0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not cumulative.strip().isdigit():
            continue  # the header line
        depth = len(name) - len(name.lstrip()) - 1
        module, seconds = name.strip(), int(cumulative) / 1e6
        if module == "numpy":
            numpy_s = seconds
        if depth == 0:
            if module == "fastlstm":
                found = children
            children = []
        elif depth == 2:
            children.append((module, seconds))
    found.sort(key=lambda x: -x[1])
    return found[:top] + [("numpy (inside the above)", numpy_s)]


def test_import_time(benchmark):
    benchmark.group = "startup"
    _python(IMPORT.format(module="fastlstm"))  # untimed: page cache, .pyc files
    samples = []
    benchmark.pedantic(lambda: samples.extend(_seconds(IMPORT.format(module="fastlstm"))),
                       rounds=ROUNDS, iterations=1)
    numpy_alone = [_seconds(IMPORT.format(module="numpy"))[0] for _ in range(ROUNDS)]
    benchmark.extra_info.update(kind="import", seconds=statistics.median(samples),
                                samples=samples, numpy_seconds=statistics.median(numpy_alone),
                                breakdown=import_breakdown())
    assert "torch" not in _python("import sys, fastlstm; print(sorted(sys.modules))").stdout


@pytest.mark.skipif(not os.path.exists(BUNDLED_MODEL), reason="no bundled model file yet")
def test_load_bundled_and_first_token(benchmark):
    benchmark.group = "startup"
    _python(LOAD_AND_FIRST_TOKEN)  # untimed: page cache
    samples = []
    benchmark.pedantic(lambda: samples.append(_seconds(LOAD_AND_FIRST_TOKEN)),
                       rounds=ROUNDS, iterations=1)
    imports, loads, firsts = zip(*samples)
    benchmark.extra_info.update(
        kind="load_first_token", tokens=1,
        seconds=statistics.median(l + f for _, l, f in samples),
        import_seconds=statistics.median(imports), load_seconds=statistics.median(loads),
        first_token_seconds=statistics.median(firsts),
        model_bytes=os.path.getsize(BUNDLED_MODEL))
