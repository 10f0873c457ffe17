"""Keras models (Keras 3 on its torch backend) read by fastlstm, against Keras's own predict.

Each supported model is built, trained for a moment on a small pattern and saved with
`model.save("m.keras")` and `model.save("m.h5")` (Keras 3's legacy HDF5 writer); fastlstm
loads both files without Keras.  Language models: fastlstm's logits (probabilities, for a
softmax head) match Keras's predict within 1e-4 of their largest magnitude, and fastlstm's
greedy 100-token continuation is the one Keras's argmax gives at every step (Keras runs the
continuation teacher-forced, one predict call).  Forecasters: predict within 1e-4, and a
100-step forecast matches Keras fed back its own predictions in a Python loop, in every
weight precision for the GRU that resets before its product.  A file in tf.keras 2.x's HDF5
layout (written with h5py here: TensorFlow is not installed) loads the same.  Every
unsupported layer kind is a ValueError naming the layer and what is unsupported.
"""

from __future__ import annotations

import json
import os

os.environ["KERAS_BACKEND"] = "torch"  # no TensorFlow here; must precede `import keras`

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

import fastlstm  # noqa: E402
from fastlstm.precision import store  # noqa: E402
from conftest import assert_close  # noqa: E402

REL = 1e-4  # max |diff| <= REL * max |reference|
GREEDY_STEPS = 100
FORECAST_STEPS = 100
NEAR_TIE = 1e-5  # Keras's top-two gap (relative to max(1, max |value|)) that excuses a divergence
V, E, H = 13, 6, 12  # vocabulary, embedding, units: small, and H not a multiple of 8
F = 3  # forecasters' features
REDUCED = ("float16", "bfloat16", "int8")

# Keras 3.15 on NumPy 2 warns about __array__'s copy keyword on every conversion.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def keras_out(model, x) -> np.ndarray:
    """model(x) in inference mode, as NumPy (a cheaper call than predict, same computation)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- language models


def corpus_windows(seed: int, count: int = 96, length: int = 12):
    """Windows of a noisy repeating sequence of ids, with next-token targets."""
    rng = np.random.default_rng(seed)
    text = np.tile(np.arange(V), 40)
    noise = rng.random(text.size) < 0.15
    text[noise] = rng.integers(0, V, noise.sum())
    starts = rng.integers(0, text.size - length - 1, count)
    x = np.stack([text[s:s + length] for s in starts]).astype("int32")
    y = np.stack([text[s + 1:s + length + 1] for s in starts]).astype("int32")
    return x, y


def lm(*body, head, functional=False):
    """Embedding -> body -> head, Sequential or functional."""
    if not functional:
        return keras.Sequential([keras.Input((None,), dtype="int32"),
                                 layers.Embedding(V, E), *body, *head])
    inputs = keras.Input((None,), dtype="int32", name="ids")
    x = layers.Embedding(V, E, name="my_embedding")(inputs)
    for layer in (*body, *head):
        x = layer(x)
    return keras.Model(inputs, x)


# name -> (builder, softmax head, many-to-one: only the last step is output)
LMS = {
    "lstm-softmax": (lambda: lm(layers.LSTM(H, return_sequences=True),
                                head=[layers.Dense(V, activation="softmax")]), True, False),
    "lstm2-nobias-linear": (lambda: lm(layers.LSTM(H, use_bias=False, return_sequences=True),
                                       layers.LSTM(H, use_bias=False, return_sequences=True),
                                       head=[layers.Dense(V)]), False, False),
    "lstm-bias-then-nobias": (lambda: lm(layers.LSTM(H, return_sequences=True),
                                         layers.LSTM(H, use_bias=False, return_sequences=True),
                                         head=[layers.Dense(V, activation="softmax")]),
                              True, False),
    "gru-dropout-softmax": (lambda: lm(layers.GRU(H, return_sequences=True), layers.Dropout(0.2),
                                       head=[layers.Dense(V, activation="softmax")]), True, False),
    "gru2-nobias": (lambda: lm(layers.GRU(H, use_bias=False, return_sequences=True),
                               layers.GRU(H, use_bias=False, return_sequences=True),
                               head=[layers.Dense(V, use_bias=False)]), False, False),
    "gru-reset-before2": (lambda: lm(layers.GRU(H, reset_after=False, return_sequences=True),
                                     layers.GRU(H, reset_after=False, return_sequences=True),
                                     head=[layers.Dense(V, activation="softmax")]), True, False),
    "gru-reset-before-nobias": (lambda: lm(layers.GRU(H, reset_after=False, use_bias=False,
                                                      return_sequences=True),
                                           head=[layers.Dense(V)]), False, False),
    "rnn-tanh-softmax": (lambda: lm(layers.SimpleRNN(H, return_sequences=True),
                                    head=[layers.Dense(V, activation="softmax",
                                                       use_bias=False)]), True, False),
    "rnn-relu2-linear": (lambda: lm(layers.SimpleRNN(H, activation="relu", return_sequences=True),
                                    layers.SimpleRNN(H, activation="relu", return_sequences=True),
                                    head=[layers.Dense(V)]), False, False),
    "functional-lstm": (lambda: lm(layers.LSTM(H, return_sequences=True, name="my_lstm"),
                                   layers.Dropout(0.1, name="my_dropout"),
                                   head=[layers.Dense(V, activation="softmax", name="my_head")],
                                   functional=True), True, False),
    "timedistributed-activation": (lambda: lm(layers.LSTM(H, return_sequences=True),
                                              head=[layers.TimeDistributed(layers.Dense(V)),
                                                    layers.Activation("softmax")]), True, False),
    "many-to-one-gru": (lambda: lm(layers.GRU(H), head=[layers.Dense(V, activation="softmax")]),
                        True, True),
}


@pytest.fixture(scope="module", params=list(LMS))
def keras_lm(request, tmp_path_factory):
    """(name, Keras model, {format: path}, softmax head, many-to-one), trained a moment."""
    name = request.param
    build, is_softmax, many_to_one = LMS[name]
    keras.utils.set_random_seed(list(LMS).index(name))
    model = build()
    x, y = corpus_windows(seed=len(name))
    if many_to_one:
        y = y[:, -1]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not is_softmax)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    directory = tmp_path_factory.mktemp(name)
    paths = {fmt: str(directory / f"model.{fmt}") for fmt in ("keras", "h5")}
    for path in paths.values():
        model.save(path)
    return name, model, paths, is_softmax, many_to_one


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_lm_matches_keras_predict(keras_lm, fmt):
    name, model, paths, is_softmax, many_to_one = keras_lm
    fl = fastlstm.load(paths[fmt])
    assert isinstance(fl, fastlstm.Model) and fl.config.vocab_size == V
    ids = np.random.default_rng(7).integers(0, V, (3, 17))
    expected = model.predict(ids, verbose=0)
    logits, _ = fl.forward(ids)
    actual = softmax(logits) if is_softmax else logits
    if many_to_one:
        actual = actual[:, -1]
    assert_close(actual, expected, REL, f"{name} {fmt}")
    # the outputs vary: a model that ignored its input or weights would not pass
    assert np.ptp(expected) > 0.05


def test_lm_greedy_continuation_is_keras_argmax(keras_lm):
    """fastlstm's greedy decode loop against Keras's argmax at every generated position:
    Keras runs the prompt + continuation teacher-forced (one predict per row; a many-to-one
    model, one call per prefix), which is its own greedy continuation when every argmax
    agrees.  A divergence is excused only right after a near tie in Keras's outputs."""
    name, model, paths, is_softmax, many_to_one = keras_lm
    fl = fastlstm.load(paths["keras"], num_threads=2)
    prompts = np.random.default_rng(11).integers(0, V, (2, 5))
    generated = fl.generate_ids(prompts, max_new_tokens=GREEDY_STEPS, temperature=0)
    compared = 0
    for row, prompt in enumerate(prompts):
        sequence = np.concatenate([prompt, generated[row]])[None, :-1]
        if many_to_one:
            outputs = np.stack([keras_out(model, sequence[:, :t])[0]
                                for t in range(len(prompt), sequence.shape[1] + 1)])
        else:
            outputs = model.predict(sequence, verbose=0)[0, len(prompt) - 1:]
        for step, token in enumerate(generated[row]):
            best = int(np.argmax(outputs[step]))
            if token != best:
                top2 = np.sort(outputs[step].astype(np.float64))[-2:]
                allowed = NEAR_TIE * max(1.0, float(np.max(np.abs(outputs[step]))))
                assert top2[1] - top2[0] < allowed, (
                    f"{name} row {row} step {step}: fastlstm {token}, Keras {best}")
                break
            compared += 1
    assert compared >= GREEDY_STEPS  # at least one row compared throughout


def test_lm_h5_and_keras_files_load_the_same_weights(keras_lm):
    _, _, paths, _, _ = keras_lm
    ids = np.arange(20).reshape(2, 10) % V
    a, _ = fastlstm.load(paths["keras"]).forward(ids)
    b, _ = fastlstm.load(paths["h5"]).forward(ids)
    np.testing.assert_array_equal(a, b)


def test_converted_lm_generates_text(tmp_path):
    """convert: a Keras LM + a vocabulary -> a fastlstm file that takes text."""
    keras.utils.set_random_seed(5)
    model = lm(layers.GRU(H, reset_after=False, return_sequences=True), head=[layers.Dense(V)])
    vocab = list("abcdefghijklm")
    path = tmp_path / "m.keras"
    model.save(path)
    out = tmp_path / "m.safetensors"
    fastlstm.convert(path, out, vocab=vocab, tokenizer="char")
    converted = fastlstm.load(out)
    assert converted.config.rnn_type == "GRU_RESET_BEFORE"
    text = converted.generate("abc", max_new_tokens=20, temperature=0)
    ids = fastlstm.load(path).generate_ids([[0, 1, 2]], max_new_tokens=20, temperature=0)[0]
    assert text == "".join(vocab[i] for i in ids)
    from safetensors import safe_open

    with safe_open(str(out), "np") as f:
        assert f.metadata()["format_version"] == "2"  # a cell fastlstm 1 cannot run


# --------------------------------------------------------------------------- forecasters


def sine_windows(seed: int, count: int = 64, length: int = 16):
    """Windows of F noisy sines of different periods, with next-step targets."""
    rng = np.random.default_rng(seed)
    t = np.arange(2000)[:, None] * np.array([0.11, 0.07, 0.23])[None, :F]
    series = (np.sin(t) + 0.05 * rng.standard_normal(t.shape)).astype("float32")
    starts = rng.integers(0, len(series) - length - 1, count)
    x = np.stack([series[s:s + length] for s in starts])
    y = np.stack([series[s + 1:s + length + 1] for s in starts])
    return x, y


def forecaster(*body, outputs=F, functional=False):
    if not functional:
        return keras.Sequential([keras.Input((None, F)), *body, layers.Dense(outputs)])
    inputs = keras.Input((None, F), name="series")
    x = inputs
    for layer in (*body, layers.Dense(outputs, name="regression")):
        x = layer(x)
    return keras.Model(inputs, x)


# name -> (builder, many-to-one)
FORECASTERS = {
    "lstm": (lambda: forecaster(layers.LSTM(H, return_sequences=True)), False),
    "gru2": (lambda: forecaster(layers.GRU(H, return_sequences=True),
                                layers.GRU(H, return_sequences=True)), False),
    "gru-reset-before": (lambda: forecaster(layers.GRU(H, reset_after=False,
                                                       return_sequences=True)), False),
    "rnn-relu-nobias": (lambda: forecaster(layers.SimpleRNN(H, activation="relu",
                                                            use_bias=False,
                                                            return_sequences=True)), False),
    "rnn-tanh-functional": (lambda: forecaster(layers.SimpleRNN(H, return_sequences=True),
                                               layers.Dropout(0.1), functional=True), False),
    "lstm-many-to-one": (lambda: forecaster(layers.LSTM(H), layers.Dropout(0.1)), True),
}


@pytest.fixture(scope="module", params=list(FORECASTERS))
def keras_forecaster(request, tmp_path_factory):
    name = request.param
    build, many_to_one = FORECASTERS[name]
    keras.utils.set_random_seed(100 + list(FORECASTERS).index(name))
    model = build()
    x, y = sine_windows(seed=len(name))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y[:, -1] if many_to_one else y, epochs=3, batch_size=16, verbose=0)
    directory = tmp_path_factory.mktemp(name)
    paths = {fmt: str(directory / f"model.{fmt}") for fmt in ("keras", "h5")}
    for path in paths.values():
        model.save(path)
    return name, model, paths, many_to_one


def keras_forecast(model, history: np.ndarray, steps: int, many_to_one: bool) -> np.ndarray:
    """Keras's forecast: predict the next step, append it to the inputs, and again."""
    series = history
    predictions = []
    for _ in range(steps):
        out = keras_out(model, series)
        step = out if many_to_one else out[:, -1]
        predictions.append(step)
        series = np.concatenate([series, step[:, None]], axis=1)
    return np.stack(predictions, axis=1)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_forecaster_predict_matches_keras(keras_forecaster, fmt):
    name, model, paths, many_to_one = keras_forecaster
    fl = fastlstm.load(paths[fmt])
    assert isinstance(fl, fastlstm.Forecaster)
    assert (fl.config.input_size, fl.config.output_size) == (F, F)
    x, _ = sine_windows(seed=99, count=3, length=20)
    expected = model.predict(x, verbose=0)
    y, _ = fl.predict(x)
    assert_close(y[:, -1] if many_to_one else y, expected, REL, f"{name} {fmt} predict")
    assert np.ptp(expected) > 0.05


def test_forecaster_forecast_matches_keras_fed_back(keras_forecaster):
    name, model, paths, many_to_one = keras_forecaster
    fl = fastlstm.load(paths["h5"], num_threads=2)
    history, _ = sine_windows(seed=98, count=2, length=12)
    expected = keras_forecast(model, history, FORECAST_STEPS, many_to_one)
    actual = fl.forecast(history, FORECAST_STEPS)
    assert actual.shape == (2, FORECAST_STEPS, F)
    assert_close(actual, expected, REL, f"{name} forecast")


def rounded_clone(model, dtype: str):
    """A copy of `model` whose matrices hold exactly what fastlstm's `dtype` stores: rows of
    PyTorch's layout, i.e. columns of Keras's kernels (each its own int8 scale)."""
    clone = keras.models.clone_model(model)
    values = []
    for weight in model.weights:
        value = keras.ops.convert_to_numpy(weight)
        leaf = weight.path.split("/")[-1]
        if leaf == "embeddings":  # (vocab, E): PyTorch's layout already
            value = store(value, dtype).to_float32()
        elif value.ndim == 2 and leaf != "bias":  # kernels (in, out): PyTorch's transposed
            value = store(np.ascontiguousarray(value.T), dtype).to_float32().T
        values.append(value)
    clone.set_weights(values)
    return clone


@pytest.mark.parametrize("dtype", REDUCED)
def test_reset_before_gru_in_every_precision(dtype, tmp_path):
    """GRU(reset_after=False) in float16, bfloat16 and int8: fastlstm against Keras run on
    the rounded weights, for a forecaster (predict, 100 steps fed back) and a language model."""
    keras.utils.set_random_seed(21)
    model = forecaster(layers.GRU(H, reset_after=False, return_sequences=True),
                       layers.GRU(H, reset_after=False, return_sequences=True))
    x, y = sine_windows(seed=4)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    model.save(tmp_path / "f.keras")
    fl = fastlstm.load(tmp_path / "f.keras", dtype=dtype)
    assert fl.dtype == dtype
    reference = rounded_clone(model, dtype)
    history, _ = sine_windows(seed=97, count=2, length=10)
    assert_close(fl.predict(history)[0], keras_out(reference, history), REL, f"{dtype} predict")
    assert_close(fl.forecast(history, FORECAST_STEPS),
                 keras_forecast(reference, history, FORECAST_STEPS, False), REL,
                 f"{dtype} forecast")

    text = lm(layers.GRU(H, reset_after=False, return_sequences=True),
              layers.GRU(H, reset_after=False, return_sequences=True), head=[layers.Dense(V)])
    rng = np.random.default_rng(3)
    for weight in text.weights:  # random weights large enough to use the gates' range
        weight.assign(rng.uniform(-0.6, 0.6, weight.shape).astype("float32"))
    text.save(tmp_path / "lm.h5")
    ids = np.random.default_rng(8).integers(0, V, (2, 15))
    logits, _ = fastlstm.load(tmp_path / "lm.h5", dtype=dtype).forward(ids)
    assert_close(logits, keras_out(rounded_clone(text, dtype), ids), REL, f"{dtype} logits")


def test_forecaster_with_other_outputs_predicts_but_cannot_forecast(tmp_path):
    keras.utils.set_random_seed(3)
    model = forecaster(layers.LSTM(H, return_sequences=True), outputs=2)
    model.save(tmp_path / "m.keras")
    fl = fastlstm.load(tmp_path / "m.keras")
    x, _ = sine_windows(seed=5, count=2, length=8)
    assert_close(fl.predict(x)[0], keras_out(model, x), REL, "two outputs")
    with pytest.raises(ValueError, match="predict"):
        fl.forecast(x, 3)


# --------------------------------------------------------------------------- tf.keras 2.x


def tf_keras2_h5(model, path, functional: bool = False) -> None:
    """Write `model` (Sequential Embedding/Input -> recurrent layers -> Dense) as tf.keras
    2.x's `model.save("m.h5")` did (tensorflow/python/keras/saving/hdf5_format.py): attributes
    keras_version, backend and model_config (JSON bytes); model_weights with layer_names
    (bytes), and per layer, sorted by name, a group whose weight_names attribute lists
    "<layer>/<cell>/kernel:0"-style names, each a dataset at that path in the group."""
    keras_layers = list(model.layers)
    names = {id(layer): name for layer, name in zip(keras_layers, _tf2_names(keras_layers))}
    configs, previous = [], "input_1"
    first = keras_layers[0]
    input_dtype = "int32" if isinstance(first, layers.Embedding) else "float32"
    input_shape = [None, None] if input_dtype == "int32" else [None, None, F]
    input_config = {"class_name": "InputLayer", "config": {
        "batch_input_shape": input_shape, "dtype": input_dtype, "sparse": False,
        "ragged": False, "name": "input_1"}}
    if functional:
        input_config.update(name="input_1", inbound_nodes=[])
    configs.append(input_config)
    for layer in keras_layers:
        config = _tf2_config(layer, names[id(layer)])
        entry = {"class_name": type(layer).__name__, "config": config}
        if functional:
            entry.update(name=config["name"], inbound_nodes=[[[previous, 0, 0, {}]]])
        previous = config["name"]
        configs.append(entry)
    if functional:
        model_config = {"class_name": "Functional", "config": {
            "name": "model", "layers": configs, "input_layers": [["input_1", 0, 0]],
            "output_layers": [[previous, 0, 0]]}}
    else:
        model_config = {"class_name": "Sequential", "config": {"name": "sequential",
                                                               "layers": configs}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
        group = f.create_group("model_weights")
        weighted = keras_layers
        group.attrs["layer_names"] = np.array(
            (["input_1"] if functional else []) + [names[id(l)] for l in weighted], dtype="S")
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"2.15.0"
        entries = [(names[id(l)], l) for l in weighted] + ([("input_1", None)] if functional else [])
        for name, layer in sorted(entries, key=lambda e: e[0]):
            g = group.create_group(name)
            weights = [] if layer is None else layer.weights
            cell = {layers.LSTM: "lstm_cell", layers.GRU: "gru_cell",
                    layers.SimpleRNN: "simple_rnn_cell"}.get(type(layer))
            weight_names = []
            for weight in weights:
                leaf = weight.path.split("/")[-1]
                weight_names.append(f"{name}/{cell}/{leaf}:0" if cell else f"{name}/{leaf}:0")
            # tf.keras wrote np.asarray(names): bytes, or an empty float array for none
            g.attrs["weight_names"] = np.array(weight_names, dtype="S") if weight_names \
                else np.array([])
            for weight_name, weight in zip(weight_names, weights):
                g.create_dataset(weight_name, data=keras.ops.convert_to_numpy(weight))


def _tf2_names(keras_layers):
    counts, names = {}, []
    for layer in keras_layers:
        base = {layers.Embedding: "embedding", layers.LSTM: "lstm", layers.GRU: "gru",
                layers.SimpleRNN: "simple_rnn", layers.Dense: "dense",
                layers.Dropout: "dropout"}[type(layer)]
        names.append(base if base not in counts else f"{base}_{counts[base]}")
        counts[base] = counts.get(base, 0) + 1
    return names


def _tf2_config(layer, name: str) -> dict:
    """tf.keras 2.x's get_config for these layers (dtype a string; recurrent layers with
    time_major and implementation; initializers omitted, which loading never reads)."""
    config = {"name": name, "trainable": True, "dtype": "float32"}
    if isinstance(layer, layers.Embedding):
        config.update(input_dim=layer.input_dim, output_dim=layer.output_dim, mask_zero=False,
                      input_length=None, batch_input_shape=[None, None])
    elif isinstance(layer, (layers.LSTM, layers.GRU, layers.SimpleRNN)):
        config.update(return_sequences=layer.return_sequences, return_state=False,
                      go_backwards=False, stateful=False, unroll=False, time_major=False,
                      units=layer.units, activation=keras.activations.serialize(layer.activation),
                      use_bias=layer.use_bias, dropout=0.0, recurrent_dropout=0.0)
        if not isinstance(layer, layers.SimpleRNN):
            config.update(recurrent_activation="sigmoid", implementation=2)
        if isinstance(layer, layers.GRU):
            config["reset_after"] = layer.reset_after
    elif isinstance(layer, layers.Dense):
        config.update(units=layer.units, use_bias=layer.use_bias,
                      activation=keras.activations.serialize(layer.activation))
    elif isinstance(layer, layers.Dropout):
        config.update(rate=layer.rate, noise_shape=None, seed=None)
    return config


def test_tf_keras2_layout_language_model(tmp_path):
    keras.utils.set_random_seed(31)
    model = lm(layers.LSTM(H, return_sequences=True), layers.Dropout(0.1),
               layers.LSTM(H, return_sequences=True), head=[layers.Dense(V, activation="softmax")])
    x, y = corpus_windows(seed=31)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path / "tf2.h5"
    tf_keras2_h5(model, path)
    with h5py.File(path) as f:  # the layout this test means to build
        assert "model_weights/lstm_1/lstm_1/lstm_cell/kernel:0" in f
        assert f["model_weights"].attrs["layer_names"].dtype.kind == "S"
    ids = np.random.default_rng(2).integers(0, V, (2, 14))
    logits, _ = fastlstm.load(path).forward(ids)
    assert_close(softmax(logits), model.predict(ids, verbose=0), REL, "tf.keras 2.x layout")


def test_tf_keras2_layout_functional_forecaster(tmp_path):
    keras.utils.set_random_seed(32)
    model = forecaster(layers.GRU(H, return_sequences=True), layers.Dropout(0.1),
                       layers.GRU(H, return_sequences=True))
    x, y = sine_windows(seed=32)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "tf2.h5"
    tf_keras2_h5(model, path, functional=True)
    fl = fastlstm.load(path)
    history, _ = sine_windows(seed=33, count=2, length=9)
    assert_close(fl.predict(history)[0], keras_out(model, history), REL, "tf.keras 2.x functional")


# --------------------------------------------------------------------------- refused


def _functional_attention():
    inputs = keras.Input((None,), dtype="int32")
    x = layers.Embedding(V, E)(inputs)
    x = layers.LSTM(H, return_sequences=True)(x)
    x = layers.Attention(name="attention")([x, x])
    return keras.Model(inputs, layers.Dense(V)(x))


def _branching():
    inputs = keras.Input((None, F))
    a = layers.LSTM(H, return_sequences=True, name="left")(inputs)
    b = layers.LSTM(H, return_sequences=True, name="right")(inputs)
    return keras.Model(inputs, layers.Dense(F)(layers.Add(name="add")([a, b])))


# name -> (builder, the error's pattern: the layer and what is unsupported)
REFUSED = {
    "bidirectional": (lambda: lm(layers.Bidirectional(layers.LSTM(H, return_sequences=True),
                                                      name="bi"), head=[layers.Dense(V)]),
                      r"'bi' \(Bidirectional\).*bidirectional"),
    "attention": (_functional_attention, r"'attention' \(Attention\).*attention"),
    "branches": (_branching, r"takes 2 inputs|feeds 2 layers"),
    "conv1d": (lambda: forecaster(layers.Conv1D(4, 3, name="conv", padding="causal"),
                                  layers.LSTM(H, return_sequences=True)),
               r"'conv' \(Conv1D\)"),
    "stateful": (lambda: keras.Sequential([keras.Input(batch_shape=(2, None, F)),
                                           layers.LSTM(H, stateful=True, return_sequences=True,
                                                       name="kept"), layers.Dense(F)]),
                 r"'kept' \(LSTM\).*stateful"),
    "go_backwards": (lambda: forecaster(layers.GRU(H, go_backwards=True, return_sequences=True,
                                                   name="backwards")),
                     r"'backwards' \(GRU\).*go_backwards"),
    "mask_zero": (lambda: keras.Sequential([keras.Input((None,), dtype="int32"),
                                            layers.Embedding(V, E, mask_zero=True, name="emb"),
                                            layers.LSTM(H, return_sequences=True),
                                            layers.Dense(V)]),
                  r"'emb' \(Embedding\).*mask_zero"),
    "masking": (lambda: forecaster(layers.Masking(name="mask"),
                                   layers.LSTM(H, return_sequences=True)),
                r"'mask' \(Masking\).*mask"),
    "lstm-relu": (lambda: forecaster(layers.LSTM(H, activation="relu", return_sequences=True,
                                                 name="relu_lstm")),
                  r"'relu_lstm' \(LSTM\).*activation 'relu'"),
    "gru-hard-sigmoid": (lambda: forecaster(layers.GRU(H, recurrent_activation="hard_sigmoid",
                                                       return_sequences=True, name="hard")),
                         r"'hard' \(GRU\).*hard_sigmoid"),
    "rnn-sigmoid": (lambda: forecaster(layers.SimpleRNN(H, activation="sigmoid",
                                                        return_sequences=True, name="s")),
                    r"'s' \(SimpleRNN\).*activation 'sigmoid'"),
    "dense-relu": (lambda: lm(layers.LSTM(H, return_sequences=True),
                              head=[layers.Dense(V, activation="relu", name="out")]),
                   r"'out' \(Dense\).*activation 'relu'"),
    "two-dense": (lambda: lm(layers.LSTM(H, return_sequences=True),
                             head=[layers.Dense(E, name="d1"), layers.Dense(V, name="d2")]),
                  r"'d2' \(Dense\).*after the Dense head"),
    "mixed-units": (lambda: forecaster(layers.LSTM(H, return_sequences=True),
                                       layers.LSTM(H // 2, return_sequences=True, name="small")),
                    r"'small' \(LSTM\).*one kind and size"),
    "mixed-cells": (lambda: forecaster(layers.LSTM(H, return_sequences=True),
                                       layers.GRU(H, return_sequences=True, name="g")),
                    r"'g' \(GRU\).*one kind and size"),
    "softmax-forecaster": (lambda: keras.Sequential([keras.Input((None, F)),
                                                     layers.LSTM(H, return_sequences=True),
                                                     layers.Dense(F, activation="softmax",
                                                                  name="probs")]),
                           r"'probs' \(Dense\).*classifier"),
    "no-head": (lambda: keras.Sequential([keras.Input((None, F)),
                                          layers.LSTM(F, return_sequences=True, name="last")]),
                r"'last' \(LSTM\).*last layer"),
}


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_models_are_refused(name, fmt, tmp_path):
    build, pattern = REFUSED[name]
    keras.utils.set_random_seed(0)
    model = build()
    path = tmp_path / f"model.{fmt}"
    model.save(path)
    with pytest.raises(ValueError, match=pattern):
        fastlstm.load(path)
    with pytest.raises(ValueError, match=pattern):
        fastlstm.convert(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_weights_only_file_is_refused(tmp_path):
    model = forecaster(layers.LSTM(H, return_sequences=True))
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    with pytest.raises(ValueError, match="weights alone"):
        fastlstm.load(path)


def test_subclassed_model_is_refused(tmp_path):
    @keras.saving.register_keras_serializable(package="fastlstm_tests")
    class Subclassed(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.rnn = layers.LSTM(H, return_sequences=True)
            self.head = layers.Dense(F)

        def call(self, x):
            return self.head(self.rnn(x))

    model = Subclassed()
    model(np.zeros((1, 2, F), "float32"))
    model.save(tmp_path / "sub.keras")
    with pytest.raises(ValueError, match=r"Subclassed model is not supported.*subclassed"):
        fastlstm.load(tmp_path / "sub.keras")


def test_keras_file_with_a_link_out_of_the_file_is_refused(tmp_path):
    """Weights are read from the file itself: an HDF5 external link is refused, not followed."""
    model = forecaster(layers.LSTM(H, return_sequences=True))
    path = tmp_path / "model.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights"][model.layers[-1].name]
        name = group.attrs["weight_names"][0]
        name = name.decode() if isinstance(name, bytes) else name
        parent, leaf = name.rsplit("/", 1)
        del group[name]
        group[parent][leaf] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "/kernel")
    with pytest.raises(ValueError, match="link"):
        fastlstm.load(path)


def test_truncated_and_foreign_files(tmp_path):
    model = forecaster(layers.GRU(H, return_sequences=True))
    path = tmp_path / "model.keras"
    model.save(path)
    data = path.read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        fastlstm.load(tmp_path / "cut.keras")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(ValueError, match="model_config"):
        fastlstm.load(tmp_path / "empty.h5")
