"""The Ray Data integration (fastlstm.ray_data) on a local Ray instance started here: the
predictor in map_batches, and `fastlstm batch --ray` writing the very file the
single-machine job writes, resuming included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray

import fastlstm
from fastlstm.batch import row_seed, run_batch
from fastlstm.cli import main
from fastlstm.ray_data import FastlstmPredictor, run_batch_ray
from ray_local import local_ray  # noqa: F401  (a fixture)

PARAMS = dict(max_new_tokens=10, temperature=0.8, top_p=0.9)
NAMES = ["ROMEO", "JULIET", "HAMLET", "OPHELIA", "KING LEAR", "PORTIA", "IAGO", "PUCK"]


@pytest.fixture(scope="module")
def model():
    return fastlstm.load(num_threads=1)


def write_input(path, n: int):
    """n rows: most plain, some with their own parameters or seed, and a few bad ones."""
    with open(path, "w") as f:
        for i in range(n):
            row = {"id": i if i % 2 else f"r{i}", "prompt": f"{NAMES[i % 8]}.{' ' * (i % 5)}"}
            if i % 7 == 3:
                row["max_new_tokens"] = 4
            if i % 11 == 5:
                row.update(temperature=0, stop=["\n"])
            if i % 13 == 6:
                row["seed"] = i
            f.write(json.dumps(row) + "\n")
            if i % 17 == 8:
                f.write('{"id": "bad", "prompt": 1}\n')  # bad row, then duplicate ids
    return path


def test_predictor_called_directly(model):
    predictor = FastlstmPredictor(None, seed=3, **PARAMS)
    batch = {"id": np.array(["a", "b", "c"], object),
             "prompt": np.array(["ROMEO.", "JULIET.", "Ω"], object)}
    out = predictor(batch)
    assert list(out["id"]) == ["a", "b", "c"]
    for i in range(2):
        seed = row_seed(3, batch["id"][i])
        assert out["seed"][i] == seed
        assert out["text"][i] == model.generate(batch["prompt"][i], seed=seed, **PARAMS)
        assert out["new_tokens"][i] == 10 and out["finish_reason"][i] == "length"
        assert out["error"][i] is None
    assert out["text"][2] is None and "'Ω'" in out["error"][2]


@pytest.mark.slow  # starts a local Ray
def test_predictor_in_map_batches_over_read_json(local_ray, tmp_path, model):
    """fastlstm batch's JSONL input read by Ray: per-row parameters arrive as columns with
    nulls where a row does not set them, and must mean what they mean to fastlstm batch."""
    rows = []
    for i in range(40):
        row = {"id": i, "prompt": f"{NAMES[i % 8]}."}
        if i % 3 == 1:
            row["max_new_tokens"] = 3 + i % 4
        if i % 5 == 2:
            row.update(seed=1000 + i, stop=["e", "\n"])
        rows.append(row)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # materialize(): the read tasks need a CPU, and the two actors hold both of the test's.
    ds = ray.data.read_json(str(src)).materialize().map_batches(
        FastlstmPredictor, fn_constructor_kwargs={"seed": 8, **PARAMS}, batch_size=6,
        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)
    out = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in out] == list(range(40))
    for row, r in zip(rows, out):
        params = {**PARAMS, **{k: v for k, v in row.items() if k not in ("id", "prompt")}}
        seed = params.pop("seed", row_seed(8, row["id"]))
        assert r["error"] is None, r["error"]
        assert r["text"] == model.generate(row["prompt"], seed=seed, **params), row


@pytest.mark.slow  # starts a local Ray
def test_ray_job_writes_the_single_machine_file(local_ray, tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", 150)
    single = run_batch(src, tmp_path / "single.jsonl", model, seed=21, batch_size=32,
                       chunk_size=40, **PARAMS)
    on_ray = run_batch_ray(src, tmp_path / "ray.jsonl", None, workers=2, seed=21,
                           batch_size=9, chunk_size=40, **PARAMS)
    assert single.generated == on_ray.generated == 150
    assert [b.line for b in on_ray.bad_rows] == [b.line for b in single.bad_rows] != []
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()

    # A job cut short anywhere (here: mid-line, in the third chunk) resumes on Ray.
    data = (tmp_path / "single.jsonl").read_bytes()
    cut = data.index(b"\n", len(data) // 2) - 5
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_bytes(data[:cut])
    # The job manifest, as a crash leaves it: written ahead of the output.
    (tmp_path / "resumed.jsonl.manifest").write_bytes(
        (tmp_path / "single.jsonl.manifest").read_bytes())
    summary = run_batch_ray(src, resumed, None, workers=2, seed=21, chunk_size=40, **PARAMS)
    assert summary.skipped == data[:cut].count(b"\n") and summary.repaired_bytes > 0
    assert resumed.read_bytes() == data


@pytest.mark.slow  # starts a local Ray
def test_cli_ray_flag(local_ray, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("ROMEO.\nJULIET.\n\nΩ\nHAMLET.\n")
    args = ["batch", str(src), "--seed", "2", "--max-new-tokens", "6", "-q"]
    assert main(args + ["-o", str(tmp_path / "ray.jsonl"), "--ray", "--workers", "2"]) == 1
    assert f"{src}:4: bad row:" in capsys.readouterr().err
    assert main(args + ["-o", str(tmp_path / "single.jsonl")]) == 1
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    assert main(args + ["-o", str(tmp_path / "x.jsonl"), "--workers", "2"]) == 2
