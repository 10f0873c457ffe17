"""What tests/test_memory.py and tests/test_soak.py share: measuring a process's memory from
inside it, and running the pair of worker processes (one clean, one leaking on purpose) that
each of those tests compares.

A worker is the test file itself run as a script (`python test_x.py ARGS...`, printing one
JSON line), in a fresh interpreter that imports the fastlstm the test run imports.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


class MemoryProbe:
    """Inside a worker (Linux, glibc): its resident set, malloc's bytes in use, and a leak."""

    def __init__(self):
        self._libc = ctypes.CDLL(None)
        self._libc.malloc.restype = ctypes.c_void_p
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        """Resident bytes.  The allocator keeps freed pages resident for reuse, and a leak
        would first fill them without growing RSS (by ~6 MB in test_memory, more after other
        work): they are given back first, so RSS counts memory in use.  Leaked blocks are in
        use: never trimmed."""
        self._libc.malloc_trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def malloc_in_use(self) -> int | None:
        """Bytes malloc has handed out and not had back (glibc's mallinfo2: all arenas), or
        None before glibc 2.33."""
        if not hasattr(self._libc, "mallinfo2"):
            return None
        self._libc.mallinfo2.restype = _MallInfo2
        info = self._libc.mallinfo2()
        return info.uordblks + info.hblkhd

    def leak(self, nbytes: int) -> None:
        """malloc nbytes, touch them, never free them: what the measurements must catch."""
        ctypes.memset(self._libc.malloc(nbytes), 1, nbytes)


def run_workers(script: str, args: dict[int, list[str]], timeout: float) -> dict[int, dict]:
    """Run `python script *args[leak]` for every leak size at once (OpenMP threads passive:
    the workers share the machine's cores); {leak: the JSON each printed last}.  A worker
    that fails, or imports another fastlstm than this process's, fails the test."""
    import fastlstm

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    procs = {leak: subprocess.Popen([sys.executable, script, *argv], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for leak, argv in args.items()}
    results = {}
    for leak, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            raise
        assert proc.returncode == 0, f"worker (leak {leak}) failed:\n{err}"
        result = json.loads(out.strip().splitlines()[-1])
        assert result["fastlstm"] == fastlstm.__file__, "the worker imported another fastlstm"
        results[leak] = result
    return results


def growth_mb(result: dict) -> float:
    """A worker's RSS growth from after its warm-up to its end, in MB."""
    return (result["after"] - result["before"]) / 2**20


def rss_steps(result: dict) -> str:
    """The RSS samples a worker took, as growth in MB since its warm-up."""
    return " ".join(f"{(s - result['before']) / 2**20:+.2f}" for s in result["samples"])


def malloc_growth(result: dict) -> str:
    """The growth of malloc's bytes in use, for messages."""
    growth = result["malloc_growth"]
    return "unknown" if growth is None else f"{growth / 2**20:+.3f} MB"
