"""fastlstm's benchmarks against PyTorch, ONNX Runtime and the hardware floor.

    pytest bench/ --benchmark-json=results.json       # FASTLSTM_BENCH_QUICK=1: about a minute
    python -m bench.report results.json -o bench/RESULTS.md --plot bench/results.png

A package so that `python -m bench.report` works; `pytest` from the repo root collects only
tests/ (pyproject's testpaths), so these run only when asked for.
"""
