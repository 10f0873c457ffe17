"""Ray workers that die during `fastlstm batch --ray`, on a local Ray instance started here.

* One actor process killed mid-job (SIGKILL, as the OOM killer or a lost node does it): Ray
  restarts it and retries its batch, and the output is byte for byte the file a
  single-machine run without the fault writes: no row lost, none duplicated.
* Actors killed again and again: after max_restarts restarts of one, the job stops with a
  clear error (exit status 2 from the command line), keeping every chunk written before;
  running it again completes the same file.

The actors are found as this process's descendants whose command line (Ray's process title)
names FastlstmPredictor, so another test run's Ray on the same machine is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import fastlstm
from fastlstm.batch import run_batch
from fastlstm.cli import main
from fastlstm.ray_data import run_batch_ray
from ray_local import local_ray  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="finds Ray's actor processes in /proc")]

NAMES = ["ROMEO", "JULIET", "HAMLET", "OPHELIA", "KING LEAR", "PORTIA", "IAGO", "PUCK"]
PARAMS = dict(max_new_tokens=30, temperature=0.8, top_p=0.9)
CHUNK = 20


@pytest.fixture(scope="module")
def model():
    return fastlstm.load(num_threads=1)


def write_input(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "prompt": f"{NAMES[i % 8]}. Act {i}"}) + "\n")
    return path


def actor_pids() -> list[int]:
    """Live FastlstmPredictor actor processes started (through Ray) by this process."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"FastlstmPredictor" not in f.read():
                    continue
            pid = int(entry)
            while pid > 1 and pid != me:  # walk up to us, or to init
                with open(f"/proc/{pid}/stat", "rb") as f:
                    pid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if pid == me:
            found.append(int(entry))
    return found


class Killer(threading.Thread):
    """Once the output holds a chunk, SIGKILL actors: `times` of them (None: every one seen,
    until stopped).  Records the output's line count at each kill."""

    def __init__(self, output: Path, times: int | None):
        super().__init__(daemon=True)
        self.output, self.times = output, times
        self.killed: list[int] = []
        self.lines_at_kill: list[int] = []
        self.stop = threading.Event()

    def lines(self) -> int:
        return self.output.read_bytes().count(b"\n") if self.output.exists() else 0

    def run(self):
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and self.lines() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.times is not None and len(self.killed) >= self.times:
                return
            fresh = [p for p in actor_pids() if p not in self.killed]
            if fresh:
                self.lines_at_kill.append(self.lines())
                try:
                    os.kill(fresh[0], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.killed.append(fresh[0])
            time.sleep(0.02)


def test_a_killed_worker_is_restarted_and_nothing_is_lost_or_doubled(local_ray, tmp_path,
                                                                     model):
    n = 400
    src = write_input(tmp_path / "in.jsonl", n)
    clean = tmp_path / "clean.jsonl"
    run_batch(src, clean, model, seed=4, chunk_size=CHUNK, **PARAMS)

    out = tmp_path / "out.jsonl"
    killer = Killer(out, times=1)
    killer.start()
    try:
        summary = run_batch_ray(src, out, None, workers=2, seed=4, batch_size=10,
                                chunk_size=CHUNK, **PARAMS)
    finally:
        killer.stop.set()
        killer.join()
    assert len(killer.killed) == 1, "no actor was killed"
    assert killer.lines_at_kill[0] < n, "the job was over before the kill"
    assert summary.generated == n
    ids = [json.loads(line)["id"] for line in out.read_bytes().splitlines()]
    assert len(ids) == len(set(ids)) == n  # 0 lost, 0 duplicated
    assert out.read_bytes() == clean.read_bytes()


def test_workers_that_keep_dying_stop_the_job_and_keep_its_chunks(local_ray, tmp_path, model,
                                                                  capsys):
    n = 400
    src = write_input(tmp_path / "in.jsonl", n)
    clean = tmp_path / "clean.jsonl"
    run_batch(src, clean, model, seed=6, chunk_size=CHUNK, **PARAMS)
    reference = clean.read_bytes()

    out = tmp_path / "out.jsonl"
    args = ["batch", str(src), "-o", str(out), "--seed", "6", "--chunk-size", str(CHUNK),
            "--batch-size", "10", "--max-new-tokens", "30", "--top-p", "0.9", "-q",
            "--ray", "--workers", "2"]
    killer = Killer(out, times=None)
    killer.start()
    try:
        code = main(args + ["--max-restarts", "1"])
    finally:
        killer.stop.set()
        killer.join()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "fastlstm: error: a Ray worker died more often than its 1 restart allow" in err
    assert f"results in {out} are kept" in err
    # Two actors, each killed twice at most: a bounded number of retries.
    assert 2 <= len(killer.killed) <= 4, killer.killed
    data = out.read_bytes()
    assert reference.startswith(data) and data.count(b"\n") % CHUNK == 0
    assert data.count(b"\n") >= max(killer.lines_at_kill) > 0  # every chunk written is kept
    assert data.count(b"\n") < n

    assert main(args) == 0
    assert out.read_bytes() == reference
