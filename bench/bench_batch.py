"""Batch jobs at scale: `fastlstm batch` against one batched `generate` call, and Ray's scaling.

    python -m bench.bench_batch                      # 10,000 prompts -> bench/BATCH_RESULTS.md
    python -m bench.bench_batch --prompts 1000 --rounds 1 -o /tmp/batch.md    # a quick look

Prompts are lines of the Shakespeare corpus (shared/data/shakespeare.txt beside the checkout,
or --corpus), spread evenly over it; the bundled model (2x384 char LSTM) generates
--max-new-tokens per prompt at temperature 0.8 (no stop strings, so every prompt gets them all).
Measured, each as generated tokens / wall time of the whole call:

  generate       model.generate(all prompts, ...): one in-process batched call
  job            fastlstm.batch.run_batch(prompts.jsonl, out.jsonl, model, ...): the batch job
                 in-process, reading JSONL, writing and fsyncing the results
  cli            `python -m fastlstm batch ... -q` in a subprocess (interpreter start and model
                 load included), for information
  ray_1, ray_2   run_batch_ray with 1 and 2 workers of 1 thread on a local Ray (num_cpus=2)
                 started beforehand (its start is not timed; actor start and model load are)

Targets (issue 7): job >= 0.9 x generate; ray_2 >= 1.6 x ray_1.  Rounds alternate between the
competitors and the best round of each counts (the machine is shared: other load only slows a
round down).  The other load during each round is measured as bench/conftest.py does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fastlstm
from bench.conftest import OtherLoad, cpu_model
from fastlstm.batch import run_batch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "shakespeare.txt"
PACKAGE_PARENT = str(Path(fastlstm.__file__).resolve().parents[1])


def load_prompts(corpus: Path, n: int, model) -> list[str]:
    """n non-blank lines spread evenly over the corpus, each one the model can encode."""
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    step = max(1, len(lines) // n)
    picked = []
    for line in lines[::step]:
        try:
            model.tokenizer.encode(line)
        except ValueError:
            continue
        picked.append(line)
    if len(picked) < n:
        raise SystemExit(f"{corpus} has only {len(picked)} usable lines, {n} asked")
    return picked[:n]


def timed(name: str, run, results: dict) -> None:
    """Run `run()` (returns tokens), record tokens/s and other load under `name`."""
    with OtherLoad() as load:
        start = time.perf_counter()
        tokens = run()
        seconds = time.perf_counter() - start
    entry = {"tokens": tokens, "seconds": round(seconds, 3),
             "tokens_per_s": round(tokens / seconds, 1), **load.result()}
    results.setdefault(name, []).append(entry)
    print(f"  {name:<8} {tokens:>9,} tokens in {seconds:7.2f} s = {tokens / seconds:>9,.0f} "
          f"tokens/s  (other load {entry.get('other_cores', '?')} cores)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per competitor (best counts)")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray measurements")
    parser.add_argument("-o", "--output", type=Path, default=REPO / "bench" / "BATCH_RESULTS.md")
    args = parser.parse_args(argv)

    model = fastlstm.load()
    prompts = load_prompts(args.corpus, args.prompts, model)
    params = dict(max_new_tokens=args.max_new_tokens, temperature=0.8, seed=1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    src = tmp / "prompts.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i, prompt in enumerate(prompts):
            f.write(json.dumps({"id": i, "prompt": prompt}) + "\n")
    out = tmp / "out.jsonl"
    print(f"{len(prompts):,} prompts (mean {sum(map(len, prompts)) / len(prompts):.1f} chars), "
          f"{args.max_new_tokens} new tokens each, model threads {model.num_threads}", flush=True)

    def generate() -> int:
        texts = model.generate(prompts, max_new_tokens=args.max_new_tokens, temperature=0.8,
                               seed=1)
        return sum(len(model.tokenizer.encode(t)) for t in texts)

    def job() -> int:
        out.unlink(missing_ok=True)
        return run_batch(src, out, model, **params).new_tokens

    def cli() -> int:
        out.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
        subprocess.run([sys.executable, "-m", "fastlstm", "batch", str(src), "-o", str(out),
                        "--max-new-tokens", str(args.max_new_tokens), "--temperature", "0.8",
                        "--seed", "1", "-q"], env=env, check=True)
        with open(out, encoding="utf-8") as f:
            return sum(json.loads(line)["new_tokens"] for line in f)

    results: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        print(f"round {r + 1}", flush=True)
        timed("generate", generate, results)
        timed("job", job, results)
    timed("cli", cli, results)
    reference = out.read_bytes()

    ray_version = None
    if not args.no_ray:
        import ray

        from fastlstm.ray_data import run_batch_ray

        ray_version = ray.__version__
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")

        def on_ray(workers: int):
            def run() -> int:
                out.unlink(missing_ok=True)
                summary = run_batch_ray(src, out, None, workers=workers, num_threads=1, **params)
                assert out.read_bytes() == reference, "Ray's output differs from the job's"
                return summary.new_tokens
            return run

        try:
            for r in range(args.rounds):
                print(f"ray round {r + 1}", flush=True)
                timed("ray_1", on_ray(1), results)
                timed("ray_2", on_ray(2), results)
        finally:
            ray.shutdown()

    report = write_report(args, len(prompts), results, ray_version)
    print(report)
    return 0


def best(results: dict, name: str) -> float:
    return max(e["tokens_per_s"] for e in results[name])


def write_report(args, n: int, results: dict, ray_version: str | None) -> str:
    rows = []
    for name, entries in results.items():
        rounds = ", ".join(f"{e['tokens_per_s']:,.0f}" for e in entries)
        load = ", ".join(str(e.get("other_cores", "?")) for e in entries)
        rows.append(f"| {name} | {best(results, name):,.0f} | {rounds} | {load} |")
    targets = [("job / generate", best(results, "job") / best(results, "generate"), 0.9)]
    if "ray_2" in results:
        targets.append(("Ray, 2 workers / 1 worker",
                        best(results, "ray_2") / best(results, "ray_1"), 1.6))
    target_rows = [f"| {what} | {ratio:.2f}x | >= {need}x | "
                   f"{'yes' if ratio >= need else '**no**'} |" for what, ratio, need in targets]
    cli_ratio = best(results, "cli") / best(results, "generate")
    text = "\n".join([
        "# Batch jobs: `fastlstm batch` vs one `generate` call, and Ray's scaling",
        "",
        "Made by `python -m bench.bench_batch` (see its docstring for what each row runs).",
        "",
        f"- {n:,} prompts (Shakespeare lines), {args.max_new_tokens} new tokens each, "
        "temperature 0.8, bundled model (2x384 char LSTM)",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"fastlstm {fastlstm.__version__}" + (f", ray {ray_version}" if ray_version else ""),
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{args.rounds} round(s) each, alternating; the best counts",
        "",
        "| run | best tokens/s | each round | other load (cores) |",
        "|---|---:|---|---|",
        *rows,
        "",
        "| target | measured | required | met |",
        "|---|---:|---:|:---:|",
        *target_rows,
        "",
        f"The CLI (a fresh interpreter, loading the model, then the same job) reaches "
        f"{cli_ratio:.2f}x the generate call.",
        "",
        "\"Other load\" is the CPU time of every process but this one and its children, per "
        "second: for the Ray rows it includes Ray's own workers (about 1 core per worker), so "
        "there only what exceeds the worker count was someone else's.",
        "",
    ])
    args.output.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    raise SystemExit(main())
