"""pytest-benchmark setup: the models (one session fixture per configuration), the timing
helper every benchmark uses, and the machine description stored in the JSON.

    pytest bench/ --benchmark-json=results.json
    FASTLSTM_BENCH_QUICK=1 pytest bench/          # a smoke run of about a minute

Groups are named f"{config}|{mode}|B={batch}|T={threads}" so competitors sit side by side;
every throughput benchmark stores extra_info["tokens"], the tokens one round produces, and
bench/report.py divides it by the round time.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import pytest

from bench.competitors import CONFIGS, BenchModel

QUICK = os.environ.get("FASTLSTM_BENCH_QUICK", "") not in ("", "0")
REPO = Path(__file__).resolve().parents[1]

# Timed rounds per benchmark: enough to fill ROUND_BUDGET seconds, within [MIN, MAX].
ROUND_BUDGET = 0.05 if QUICK else 2.0
MIN_ROUNDS = 1 if QUICK else 3
MAX_ROUNDS = 3 if QUICK else 200
PREFILL_TOKENS = 200 if QUICK else 1000
THREADS = (1, 2)


_COMMIT_AT_START = None


def pytest_configure(config):
    # torch.backends.mkldnn.flags() warns about Intel GPUs on every use.
    config.addinivalue_line("filterwarnings", "ignore:TF32 acceleration:UserWarning")
    # The commit the run measures is the one checked out when fastlstm was imported (now),
    # not whatever HEAD is when the JSON is written, which may have moved meanwhile.
    global _COMMIT_AT_START
    _COMMIT_AT_START = _git_commit()


@pytest.fixture(scope="session", params=CONFIGS, ids=[c.name for c in CONFIGS])
def lm(request, tmp_path_factory):
    """One configuration's models; pytest runs every benchmark of a configuration before
    building the next, so only one set of weights is in memory at a time."""
    index = CONFIGS.index(request.param)
    model = BenchModel(request.param, tmp_path_factory.mktemp(request.param.name), seed=index)
    yield model
    model.close()


def measure(benchmark, run, *, tokens: int, group: str, **info):
    """Time `run` (one round) with pytest-benchmark and return its last result.

    One untimed call warms up (caches, thread pools, lazy initialisation) and sizes the number
    of rounds; each round is one call."""
    benchmark.group = group
    benchmark.extra_info.update(tokens=tokens, **info)
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(ROUND_BUDGET / max(once, 1e-6))))
    with OtherLoad() as load:
        result = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(load.result())
    return result


class OtherLoad:
    """How busy the machine was with anything but this process while a benchmark ran: CPU
    time of other processes and time stolen by the hypervisor, in cores (from /proc/stat and
    getrusage).  The report flags rows measured while others used the machine."""

    def __enter__(self):
        self.start = self._sample()
        return self

    def __exit__(self, *exc):
        self.end = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            fields = []
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        # user nice system idle iowait irq softirq steal ...
        busy = (sum(fields[i] for i in (0, 1, 2, 5, 6) if i < len(fields)) / ticks) if fields else None
        steal = fields[7] / ticks if len(fields) > 7 else None
        own = sum(getattr(resource.getrusage(who), f) for who in
                  (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
        return time.perf_counter(), busy, steal, own

    def result(self) -> dict:
        (t0, busy0, steal0, own0), (t1, busy1, steal1, own1) = self.start, self.end
        wall = max(t1 - t0, 1e-9)
        out = {}
        if busy0 is not None:
            out["other_cores"] = round(max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, 3)
        if steal0 is not None:
            out["steal_cores"] = round((steal1 - steal0) / wall, 3)
        return out


# ---------------------------------------------------------------------------------------------
# The machine, for the report
# ---------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
        return getattr(module, "__version__", "?")
    except ImportError:
        return "not installed"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _kernel_path() -> tuple[str, list[str]]:
    """The kernel path fastlstm runs on, and every path this CPU can run."""
    from fastlstm import isa

    return isa.kernel_path(), list(isa.available())


def _blas() -> list[str]:
    try:
        from threadpoolctl import threadpool_info

        return [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, "
                f"{os.path.basename(i.get('filepath', ''))})" for i in threadpool_info()
                if i.get("user_api") == "blas"]
    except Exception:  # informational only
        return []


def pytest_benchmark_update_machine_info(config, machine_info):
    caches = {}
    for index in range(4):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{index}"
        try:
            level = Path(base, "level").read_text().strip()
            kind = Path(base, "type").read_text().strip()
            size = Path(base, "size").read_text().strip()
        except OSError:
            continue
        caches[f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''}"] = size
    machine_info["fastlstm_bench"] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "caches": caches,
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "fastlstm": _version("fastlstm"),
        "kernel_path": _kernel_path()[0],
        "kernel_paths": _kernel_path()[1],
        "fastlstm_commit": _COMMIT_AT_START or _git_commit(),
        "fastlstm_commit_at_end": _git_commit(),
        "blas": _blas(),
        "quick": QUICK,
        "prefill_tokens": PREFILL_TOKENS,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
