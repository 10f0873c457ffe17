#!/usr/bin/env python
"""Compare two builds of fastlstm side by side, in one run, on the same model files.

    git worktree add --detach ../fastlstm-old <commit>     # each tree built in place:
    (cd ../fastlstm-old && python setup.py build_ext --inplace)
    python bench/compare_builds.py --old ../fastlstm-old --new . [--rounds 5] [--json out.json]
                             [--models DIR] [--rows REGEX] [--target 0.7] [--wait-quiet S]
                             [--callgrind | --callgrind-only]

Every row is one measurement run in a fresh subprocess (`python -P`, PYTHONPATH=<tree>, cwd a
temp dir, so that the tree's fastlstm is the one imported; the worker asserts where fastlstm
came from).  Each round runs every row once on each build, old then new on even rounds and new then old on odd ones (ABBA), so a
burst of load from someone else's compile hits both sides alike and neither side always
goes second.  Per row: median of the rounds for each build, ratio new/old of the speeds
(>1: new faster; for load rows the ratio is old time / new time), the min-max of the
rounds, the median of the per-pair ratios ("paired": each old/new pair ran back to back),
that median over the quiet pairs only, and how busy other processes kept the CPU (from
/proc/stat, as bench/conftest.py's OtherLoad).  --wait-quiet S waits up to S seconds before
each pair for other processes to use < 0.3 core.  Inside a subprocess: one untimed warm-up call, then ~--target seconds of calls
timed one by one with perf_counter; the subprocess reports work / median call time.

Bitwise checks: each run hashes its output (generated ids, forward logits, forecasts, or the
logits of the model a load returned); round 0 also saves the arrays, compared old vs new
with np.array_equal and bytes equality.  Any difference is printed loudly (and the exit
status is 1).

Model files: exported once with torch (in a subprocess with PYTHONPATH=<old tree>, so
bench/'s own builders and fastlstm.export come from the old, fixed commit), seeded as
bench/conftest.py seeds them (config index); both builds load the same files.  --models DIR
keeps them (and reuses them on later runs: their sha256 are printed).

Callgrind (--callgrind / --callgrind-only): FASTLSTM_ISA=avx2, PYTHONHASHSEED=0, one thread;
per build two processes: "base" (import, load the char LSTM 2x512 float32, one warm-up
generate_ids of 1 token, gc off) and "decode" (the same, then generate_ids of 64 tokens from
a 1-token prompt, temperature 0.8, seed 1234).  Reports each process's total Ir, the
difference (the 64-token decode alone, Python glue included: repeatable run to run, but it
shifts by up to ~0.5% with unrelated changes such as this script's own text) and the
self Ir inside <tree>/fastlstm/*.so (exact).  callgrind_compare.sh runs just this part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
SCRIPT = Path(__file__).resolve()
TEMPERATURE = 0.8
SEED = 1234
QUIET = 0.3  # other processes' cores below which a measurement counts as quiet

# name: (bench config index or None, file name)
MODEL_FILES = {
    "char_lstm": "char_lstm_2x512.safetensors",
    "char_gru": "char_gru_2x512.safetensors",
    "word_lstm": "word_lstm_2x650.safetensors",
    "word_lstm_i8file": "word_lstm_2x650.int8.safetensors",
    "forecaster": "forecast_lstm_2x256_f8.safetensors",
}
VOCAB = {"char_lstm": 96, "char_gru": 96, "word_lstm": 10000, "word_lstm_i8file": 10000}
LABEL = {"char_lstm": "char LSTM 2x512", "char_gru": "char GRU 2x512",
         "word_lstm": "word LSTM 2x650", "word_lstm_i8file": "word LSTM 2x650 int8 file",
         "forecaster": "forecaster LSTM 2x256 F8"}
DT = {"float32": "f32", "int8": "i8", "bfloat16": "bf16", "float16": "f16"}


def rows() -> list[dict]:
    out = []
    for model in ("char_lstm", "char_gru", "word_lstm"):
        for threads in (1, 2):
            out.append(dict(kind="decode", model=model, dtype="float32", threads=threads,
                            batch=1, steps=256))
    for model in ("char_lstm", "word_lstm"):
        for dtype in ("int8", "bfloat16"):
            out.append(dict(kind="decode", model=model, dtype=dtype, threads=1, batch=1, steps=256))
    for dtype, threads in (("float32", 1), ("float32", 2), ("int8", 1)):
        out.append(dict(kind="decode", model="char_lstm", dtype=dtype, threads=threads,
                        batch=64, steps=64))
    for model in ("char_lstm", "word_lstm"):
        for threads in (1, 2):
            out.append(dict(kind="prefill", model=model, dtype="float32", threads=threads,
                            batch=1, steps=1000))
    for batch in (1, 32):
        out.append(dict(kind="forecast", model="forecaster", dtype="float32", threads=1,
                        batch=batch, steps=256, history=64))
    out.append(dict(kind="load", model="word_lstm", dtype="float32", threads=1))
    out.append(dict(kind="load", model="word_lstm", dtype="int8", threads=1))
    out.append(dict(kind="load", model="word_lstm_i8file", dtype="int8", threads=1))
    for r in out:
        r["name"] = row_name(r)
    return out


def row_name(r: dict) -> str:
    dt = DT[r["dtype"]]
    if r["kind"] == "decode":
        return f"decode B{r['batch']} {LABEL[r['model']]} {dt} T{r['threads']}"
    if r["kind"] == "prefill":
        return f"prefill {r['steps']} {LABEL[r['model']]} {dt} T{r['threads']}"
    if r["kind"] == "forecast":
        return f"forecast B{r['batch']} {r['history']}+{r['steps']} {LABEL[r['model']]} T{r['threads']}"
    src = "int8 file" if r["model"].endswith("i8file") else "f32 file"
    return f"load word LSTM 2x650 {src} as {dt}"


# ---------------------------------------------------------------------------------------------
# Setup: export the model files (needs torch; runs with PYTHONPATH=<old tree>)
# ---------------------------------------------------------------------------------------------

def setup_models(tree: str, directory: Path) -> None:
    sys.path.insert(0, tree)
    import torch

    import fastlstm
    from bench.competitors import CONFIGS, RNNModel, vocabulary
    from bench.forecasters import ForecastConfig, Regressor

    assert fastlstm.__file__.startswith(tree), fastlstm.__file__
    directory.mkdir(parents=True, exist_ok=True)
    by_name = {c.name: (i, c) for i, c in enumerate(CONFIGS)}
    for key, cname in (("char_lstm", "char_lstm_2x512"), ("char_gru", "char_gru_2x512"),
                       ("word_lstm", "word_lstm_2x650")):
        index, cfg = by_name[cname]
        torch.manual_seed(index)  # bench/conftest.py: BenchModel(cfg, ..., seed=index)
        module = RNNModel(cfg.rnn_type, cfg.vocab_size, cfg.embedding_dim, cfg.hidden_size,
                          cfg.num_layers).eval()
        fastlstm.export(module, directory / MODEL_FILES[key], vocab=vocabulary(cfg))
        if key == "word_lstm":
            fastlstm.export(module, directory / MODEL_FILES["word_lstm_i8file"],
                            vocab=vocabulary(cfg), dtype="int8")
    torch.manual_seed(0)
    fc = Regressor(ForecastConfig("forecast_lstm_2x256_f8", "LSTM", 2, 256, 8)).eval()
    fastlstm.export(fc, directory / MODEL_FILES["forecaster"])


def ensure_models(old: str, directory: Path) -> None:
    if all((directory / f).is_file() for f in MODEL_FILES.values()):
        return
    env = dict(os.environ, PYTHONPATH=old)
    subprocess.run([PYTHON, "-P", str(SCRIPT), "--setup-worker", old, str(directory)],
                   env=env, cwd=tempfile.gettempdir(), check=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The worker: one measurement in a fresh process (no torch)
# ---------------------------------------------------------------------------------------------

def _busy_and_own():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6)) / ticks
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def history(batch: int, steps: int, features: int):
    import numpy as np  # as bench/forecasters.py's BenchForecaster.history, `steps` long

    rng = np.random.default_rng(batch)
    t = np.arange(steps)[None, :, None] * rng.uniform(0.02, 0.3, (1, 1, features))
    return np.sin(t + rng.uniform(0, 6, (batch, 1, features))).astype(np.float32)


def make_call(spec: dict, models: Path):
    """(function running one call and returning its output array, work units per call)."""
    import numpy as np

    import fastlstm

    path = models / MODEL_FILES[spec["model"]]
    kind, threads, dtype = spec["kind"], spec["threads"], spec["dtype"]
    if kind == "load":
        probe = (np.arange(16, dtype=np.int64) * 37 % VOCAB[spec["model"]])[None, :]

        def load():
            return fastlstm.load(path, dtype=dtype, num_threads=threads)

        return load, 1, (lambda m: m.forward(probe)[0])
    model = fastlstm.load(path, dtype=dtype, num_threads=threads)
    batch, steps = spec["batch"], spec["steps"]
    if kind == "decode":
        prompts = (np.arange(batch, dtype=np.int64) % VOCAB[spec["model"]])[:, None]
        return (lambda: model.generate_ids(prompts, max_new_tokens=steps,
                                           temperature=TEMPERATURE, seed=SEED)), batch * steps, None
    if kind == "prefill":
        ids = np.random.default_rng(0).integers(0, VOCAB[spec["model"]], (1, steps), dtype=np.int64)
        return (lambda: model.forward(ids)[0]), steps, None
    if kind == "forecast":
        hist = history(batch, spec["history"], model.config.input_size)
        return (lambda: model.forecast(hist, steps)), batch * steps, None
    raise ValueError(kind)


def worker(tree: str, spec: dict, models: Path, target: float, save: str | None) -> dict:
    import numpy as np

    import fastlstm
    from fastlstm import isa

    where = os.path.realpath(fastlstm.__file__)
    if not where.startswith(os.path.realpath(tree) + os.sep):
        raise SystemExit(f"fastlstm imported from {where}, not from {tree}")
    call, work, probe = make_call(spec, models)

    start = time.perf_counter()
    out = call()  # warm-up
    once = time.perf_counter() - start
    output = probe(out) if probe else out
    del out
    reps = min(2000, max(3, math.ceil(target / max(once, 1e-6))))
    times = []
    s0 = _busy_and_own()
    for _ in range(reps):
        t0 = time.perf_counter()
        r = call()
        times.append(time.perf_counter() - t0)
        del r  # a load's model is freed outside the timed span
    s1 = _busy_and_own()
    wall = max(s1[0] - s0[0], 1e-9)
    other = max(0.0, (s1[1] - s0[1]) - (s1[2] - s0[2])) / wall
    output = np.ascontiguousarray(output)
    if save:
        np.save(save, output)
    med = statistics.median(times)
    return dict(rate=work / med, mean_rate=work * reps / sum(times), median_s=med, reps=reps,
                warmup_s=once, other_cores=other, isa=isa.kernel_path(),
                sha=hashlib.sha256(output.tobytes()).hexdigest()[:16],
                shape=list(output.shape), dtype=str(output.dtype), fastlstm=where)


# ---------------------------------------------------------------------------------------------
# Callgrind
# ---------------------------------------------------------------------------------------------

def callgrind_workload(tree: str, models: Path, mode: str) -> None:
    import gc

    import numpy as np

    import fastlstm

    assert os.path.realpath(fastlstm.__file__).startswith(os.path.realpath(tree) + os.sep)
    model = fastlstm.load(models / MODEL_FILES["char_lstm"], dtype="float32", num_threads=1)
    prompt = np.zeros((1, 1), np.int64)
    ids = model.generate_ids(prompt, max_new_tokens=1, temperature=TEMPERATURE, seed=SEED)
    # No garbage collection from here on: where a collection falls depends on every
    # allocation since start-up (script and module sizes), which would move ~0.5M Ir
    # in or out of the decode.
    gc.collect()
    gc.disable()
    if mode == "decode":
        ids = model.generate_ids(prompt, max_new_tokens=64, temperature=TEMPERATURE, seed=SEED)
    print(mode, "ids sha", hashlib.sha256(np.ascontiguousarray(ids).tobytes()).hexdigest()[:16])


def parse_callgrind(path: Path, tree: str) -> tuple[int, int]:
    """(total Ir, self Ir of the functions in <tree>/fastlstm/*.so) from a callgrind out file."""
    total, in_fastlstm = None, 0
    names: dict[str, str] = {}  # name compression: "ob=(3) /path" defines, "ob=(3)" refers
    obj = None  # the object of the current function (set by ob=, not by cob=)
    after_calls = False  # the cost line after calls= is the callee's inclusive cost
    prefix = os.path.realpath(tree) + "/fastlstm/"

    def name(value: str) -> str:
        m = re.match(r"\((\d+)\)(?: (.*))?$", value)
        if not m:
            return value
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), value)

    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
        elif line.startswith("ob="):
            obj = os.path.realpath(name(line[3:]))
        elif line.startswith("cob="):
            name(line[4:])
        elif line.startswith("calls="):
            after_calls = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_calls:
                after_calls = False
                continue
            parts = line.split()
            if len(parts) >= 2 and obj and obj.startswith(prefix):
                in_fastlstm += int(parts[1])
    return total, in_fastlstm


def run_callgrind(old: str, new: str, models: Path, outdir: Path) -> dict:
    print("\n== callgrind: FASTLSTM_ISA=avx2, char LSTM 2x512 float32, T1, batch-1 decode of "
          "64 tokens (1-token prompt, temperature 0.8, seed 1234) ==\n"
          "   base = import, load, 1-token warm-up decode; decode = base + the 64-token decode "
          "(gc disabled after the warm-up)", flush=True)
    results = {}
    for side, tree in (("old", old), ("new", new)):
        for mode in ("base", "decode"):
            out = outdir.resolve() / f"callgrind.{side}.{mode}.out"  # valgrind runs elsewhere
            env = dict(os.environ, PYTHONPATH=tree, FASTLSTM_ISA="avx2", PYTHONHASHSEED="0",
                       OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                   PYTHON, "-P", str(SCRIPT), "--callgrind-workload", mode, "--tree", tree,
                   "--models", str(models)]
            print(f"$ PYTHONPATH={tree} FASTLSTM_ISA=avx2 PYTHONHASHSEED=0 {' '.join(cmd)}",
                  flush=True)
            t0 = time.time()
            p = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True,
                               text=True)
            if p.returncode != 0:
                print(p.stdout, p.stderr)
                raise SystemExit(f"callgrind {side} {mode} failed")
            ids = [l.split(None, 1)[1] for l in p.stdout.splitlines() if l.startswith("decode ids sha")]
            total, in_so = parse_callgrind(out, tree)
            results[(side, mode)] = dict(total=total, fastlstm_so=in_so,
                                         ids=ids[0].split()[-1] if ids else None)
            print(f"   {side:3s} {mode:6s}: total Ir {total:,}   in fastlstm/*.so {in_so:,}   "
                  f"({time.time() - t0:.0f} s){'   ' + ids[0] if ids else ''}", flush=True)
    o_dec = results[("old", "decode")]["total"] - results[("old", "base")]["total"]
    n_dec = results[("new", "decode")]["total"] - results[("new", "base")]["total"]
    o_so = results[("old", "decode")]["fastlstm_so"] - results[("old", "base")]["fastlstm_so"]
    n_so = results[("new", "decode")]["fastlstm_so"] - results[("new", "base")]["fastlstm_so"]
    print(f"   {'':22s} {'old':>16s} {'new':>16s}  new/old")
    for label, o, n in (
            ("total Ir, decode run", results[("old", "decode")]["total"],
             results[("new", "decode")]["total"]),
            ("total Ir, base run", results[("old", "base")]["total"],
             results[("new", "base")]["total"]),
            ("64-token decode (diff)", o_dec, n_dec),
            ("  of which fastlstm .so", o_so, n_so)):
        print(f"   {label:22s} {o:16,} {n:16,}  {n / o:.4f}")
    same = results[("old", "decode")]["ids"] == results[("new", "decode")]["ids"]
    print(f"   callgrind decode ids old == new: {same}")
    return dict(runs={f"{s}.{m}": v for (s, m), v in results.items()}, decode_old=o_dec,
                decode_new=n_dec, decode_ratio=n_dec / o_dec, so_old=o_so, so_new=n_so,
                ids_equal=same)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------

def tree_commit(tree: str) -> str:
    """The commit checked out in a worktree, read from its files (no git command)."""
    try:
        dotgit = Path(tree) / ".git"
        gitdir = (Path(dotgit.read_text().split(":", 1)[1].strip()) if dotgit.is_file()
                  else dotgit)
        head = (gitdir / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            ref = head.split(None, 1)[1]
            common = gitdir
            if (gitdir / "commondir").is_file():
                common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
            for base in (gitdir, common):
                if (base / ref).is_file():
                    return f"{(base / ref).read_text().strip()[:12]} ({ref})"
            return head
        return head[:12]
    except OSError as e:
        return f"? ({e})"


def stale_build(tree: str) -> list[str]:
    """Sources newer than the oldest compiled module of the tree."""
    sos = list((Path(tree) / "fastlstm").glob("*.so"))
    if not sos:
        return ["no .so files: build with setup.py build_ext --inplace"]
    oldest = min(p.stat().st_mtime for p in sos)
    srcs = [p for ext in ("*.pyx", "*.pxd", "*.pxi", "*.h") for d in ("src_pyx", "fastlstm")
            for p in (Path(tree) / d).glob(ext)]
    return [str(p) for p in srcs if p.stat().st_mtime > oldest]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def other_cores(seconds: float = 0.5) -> float:
    """CPU used by every other process over `seconds`, in cores."""
    a = _busy_and_own()
    ch0 = os.times()
    time.sleep(seconds)
    b = _busy_and_own()
    ch1 = os.times()
    children = (ch1.children_user + ch1.children_system) - (ch0.children_user + ch0.children_system)
    return max(0.0, (b[1] - a[1]) - (b[2] - a[2]) - children) / (b[0] - a[0])


def wait_quiet(limit: float) -> float:
    """Wait up to `limit` seconds until others use < 0.3 core; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit and other_cores() >= 0.3:
        pass
    return time.perf_counter() - start


def run_one(tree: str, spec: dict, models: Path, target: float, save: str | None,
            workdir: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [PYTHON, "-P", str(SCRIPT), "--worker", json.dumps(spec), "--tree", tree,
           "--models", str(models), "--target", str(target)]
    if save:
        cmd += ["--save", save]
    p = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"worker failed ({tree}, {spec['name']}):\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:,.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", help="the old tree (a checkout built in place)")
    ap.add_argument("--new", help="the new tree (a checkout built in place)")
    ap.add_argument("--rounds", type=int, default=5, help="old/new pairs per row (default 5)")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--models", help="directory for the model files (kept; reused if present)")
    ap.add_argument("--rows", help="only rows whose name matches this regex")
    ap.add_argument("--target", type=float, default=0.7, help="seconds timed per measurement")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="before each old/new pair, wait up to S seconds for other processes to "
                         "use < 0.3 core (0: don't wait)")
    ap.add_argument("--callgrind", action="store_true", help="also run the callgrind comparison")
    ap.add_argument("--callgrind-only", action="store_true")
    ap.add_argument("--setup-only", action="store_true", help="only write the model files")
    # internal
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--setup-worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--callgrind-workload", choices=["base", "decode"], help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.setup_worker:
        setup_models(a.setup_worker[0], Path(a.setup_worker[1]))
        return 0
    if a.worker:
        print(json.dumps(worker(a.tree, json.loads(a.worker), Path(a.models), a.target, a.save)))
        return 0
    if a.callgrind_workload:
        callgrind_workload(a.tree, Path(a.models), a.callgrind_workload)
        return 0

    if not (a.old and a.new):
        ap.error("--old and --new are required")
    old, new = os.path.realpath(a.old), os.path.realpath(a.new)
    tmp = Path(tempfile.mkdtemp(prefix="compare_builds."))
    models = Path(a.models).resolve() if a.models else tmp / "models"
    try:
        ensure_models(old, models)
        if a.setup_only:
            print(f"model files in {models}")
            return 0
        print(f"compare_builds  {time.strftime('%Y-%m-%d %H:%M:%S')}  {os.uname().nodename}")
        print(f"uptime at start: {uptime()}")
        for side, tree in (("old", old), ("new", new)):
            print(f"{side}: {tree}  commit {tree_commit(tree)}")
            for s in stale_build(tree):
                print(f"  WARNING: {side} build may be stale: {s} is newer than its .so files")
        print(f"python {PYTHON}; FASTLSTM_ISA={os.environ.get('FASTLSTM_ISA', '(unset)')}; "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
        print(f"models in {models}:")
        for key, f in MODEL_FILES.items():
            print(f"  {f:38s} {(models / f).stat().st_size:>11,} B  sha256 {sha256(models / f)[:16]}")
        failed = False
        if not a.callgrind_only:
            failed = timings(a, old, new, models, tmp)
        cg = None
        if a.callgrind or a.callgrind_only:
            cg = run_callgrind(old, new, models, Path(a.json).parent if a.json else tmp)
            if not cg["ids_equal"]:
                failed = True
        print(f"\nuptime at end: {uptime()}")
        if a.json and cg is not None:
            data = json.loads(Path(a.json).read_text()) if Path(a.json).is_file() and not a.callgrind_only else {}
            data["callgrind"] = cg
            Path(a.json).write_text(json.dumps(data, indent=1))
        return 1 if failed else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def timings(a, old: str, new: str, models: Path, tmp: Path) -> bool:
    import numpy as np

    plan = [r for r in rows() if not a.rows or re.search(a.rows, r["name"])]
    results = {r["name"]: {"old": [], "new": []} for r in plan}
    workdir = str(tmp)
    saves = tmp / "outputs"
    saves.mkdir()
    print(f"\n{len(plan)} rows x {a.rounds} rounds x 2 builds, ~{a.target} s timed per "
          f"measurement; order old,new on even rounds, new,old on odd rounds", flush=True)
    t_start = time.time()
    waited = 0.0
    for rnd in range(a.rounds):
        order = (("old", old), ("new", new)) if rnd % 2 == 0 else (("new", new), ("old", old))
        for r in plan:
            if a.wait_quiet:
                waited += wait_quiet(a.wait_quiet)
            for side, tree in order:
                save = str(saves / f"{plan.index(r)}.{side}.npy") if rnd == 0 else None
                res = run_one(tree, r, models, a.target, save, workdir)
                res["round"] = rnd
                results[r["name"]][side].append(res)
        print(f"  round {rnd + 1}/{a.rounds} done ({time.time() - t_start:.0f} s)  "
              f"load {os.getloadavg()[0]:.2f}" + (f", waited {waited:.0f} s for quiet" if a.wait_quiet else ""),
              flush=True)

    # The table
    w = max(len(r["name"]) for r in plan)
    head = (f"{'row':{w}s}  {'unit':6s} {'old':>9s} {'new':>9s} {'new/old':>8s}  "
            f"{'old min-max':>19s}  {'new min-max':>19s}  {'paired':>6s}  {'quiet pairs':>13s}  {'others':>6s}")
    print("\n" + head + "\n" + "-" * len(head))
    table = []
    for r in plan:
        o = [x["rate"] for x in results[r["name"]]["old"]]
        n = [x["rate"] for x in results[r["name"]]["new"]]
        other = statistics.median(x["other_cores"] for s in ("old", "new")
                                  for x in results[r["name"]][s])
        mo, mn = statistics.median(o), statistics.median(n)
        if r["kind"] == "load":  # show milliseconds; the ratio stays a speed ratio
            unit, show = "ms", (lambda v: 1000.0 / v)
            span = lambda v: f"{fmt(show(max(v)))}-{fmt(show(min(v)))}"
        else:
            unit = "tok/s" if r["kind"] in ("decode", "prefill") else "step/s"
            show = lambda v: v
            span = lambda v: f"{fmt(min(v))}-{fmt(max(v))}"
        ratio = mn / mo
        pairs = [(x["rate"], y["rate"], max(x["other_cores"], y["other_cores"]))
                 for x, y in zip(results[r["name"]]["old"], results[r["name"]]["new"])]
        paired = statistics.median(y / x for x, y, _ in pairs)
        quiet = [y / x for x, y, busy in pairs if busy < QUIET]
        quiet_s = f"{statistics.median(quiet):.3f} ({len(quiet)})" if quiet else "- (0)"
        spread_o = (max(o) - min(o)) / mo * 100
        spread_n = (max(n) - min(n)) / mn * 100
        print(f"{r['name']:{w}s}  {unit:6s} {fmt(show(mo)):>9s} {fmt(show(mn)):>9s} "
              f"{ratio:8.3f}  {span(o) + f' ({spread_o:.0f}%)':>19s}  "
              f"{span(n) + f' ({spread_n:.0f}%)':>19s}  {paired:6.3f}  {quiet_s:>13s}  {other:6.2f}")
        table.append(dict(row=r["name"], spec=r, unit=unit, old_median=mo, new_median=mn,
                          ratio=ratio, paired_ratio=paired, quiet_ratios=quiet, old=o, new=n,
                          other_cores_median=other))
    print("new/old = median new speed / median old speed (>1: new faster; load rows: old ms / "
          "new ms).\npaired = median over rounds of each adjacent pair's new/old.  quiet pairs = "
          f"the same over the pairs where other processes used < {QUIET} core during both "
          "timed spans (how many).\nothers = median cores used by other processes during the "
          "timed spans (2 cores here: ~1 means someone's -j2 compile was running).")
    isas = {x["isa"] for r in plan for s in ("old", "new") for x in results[r["name"]][s]}
    print(f"kernel path(s): {', '.join(sorted(isas))}")

    # Bitwise checks
    print("\nBitwise checks (round-0 outputs, np.array_equal and bytes; hashes of every round):")
    failed = False
    for i, r in enumerate(plan):
        res = results[r["name"]]
        ao = np.load(saves / f"{i}.old.npy")
        an = np.load(saves / f"{i}.new.npy")
        hashes = {s: {x["sha"] for x in res[s]} for s in ("old", "new")}
        equal = ao.shape == an.shape and ao.dtype == an.dtype and np.array_equal(ao, an) \
            and ao.tobytes() == an.tobytes() and hashes["old"] == hashes["new"]
        stable = len(hashes["old"]) == 1 and len(hashes["new"]) == 1
        what = {"decode": "ids", "prefill": "forward logits", "forecast": "forecasts",
                "load": "logits of the loaded model (16 tokens)"}[r["kind"]]
        line = (f"  {r['name']:{w}s}  {what}: old == new: {equal}"
                f"   same every round: {stable}   {tuple(ao.shape)} {ao.dtype}")
        if not equal:
            failed = True
            diff = (f"max |diff| {np.max(np.abs(ao.astype(np.float64) - an.astype(np.float64))):.3g}, "
                    f"{int(np.sum(ao != an))} elements differ") if ao.shape == an.shape else "shapes differ"
            line = "!!!!! DIFFERENT !!!!! " + line + f"   {diff}"
        if not stable:
            failed = True
            line += f"   !!!!! NOT DETERMINISTIC: {hashes}"
        print(line)
    print("ALL BITWISE CHECKS PASSED" if not failed else
          "\n!!!!!!!! BITWISE DIFFERENCES BETWEEN OLD AND NEW (see above) !!!!!!!!")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(old=old, new=new, old_commit=tree_commit(old),
                                                new_commit=tree_commit(new), rounds=a.rounds,
                                                target=a.target, table=table, runs=results,
                                                bitwise_ok=not failed), indent=1))
    return failed


if __name__ == "__main__":
    sys.exit(main())
