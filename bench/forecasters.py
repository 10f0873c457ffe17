"""The forecasters benchmarked, and the loop each runtime runs on them.

A forecasting round: run the model over a history of HISTORY steps for every series of the
batch, then predict STEPS steps, feeding each prediction back as the next input.  Every
runtime starts from a zero state and returns the forecasts (batch, STEPS, features):

  fastlstm      model.forecast(history, STEPS): the history through fastlstm._rnn.forward (one
                product per layer for its input projections), then the feedback loop in C,
                Python entered once per round.
  torch         the module over the history, then a Python loop calling it on the last
                prediction with its state; torch.set_num_threads(T); inference_mode.
  onnxruntime   the module exported as one graph (x (B, S, F), h[, c] -> y, h[, c]; dynamic B
                and S, ONNX's fused LSTM/GRU op), run once on the history and then once per
                forecast step; intra_op_num_threads=T, inter_op 1, sequential.

Models: nn.LSTM / nn.GRU (2 layers of 128) -> nn.Linear(128, 8) on 8 features, random
weights scaled so the forecasts neither vanish nor saturate.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fastlstm
from bench.competitors import torch_threads

HISTORY = 256
STEPS = 64


@dataclass(frozen=True)
class ForecastConfig:
    name: str
    rnn_type: str  # "LSTM" or "GRU"
    num_layers: int
    hidden_size: int
    features: int


FORECAST_CONFIGS = [
    ForecastConfig("forecast_lstm_2x128_f8", "LSTM", 2, 128, 8),
    ForecastConfig("forecast_gru_2x128_f8", "GRU", 2, 128, 8),
]


class Regressor(nn.Module):
    """nn.LSTM/nn.GRU -> nn.Linear, batch first: the forecaster of PyTorch tutorials."""

    def __init__(self, cfg: ForecastConfig):
        super().__init__()
        self.rnn = getattr(nn, cfg.rnn_type)(cfg.features, cfg.hidden_size, cfg.num_layers,
                                             batch_first=True)
        self.fc = nn.Linear(cfg.hidden_size, cfg.features)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.fc(out), state


class _FlatLSTM(nn.Module):
    def __init__(self, model: Regressor):
        super().__init__()
        self.model = model

    def forward(self, x, h, c):
        y, (h, c) = self.model(x, (h, c))
        return y, h, c


class _FlatGRU(nn.Module):
    def __init__(self, model: Regressor):
        super().__init__()
        self.model = model

    def forward(self, x, h):
        y, h = self.model(x, h)
        return y, h


class BenchForecaster:
    """One configuration, built once: the module, its fastlstm file, and (lazily) fastlstm
    models per thread count, the ONNX graph and sessions."""

    def __init__(self, cfg: ForecastConfig, directory: Path, seed: int):
        self.cfg = cfg
        self.dir = Path(directory)
        torch.manual_seed(seed)
        self.module = Regressor(cfg).eval()
        self.path = self.dir / f"{cfg.name}.safetensors"
        fastlstm.export(self.module, self.path)
        self._cache = {}

    @property
    def is_lstm(self) -> bool:
        return self.cfg.rnn_type == "LSTM"

    def history(self, batch: int) -> np.ndarray:
        """(batch, HISTORY, features) float32: sines of several periods and phases."""
        rng = np.random.default_rng(batch)
        t = np.arange(HISTORY)[None, :, None] * rng.uniform(0.02, 0.3, (1, 1, self.cfg.features))
        return np.sin(t + rng.uniform(0, 6, (batch, 1, self.cfg.features))).astype(np.float32)

    def fastlstm(self, threads: int) -> fastlstm.Forecaster:
        key = ("fastlstm", threads)
        if key not in self._cache:
            self._cache[key] = fastlstm.load(self.path, num_threads=threads)
        return self._cache[key]

    def ort_session(self, threads: int):
        key = ("ort", threads)
        if key not in self._cache:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            self._cache[key] = ort.InferenceSession(str(self._onnx_path()), options,
                                                    providers=["CPUExecutionProvider"])
        return self._cache[key]

    def _onnx_path(self) -> Path:
        if "onnx" in self._cache:
            return self._cache["onnx"]
        cfg = self.cfg
        path = self.dir / f"{cfg.name}.onnx"
        names = ["h", "c"] if self.is_lstm else ["h"]
        flat = _FlatLSTM(self.module) if self.is_lstm else _FlatGRU(self.module)
        x = torch.zeros(2, 5, cfg.features)
        state = tuple(torch.zeros(cfg.num_layers, 2, cfg.hidden_size) for _ in names)
        axes = {"x": {0: "batch", 1: "steps"}, "y": {0: "batch", 1: "steps"}}
        axes.update({n: {1: "batch"} for n in names})
        axes.update({f"{n}_out": {1: "batch"} for n in names})
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(flat, (x, *state), str(path), input_names=["x", *names],
                              output_names=["y", *(f"{n}_out" for n in names)],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        self._cache["onnx"] = path
        return path

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        shape = (self.cfg.num_layers, batch, self.cfg.hidden_size)
        names = ["h", "c"] if self.is_lstm else ["h"]
        return {n: np.zeros(shape, np.float32) for n in names}

    def close(self):
        self._cache.clear()


@contextmanager
def forecast_fastlstm(fc: BenchForecaster, batch: int, threads: int):
    model = fc.fastlstm(threads)
    history = fc.history(batch)
    yield lambda: model.forecast(history, STEPS)


@contextmanager
def forecast_torch(fc: BenchForecaster, batch: int, threads: int):
    module = fc.module
    history = torch.from_numpy(fc.history(batch))

    def run():
        with torch.inference_mode():
            y, state = module(history)
            prediction = y[:, -1:]
            out = torch.empty(batch, STEPS, fc.cfg.features)
            out[:, 0] = prediction[:, 0]
            for t in range(1, STEPS):
                prediction, state = module(prediction, state)
                out[:, t] = prediction[:, 0]
        return out.numpy()

    with torch_threads(threads, onednn=True):
        yield run


@contextmanager
def forecast_onnxruntime(fc: BenchForecaster, batch: int, threads: int):
    session = fc.ort_session(threads)
    history = fc.history(batch)
    names = list(fc.zero_state(1))

    def run():
        y, *state = session.run(None, {"x": history, **fc.zero_state(batch)})
        prediction = y[:, -1:]
        out = np.empty((batch, STEPS, fc.cfg.features), np.float32)
        out[:, 0] = prediction[:, 0]
        for t in range(1, STEPS):
            prediction, *state = session.run(None, {"x": prediction, **dict(zip(names, state))})
            out[:, t] = prediction[:, 0]
        return out

    yield run


FORECAST = {
    "fastlstm": forecast_fastlstm,
    "torch": forecast_torch,
    "onnxruntime": forecast_onnxruntime,
}
