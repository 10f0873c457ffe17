"""Faults in long batch jobs on one machine, and what each leaves behind:

* a full disk: the job stops with an OSError naming the output, which holds whole chunks
  only; once there is room, running it again completes the very file of a clean run (a
  fault-injecting os.write always; a real, tiny tmpfs too where a mount namespace can be had);
* SIGTERM (and Ctrl-C): exit status 143 (130), the chunk being written finished first,
  resumable to the clean run's file;
* a changed input or job between a run and its resume: refused, saying what differs, unless
  resume_changed / --resume-changed; rows added at the end are simply generated;
* an output that is not a result file: refused, never cut.

"Equal to a clean run" is byte equality with the file an uninterrupted job writes: no row
lost, none written twice.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import fastlstm
from fastlstm.batch import ChangedJobError, run_batch
from fastlstm.cli import main
from batch_jobs import (CLI_PARAMS, PACKAGE_PARENT, PARAMS, batch_cli, prompt,  # tests/
                        wait_for_first_chunk, write_jsonl)

@pytest.fixture(scope="module")
def model():
    return fastlstm.load(num_threads=2)


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"p{i}", "prompt": prompt(i)} for i in range(start, start + n)]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def assert_whole_chunks_of(output: Path, reference: bytes, chunk: int) -> int:
    """The output is the reference's first k whole chunks (k may be 0); return k."""
    data = output.read_bytes()
    assert reference.startswith(data), "the output is not a prefix of the clean run's"
    assert data == b"" or data.endswith(b"\n"), "the output ends in part of a line"
    k, rest = divmod(data.count(b"\n"), chunk)
    assert rest == 0, f"the output ends in part of a chunk ({rest} of {chunk} lines)"
    return k


# ---------------------------------------------------------------------------- a full disk


def test_disk_full_stops_with_whole_chunks_and_resumes(tmp_path, model, monkeypatch, capsys):
    """os.write as a filling disk does it: a short write, then ENOSPC, in the third chunk."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(50))
    clean = tmp_path / "clean.jsonl"
    run_batch(src, clean, model, seed=7, chunk_size=8, **PARAMS)
    reference = clean.read_bytes()
    room = len(b"".join(lines_of(clean)[:16])) + 300  # two chunks and part of a line

    out = tmp_path / "out.jsonl"
    out.touch()  # so the fault can tell the output's writes (by inode) from any other
    inode = out.stat().st_ino
    real_write = os.write
    written = [0]

    def filling_disk_write(fd, data):
        if os.fstat(fd).st_ino != inode:
            return real_write(fd, data)
        left = room - written[0]
        if left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[:left]))
        written[0] += n
        return n

    monkeypatch.setattr(os, "write", filling_disk_write)
    with pytest.raises(OSError) as caught:
        run_batch(src, out, model, seed=7, chunk_size=8, **PARAMS)
    assert caught.value.errno == errno.ENOSPC
    assert str(out) in str(caught.value) and "No space left" in str(caught.value)
    assert "16 results written before are kept" in str(caught.value)
    assert written[0] == room  # the fault struck: a short write, then ENOSPC
    assert assert_whole_chunks_of(out, reference, 8) == 2

    # The command line says the same, and exits with 2.
    written[0] = room
    assert main(["batch", str(src), "-o", str(out), "--seed", "7", "--chunk-size", "8",
                 "-q", *CLI_PARAMS]) == 2
    err = capsys.readouterr().err
    assert f"fastlstm: error: cannot write to {out}: No space left on device" in err
    assert assert_whole_chunks_of(out, reference, 8) == 2

    monkeypatch.setattr(os, "write", real_write)  # room again
    summary = run_batch(src, out, model, seed=7, chunk_size=8, **PARAMS)
    assert (summary.skipped, summary.generated) == (16, 34)
    assert out.read_bytes() == reference


def _namespace_runner() -> list[str] | None:
    """A command prefix that runs a shell in a private mount namespace where it may mount a
    tmpfs (as root, or as a mapped root in a user namespace), or None."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return None
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation",
                    "private"]):
        try:
            done = subprocess.run([*prefix, "sh", "-c", probe], capture_output=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    return None


@pytest.mark.slow
def test_disk_full_on_a_real_tmpfs(tmp_path, model):
    """A 64 KiB tmpfs fills during the job: the kernel's own short write and ENOSPC.  The
    mount lives in a mount namespace of the child process, so it ends with the child and
    can never be left behind; the test then frees room by remounting it bigger."""
    runner = _namespace_runner()
    if runner is None:
        pytest.skip("no mount namespace with tmpfs here; the injected fault test covers it")
    n, chunk = 600, 25
    src = write_jsonl(tmp_path / "in.jsonl", rows(n))
    clean = tmp_path / "clean.jsonl"
    run_batch(src, clean, model, seed=3, chunk_size=chunk, **PARAMS)
    reference = clean.read_bytes()
    assert len(reference) > 96 * 1024  # the disk must fill

    disk = tmp_path / "disk"
    disk.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")) if p))
    job = (f"{sys.executable} -m fastlstm batch {src} -o {disk}/out.jsonl --seed 3 "
           f"--chunk-size {chunk} -q " + " ".join(CLI_PARAMS))
    script = textwrap.dedent(f"""\
        mount -t tmpfs -o size=64k tmpfs {disk}
        rc=0; {job} 2> {tmp_path}/full.err || rc=$?; echo $rc > {tmp_path}/full.rc
        cp {disk}/out.jsonl {tmp_path}/full.jsonl
        mount -o remount,size=4m {disk}
        rc=0; {job} 2> {tmp_path}/room.err || rc=$?; echo $rc > {tmp_path}/room.rc
        cp {disk}/out.jsonl {tmp_path}/room.jsonl
        """)
    done = subprocess.run([*runner, "sh", "-ec", script], cwd=PACKAGE_PARENT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert not any(disk.iterdir()), "the tmpfs is still mounted outside its namespace"

    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "2", err
    assert f"cannot write to {disk}/out.jsonl" in err and "No space left on device" in err
    whole = assert_whole_chunks_of(tmp_path / "full.jsonl", reference, chunk)
    assert 0 < whole * chunk < n
    assert (tmp_path / "room.rc").read_text().strip() == "0", (tmp_path / "room.err").read_text()
    assert (tmp_path / "room.jsonl").read_bytes() == reference


# ---------------------------------------------------------------------------- SIGTERM, Ctrl-C


@pytest.mark.slow
def test_sigterm_stops_the_job_resumably(tmp_path, model):
    n, chunk = 1200, 25
    src = write_jsonl(tmp_path / "in.jsonl", rows(n))
    args = [str(src), "--seed", "5", "--max-new-tokens", "24", "--chunk-size", str(chunk),
            "--batch-size", "25", "--quiet"]
    out = tmp_path / "out.jsonl"
    job = batch_cli(*args, "-o", str(out))
    wait_for_first_chunk(job, out, timeout=120)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 143, stderr.decode()
    assert "terminated (SIGTERM)" in stderr.decode() and str(out) in stderr.decode()

    clean = tmp_path / "clean.jsonl"
    run_batch(src, clean, model, seed=5, max_new_tokens=24, temperature=0.8,
              chunk_size=chunk)
    reference = clean.read_bytes()
    assert 0 < assert_whole_chunks_of(out, reference, chunk) * chunk < n

    resumed = batch_cli(*args, "-o", str(out))
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()
    assert out.read_bytes() == reference


@pytest.mark.slow
def test_sigterm_stops_a_ray_job_too(tmp_path, model):
    """ray.init makes SIGTERM exit the driver at once (status 15); --ray keeps ours."""
    n, chunk = 600, 20
    src = write_jsonl(tmp_path / "in.jsonl", rows(n))
    args = [str(src), "--seed", "5", "--max-new-tokens", "24", "--chunk-size", str(chunk),
            "--batch-size", "10", "--quiet"]
    out = tmp_path / "out.jsonl"
    job = batch_cli(*args, "-o", str(out), "--ray", "--workers", "1", cwd=tmp_path)
    wait_for_first_chunk(job, out, timeout=180)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr.decode()[-2000:]

    clean = tmp_path / "clean.jsonl"
    run_batch(src, clean, model, seed=5, max_new_tokens=24, temperature=0.8)
    reference = clean.read_bytes()
    assert 0 < assert_whole_chunks_of(out, reference, chunk) * chunk < n
    summary = run_batch(src, out, model, seed=5, max_new_tokens=24, temperature=0.8)
    assert summary.skipped > 0 and out.read_bytes() == reference


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_write_lets_the_chunk_finish(tmp_path, monkeypatch, capsys,
                                                        signum, status):
    """The signal arrives between two halves of a chunk's write: the chunk is written whole,
    then the job stops (without the wait, the handler would cut the write short)."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(30))
    out = tmp_path / "out.jsonl"
    out.touch()
    inode = out.stat().st_ino
    real_write = os.write
    sent = []

    def write_then_signal(fd, data):
        if os.fstat(fd).st_ino != inode or sent:
            return real_write(fd, data)
        n = real_write(fd, bytes(data[:len(data) // 2]))
        sent.append(signum)
        os.kill(os.getpid(), signum)
        time.sleep(0.01)  # the handler runs in here, were it not held back
        return n

    monkeypatch.setattr(os, "write", write_then_signal)
    code = main(["batch", str(src), "-o", str(out), "--seed", "1", "--chunk-size", "10",
                 "-q", *CLI_PARAMS])
    assert sent and code == status, capsys.readouterr().err
    data = out.read_bytes()
    assert data.count(b"\n") == 10 and data.endswith(b"\n")
    assert [json.loads(line)["id"] for line in data.splitlines()] == [f"p{i}" for i in range(10)]


# ---------------------------------------------------------------------------- a changed job


@pytest.fixture
def done_job(tmp_path, model):
    """An output holding the results of 20 rows (seed 1, PARAMS), and its input."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out = tmp_path / "out.jsonl"
    run_batch(src, out, model, seed=1, chunk_size=8, **PARAMS)
    return src, out


def _refused(src, out, loaded, match: str, **options):
    """Resuming with `options` (model= another model) is refused, saying `match`, and
    touches neither the output nor its manifest; return the message."""
    before = out.read_bytes(), Path(f"{out}.manifest").read_bytes()
    kwargs = {"seed": 1, **PARAMS, **options}
    with pytest.raises(ChangedJobError, match=match) as caught:
        run_batch(src, out, kwargs.pop("model", loaded), **kwargs)
    assert "20 results of a different job" in str(caught.value)
    assert "--resume-changed" in str(caught.value)
    assert (out.read_bytes(), Path(f"{out}.manifest").read_bytes()) == before
    return str(caught.value)


def test_resuming_with_other_options_is_refused(done_job, model, tmp_path):
    src, out = done_job
    write_jsonl(src, rows(25))  # rows added: not a change
    _refused(src, out, model, "the job seed: 1 then, 2 now", seed=2)
    _refused(src, out, model, "temperature: 0.8 then, 0.9 now", temperature=0.9)
    _refused(src, out, model, "max_new_tokens: 12 then, 13 now", max_new_tokens=13)
    _refused(src, out, model, r'stop: \[\] then, \["e"\] now', stop=["e"])
    _refused(src, out, model, "top_k: 20 then, 0 now", top_k=0)
    _refused(src, out, model, "weight precision \\(dtype\\): float32 then, int8 now",
             model=None, dtype="int8")
    other = tmp_path / "fp16.safetensors"
    fastlstm.convert(model.path, other, dtype="float16")
    message = _refused(src, out, model, "the model: ", model=str(other), dtype="float32")
    assert str(other) in message and "SHA-256" in message

    # The same job resumes: same options (given again, or left at their defaults) and no
    # seed, which takes the one the output was started with.
    summary = run_batch(src, out, model, **PARAMS, top_p=1.0, chunk_size=8)
    assert (summary.job_seed, summary.skipped, summary.generated) == (1, 20, 5)
    clean = tmp_path / "clean.jsonl"
    run_batch(src, clean, model, seed=1, **PARAMS)
    assert out.read_bytes() == clean.read_bytes()


def test_resuming_with_changed_rows_is_refused(done_job, model):
    src, out = done_job
    original = rows(20)
    edits = {
        3: ({"prompt": "ROMEO. Act three"}, "line 4 \\(id 'p3'\\): the prompt"),
        5: ({"temperature": 0.5}, "line 6 \\(id 'p5'\\): temperature: not set then, 0.5 now"),
        8: ({"seed": 9}, "line 9 \\(id 'p8'\\): seed: not set then, 9 now"),
    }
    for i, (change, match) in edits.items():
        write_jsonl(src, original[:i] + [{**original[i], **change}] + original[i + 1:])
        _refused(src, out, model, match)
    changed = [{**r, "max_new_tokens": 3} for r in original[:9]] + original[9:]
    write_jsonl(src, changed)
    message = _refused(src, out, model, "9 rows already done have changed")
    assert "and 4 more" in message  # five are described

    # Rows gone from the input keep their results; rows added are generated.
    write_jsonl(src, original[5:] + rows(4, start=20))
    summary = run_batch(src, out, model, seed=1, **PARAMS)
    assert (summary.skipped, summary.generated) == (15, 4)


def test_resume_changed_keeps_the_results_and_goes_on(done_job, model, tmp_path):
    src, out = done_job
    before = out.read_bytes()
    edited = rows(20)
    edited[2]["prompt"] = "KING LEAR. Nothing will come of nothing"
    write_jsonl(src, edited + rows(6, start=20))
    with pytest.raises(ChangedJobError):
        run_batch(src, out, model, seed=1, **{**PARAMS, "temperature": 1.1})
    summary = run_batch(src, out, model, seed=1, resume_changed=True,
                        **{**PARAMS, "temperature": 1.1})
    assert (summary.skipped, summary.generated) == (20, 6)
    data = out.read_bytes()
    assert data.startswith(before)  # kept as they were, not regenerated
    new = [json.loads(line) for line in data[len(before):].splitlines()]
    assert [r["text"] for r in new] == [
        model.generate(r["prompt"], seed=r["seed"], **{**PARAMS, "temperature": 1.1})
        for r in new]
    manifest = [json.loads(line) for line in Path(f"{out}.manifest").read_text().splitlines()]
    last_job = [line for line in manifest if "job" in line][-1]
    assert last_job["job"]["params"]["temperature"] == 1.1
    assert any("the prompt" in c for c in last_job["resumed_with_changes"])

    # What was accepted is what later runs compare with.
    assert run_batch(src, out, model, seed=1, **{**PARAMS, "temperature": 1.1}).skipped == 26
    with pytest.raises(ChangedJobError, match="temperature: 1.1 then, 0.8 now"):
        run_batch(src, out, model, seed=1, **PARAMS)


def test_an_output_without_its_manifest(done_job, model):
    src, out = done_job
    Path(f"{out}.manifest").unlink()
    with pytest.raises(ChangedJobError, match="there is no manifest"):
        run_batch(src, out, model, seed=1, **PARAMS)
    assert not Path(f"{out}.manifest").exists()
    write_jsonl(src, rows(22))
    summary = run_batch(src, out, model, seed=1, resume_changed=True, **PARAMS)
    assert (summary.skipped, summary.generated) == (20, 2)
    assert run_batch(src, out, model, seed=1, **PARAMS).skipped == 22  # accepted since


def test_a_new_job_on_an_emptied_output_starts_a_new_manifest(done_job, model):
    src, out = done_job
    out.write_bytes(b"")
    summary = run_batch(src, out, model, seed=2, **PARAMS)
    assert summary.generated == 20
    assert run_batch(src, out, model, seed=2, **PARAMS).skipped == 20


def test_changed_rows_on_stdin_are_found_as_they_are_read(done_job, model, tmp_path,
                                                          monkeypatch):
    src, out = done_job
    edited = rows(24)
    edited[12]["prompt"] = "PUCK. If we shadows have offended"
    stdin = write_jsonl(tmp_path / "stdin.jsonl", edited)
    with open(stdin) as f:
        monkeypatch.setattr(sys, "stdin", f)
        with pytest.raises(ChangedJobError, match="line 13 of - \\(id 'p12'\\) changed since "
                                                  "its result was written \\(the prompt\\)"):
            run_batch("-", out, model, seed=1, input_format="jsonl", **PARAMS)
    with open(stdin) as f:
        monkeypatch.setattr(sys, "stdin", f)
        summary = run_batch("-", out, model, seed=1, input_format="jsonl",
                            resume_changed=True, **PARAMS)
    assert (summary.skipped, summary.generated) == (20, 4)


def test_cli_refuses_a_changed_job_and_the_flag_goes_on(done_job, capsys):
    src, out = done_job
    args = ["batch", str(src), "-o", str(out), "--seed", "1", "-q", *CLI_PARAMS]
    assert main(args + ["--min-p", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "fastlstm: error:" in err and "min_p: 0.0 then, 0.1 now" in err
    assert main(args + ["--min-p", "0.1", "--resume-changed"]) == 0
    assert "min_p: 0.0 then, 0.1 now" in capsys.readouterr().err  # said, not refused


# ---------------------------------------------------------------------------- the wrong output


def test_a_tail_damaged_by_a_power_loss_is_cut(tmp_path, model):
    """After a power loss an appended region can hold blocks of zeros amid the data of its
    lines, newlines included: such lines are cut off with the rest of the tail."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(10))
    clean = tmp_path / "clean.jsonl"
    run_batch(src, clean, model, seed=1, **PARAMS)
    good = b"".join(lines_of(clean)[:3])
    out = tmp_path / "out.jsonl"
    damaged = b'{"id": "p3", "pro' + b"\0" * 60 + b'ext": "x"}\n\0\0\n{"id'
    out.write_bytes(good + damaged)
    Path(f"{out}.manifest").write_bytes(Path(f"{clean}.manifest").read_bytes())
    summary = run_batch(src, out, model, seed=1, **PARAMS)
    assert (summary.skipped, summary.repaired_bytes) == (3, len(damaged))
    assert out.read_bytes() == clean.read_bytes()


@pytest.mark.parametrize("content", [
    b"my notes\nnot results at all\n",             # any file of other lines
    b'{"id": "p0", "text": "x"}\nnot ours\n',      # results, then something else
    b"not ours\n" + b"\0" * 40,                   # another file, then what looks torn
])
def test_an_output_that_is_not_a_result_file_is_left_alone(tmp_path, model, content):
    """Pointing a job at the wrong file must not cut it: only what a crash can leave (a last
    line without its newline, lines of NUL bytes) is taken for a torn tail."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(3))
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    with pytest.raises(ValueError, match="is not a fastlstm batch result"):
        run_batch(src, out, model, seed=1, **PARAMS)
    assert out.read_bytes() == content
