"""The kernel path: which instruction sets fastlstm's compiled kernels use on this CPU.

    portable   plain C, on any CPU
    avx2       AVX2 + FMA + F16C (x86-64 since 2013-2015)
    avx512     avx2, plus AVX512-VNNI for the int8 products (Intel Ice Lake, AMD Zen 4 and later)

Every path computes bitwise the same logits, states and tokens (src_pyx/isa.h; each path is
a table of functions in src_pyx/kernels.h); they differ only in speed.  The best path the
CPU has is chosen once, at import; the environment variable `FASTLSTM_ISA` (one of the names
above) forces one, and naming a path this CPU lacks makes `import fastlstm` fail with a
ValueError that says so.
"""

from __future__ import annotations

import os

from fastlstm import _forecast, _generate, _matmul, _rnn

__all__ = ["PATHS", "available", "kernel_path", "vector_kernels"]

PATHS = ("portable", "avx2", "avx512")  # in order: enum fl_isa's values
_MODULES = (_matmul, _rnn, _generate, _forecast)  # each holds its own copy of the path


def available() -> tuple[str, ...]:
    """The kernel paths this CPU can run, slowest first."""
    return tuple(name for level, name in enumerate(PATHS) if _matmul.isa_supported(level))


def kernel_path() -> str:
    """The kernel path in use (the same in every compiled module)."""
    return PATHS[_matmul.isa_active()]


def vector_kernels() -> bool:
    """Whether this CPU runs fastlstm's own vector kernels (AVX2 or better).

    Where it does, every product runs on them (faster than OpenBLAS at every shape measured,
    and row-independent); where it does not, float32 models also keep row-major weights so
    that forward() can multiply with BLAS rather than with the scalar C path.  Decided by
    the CPU, not by FASTLSTM_ISA, so that a forced path computes what the others compute."""
    return available()[-1] != "portable"


def _select(name: str) -> None:
    """Run every kernel on path `name` from now on (tests compare the paths this way)."""
    if name not in PATHS:
        raise ValueError(f"unknown kernel path {name!r}: choose one of {', '.join(PATHS)}")
    if name not in available():
        raise ValueError(f"this CPU cannot run the {name!r} kernels; it can run "
                         f"{', '.join(available())}")
    for module in _MODULES:
        module.set_isa(PATHS.index(name))


def _from_environment() -> str:
    requested = os.environ.get("FASTLSTM_ISA", "").strip().lower()
    if not requested:
        return available()[-1]
    if requested not in PATHS:
        raise ValueError(f"FASTLSTM_ISA={requested!r} is not a kernel path: choose one of "
                         f"{', '.join(PATHS)}")
    if requested not in available():
        raise ValueError(f"FASTLSTM_ISA={requested!r}, but this CPU cannot run those kernels; "
                         f"it can run {', '.join(available())}")
    return requested


_select(_from_environment())
