"""What tests/test_batch.py and tests/test_faults.py share: the prompts and parameters of
their batch jobs, writing an input file, and `fastlstm batch` run in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fastlstm

PACKAGE_PARENT = Path(fastlstm.__file__).resolve().parents[1]
NAMES = ["ROMEO", "JULIET", "HAMLET", "OPHELIA", "KING LEAR", "PORTIA", "IAGO", "PUCK"]
PARAMS = dict(max_new_tokens=12, temperature=0.8, top_k=20)
CLI_PARAMS = ["--max-new-tokens", "12", "--temperature", "0.8", "--top-k", "20"]


def prompt(i: int) -> str:
    """Prompt i of a job: distinct for every i, of varied lengths, all inside the bundled
    model's vocabulary."""
    return f"{NAMES[i % len(NAMES)]}.{' ' * (i % 3)}Act {i}, scene {i % 7}:"


def prompts(n: int) -> list[str]:
    return [prompt(i) for i in range(n)]


def write_jsonl(path: Path, rows: list) -> Path:
    """One line per row: a dict as JSON, a str as it is (a bad line, say)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def batch_cli(*args: str, **kwargs) -> subprocess.Popen:
    """`python -m fastlstm batch ARGS` in a child process importing the fastlstm under test.

    It runs from the directory holding that fastlstm: `python -m` looks in the working
    directory first, and a source checkout there may have no compiled extensions (CI tests
    the installed package)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # --ray starts its own local Ray
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH"))
                                        if p)
    kwargs.setdefault("cwd", PACKAGE_PARENT)
    return subprocess.Popen([sys.executable, "-m", "fastlstm", "batch", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for_first_chunk(job: subprocess.Popen, out: Path, timeout: float) -> None:
    """Wait until the job has written something to `out`, has ended, or `timeout` seconds
    have passed: the moment a test kills or stops it mid-run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        if out.exists() and out.stat().st_size > 0:
            return
        time.sleep(0.005)
