"""Forecasting throughput: a history of 256 steps, then 64 steps fed back, per series.

Group f"{config}|forecast|B={batch}|T={threads}"; tokens per round = batch * (256 + 64), the
time steps every runtime runs the model for (bench/report.py shows them as steps/s).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.conftest import THREADS, measure
from bench.forecasters import FORECAST, FORECAST_CONFIGS, HISTORY, STEPS, BenchForecaster

CASES = [pytest.param(batch, threads, runtime, id=f"B{batch}-T{threads}-{runtime}")
         for batch in (1, 64) for threads in THREADS for runtime in FORECAST]


@pytest.fixture(scope="module", params=FORECAST_CONFIGS, ids=[c.name for c in FORECAST_CONFIGS])
def forecaster(request, tmp_path_factory):
    fc = BenchForecaster(request.param, tmp_path_factory.mktemp(request.param.name),
                         seed=FORECAST_CONFIGS.index(request.param))
    yield fc
    fc.close()


@pytest.mark.parametrize("batch, threads, runtime", CASES)
def test_forecast(benchmark, forecaster, batch, threads, runtime):
    cfg = forecaster.cfg
    with FORECAST[runtime](forecaster, batch, threads) as run:
        out = measure(benchmark, run, tokens=batch * (HISTORY + STEPS),
                      group=f"{cfg.name}|forecast|B={batch}|T={threads}", runtime=runtime,
                      config=cfg.name, mode="forecast", batch=batch, threads=threads,
                      steps=HISTORY + STEPS)
    out = np.asarray(out)
    assert out.shape == (batch, STEPS, cfg.features) and np.isfinite(out).all()
    # every runtime forecasts the same numbers (float32 rounding apart)
    with FORECAST["fastlstm"](forecaster, batch, threads) as reference:
        expected = reference()
    np.testing.assert_allclose(out, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())))
    assert np.ptp(expected) > 1e-2
