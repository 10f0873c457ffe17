"""Batch jobs (fastlstm.batch, `fastlstm batch`): reading rows, bad rows, seeds, per-row
parameters, and crash safety: a job killed at any point and re-run loses and duplicates
nothing, and ends with the file an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fastlstm
from fastlstm import batch as batch_mod
from fastlstm.batch import BadRow, ResultWriter, Row, read_rows, row_seed, run_batch
from fastlstm.cli import main
from batch_jobs import (CLI_PARAMS, PACKAGE_PARENT, PARAMS, batch_cli, prompts,  # tests/
                        wait_for_first_chunk, write_jsonl)

@pytest.fixture(scope="module")
def model():
    return fastlstm.load(num_threads=2)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def copy_manifest(source: Path, output: Path) -> None:
    """Give `output` the job manifest of `source` (fastlstm.manifest), as a crash leaves it."""
    Path(f"{output}.manifest").write_bytes(Path(f"{source}.manifest").read_bytes())


def job_input(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "in.jsonl",
                       [{"id": f"p{i}", "prompt": p} for i, p in enumerate(prompts(n))])


# ---------------------------------------------------------------------------- reading rows


def test_read_rows_jsonl_reports_bad_rows_with_line_numbers(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"id": "a", "prompt": "ROMEO."}\n'          # 1 ok
        b'\n'                                           # 2 blank: skipped
        b'{"id": "b", "prompt": "x"\n'                  # 3 invalid JSON
        b'["not", "an", "object"]\n'                    # 4
        b'{"id": "c"}\n'                                # 5 missing prompt
        b'{"id": "d", "prompt": 7}\n'                   # 6 prompt not a string
        b'{"id": "e", "prompt": ""}\n'                  # 7 empty prompt
        b'{"id": 1.5, "prompt": "a"}\n'                 # 8 float id
        b'{"id": true, "prompt": "a"}\n'                # 9 bool id
        b'{"id": "f", "prompt": "a", "temprature": 1}\n'  # 10 unknown field (a typo)
        b'{"id": "g", "prompt": "\xff\xfe"}\n'          # 11 not UTF-8
        b'{"prompt": "no id", "temperature": 0}\r\n'    # 12 ok: id = line number, CRLF
        b'{"id": 5, "prompt": "last", "stop": ["\\n"]}'  # 13 ok, no final newline
    )
    rows = list(read_rows(path))
    assert [r.line for r in rows] == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    good = [r for r in rows if isinstance(r, Row)]
    assert good == [Row(1, "a", "ROMEO."), Row(12, 12, "no id", {"temperature": 0}),
                    Row(13, 5, "last", {"stop": ["\n"]})]
    bad = {r.line: r for r in rows if isinstance(r, BadRow)}
    assert "invalid JSON" in bad[3].error
    assert "JSON object" in bad[4].error
    assert 'missing "prompt"' in bad[5].error and bad[5].id == "c"
    assert "must be a string" in bad[6].error
    assert "empty" in bad[7].error
    assert '"id"' in bad[8].error and '"id"' in bad[9].error
    assert "'temprature'" in bad[10].error
    assert "UTF-8" in bad[11].error


def test_read_rows_text_ids_are_line_numbers(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfROMEO.\r\n\nJULIET.\n {not json}\n")
    assert list(read_rows(path)) == [Row(1, 1, "ROMEO."), Row(3, 3, "JULIET."),
                                     Row(4, 4, " {not json}")]


@pytest.mark.parametrize("name, first_line, expected", [
    ("in.jsonl", "ROMEO.", "jsonl"),  # the suffix decides
    ("in.txt", '{"prompt": "a"}', "text"),
    ("prompts", '{"prompt": "a"}', "jsonl"),  # no known suffix: the first line decides
    ("prompts", "ROMEO.", "text"),
    ("prompts", "[1, 2]", "text"),
])
def test_input_format_auto(tmp_path, name, first_line, expected):
    path = tmp_path / name
    path.write_text("\n" + first_line + "\n")
    assert batch_mod._input_format(path, "auto") == expected


def test_row_seed_depends_on_job_seed_and_id_only():
    assert row_seed(1, "a") == row_seed(1, "a")
    seeds = {row_seed(1, "a"), row_seed(2, "a"), row_seed(1, "b"), row_seed(1, 7),
             row_seed(1, "7")}
    assert len(seeds) == 5  # 7 and "7" are different ids
    assert all(0 <= s < 2**64 for s in seeds)


# ---------------------------------------------------------------------------- the job's output


def test_results_are_model_generate_with_the_recorded_seed(tmp_path, model):
    src = job_input(tmp_path, 30)
    summary = run_batch(src, tmp_path / "out.jsonl", model, batch_size=7, chunk_size=11,
                        seed=5, **PARAMS)
    assert (summary.generated, summary.skipped, summary.bad_rows) == (30, 0, [])
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == [f"p{i}" for i in range(30)]  # input order
    for r in records:
        assert r["seed"] == row_seed(5, r["id"])
        assert r["text"] == model.generate(r["prompt"], seed=r["seed"], **PARAMS)
        assert r["prompt_tokens"] == len(model.tokenizer.encode(r["prompt"]))
        assert r["new_tokens"] == len(model.tokenizer.encode(r["text"])) == 12
        assert r["finish_reason"] == "length"
    assert summary.new_tokens == 30 * 12


def test_output_does_not_depend_on_batch_chunk_or_threads(tmp_path, model):
    src = job_input(tmp_path, 40)
    run_batch(src, tmp_path / "a.jsonl", model, seed=3, **PARAMS)
    run_batch(src, tmp_path / "b.jsonl", None, num_threads=1, batch_size=3, chunk_size=7,
              seed=3, **PARAMS)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    run_batch(src, tmp_path / "c.jsonl", model, seed=4, **PARAMS)
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()


def test_weight_precision(tmp_path, model):
    """dtype loads the model in that precision: the results are those of that model."""
    src = job_input(tmp_path, 12)
    run_batch(src, tmp_path / "int8.jsonl", None, dtype="int8", seed=3, **PARAMS)
    int8 = fastlstm.load(dtype="int8")
    results = read_jsonl(tmp_path / "int8.jsonl")
    assert [r["text"] for r in results] == [
        int8.generate(r["prompt"], seed=r["seed"], **PARAMS) for r in results]
    run_batch(src, tmp_path / "fp32.jsonl", model, seed=3, **PARAMS)
    assert (tmp_path / "int8.jsonl").read_bytes() != (tmp_path / "fp32.jsonl").read_bytes()
    with pytest.raises(ValueError, match="loaded as float32"):
        run_batch(src, tmp_path / "x.jsonl", model, dtype="int8", seed=3, **PARAMS)
    assert main(["batch", str(src), "-o", str(tmp_path / "cli.jsonl"), "--dtype", "int8",
                 "--seed", "3", "--quiet", *CLI_PARAMS]) == 0
    assert (tmp_path / "cli.jsonl").read_bytes() == (tmp_path / "int8.jsonl").read_bytes()


def test_per_row_parameters(tmp_path, model):
    rows = [
        {"id": "short", "prompt": "ROMEO.", "max_new_tokens": 3},
        {"id": "greedy", "prompt": "ROMEO.", "temperature": 0},
        {"id": "own-seed", "prompt": "ROMEO.", "seed": 123},
        {"id": "stop", "prompt": "ROMEO.", "stop": ["e"], "max_new_tokens": 200},
        {"id": "plain", "prompt": "ROMEO."},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run_batch(src, tmp_path / "out.jsonl", model, seed=9, **PARAMS)
    out = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert out["short"]["new_tokens"] == 3
    assert out["short"]["text"] == model.generate(
        "ROMEO.", **{**PARAMS, "max_new_tokens": 3}, seed=row_seed(9, "short"))
    assert out["greedy"]["text"] == model.generate("ROMEO.", **{**PARAMS, "temperature": 0})
    assert out["own-seed"]["seed"] == 123
    assert out["own-seed"]["text"] == model.generate("ROMEO.", **PARAMS, seed=123)
    assert out["stop"]["text"].endswith("e") and out["stop"]["text"].count("e") == 1
    assert out["stop"]["finish_reason"] == "stop"
    assert out["plain"]["finish_reason"] == "length"
    assert len({out[k]["text"] for k in ("plain", "own-seed")}) == 2


def test_bad_rows_are_reported_and_the_job_goes_on(tmp_path, model):
    rows = [
        {"id": 0, "prompt": "ROMEO."},
        "this is not JSON",
        {"id": 2, "prompt": "ROMEO.", "temperature": -1},
        {"id": 3, "prompt": "ROMEO.", "top_p": "high"},
        {"id": 4, "prompt": "Ωmega"},                          # not in the vocabulary
        {"id": 5, "prompt": "ROMEO.", "stop": ["Ω"]},          # fails inside generate
        {"id": 6, "prompt": "JULIET."},                        # same params as 5: still done
        {"id": 0, "prompt": "again"},                          # duplicate id
        {"id": 8, "prompt": "ROMEO.", "eos_token_id": 10**6},  # fails inside generate
        {"id": 9, "prompt": "HAMLET."},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = run_batch(src, tmp_path / "out.jsonl", model, seed=1, errors=tmp_path / "err.jsonl",
                        batch_size=4, **PARAMS)
    assert summary.generated == 3
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [0, 6, 9]
    bad = {b.line: b.error for b in summary.bad_rows}
    assert sorted(bad) == [2, 3, 4, 5, 6, 8, 9]
    assert "temperature" in bad[3] and "top_p" in bad[4] and "'Ω'" in bad[5]
    assert "stop string" in bad[6] and "duplicate id (first on line 1)" in bad[8]
    assert "eos_token_id" in bad[9]
    errors = read_jsonl(tmp_path / "err.jsonl")
    assert sorted(e["line"] for e in errors) == [2, 3, 4, 5, 6, 8, 9]
    assert {e["line"]: e.get("id") for e in errors}[6] == 5


def test_a_failing_row_does_not_take_its_batch_with_it(model):
    """generate_tasks' safety net: a call that raises is split until only the culprit fails."""
    params, key = batch_mod.check_params(PARAMS)
    tasks = [batch_mod.Task(i, i, p, model.tokenizer.encode(p), params, key, seed=i)
             for i, p in enumerate(prompts(9))]
    tasks[6].ids = [10**6]  # not a token id: generate_ids refuses the whole call
    results = batch_mod.generate_tasks(model, tasks)
    assert isinstance(results[6], str) and "out of range" in results[6]
    for i, result in enumerate(results):
        if i != 6:
            assert result["text"] == model.generate(tasks[i].prompt, seed=i, **PARAMS)


def test_job_level_errors_stop_before_anything_is_written(tmp_path, model):
    src = job_input(tmp_path, 3)
    with pytest.raises(ValueError, match="temperature"):
        run_batch(src, tmp_path / "out.jsonl", model, temperature=-1)
    with pytest.raises(ValueError, match="stop string 'Ω' can never be generated"):
        run_batch(src, tmp_path / "out.jsonl", model, stop=["Ω"])
    with pytest.raises(ValueError, match="unknown generation parameter 'temprature'"):
        run_batch(src, tmp_path / "out.jsonl", model, temprature=1)
    with pytest.raises(FileNotFoundError):
        run_batch(tmp_path / "missing.jsonl", tmp_path / "out.jsonl", model)
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------------------- resuming


def test_rerun_skips_what_is_done(tmp_path, model):
    src = job_input(tmp_path, 20)
    out = tmp_path / "out.jsonl"
    first = run_batch(src, out, model, seed=2, **PARAMS)
    before = out.read_bytes()
    again = run_batch(src, out, model, seed=2, **PARAMS)
    assert (first.generated, again.generated, again.skipped) == (20, 0, 20)
    assert out.read_bytes() == before


def test_resume_after_a_failure_between_chunks(tmp_path, model, monkeypatch):
    src = job_input(tmp_path, 50)
    run_batch(src, tmp_path / "reference.jsonl", model, seed=7, **PARAMS)

    real_write = ResultWriter.write
    calls = []

    def failing_write(self, records):
        calls.append(len(records))
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        real_write(self, records)

    monkeypatch.setattr(ResultWriter, "write", failing_write)
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_batch(src, out, model, seed=7, chunk_size=8, **PARAMS)
    assert len(read_jsonl(out)) == 16  # two whole chunks, nothing of the third
    monkeypatch.setattr(ResultWriter, "write", real_write)

    summary = run_batch(src, out, model, seed=7, chunk_size=8, **PARAMS)
    assert (summary.skipped, summary.generated) == (16, 34)
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()


def test_resume_from_a_file_cut_at_any_byte(tmp_path, model):
    """A crash mid-write leaves any prefix of the file: resuming must end with the same file."""
    src = job_input(tmp_path, 24)
    reference = tmp_path / "reference.jsonl"
    run_batch(src, reference, model, seed=11, chunk_size=5, **PARAMS)
    data = reference.read_bytes()
    newlines = [i for i, b in enumerate(data) if b == ord("\n")]
    cuts = sorted({0, 1, newlines[0], newlines[0] + 1, newlines[3] - 7, newlines[10] + 1,
                   len(data) // 2, len(data) - 1})
    for cut in cuts:
        out = tmp_path / f"cut{cut}.jsonl"
        out.write_bytes(data[:cut])
        copy_manifest(reference, out)  # a crash leaves it in place, ahead of the output
        complete = data[:cut].count(b"\n")
        summary = run_batch(src, out, model, seed=11, chunk_size=5, **PARAMS)
        assert summary.skipped == complete, cut
        assert summary.repaired_bytes == cut - (newlines[complete - 1] + 1 if complete else 0)
        assert out.read_bytes() == data, f"cut at byte {cut}"


def test_resume_drops_a_garbage_tail(tmp_path, model):
    """After a power loss the tail can hold zeros or half a line: cut it, keep the rest."""
    src = job_input(tmp_path, 10)
    reference = tmp_path / "reference.jsonl"
    run_batch(src, reference, model, seed=1, **PARAMS)
    data = reference.read_bytes()
    first_two = b"".join(data.splitlines(keepends=True)[:2])
    out = tmp_path / "out.jsonl"
    out.write_bytes(first_two + b"\0" * 100 + b"\n" + b'{"id": "p2", "te')
    copy_manifest(reference, out)
    summary = run_batch(src, out, model, seed=1, **PARAMS)
    assert summary.skipped == 2
    assert out.read_bytes() == data


def test_a_file_with_a_bad_line_in_the_middle_is_left_alone(tmp_path, model):
    src = job_input(tmp_path, 5)
    out = tmp_path / "out.jsonl"
    content = b'{"id": "p0", "text": "x"}\nnot ours\n{"id": "p1", "text": "y"}\n'
    out.write_bytes(content)
    with pytest.raises(ValueError, match="line 2 is not a fastlstm batch result"):
        run_batch(src, out, model, seed=1, **PARAMS)
    assert out.read_bytes() == content


def test_two_jobs_cannot_write_one_file(tmp_path):
    with ResultWriter(tmp_path / "out.jsonl"):
        with pytest.raises(ValueError, match="another fastlstm batch job"):
            ResultWriter(tmp_path / "out.jsonl")
    ResultWriter(tmp_path / "out.jsonl").close()  # the lock goes with the first


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, model):
    n = 1500
    src = job_input(tmp_path, n)
    args = [str(src), "--seed", "5", "--max-new-tokens", "24", "--chunk-size", "25",
            "--batch-size", "25", "--quiet"]
    out = tmp_path / "out.jsonl"
    job = batch_cli(*args, "-o", str(out))
    wait_for_first_chunk(job, out, timeout=120)
    job.send_signal(signal.SIGKILL)
    job.communicate()
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    written = out.read_bytes()
    assert 0 < written.count(b"\n") < n

    resumed = batch_cli(*args, "-o", str(out))
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()

    reference = tmp_path / "reference.jsonl"
    run_batch(src, reference, model, seed=5, max_new_tokens=24, temperature=0.8)
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == n
    assert out.read_bytes() == reference.read_bytes()
    assert out.read_bytes().startswith(written)


# ---------------------------------------------------------------------------- command line


def test_cli_exit_status_errors_file_and_text_input(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("ROMEO.\n\nJULIET.\nΩ\n")
    out = tmp_path / "out.jsonl"
    code = main(["batch", str(src), "-o", str(out), "--max-new-tokens", "5", "--seed", "1",
                 "--errors", str(tmp_path / "err.jsonl"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{src}:4: bad row:" in err and "'Ω'" in err
    assert [r["id"] for r in read_jsonl(out)] == [1, 3]
    assert read_jsonl(tmp_path / "err.jsonl") == [
        {"line": 4, "error": read_jsonl(tmp_path / "err.jsonl")[0]["error"], "id": 4}]

    src.write_text("ROMEO.\n")
    assert main(["batch", str(src), "-o", str(tmp_path / "ok.jsonl"), "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["batch", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "fastlstm: error:" in capsys.readouterr().err
    assert main(["batch", str(src), "-o", str(tmp_path / "x.jsonl"), "--top-p", "3"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_cli_summary_and_seed_match_the_api(tmp_path, capsys, model):
    src = job_input(tmp_path, 6)
    assert main(["batch", str(src), "-o", str(tmp_path / "cli.jsonl"), "--max-new-tokens", "12",
                 "--top-k", "20", "--seed", "4"]) == 0
    err = capsys.readouterr().err
    assert "6 prompts generated (72 tokens" in err and "job seed 4" in err
    run_batch(src, tmp_path / "api.jsonl", model, seed=4, **PARAMS)
    assert (tmp_path / "cli.jsonl").read_bytes() == (tmp_path / "api.jsonl").read_bytes()


def test_importing_batch_modules_imports_neither_ray_nor_torch(tmp_path):
    script = ("import sys, fastlstm, fastlstm.batch, fastlstm.ray_data, fastlstm.cli\n"
              "heavy = [m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'pyarrow')]\n"
              "assert not heavy, heavy[:5]\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_PARENT)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
