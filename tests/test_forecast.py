"""Forecasters from PyTorch (nn.LSTM/GRU/RNN -> nn.Linear on float inputs) against PyTorch.

`fastlstm.export(module)` writes a forecaster file; `predict` must match the module run in
float64 on the same stored weights (1e-4 of the largest output), and `forecast` must match
the module fed back its own predictions in a Python loop for 100 steps, in every weight
precision (the reference then runs on the rounded weights).  Also: the file format (format
version 2, kind and sizes in the metadata), forecasts that do not depend on the batch, the
threads or the kernel path, every bad input refused before the kernels run, and the
`fastlstm forecast` command's CSV round trip.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import fastlstm
from fastlstm import isa
from fastlstm.cli import main
from fastlstm.precision import DTYPES, store
from conftest import assert_close

REL = 1e-4
STEPS = 100


class Regressor(nn.Module):
    """A forecaster as PyTorch tutorials build it: a recurrent layer and a linear head."""

    def __init__(self, kind: str, features: int, hidden: int, layers: int, *, proj: int = 0,
                 bias: bool = True, head_bias: bool = True, outputs: int | None = None):
        super().__init__()
        if kind == "LSTM":
            self.rnn = nn.LSTM(features, hidden, layers, bias=bias, batch_first=True,
                               proj_size=proj)
        elif kind == "GRU":
            self.rnn = nn.GRU(features, hidden, layers, bias=bias, batch_first=True)
        else:
            self.rnn = nn.RNN(features, hidden, layers, bias=bias, batch_first=True,
                              nonlinearity=kind[4:].lower())
        self.fc = nn.Linear(proj or hidden, outputs or features, bias=head_bias)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.fc(out), state


# (rnn_type, features, hidden, layers, proj, bias, head_bias)
CASES = [
    ("LSTM", 3, 12, 2, 0, True, True),
    ("LSTM", 2, 9, 1, 4, False, True),
    ("GRU", 3, 13, 2, 0, True, False),
    ("GRU", 1, 8, 1, 0, False, True),
    ("RNN_TANH", 4, 10, 2, 0, True, True),
    ("RNN_RELU", 2, 7, 2, 0, True, True),
]


def case_id(case) -> str:
    kind, f, h, layers, proj, bias, head_bias = case
    return (f"{kind}-F{f}-H{h}-L{layers}" + (f"-P{proj}" if proj else "")
            + ("" if bias else "-nobias") + ("" if head_bias else "-noheadbias"))


def build(case, seed: int = 0) -> Regressor:
    kind, features, hidden, layers, proj, bias, head_bias = case
    torch.manual_seed(seed)
    module = Regressor(kind, features, hidden, layers, proj=proj, bias=bias, head_bias=head_bias)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # wide enough for the gates to leave their linear range
        for p in module.parameters():
            bound = (0.9 if kind == "RNN_RELU" else 1.6) / (p.shape[1] ** 0.5 if p.dim() == 2 else 3)
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
    return module.eval()


def rounded(module: Regressor, dtype: str) -> Regressor:
    """A float64 copy whose matrices hold exactly what `dtype` stores (biases float32)."""
    ref = copy.deepcopy(module)
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 2:
                p.copy_(torch.from_numpy(store(p.numpy(), dtype).to_float32()))
    return ref.double().eval()


def series(shape, seed: int) -> np.ndarray:
    t = np.arange(shape[1])[None, :, None] * np.linspace(0.1, 0.4, shape[2])[None, None, :]
    phase = np.random.default_rng(seed).uniform(0, 6, (shape[0], 1, shape[2]))
    return np.sin(t + phase).astype(np.float32)


def torch_forecast(ref: Regressor, history: np.ndarray, steps: int) -> np.ndarray:
    """The module over the history, then fed its own prediction, one step at a time."""
    with torch.no_grad():
        out, state = ref(torch.from_numpy(history).double())
        prediction = out[:, -1:]
        predictions = [prediction]
        for _ in range(steps - 1):
            prediction, state = ref(prediction, state)
            predictions.append(prediction)
    return torch.cat(predictions, 1).numpy()


@pytest.fixture(scope="module", params=CASES, ids=[case_id(c) for c in CASES])
def exported(request, tmp_path_factory):
    module = build(request.param, seed=CASES.index(request.param))
    path = tmp_path_factory.mktemp("forecast") / "model.safetensors"
    fastlstm.export(module, path)
    return request.param, module, path


@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_matches_torch(exported, dtype):
    case, module, path = exported
    model = fastlstm.load(path, dtype=dtype)
    assert isinstance(model, fastlstm.Forecaster) and model.dtype == dtype
    ref = rounded(module, dtype)
    x = series((3, 17, case[1]), seed=1)
    y, state = model.predict(x)
    with torch.no_grad():
        expected, expected_state = ref(torch.from_numpy(x).double())
    assert_close(y, expected.numpy(), REL, f"{case_id(case)} {dtype} predict")
    h = state[0] if isinstance(state, tuple) else state
    h_ref = expected_state[0] if isinstance(expected_state, tuple) else expected_state
    assert_close(h, h_ref.numpy(), REL, "final h", floor=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forecast_matches_torch_fed_back(exported, dtype):
    case, module, path = exported
    model = fastlstm.load(path, dtype=dtype, num_threads=2)
    history = series((2, 24, case[1]), seed=2)
    expected = torch_forecast(rounded(module, dtype), history, STEPS)
    actual = model.forecast(history, STEPS)
    assert actual.shape == (2, STEPS, case[1]) and actual.dtype == np.float32
    assert_close(actual, expected, REL, f"{case_id(case)} {dtype} forecast")
    assert np.ptp(expected) > 1e-2  # the forecasts move: a test a constant could not pass


def test_long_histories(exported, monkeypatch):
    """Histories longer than _rnn.forward's chunk of steps (256 at batch 1, 85 at batch 3),
    for one-layer models too (whose layer 0 reads its input from the other activation
    buffer every other chunk): predict and forecast as PyTorch, batch 1 (on 2 threads: a
    team) and 3."""
    monkeypatch.setattr(fastlstm.threads, "TEAM_MIN_WEIGHTS", 0)
    case, module, path = exported
    ref = rounded(module, "float32")
    model = fastlstm.load(path, num_threads=2)
    for batch, steps in [(1, 600), (3, 300)]:
        x = series((batch, steps, case[1]), seed=20 + batch)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x).double())[0].numpy()
        assert_close(model.predict(x)[0], expected, REL, f"{case_id(case)} predict, B{batch}")
        assert_close(model.forecast(x, 20), torch_forecast(ref, x, 20), REL,
                     f"{case_id(case)} forecast, B{batch}")


def test_forecast_continues_from_a_state(exported):
    """forecast(history, state=s) = forecast(full history) when s is the state before it."""
    case, _, path = exported
    model = fastlstm.load(path)
    history = series((2, 20, case[1]), seed=3)
    _, state = model.predict(history[:, :12])
    assert_close(model.forecast(history[:, 12:], 10, state=state), model.forecast(history, 10),
                 1e-5, "continued forecast")


def test_forecast_does_not_depend_on_batch_threads_or_kernel_path(tmp_path):
    module = build(CASES[2], seed=5)
    fastlstm.export(module, tmp_path / "m.safetensors")
    history = series((5, 33, 3), seed=4)
    one = fastlstm.load(tmp_path / "m.safetensors", num_threads=1)
    two = fastlstm.load(tmp_path / "m.safetensors", num_threads=2)
    together = two.forecast(history, 40)
    np.testing.assert_array_equal(together, one.forecast(history, 40))
    for b in (0, 3):
        np.testing.assert_array_equal(together[b], two.forecast(history[b], 40))
        np.testing.assert_array_equal(together[b], one.forecast(history[b:b + 1], 40)[0])
    best = isa.kernel_path()
    try:
        isa._select("portable")
        np.testing.assert_array_equal(together, two.forecast(history, 40))
    finally:
        isa._select(best)


def test_unbatched_inputs(exported):
    case, _, path = exported
    model = fastlstm.load(path)
    x = series((1, 9, case[1]), seed=6)
    y, state = model.predict(x[0])
    y_batched, state_batched = model.predict(x)
    np.testing.assert_array_equal(y, y_batched[0])
    h = state[0] if isinstance(state, tuple) else state
    hb = state_batched[0] if isinstance(state_batched, tuple) else state_batched
    assert h.shape == hb[:, 0].shape
    y2, _ = model.predict(x[0], state=state)  # an unbatched state continues unbatched input
    y2_batched, _ = model.predict(x, state=state_batched)
    np.testing.assert_array_equal(y2, y2_batched[0])
    assert model.forecast(x[0], 4).shape == (4, case[1])


def test_export_from_a_state_dict_needs_the_input_size(tmp_path):
    module = build(CASES[0], seed=7)
    state_dict = module.state_dict()
    fastlstm.export(state_dict, tmp_path / "sd.safetensors", input_size=3)
    fastlstm.export(module, tmp_path / "module.safetensors")
    x = series((2, 6, 3), seed=8)
    np.testing.assert_array_equal(fastlstm.load(tmp_path / "sd.safetensors").predict(x)[0],
                                  fastlstm.load(tmp_path / "module.safetensors").predict(x)[0])
    with pytest.raises(ValueError, match="input_size=4.*3 inputs"):
        fastlstm.export(state_dict, tmp_path / "bad.safetensors", input_size=4)
    with pytest.raises(ValueError, match=r"forecaster.*input_size"):  # read as a language model
        fastlstm.export(state_dict, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="vocab"):
        fastlstm.export(module, tmp_path / "bad.safetensors", vocab=list("abc"))
    # a plain state_dict saved without metadata loads as a language model: the hint says how
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match=r"forecaster.*input_size"):
        fastlstm.load(tmp_path / "plain.safetensors")


def test_file_format(tmp_path):
    module = build(CASES[4], seed=9)
    path = tmp_path / "m.safetensors"
    fastlstm.export(module, path, dtype="bfloat16")
    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
    assert metadata == {"format": "fastlstm", "format_version": "2", "rnn_type": "RNN_TANH",
                        "kind": "forecaster", "input_size": "4", "output_size": "4"}
    model = fastlstm.load(path)
    assert model.dtype == "bfloat16"
    # convert keeps the kind and sizes; the result loads as `load(path, dtype=...)` does
    fastlstm.convert(path, tmp_path / "int8.safetensors", dtype="int8")
    x = series((2, 5, 4), seed=10)
    np.testing.assert_array_equal(fastlstm.load(tmp_path / "int8.safetensors").predict(x)[0],
                                  fastlstm.load(path, dtype="int8").predict(x)[0])
    with pytest.raises(ValueError, match="vocab"):
        fastlstm.convert(path, tmp_path / "x.safetensors", vocab=list("ab"))


def _forecaster_tensors(seed: int = 0):
    module = build(CASES[3], seed=seed)
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("metadata, message", [
    ({"kind": "forecaster", "input_size": "2"}, "input_size '2'"),
    ({"kind": "forecaster", "output_size": "7"}, "output_size '7'"),
    ({"kind": "regressor"}, "unknown model kind"),
    ({"kind": "forecaster", "tokenizer": '{"type": "char", "vocab": ["a"]}'}, "tokenizer"),
    ({"kind": "forecaster", "format": "fastlstm", "format_version": "3"}, "format_version"),
])
def test_bad_forecaster_metadata(tmp_path, metadata, message):
    path = tmp_path / "m.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in _forecaster_tensors().items()}, str(path),
              metadata=metadata)
    with pytest.raises(ValueError, match=message):
        fastlstm.load(path)


@pytest.mark.parametrize("edit, message", [
    ({"extra.weight": np.ones((1, 8), np.float32)}, "one matrix besides"),
    ({"fc.weight": np.ones((1, 9), np.float32)}, "expected \\(outputs, 8\\)"),
    ({"fc.bias": None, "other.bias": np.ones(1, np.float32)}, "'other.bias'"),
    ({"fc.bias": np.ones(2, np.float32)}, "head bias 'fc.bias'"),
    ({"fc.weight": np.full((1, 8), np.nan, np.float32)}, "NaN"),
], ids=["two-heads", "head-size", "misnamed-bias", "bias-size", "nan"])
def test_forecaster_tensors_are_checked(tmp_path, edit, message):
    tensors = _forecaster_tensors()
    for name, value in edit.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    path = tmp_path / "m.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in tensors.items()}, str(path),
              metadata={"kind": "forecaster"})
    with pytest.raises(ValueError, match=message):
        fastlstm.load(path)


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "m.safetensors"
    fastlstm.export(build(CASES[0], seed=11), path)
    return fastlstm.load(path)


GOOD = series((2, 5, 3), seed=12)


def _with(value, index=(0, 1, 2)):
    x = GOOD.astype(np.float64).copy()
    x[index] = value
    return x


@pytest.mark.parametrize("x, message", [
    (_with(np.nan), r"nan at index \(0, 1, 2\)"),
    (_with(np.inf), "inf"),
    (_with(1e39), "beyond float32"),
    (GOOD[..., :2], "2 features per step; this model takes 3"),
    (GOOD[0, 0], "shape"),
    (GOOD[None], "shape"),
    (GOOD[:, :0], "at least one step"),
    (np.full((2, 5, 3), "a"), "numbers"),
    (GOOD > 0, "numbers"),
    ([[1.0, 2.0, 3.0], [1.0, 2.0]], "rectangular|numbers|shape"),
])
def test_bad_series_are_refused(small, x, message):
    with pytest.raises(ValueError, match=message):
        small.predict(x)
    with pytest.raises(ValueError, match=message):
        small.forecast(x, 3)


@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "3", None])
def test_bad_steps_are_refused(small, steps):
    with pytest.raises(ValueError, match="steps"):
        small.forecast(GOOD, steps)


def test_bad_states_are_refused(small):
    h, c = small.initial_state(2)
    with pytest.raises(ValueError, match="shape"):
        small.predict(GOOD, (h[:, :1], c))
    with pytest.raises(ValueError, match="pair"):
        small.forecast(GOOD, 2, state=h)
    with pytest.raises(ValueError, match="NaN"):
        small.predict(GOOD, (h, np.full_like(c, np.nan)))


def test_forecast_needs_outputs_equal_to_inputs(tmp_path):
    module = Regressor("GRU", 3, 8, 1, outputs=2).eval()
    fastlstm.export(module, tmp_path / "m.safetensors")
    model = fastlstm.load(tmp_path / "m.safetensors")
    x = series((2, 6, 3), seed=13)
    with torch.no_grad():
        expected = module.double()(torch.from_numpy(x).double())[0].numpy()
    assert_close(model.predict(x)[0], expected, REL, "predict with 2 outputs")
    with pytest.raises(ValueError, match="2 outputs must be the 3 input features"):
        model.forecast(x, 2)


# --------------------------------------------------------------------------- the command line


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv_values(text: str, header: bool) -> np.ndarray:
    lines = text.strip().splitlines()[1 if header else 0:]
    return np.array([[float(v) for v in line.split(",")] for line in lines], np.float32)


def test_cli_forecast_round_trip(tmp_path, capsys):
    fastlstm.export(build(CASES[0], seed=14), tmp_path / "m.safetensors")
    model = fastlstm.load(tmp_path / "m.safetensors")
    history = series((1, 30, 3), seed=15)[0]
    csv_in = tmp_path / "series.csv"
    csv_in.write_text("temperature,load,price\n"
                      + "\n".join(",".join(repr(float(v)) for v in row) for row in history)
                      + "\n\n")
    code, out, err = run(["forecast", tmp_path / "m.safetensors", "--input", csv_in,
                          "--steps", 12, "-o", tmp_path / "out.csv"], capsys)
    assert (code, out, err) == (0, "", "")
    written = (tmp_path / "out.csv").read_text()
    assert written.splitlines()[0] == "temperature,load,price"
    # 9 significant digits: the float32 forecast comes back exactly
    np.testing.assert_array_equal(read_csv_values(written, header=True),
                                  model.forecast(history, 12))
    # no header, to stdout
    csv_in.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in history))
    code, out, _ = run(["forecast", tmp_path / "m.safetensors", "--input", csv_in,
                        "--steps", 5], capsys)
    assert code == 0
    np.testing.assert_array_equal(read_csv_values(out, header=False), model.forecast(history, 5))


@pytest.mark.parametrize("content, message", [
    ("a,b,c\n1,2,x\n", r"series.csv:2: 'x' is not a number"),
    ("1,2,3\n1,2\n", r"series.csv:2: 2 columns"),
    ("1,2,3\nnan,2,3\n", r"series.csv:2: NaN"),
    ("1,2\n3,4\n", "2 columns; the model takes 3"),
    ("a,b,c\n", "no rows of numbers"),
    ("", "no rows"),
])
def test_cli_forecast_bad_csv(tmp_path, capsys, content, message):
    fastlstm.export(build(CASES[0], seed=16), tmp_path / "m.safetensors")
    (tmp_path / "series.csv").write_text(content)
    code, out, err = run(["forecast", tmp_path / "m.safetensors", "--input",
                          tmp_path / "series.csv", "--steps", 3], capsys)
    assert code == 2 and out == ""
    assert re.search(message, err), err


def test_cli_forecast_refuses_a_language_model_and_bad_steps(tmp_path, capsys):
    (tmp_path / "s.csv").write_text("1\n2\n")
    code, _, err = run(["forecast", fastlstm.model.BUNDLED_MODEL, "--input", tmp_path / "s.csv",
                        "--steps", 3], capsys)
    assert code == 2 and "language model" in err
    fastlstm.export(build(CASES[3], seed=17), tmp_path / "f.safetensors")
    code, _, err = run(["forecast", tmp_path / "f.safetensors", "--input", tmp_path / "s.csv",
                        "--steps", 0], capsys)
    assert code == 2 and "--steps" in err
    code, _, err = run(["generate", "--model", tmp_path / "f.safetensors"], capsys)
    assert code == 2 and "fastlstm forecast" in err


def test_cli_info_and_convert_a_forecaster(tmp_path, capsys):
    fastlstm.export(build(CASES[1], seed=18), tmp_path / "f.safetensors")
    code, out, _ = run(["info", tmp_path / "f.safetensors"], capsys)
    assert code == 0
    info = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert info["kind"] == "forecaster (float inputs)"
    assert (info["rnn_type"], info["input_size"], info["proj_size"]) == ("LSTM", "2", "4")
    code, out, _ = run(["convert", tmp_path / "f.safetensors", "-o", tmp_path / "h.safetensors",
                        "--dtype", "float16"], capsys)
    assert code == 0 and "wrote" in out
    assert fastlstm.load(tmp_path / "h.safetensors").dtype == "float16"


# --------------------------------------------------------------------------- GRU_RESET_BEFORE


def test_reset_before_gru_runs_the_same_on_every_path_thread_and_batch(tmp_path):
    """Keras's GRU(reset_after=False) cell (tested against Keras in test_keras.py) in the
    language model's decode loop: seeded generation and logits bitwise the same for 1 and 2
    threads, a batch or alone, and on the portable kernels; H = 13 runs the vector loop and
    the scalar tail."""
    torch.manual_seed(0)
    V, E, H = 17, 5, 13
    tensors = {"embedding.weight": torch.randn(V, E), "head.weight": torch.randn(V, H) * 0.5,
               "head.bias": torch.randn(V) * 0.1}
    for k in range(2):
        tensors[f"rnn.weight_ih_l{k}"] = torch.randn(3 * H, E if k == 0 else H) * 0.6
        tensors[f"rnn.weight_hh_l{k}"] = torch.randn(3 * H, H) * 0.6
        tensors[f"rnn.bias_ih_l{k}"] = torch.randn(3 * H) * 0.3
        tensors[f"rnn.bias_hh_l{k}"] = torch.randn(3 * H) * 0.3
    path = tmp_path / "m.safetensors"
    fastlstm.export(tensors, path, rnn_type="GRU_RESET_BEFORE")
    with safe_open(str(path), "np") as f:
        assert f.metadata()["format_version"] == "2"
    prompts = [[1, 2, 3], [4, 5], [6]]
    params = dict(max_new_tokens=30, temperature=0.9, seed=[1, 2, 3])
    reference = fastlstm.load(path, num_threads=1).generate_ids(prompts, **params)
    two = fastlstm.load(path, num_threads=2)
    np.testing.assert_array_equal(two.generate_ids(prompts, **params), reference)
    for p, prompt in enumerate(prompts):
        alone = two.generate_ids([prompt], max_new_tokens=30, temperature=0.9, seed=p + 1)
        np.testing.assert_array_equal(alone[0], reference[p])
    ids = np.arange(24).reshape(2, 12) % V
    logits, _ = fastlstm.load(path).forward(ids)
    best = isa.kernel_path()
    try:
        isa._select("portable")
        np.testing.assert_array_equal(fastlstm.load(path, num_threads=2).generate_ids(
            prompts, **params), reference)
        portable, _ = fastlstm.load(path).forward(ids)
    finally:
        isa._select(best)
    np.testing.assert_array_equal(portable, logits)
    # not PyTorch's GRU: the same weights run by nn.GRU give other logits
    gru = nn.GRU(E, H, 2, batch_first=True)
    gru.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("rnn.")})
    with torch.no_grad():
        out, _ = gru(tensors["embedding.weight"][torch.from_numpy(ids)])
        torch_logits = (out @ tensors["head.weight"].T + tensors["head.bias"]).numpy()
    assert np.abs(torch_logits - logits).max() > 1e-2
