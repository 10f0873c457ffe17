"""Turn a pytest-benchmark JSON from bench/ into Markdown tables, the targets, and a plot.

    python -m bench.report RESULTS.json [-o bench/RESULTS.md] [--plot bench/results.png]
                           [--stat median|min|mean]

tokens/s = extra_info["tokens"] (tokens one round produces) / the round time statistic
(median by default).  Ratios compare runtimes of the same run: the machine is noisy, so
compare ratios from one run, never absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass

RUNTIMES = {  # name in the JSON -> column title
    "fastlstm": "fastlstm",
    "fastlstm_fp16": "fastlstm fp16",
    "fastlstm_bf16": "fastlstm bf16",
    "fastlstm_int8": "fastlstm int8",
    "torch": "PyTorch",
    "torch_onednn_off": "PyTorch oneDNN off",
    "onnxruntime": "ONNX Runtime",
    "onnxruntime_int8": "ONNX Runtime int8",
    "floor_matmul": "floor: matmuls",
    "floor_read": "floor: weight read",
}
TORCHES = ("torch", "torch_onednn_off")
COMPETITORS = ("torch", "torch_onednn_off", "onnxruntime")  # real float32 runtimes, not floors
# The float32 table: every runtime computing with float32 weights, and the floors.
FLOAT32 = ("fastlstm", "torch", "torch_onednn_off", "onnxruntime", "floor_matmul", "floor_read")
# The precision table: fastlstm in each weight precision, ONNX Runtime float32 and int8.
REDUCED = ("fastlstm_fp16", "fastlstm_bf16", "fastlstm_int8")
PRECISION = ("fastlstm", *REDUCED, "onnxruntime", "onnxruntime_int8")
# Issue 6 targets: one thread, batch 1, tokens/s vs fastlstm float32 (reported, never enforced)
PRECISION_TARGETS = {"fastlstm_fp16": 1.7, "fastlstm_bf16": 1.7, "fastlstm_int8": 2.5}
PRECISION_TARGET_CONFIGS = ("char_lstm_2x512", "word_lstm_2x650")
BYTES = {"fastlstm_fp16": 2, "fastlstm_bf16": 2, "fastlstm_int8": 1}  # per weight
TARGET_CONFIGS = ("char_lstm_2x512", "char_gru_2x512", "word_lstm_2x650")
# Issue 12 targets (both cores, AVX-512 VNNI): batch-1 decode and prefill, two threads vs one.
TWO_THREAD_TARGETS = {"char_lstm_2x512": 1.7, "char_gru_2x512": 1.7, "word_lstm_2x650": 1.8}
INT8_TARGET_CONFIGS = ("char_lstm_2x512", "word_lstm_2x650")
MODES = [("decode", 1), ("decode", 64), ("prefill", 1)]


@dataclass(frozen=True)
class Key:
    config: str
    mode: str
    batch: int
    threads: int


NOISY_CORES = 0.15  # other processes' CPU (plus steal) above this while a benchmark ran: flag it


def load_results(path: str, stat: str = "median"):
    """(tokens/s by Key and runtime, startup extra_info by kind, machine info, run date).
    The speed table also holds, under "noisy", the runtimes measured while other processes
    used at least NOISY_CORES of the machine."""
    with open(path) as f:
        data = json.load(f)
    speed: dict[Key, dict[str, float]] = defaultdict(dict)
    noisy: set[tuple[Key, str]] = set()
    startup = {}
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if bench.get("group") == "startup":
            startup[info.get("kind", bench["name"])] = info
            continue
        if "tokens" not in info or "runtime" not in info:
            continue
        key = Key(info["config"], info["mode"], int(info["batch"]), int(info["threads"]))
        speed[key][info["runtime"]] = info["tokens"] / bench["stats"][stat]
        if info.get("other_cores", 0.0) + info.get("steal_cores", 0.0) >= NOISY_CORES:
            noisy.add((key, info["runtime"]))
    machine = data.get("machine_info", {})
    machine["noisy"] = noisy
    return dict(speed), startup, machine, data.get("datetime", "")


def configs_in(speed) -> list[str]:
    seen = []
    for key in speed:
        if key.config not in seen:
            seen.append(key.config)
    return seen


def fmt(x: float | None, ratio: bool = False) -> str:
    if x is None:
        return ""
    if ratio:
        return f"{x:.2f}x"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def best_torch(row: dict[str, float]) -> float | None:
    values = [row[r] for r in TORCHES if r in row]
    return max(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

def machine_lines(machine: dict, date: str, stat: str) -> list[str]:
    bench = machine.get("fastlstm_bench", {})
    caches = ", ".join(f"{k} {v}" for k, v in bench.get("caches", {}).items())
    lines = [
        f"- CPU: {bench.get('cpu_model', machine.get('cpu', {}).get('brand_raw', '?'))}, "
        f"{bench.get('cpu_count', '?')} cores ({bench.get('usable_cpus', '?')} usable)"
        + (f"; caches {caches}" if caches else ""),
        f"- Python {bench.get('python', machine.get('python_version', '?'))}, "
        f"numpy {bench.get('numpy', '?')}, torch {bench.get('torch', '?')}, "
        f"onnxruntime {bench.get('onnxruntime', '?')}, onnx {bench.get('onnx', '?')}, "
        f"fastlstm {bench.get('fastlstm', '?')} ({bench.get('fastlstm_commit', '?')}"
        + (f" when the run started; the checkout was at {bench['fastlstm_commit_at_end']} "
           "when it ended" if bench.get("fastlstm_commit_at_end", bench.get("fastlstm_commit"))
           != bench.get("fastlstm_commit") else "") + ")",
    ]
    if bench.get("kernel_path"):
        lines.append(f"- fastlstm kernel path: {bench['kernel_path']} (this CPU runs "
                     f"{', '.join(bench.get('kernel_paths', []))}; src_pyx/isa.h)")
    if bench.get("blas"):
        lines.append(f"- BLAS: {'; '.join(bench['blas'])}")
    load = bench.get("load_average_at_end")
    lines.append(f"- Date: {bench.get('date_utc', date)}"
                 + (f"; load average at the end {', '.join(f'{x:.2f}' for x in load)}" if load else "")
                 + ("; QUICK smoke run (few rounds, short loops)" if bench.get("quick") else ""))
    lines.append(f"- tokens/s = tokens per round / {stat} round time; decode starts from a "
                 f"one-token prompt and a zero state; prefill is {bench.get('prefill_tokens', '?')} "
                 "tokens at batch 1.")
    return lines


def _sorted_keys(speed, config):
    return sorted((k for k in speed if k.config == config),
                  key=lambda k: (MODES.index((k.mode, k.batch)) if (k.mode, k.batch) in MODES
                                 else 99, k.threads))


def speed_tables(speed, noisy=frozenset()) -> list[str]:
    """Per config: the float32 runtimes and floors, then (if measured) the precisions."""
    lines = []
    runtimes = [r for r in FLOAT32 if any(r in row for row in speed.values())]
    for config in configs_in(speed):
        lines += [f"### {config}", ""]
        head = ["mode", "B", "T"] + [RUNTIMES[r] for r in runtimes]
        head += ["fastlstm / best PyTorch", "fastlstm / ORT", "fastlstm / floor matmuls",
                 "fastlstm / floor read"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
        for key in _sorted_keys(speed, config):
            row = speed[key]
            fast = row.get("fastlstm")
            cells = [key.mode, str(key.batch), str(key.threads)]
            cells += [fmt(row.get(r)) + (" †" if (key, r) in noisy else "") for r in runtimes]
            cells += [fmt(ratio(fast, best_torch(row)), True),
                      fmt(ratio(fast, row.get("onnxruntime")), True),
                      fmt(ratio(fast, row.get("floor_matmul")), True),
                      fmt(ratio(fast, row.get("floor_read")), True)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += precision_table(speed, config, noisy)
    return lines


def precision_table(speed, config, noisy=frozenset()) -> list[str]:
    """fastlstm in each weight precision next to its float32 self and ONNX Runtime float32
    and int8: tokens/s, each reduced precision / fastlstm float32, / ONNX Runtime int8."""
    runtimes = [r for r in PRECISION if any(r in row for k, row in speed.items()
                                            if k.config == config)]
    reduced = [r for r in REDUCED if r in runtimes]
    if not reduced and "onnxruntime_int8" not in runtimes:
        return []
    short = {r: RUNTIMES[r].removeprefix("fastlstm ") for r in reduced}
    head = ["mode", "B", "T"] + [RUNTIMES[r] for r in runtimes]
    head += [f"{short[r]} / fastlstm" for r in reduced]
    head += [f"{short[r]} / ORT int8" for r in reduced]
    head += ["ORT int8 / ORT"]
    lines = [f"#### {config}: weight precisions", "",
             "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for key in _sorted_keys(speed, config):
        row = speed[key]
        if not any(r in row for r in (*REDUCED, "onnxruntime_int8")):
            continue
        cells = [key.mode, str(key.batch), str(key.threads)]
        cells += [fmt(row.get(r)) + (" †" if (key, r) in noisy else "") for r in runtimes]
        cells += [fmt(ratio(row.get(r), row.get("fastlstm")), True) for r in reduced]
        cells += [fmt(ratio(row.get(r), row.get("onnxruntime_int8")), True) for r in reduced]
        cells += [fmt(ratio(row.get("onnxruntime_int8"), row.get("onnxruntime")), True)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def scaling_table(speed, mode: str, batch: int) -> list[str]:
    """Two threads vs one, per runtime, for (mode, batch)."""
    runtimes = [r for r in RUNTIMES if r != "floor_read"
                and any(r in row for k, row in speed.items() if (k.mode, k.batch) == (mode, batch))]
    lines = ["| config | " + " | ".join(RUNTIMES[r] for r in runtimes) + " |",
             "|---|" + "---:|" * len(runtimes)]
    for config in configs_in(speed):
        one = speed.get(Key(config, mode, batch, 1), {})
        two = speed.get(Key(config, mode, batch, 2), {})
        if not one or not two:
            continue
        cells = [fmt(ratio(two.get(r), one.get(r)), True) for r in runtimes]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return [f"Not measured (needs {mode} at batch {batch} with one and two threads).", ""]
    return lines + [""]


def startup_lines(startup) -> list[str]:
    lines = []
    imp = startup.get("import")
    if imp:
        lines.append(f"- `import fastlstm` in a fresh interpreter: {imp['seconds']:.3f} s "
                     f"(median; `import numpy` alone: {imp.get('numpy_seconds', float('nan')):.3f} s)")
        if imp.get("breakdown"):
            parts = ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in imp["breakdown"])
            lines.append(f"  - `python -X importtime`, fastlstm's imports (cumulative, one run): "
                         f"{parts}")
    first = startup.get("load_first_token")
    if first:
        lines.append(f"- `fastlstm.load()` of the bundled model ({first['model_bytes'] / 1e6:.1f} MB) "
                     f"+ first token: {first['seconds']:.3f} s (load {first['load_seconds']:.3f} s, "
                     f"first token {first['first_token_seconds']:.3f} s; after the import)")
    elif imp:
        lines.append("- load of the bundled model + first token: not measured (no bundled model "
                     "file at the time of the run)")
    return lines + [""] if lines else []


def targets(speed, startup) -> list[tuple[str, str, float | None, float, str]]:
    """(target, config, measured, required, comparison, note) for every target of the "Speed"
    issue; batch-1 notes say what the target asks for against one read of the weights."""
    rows = []

    def add(text, config, value, required, op=">=", note=""):
        rows.append((text, config, value, required, op, note))

    def vs_read_floor(row, base, required):
        """Whether `required` x `base` tokens/s is beyond one read of the fp32 weights."""
        floor = row.get("floor_read")
        if base is None or floor is None:
            return ""
        need = required * base
        if need > floor:
            return f"needs {fmt(need)} tokens/s, above the weight-read floor ({fmt(floor)})"
        return f"needs {fmt(need)} tokens/s = {need / floor:.2f} of the weight-read floor"

    for config in TARGET_CONFIGS:
        b1 = speed.get(Key(config, "decode", 1, 1), {})
        b64 = speed.get(Key(config, "decode", 64, 1), {})
        pre = speed.get(Key(config, "prefill", 1, 1), {})
        b64_2 = speed.get(Key(config, "decode", 64, 2), {})
        fast = b1.get("fastlstm")
        add("batch-1 decode vs better PyTorch", config, ratio(fast, best_torch(b1)), 4.0,
            note=vs_read_floor(b1, best_torch(b1), 4.0))
        add("batch-1 decode vs ONNX Runtime", config, ratio(fast, b1.get("onnxruntime")), 2.0,
            note=vs_read_floor(b1, b1.get("onnxruntime"), 2.0))
        add("batch-1 decode vs bare-BLAS floor (matmuls)", config,
            ratio(fast, b1.get("floor_matmul")), 0.85)
        fast = b64.get("fastlstm")
        add("batch-64 decode vs better PyTorch", config, ratio(fast, best_torch(b64)), 1.5)
        add("batch-64 decode vs ONNX Runtime", config, ratio(fast, b64.get("onnxruntime")), 1.2)
        add("prefill 1,000 tokens vs better PyTorch", config,
            ratio(pre.get("fastlstm"), best_torch(pre)), 1.5)
        add("batch-64 decode, two threads vs one", config,
            ratio(b64_2.get("fastlstm"), b64.get("fastlstm")), 1.6)
    for config in PRECISION_TARGET_CONFIGS:
        b1 = speed.get(Key(config, "decode", 1, 1), {})
        fast = b1.get("fastlstm")
        for runtime, required in PRECISION_TARGETS.items():
            note = ""
            floor = b1.get("floor_read")
            if fast and floor:
                # one read of the weights at this precision: the float32 floor x 4 / bytes
                # (biases stay float32, a few KB: ignored; like the float32 floor it counts
                # layer 0's W_ih, which fastlstm replaces by its lookup table)
                scaled = floor * 4 / BYTES[runtime]
                note = (f"needs {fmt(required * fast)} tokens/s = "
                        f"{required * fast / scaled:.2f} of the weight-read floor scaled to "
                        f"{BYTES[runtime]}-byte weights (~{fmt(scaled)}/s)")
            if b1.get("onnxruntime_int8") and b1.get(runtime):
                note += (("; " if note else "") + "vs ONNX Runtime int8 "
                         f"{b1[runtime] / b1['onnxruntime_int8']:.2f}x")
            add(f"batch-1 decode, {RUNTIMES[runtime]} vs fastlstm float32", config,
                ratio(b1.get(runtime), fast), required, note=note)
    for config, required in TWO_THREAD_TARGETS.items():
        b1 = {t: speed.get(Key(config, "decode", 1, t), {}) for t in (1, 2)}
        pre = {t: speed.get(Key(config, "prefill", 1, t), {}) for t in (1, 2)}
        add("batch-1 decode, two threads vs one", config,
            ratio(b1[2].get("fastlstm"), b1[1].get("fastlstm")), required)
        add("batch-1 decode vs ONNX Runtime, both on two threads", config,
            ratio(b1[2].get("fastlstm"), b1[2].get("onnxruntime")), 1.3)
        add("prefill 1,000 tokens, two threads vs one", config,
            ratio(pre[2].get("fastlstm"), pre[1].get("fastlstm")), 1.7)
        for t in (1, 2):
            add(f"prefill 1,000 tokens vs ONNX Runtime, both on {t} thread{'s' if t > 1 else ''}",
                config, ratio(pre[t].get("fastlstm"), pre[t].get("onnxruntime")), 1.2)
    for config in INT8_TARGET_CONFIGS:
        b64 = speed.get(Key(config, "decode", 64, 1), {})
        b1 = speed.get(Key(config, "decode", 1, 1), {})
        int8 = b64.get("fastlstm_int8")
        add("batch-64 decode, fastlstm int8 vs ONNX Runtime int8", config,
            ratio(int8, b64.get("onnxruntime_int8")), 1.2)
        add("batch-64 decode, fastlstm int8 vs fastlstm float32", config,
            ratio(int8, b64.get("fastlstm")), 3.0)
        for t in (1, 2):
            pre = speed.get(Key(config, "prefill", 1, t), {})
            add(f"prefill 1,000 tokens, fastlstm int8 vs ONNX Runtime int8, {t} "
                f"thread{'s' if t > 1 else ''}", config,
                ratio(pre.get("fastlstm_int8"), pre.get("onnxruntime_int8")), 1.2)
        floor = b1.get("floor_read")
        # one read of 1-byte weights: the float32 floor x 4 (as for the precision targets)
        add("batch-1 decode, fastlstm int8 vs reading 1-byte weights once per token", config,
            ratio(b1.get("fastlstm_int8"), floor * 4 if floor else None), 0.8,
            note=f"1-byte floor ~{fmt(floor * 4)} tokens/s" if floor else "")
    imp = startup.get("import")
    add("`import fastlstm` (s)", "", imp["seconds"] if imp else None, 0.3, "<=")
    first = startup.get("load_first_token")
    add("load bundled model + first token, after import (s)", "",
        first["seconds"] if first else None, 0.3, "<=")
    return rows


def target_lines(rows) -> list[str]:
    lines = ["| target (one thread unless said) | config | measured | required | met | note |",
             "|---|---|---:|---:|:---:|---|"]
    for text, config, value, required, op, note in rows:
        unit = "x" if op == ">=" else " s"
        if value is None:
            measured, met = "not measured", "-"
        else:
            measured = f"{value:.2f}{unit}" if op == ">=" else f"{value:.3f}{unit}"
            met = "yes" if (value >= required if op == ">=" else value <= required) else "**no**"
        lines.append(f"| {text} | {config} | {measured} | {op} {required:g}{unit} | {met} | {note} |")
    return lines + [""]


def slow_lines(speed) -> list[str]:
    """Every row where a real float32 competitor is faster than fastlstm float32, and every
    row where ONNX Runtime int8 is faster than fastlstm in each reduced precision."""
    lines = []
    for key, row in speed.items():
        fast = row.get("fastlstm")
        if fast is None:
            continue
        rivals = {r: row[r] for r in COMPETITORS if r in row}
        if not rivals:
            continue
        winner = max(rivals, key=rivals.get)
        if rivals[winner] > fast:
            lines.append(f"- {key.config} {key.mode} B={key.batch} T={key.threads}: "
                         f"{RUNTIMES[winner]} is {rivals[winner] / fast:.2f}x faster "
                         f"({fmt(rivals[winner])} vs {fmt(fast)} tokens/s)")
    lines = lines or ["- none: fastlstm (float32) is the fastest float32 runtime in every row"]
    int8 = []
    for key, row in speed.items():
        ours = {r: row[r] for r in REDUCED if r in row}
        theirs = row.get("onnxruntime_int8")
        if not ours or theirs is None:
            continue
        best = max(ours, key=ours.get)
        if theirs > ours[best]:
            int8.append(f"- {key.config} {key.mode} B={key.batch} T={key.threads}: "
                        f"ONNX Runtime int8 is {theirs / ours[best]:.2f}x faster than "
                        f"{RUNTIMES[best]}, the fastest fastlstm precision "
                        f"({fmt(theirs)} vs {fmt(ours[best])} tokens/s)")
    if int8:
        lines += ["", "Reduced precision (ONNX Runtime int8 vs fastlstm's fastest of fp16, bf16, "
                  "int8):", ""] + int8
    return lines


def forecast_lines(forecast, noisy=frozenset()) -> list[str]:
    """Per forecasting config: time steps/s (history + forecast steps, over the batch) of
    each runtime, and fastlstm's ratios to PyTorch and ONNX Runtime."""
    runtimes = [r for r in ("fastlstm", "torch", "onnxruntime")
                if any(r in row for row in forecast.values())]
    lines = []
    for config in configs_in(forecast):
        lines += [f"### {config}", "",
                  "| B | T | " + " | ".join(RUNTIMES[r] for r in runtimes)
                  + " | fastlstm / PyTorch | fastlstm / ORT |",
                  "|---|---|" + "---:|" * (len(runtimes) + 2)]
        for key in sorted((k for k in forecast if k.config == config),
                          key=lambda k: (k.batch, k.threads)):
            row = forecast[key]
            cells = [str(key.batch), str(key.threads)]
            cells += [fmt(row.get(r)) + (" †" if (key, r) in noisy else "") for r in runtimes]
            cells += [fmt(ratio(row.get("fastlstm"), row.get("torch")), True),
                      fmt(ratio(row.get("fastlstm"), row.get("onnxruntime")), True)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def markdown(speed, startup, machine, date, stat) -> str:
    # Forecasting rows (bench/test_forecast.py) get their own section; the rest is decode/prefill.
    forecast = {k: v for k, v in speed.items() if k.mode == "forecast"}
    speed = {k: v for k, v in speed.items() if k.mode != "forecast"}
    rows = targets(speed, startup)
    lines = ["# fastlstm benchmarks", "",
             "Made by `pytest bench/ --benchmark-json=results.json` and `python -m bench.report "
             "results.json -o bench/RESULTS.md --plot bench/results.png`.", ""]
    lines += machine_lines(machine, date, stat)
    lines += ["", "Every decode runtime runs the same loop per token: step the model, softmax at "
              "temperature 0.8, sample, feed the id back (fastlstm: `generate_ids`, the loop in C; "
              "PyTorch: a Python loop over the module with `torch.multinomial`; ONNX Runtime: a "
              "one-step graph, sampling in NumPy). The floors do only the matrix products "
              "(NumPy's OpenBLAS, threads limited to T) or only one read of the weight bytes per "
              "token (one thread). Weight precisions: fastlstm fp16/bf16/int8 run the same loop "
              "on the model loaded with `dtype=` float16, bfloat16 (float32 arithmetic) or "
              "int8 (per-row scales; integer products with the inputs rounded to int16 per "
              "vector); ONNX Runtime int8 runs the same graph after "
              "`quantize_dynamic(weight_type=QInt8)` (LSTM ops and the head MatMul quantized; "
              "GRU ops stay float32). See bench/competitors.py.", ""]
    noisy = machine.get("noisy", set())
    lines += ["## Targets", ""] + target_lines(rows)
    if speed:
        lines += ["## Tokens per second", ""]
        if noisy:
            lines += [f"† measured while other processes (or the hypervisor) took at least "
                      f"{NOISY_CORES:g} of a core on average: {len(noisy)} of "
                      f"{sum(len(r) for r in speed.values())} measurements.", ""]
        else:
            lines += ["No measurement overlapped other processes using "
                      f"{NOISY_CORES:g} of a core or more.", ""]
        lines += speed_tables(speed, noisy)
        for mode, batch, what in [("decode", 1, "decode at batch 1 (the threads share one "
                                   "sequence's products)"),
                                  ("prefill", 1, "prefill of one prompt (shared the same way)"),
                                  ("decode", 64, "decode at batch 64 (each thread takes whole rows)")]:
            lines += [f"## Two threads vs one, {what} (tokens/s ratio)", ""]
            lines += scaling_table(speed, mode, batch)
    if forecast:
        lines += ["## Forecasting (time steps per second)", "",
                  "A round runs a history of 256 steps and then forecasts 64 steps, feeding each "
                  "prediction back, for every series of the batch (fastlstm: `forecast`, one call; "
                  "PyTorch: the module over the history, then a Python loop; ONNX Runtime: one "
                  "graph run on the history, then once per step). steps/s = batch x 320 / "
                  "round time. See bench/forecasters.py.", ""]
        lines += forecast_lines(forecast, noisy)
    startup_part = startup_lines(startup)
    if startup_part:
        lines += ["## Startup", ""] + startup_part
    if speed:
        lines += ["## Where a competitor is faster than fastlstm", ""] + slow_lines(speed) + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------

def plot(speed, path: str, title: str = "") -> None:
    """One panel per (mode, threads): each runtime's tokens/s divided by fastlstm float32's,
    per config (log scale; below 1 fastlstm float32 is faster), fastlstm float32's own tokens/s
    under each label.  fastlstm's reduced precisions and ONNX Runtime int8 are bars too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    speed = {k: v for k, v in speed.items() if k.mode != "forecast"}  # tables only
    configs = configs_in(speed)
    threads = sorted({k.threads for k in speed})
    runtimes = [r for r in RUNTIMES if any(r in row for row in speed.values())]
    colors = {"fastlstm": "#d62728", "fastlstm_fp16": "#ff9896", "fastlstm_bf16": "#e377c2",
              "fastlstm_int8": "#8c564b", "torch": "#1f77b4", "torch_onednn_off": "#aec7e8",
              "onnxruntime": "#ff7f0e", "onnxruntime_int8": "#ffbb78", "floor_matmul": "#7f7f7f",
              "floor_read": "#c7c7c7"}
    per_panel = 5.2 if len(runtimes) <= 6 else 6.5
    fig, axes = plt.subplots(len(threads), len(MODES),
                             figsize=(per_panel * len(MODES), 4.0 * len(threads) + 0.4),
                             squeeze=False)
    width = 0.8 / len(runtimes)
    for i, t in enumerate(threads):
        for j, (mode, batch) in enumerate(MODES):
            ax = axes[i][j]
            rows = [speed.get(Key(c, mode, batch, t), {}) for c in configs]
            x = np.arange(len(configs))
            for n, runtime in enumerate(runtimes):
                values = [row[runtime] / row["fastlstm"] if runtime in row and row.get("fastlstm")
                          else np.nan for row in rows]
                if not all(np.isnan(values)):
                    ax.bar(x + (n - (len(runtimes) - 1) / 2) * width, values, width,
                           label=RUNTIMES[runtime], color=colors[runtime])
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.tick_params(axis="y", which="both", labelsize=7)
            labels = [c.replace("_", " ", 1) + (f"\nfastlstm {fmt(row['fastlstm'])}/s"
                                                if row.get("fastlstm") else "")
                      for c, row in zip(configs, rows)]
            ax.set_xticks(x, labels, fontsize=7.5)
            ax.set_title(f"{mode} B={batch}, {t} thread{'s' if t > 1 else ''}", fontsize=10)
            ax.set_ylabel("tokens/s relative to fastlstm", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(runtimes), 5), fontsize=9)
    if title:
        fig.text(0.5, 0.005, title, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="pytest --benchmark-json output of `pytest bench/`")
    parser.add_argument("-o", "--output", help="write the Markdown here too")
    parser.add_argument("--plot", help="write a PNG bar chart here")
    parser.add_argument("--stat", default="median", choices=["median", "min", "mean"],
                        help="round-time statistic (default: median)")
    parser.add_argument("--notes", help="a Markdown file appended as it is (the analysis of "
                        "the run: where the time goes, what would close a missed target)")
    args = parser.parse_args(argv)

    speed, startup, machine, date = load_results(args.json, args.stat)
    if not speed and not startup:
        print(f"{args.json}: no fastlstm benchmark results found", file=sys.stderr)
        return 1
    text = markdown(speed, startup, machine, date, args.stat)
    if args.notes:
        with open(args.notes) as f:
            text = text.rstrip("\n") + "\n\n" + f.read()
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    if args.plot:
        bench = machine.get("fastlstm_bench", {})
        plot(speed, args.plot, f"{bench.get('cpu_model', '')}, {bench.get('date_utc', date)}; "
                               f"{args.stat} of rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
