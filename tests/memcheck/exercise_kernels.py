"""Drive every kernel entry point through its edge cases, without torch, for the memory checker.

The test files check numbers against PyTorch on short inputs; under valgrind that costs ~1 min
of torch import and a 30-100x slowdown, so run.sh runs a subset of them plus this script,
which reaches the paths those short inputs do not:

* _rnn.forward over more rows than one input-projection chunk (ROWS_PER_CHUNK = 256), from a
  lookup table and from the embedding (a model whose table would be too large), with and
  without a state, and split in two pieces (the state carries across exactly), on 1 and 2
  threads (the same bits);
* _rnn.prefill with prompts of 1 token (no prefill), of a few, and of hundreds;
* _generate.decode at batch 1 and with more rows than threads, num_threads 1 and 2, every
  sampling parameter, eos ids and stop strings that end rows early (slots swapped), streams
  broken off after one chunk, num_return_sequences;
* every cell: LSTM (with and without proj_size), GRU, GRU_RESET_BEFORE (Keras's
  reset_after=False), RNN_TANH, RNN_RELU, in every weight precision;
* teams: fastlstm.threads.TEAM_MIN_WEIGHTS is set to 0, so that with fewer rows than threads
  (batch 1 on 2 threads) the two threads share every product of these small models (stack.pxd's
  Team, team.h's barrier) in forward, prefill, decode, streams and forecasts, as they do for
  models of 300k weights a step and more; batch 3 gives each thread whole rows;
* forecasters (fastlstm.Forecaster, written as safetensors files without torch): predict and
  forecast (_forecast.forecast: predictions fed back) at batch 1, 2, 3 and unbatched, from a
  state, 1 and 2 threads (the same bits), every cell and precision;
* BLAS: float32 models and forecasters as CPUs without AVX2 run them (row-major copies, forward
  through OpenBLAS when each thread has rows of its own);
* the recurrent layers on float inputs (LSTM with proj_size, GRU, RNN_RELU, without biases);
* the decode loop's NaN path: a ReLU RNN whose state grows 1.9x per step overflows float32
  after ~140 tokens; rows hit it at different steps (batch 1 and 4, 1 and 2 threads, while
  streaming, and in prefill for a long prompt) and FloatingPointError is raised;
* the sampler twin, the coin generator and the packed matmul at awkward sizes.

Everything is checked for self-consistency (pieces == whole, threads 1 == threads 2, seeds
reproduce), so a kernel that read garbage would also be likely to fail here.
The kernels run on the path fastlstm picks (FASTLSTM_ISA chooses one: run.sh runs this once
per path the checker can run); the last line but one says which, and whether a team was ever
found lagging so that its thread 0 went on alone (stack.pxd's team_wants_solo).
Run: python tests/memcheck/exercise_kernels.py   (prints "exercise_kernels: OK")
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's fastlstm
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests/: exploding_relu
import fastlstm  # noqa: E402
import fastlstm.threads  # noqa: E402
from fastlstm import _generate, _matmul, _rnn, isa  # noqa: E402
from fastlstm.pack import pack_matrix  # noqa: E402
from fastlstm.precision import DTYPES, store  # noqa: E402
from fastlstm.tokenizers import CharTokenizer  # noqa: E402
from fastlstm.file_format import format_version  # noqa: E402
from exploding_relu import write_exploding_relu  # noqa: E402

# Teams for these small models too (threads.call_threads would give a batch-1 call one thread).
fastlstm.threads.TEAM_MIN_WEIGHTS = 0

CHARS = list("\n abcdefghijklmnopqrstuvwxyz.,;:!?'-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
GATES = {"LSTM": 4, "GRU": 3, "GRU_RESET_BEFORE": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def recurrent_tensors(rng, rnn_type, inputs, hidden, layers, *, proj=0, bias=True, scale=2.0):
    """PyTorch-named recurrent layers (rnn.weight_ih_l0 ...) of random float64 weights."""
    g = GATES[rnn_type]
    out = proj or hidden
    t = {}
    for k in range(layers):
        inp = inputs if k == 0 else out
        t[f"rnn.weight_ih_l{k}"] = rng.uniform(-scale, scale, (g * hidden, inp)) / np.sqrt(inp)
        t[f"rnn.weight_hh_l{k}"] = rng.uniform(-scale, scale, (g * hidden, out)) / np.sqrt(out)
        if bias:
            t[f"rnn.bias_ih_l{k}"] = rng.uniform(-0.5, 0.5, g * hidden)
            t[f"rnn.bias_hh_l{k}"] = rng.uniform(-0.5, 0.5, g * hidden)
        if proj:
            t[f"rnn.weight_hr_l{k}"] = rng.uniform(-scale, scale, (proj, hidden)) / np.sqrt(hidden)
    return t


def lm_tensors(rnn_type, vocab, emb, hidden, layers, *, proj=0, bias=True, head_bias=True,
               seed=0):
    """A PyTorch-named state_dict (encoder / rnn / decoder) of random float32 weights."""
    rng = np.random.default_rng(seed)
    out = proj or hidden
    t = {"encoder.weight": rng.uniform(-1.5, 1.5, (vocab, emb))}
    t.update(recurrent_tensors(rng, rnn_type, emb, hidden, layers, proj=proj, bias=bias))
    t["decoder.weight"] = rng.uniform(-4, 4, (vocab, out)) / np.sqrt(out)
    if head_bias:
        t["decoder.bias"] = rng.uniform(-0.5, 0.5, vocab)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()}


def char_vocab(size):
    """CHARS, then more (non-ASCII) characters up to `size` tokens."""
    return (CHARS + [chr(0x100 + i) for i in range(size)])[:size]


def write_model(directory, name, rnn_type, vocab, **kw):
    path = os.path.join(directory, name + ".safetensors")
    metadata = {"format": "fastlstm", "format_version": format_version("language_model", rnn_type),
                "rnn_type": rnn_type,
                "tokenizer": CharTokenizer(char_vocab(vocab)).to_json()}
    save_file(lm_tensors(rnn_type, vocab, **kw), path, metadata=metadata)
    return path


# name: (rnn_type, vocab, keyword arguments of lm_tensors, whether layer 0 reads a table).
# The table is skipped when vocab * gates * hidden > 2 * parameters: large vocabularies with
# small embeddings (never for plain RNNs, whose table row is no wider than the hidden size).
MODELS = {
    "lstm-proj-table": ("LSTM", len(CHARS), dict(emb=12, hidden=40, layers=2, proj=24), True),
    "lstm-emb": ("LSTM", 600, dict(emb=4, hidden=33, layers=2, head_bias=False), False),
    "gru-emb": ("GRU", 1000, dict(emb=2, hidden=17, layers=2), False),
    "gru-table": ("GRU", len(CHARS), dict(emb=9, hidden=16, layers=1, bias=False), True),
    "relu-table": ("RNN_RELU", len(CHARS), dict(emb=8, hidden=20, layers=2), True),
    "tanh-table": ("RNN_TANH", 150, dict(emb=2, hidden=31, layers=3, head_bias=False), True),
    "grb-table": ("GRU_RESET_BEFORE", len(CHARS), dict(emb=7, hidden=21, layers=2), True),
    "grb-emb": ("GRU_RESET_BEFORE", 900, dict(emb=3, hidden=19, layers=1, head_bias=False), False),
}

# Forecasters: name -> (rnn_type, features, keyword arguments of recurrent_tensors, head bias).
FORECASTERS = {
    "f-lstm-proj": ("LSTM", 3, dict(hidden=21, layers=2, proj=5), True),
    "f-lstm": ("LSTM", 1, dict(hidden=9, layers=1, bias=False), False),
    "f-gru": ("GRU", 2, dict(hidden=17, layers=2), True),
    "f-grb": ("GRU_RESET_BEFORE", 4, dict(hidden=13, layers=2), True),
    "f-tanh": ("RNN_TANH", 5, dict(hidden=33, layers=2, bias=False), True),
    "f-relu": ("RNN_RELU", 2, dict(hidden=10, layers=1, scale=0.6), True),
}


def states_equal(a, b, exact=True):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    for x, y in zip(a, b):
        if exact:
            assert np.array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


def check_forward(model, rng, one_thread=None):
    """forward on `model` (2 threads: a team at batch 1, whole rows at batch 2 and 3); the
    same bits on `one_thread`, a 1-thread copy, when given."""
    V = model.config.vocab_size
    for batch, steps in [(1, 700), (3, 100), (2, 1), (1, 257)]:
        ids = rng.integers(0, V, (batch, steps))
        logits, state = model.forward(ids)
        assert logits.shape == (batch, steps, V) and np.isfinite(logits).all()
        if one_thread is not None:
            logits1, state1 = one_thread.forward(ids)
            assert np.array_equal(logits1, logits)
            states_equal(state1, state)
        cut = max(1, steps // 3)
        if cut < steps:  # two pieces: logits and state carry across
            l1, s1 = model.forward(ids[:, :cut])
            l2, s2 = model.forward(ids[:, cut:], s1)
            np.testing.assert_allclose(np.concatenate([l1, l2], 1), logits, rtol=2e-4, atol=2e-4)
            states_equal(s2, state, exact=False)
        # a given state, and the same call again: the same bits
        again, state2 = model.forward(ids[:, :5], state)
        again2, state3 = model.forward(ids[:, :5], state)
        assert np.array_equal(again, again2)
        states_equal(state2, state3)


def check_generation(path, rng, dtype="float32"):
    m1 = fastlstm.load(path, dtype=dtype, num_threads=1)
    m2 = fastlstm.load(path, dtype=dtype, num_threads=2)
    V = m1.config.vocab_size
    prompts = [list(rng.integers(0, V, n)) for n in (1, 2, 300, 17, 1)]
    settings = [
        dict(temperature=0),
        dict(temperature=0.8, seed=1),
        dict(temperature=1.3, top_k=3, top_p=0.9, seed=2),
        dict(temperature=0.7, min_p=0.1, repetition_penalty=1.4, seed=3),
        dict(top_k=1, seed=4),
        dict(top_p=1e-6, seed=5),
        dict(temperature=1.0, eos_token_id=[0, 1, 2, 3, 4, 5], seed=6),  # rows end early
        dict(temperature=0.9, num_return_sequences=3, repetition_penalty=0.8, seed=7),
    ]
    for params in settings:
        a = m1.generate_ids(prompts, max_new_tokens=40, **params)
        b = m2.generate_ids(prompts, max_new_tokens=40, **params)
        assert np.array_equal(a, b), params
        assert ((a >= -1) & (a < V)).all()
        # each prompt alone gives its rows of the batch
        n = params.get("num_return_sequences", 1)
        alone = m2.generate_ids([prompts[2]], max_new_tokens=40, **params)
        assert np.array_equal(alone, a[2 * n:3 * n]), params
    texts = ["hello world", "a", "The Tempest.\nACT I"]
    for params in [dict(stop=["e", "th"], seed=8), dict(stop=["\n\n"], temperature=1.5, seed=9)]:
        t1 = m1.generate(texts, max_new_tokens=60, **params)
        t2 = m2.generate(texts, max_new_tokens=60, **params)
        assert t1 == t2
    # batch 3 (whole rows per thread), 2 and 1 (on 2 threads: a team), prompts of 1 to 300
    for rows in (prompts[:3], prompts[1:3], prompts[2:3], prompts[:1]):
        params = dict(max_new_tokens=30, temperature=0.9, top_p=0.95, seed=13)
        assert np.array_equal(m1.generate_ids(rows, **params), m2.generate_ids(rows, **params))
    full = m1.generate("it was", max_new_tokens=100, temperature=1.0, seed=10)
    assert "".join(m1.stream("it was", max_new_tokens=100, temperature=1.0, seed=10)) == full
    assert "".join(m2.stream("it was", max_new_tokens=100, temperature=1.0, seed=10)) == full
    for _ in m1.stream("it was", max_new_tokens=1000, seed=11):
        break  # broken off after the first chunk
    for _ in m2.stream("x", max_new_tokens=50, stop=["a"], seed=12):
        pass


def write_forecaster(directory, name, rnn_type, features, head_bias, seed=0, **kw):
    """A forecaster file (kind "forecaster": rnn.* layers and an fc head, float inputs)."""
    rng = np.random.default_rng(seed)
    t = recurrent_tensors(rng, rnn_type, features, **kw)
    out = kw.get("proj") or kw["hidden"]
    t["fc.weight"] = rng.uniform(-1.5, 1.5, (features, out)) / np.sqrt(out)
    if head_bias:
        t["fc.bias"] = rng.uniform(-0.3, 0.3, features)
    path = os.path.join(directory, name + ".safetensors")
    metadata = {"format": "fastlstm", "format_version": format_version("forecaster", rnn_type),
                "rnn_type": rnn_type, "kind": "forecaster", "input_size": str(features),
                "output_size": str(features)}
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()}, path,
              metadata=metadata)
    return path


def check_forecaster(path, rng, dtype):
    """predict and forecast on 1 and 2 threads (the same bits), batch 1 (a team on 2
    threads), 2 and 3, unbatched, in two pieces and from a state."""
    f1 = fastlstm.load(path, dtype=dtype, num_threads=1)
    f2 = fastlstm.load(path, dtype=dtype, num_threads=2)
    assert isinstance(f2, fastlstm.Forecaster)
    F = f1.config.input_size
    for batch, steps, ahead in [(1, 300, 60), (3, 40, 25), (2, 1, 1), (1, 5, 1)]:
        x = rng.standard_normal((batch, steps, F)).astype(np.float32)
        y, state = f2.predict(x)
        assert y.shape == (batch, steps, F) and np.isfinite(y).all()
        y1, state1 = f1.predict(x)
        assert np.array_equal(y1, y)
        states_equal(state1, state)
        future = f2.forecast(x, ahead)
        assert future.shape == (batch, ahead, F) and np.isfinite(future).all()
        assert np.array_equal(f1.forecast(x, ahead), future)
        for b in range(batch):  # each series alone (on 2 threads: a team)
            assert np.array_equal(f2.forecast(x[b], ahead), future[b])
        cut = steps // 2
        if cut:  # two pieces; a forecast from the state after the first
            ya, sa = f2.predict(x[:, :cut])
            yb, sb = f2.predict(x[:, cut:], sa)
            np.testing.assert_allclose(np.concatenate([ya, yb], 1), y, rtol=2e-4, atol=2e-4)
            states_equal(sb, state, exact=False)
            np.testing.assert_allclose(f2.forecast(x[:, cut:], ahead, state=sa), future,
                                       rtol=1e-3, atol=1e-3)
        y0, s0 = f2.predict(x[0])  # unbatched, and continued from its state
        assert np.array_equal(y0, y[0])
        f2.predict(x[0, :1], state=s0)


def check_blas(directory, rng):
    """float32 on a CPU without AVX2 (fastlstm.isa.vector_kernels False): layers and head
    also held row-major, forward through OpenBLAS when each thread has rows of its own
    (batch 3 on 2 threads, anything on 1), matmul.h in a team (batch 1 on 2 threads), in
    prefill and in decoding.  Close to the vector kernels' results, not bitwise."""
    real = isa.vector_kernels
    isa.vector_kernels = lambda: False
    try:
        paths = [write_model(directory, "blas-" + name, *MODELS[name][:2], **MODELS[name][2])
                 for name in ("lstm-proj-table", "gru-emb", "grb-table")]
        paths.append(write_forecaster(directory, "blas-f", "LSTM", 3, True, hidden=11, layers=2,
                                      proj=4))
        for path in paths:
            for threads in (1, 2):
                model = fastlstm.load(path, dtype="float32", num_threads=threads)
                isa.vector_kernels = real
                panels = fastlstm.load(path, dtype="float32", num_threads=threads)
                isa.vector_kernels = lambda: False
                if isinstance(model, fastlstm.Forecaster):
                    assert model.packed.layers[0].w_ih is not None
                    for batch in (1, 3):
                        x = rng.standard_normal((batch, 50, 3)).astype(np.float32)
                        np.testing.assert_allclose(model.predict(x)[0], panels.predict(x)[0],
                                                   rtol=1e-4, atol=1e-4)
                        np.testing.assert_allclose(model.forecast(x, 20), panels.forecast(x, 20),
                                                   rtol=1e-3, atol=1e-3)
                    continue
                assert model.packed.head_w is not None
                V = model.config.vocab_size
                for batch in (1, 3):
                    ids = rng.integers(0, V, (batch, 300))
                    np.testing.assert_allclose(model.forward(ids)[0], panels.forward(ids)[0],
                                               rtol=1e-4, atol=1e-4)
                prompts = [list(rng.integers(0, V, n)) for n in (1, 40, 3)]
                assert np.array_equal(model.generate_ids(prompts, max_new_tokens=20, seed=1),
                                      panels.generate_ids(prompts, max_new_tokens=20, seed=1))
    finally:
        isa.vector_kernels = real


def check_nan_path(directory):
    path = write_exploding_relu(directory, CHARS)
    for threads in (1, 2):
        model = fastlstm.load(path, num_threads=threads)
        fine = model.generate_ids([[1], [2, 3]], max_new_tokens=20, temperature=0)
        for prompts, params in [([[1]], dict(temperature=0)),
                                ([[1], [2, 3] * 20, [4], [5] * 60], dict(seed=1)),
                                ([[1], [2] * 400], dict(temperature=0)),  # overflows in prefill
                                ([[1, 2], [3]], dict(top_k=3, repetition_penalty=1.3, seed=2,
                                                     num_return_sequences=3))]:
            try:
                model.generate_ids(prompts, max_new_tokens=300, **params)
            except FloatingPointError:
                pass
            else:
                raise AssertionError(f"no FloatingPointError for {params}")
        try:
            pieces = [p for p in model.stream("ab", max_new_tokens=300, temperature=0)]
        except FloatingPointError:
            pass
        else:
            raise AssertionError(f"stream gave {len(pieces)} pieces and no FloatingPointError")
        # The error leaves the model as it was.
        assert np.array_equal(model.generate_ids([[1], [2, 3]], max_new_tokens=20,
                                                 temperature=0), fine)


def check_layers(rng):
    specs = [
        ("LSTM", dict(emb=5, hidden=24, layers=2, proj=7)),
        ("GRU", dict(emb=3, hidden=9, layers=1, bias=False)),
        ("RNN_RELU", dict(emb=6, hidden=257, layers=2)),
    ]
    for rnn_type, kw in specs:
        t = lm_tensors(rnn_type, 2, **kw)
        arrays = {k[len("rnn."):]: v for k, v in t.items() if k.startswith("rnn.")}
        results = {}
        for threads in (1, 2):
            if rnn_type == "LSTM":
                layer = fastlstm.LSTM(arrays, num_threads=threads)
            elif rnn_type == "GRU":
                layer = fastlstm.GRU(arrays, num_threads=threads)
            else:
                layer = fastlstm.RNN(arrays, nonlinearity="relu", num_threads=threads)
            for shape in [(2, 400, kw["emb"]), (5, 3, kw["emb"]), (1, kw["emb"]),
                          (1, 90, kw["emb"])]:  # the last two: a team on 2 threads
                x = np.random.default_rng(shape).standard_normal(shape).astype(np.float32)
                y, state = layer(x)
                assert np.isfinite(y).all()
                if isa.vector_kernels():  # matmul.h's panels: the same bits on any thread count
                    results.setdefault(shape, y)
                    assert np.array_equal(results[shape], y), (rnn_type, shape)
                if len(shape) == 3 and shape[1] > 1:
                    y1, s1 = layer(x[:, :shape[1] // 2])
                    y2, s2 = layer(x[:, shape[1] // 2:], s1)
                    np.testing.assert_allclose(np.concatenate([y1, y2], 1), y, rtol=2e-4, atol=2e-4)
                    states_equal(s2, state, exact=False)


def check_sampler_and_matmul(rng):
    for V in (1, 2, 7, 96, 1000):
        logits = rng.standard_normal(V).astype(np.float32)
        seen = (rng.random(V) < 0.3).astype(np.uint8)
        for params in [dict(temperature=0), dict(), dict(top_k=3, top_p=0.5, min_p=0.01),
                       dict(repetition_penalty=1.7, temperature=0.5)]:
            for coin in (0.0, 0.5, 0.9999999):
                token = _generate.sample(logits, seen, coin_value=coin, **params)
                assert 0 <= token < V
    bad = np.zeros(10, np.float32)
    bad[3] = np.nan
    assert _generate.sample(bad) == -1
    assert _generate.coins(1, 2, 0, 1000).shape == (1000,)
    for (m, n, k), dtype in itertools.product(
            [(1, 1, 1), (3, 15, 7), (17, 16, 513), (70, 17, 64), (5, 2051, 3)], DTYPES):
        x = rng.standard_normal((m, k)).astype(np.float32)
        stored = store(rng.standard_normal((n, k)).astype(np.float32), dtype)
        w = stored.to_float32()
        bias = rng.standard_normal(n).astype(np.float32)
        packed = pack_matrix(stored)
        y = _matmul.matmul(x, packed, bias=bias)
        np.testing.assert_allclose(y, x.astype(np.float64) @ w.T.astype(np.float64) + bias,
                                   rtol=1e-3, atol=1e-3 * np.sqrt(k))
        y2 = _matmul.matmul(x, packed, bias=bias, y=y.copy(), accumulate=True)
        np.testing.assert_allclose(y2, 2 * y, rtol=1e-5, atol=1e-5)
        ys = _matmul.matmul(x, packed, bias=bias, force_scalar=True)
        assert np.array_equal(ys, y)  # the scalar path computes the same fma chains
        wide = np.zeros((m, n + 5), np.float32)  # rows further apart than their width
        _matmul.matmul(x, packed, bias=bias, y=wide[:, 2:n + 2])
        assert np.array_equal(wide[:, 2:n + 2], y) and not wide[:, :2].any() and not wide[:, n + 2:].any()
        ids = rng.integers(0, n, 7)
        for force_scalar in (False, True):
            rows = _matmul.gather_rows(stored, ids, force_scalar=force_scalar)
            assert np.array_equal(rows, w[ids])


def main() -> int:
    rng = np.random.default_rng(2024)
    with tempfile.TemporaryDirectory() as directory:
        for name, (rnn_type, vocab, kw, table) in MODELS.items():
            path = write_model(directory, name, rnn_type, vocab, **kw)
            for dtype in DTYPES:  # matmul.h in every precision (check_blas: OpenBLAS)
                model = fastlstm.load(path, dtype=dtype, num_threads=2)
                assert (model.packed.table is not None) == table, f"{name}: table {model.packed.table is not None}"
                check_forward(model, rng, fastlstm.load(path, dtype=dtype, num_threads=1))
                check_generation(path, rng, dtype)
            print(f"  {name}: forward, prefill, decode OK in {', '.join(DTYPES)}", flush=True)
        for name, (rnn_type, features, kw, head_bias) in FORECASTERS.items():
            path = write_forecaster(directory, name, rnn_type, features, head_bias, **kw)
            for dtype in DTYPES:
                check_forecaster(path, rng, dtype)
            print(f"  {name}: predict, forecast OK in {', '.join(DTYPES)}", flush=True)
        check_blas(directory, rng)
        print("  float32 through OpenBLAS (no vector kernels) OK", flush=True)
        check_nan_path(directory)
        print("  NaN logits: FloatingPointError OK", flush=True)
    check_layers(rng)
    print("  layers OK", flush=True)
    check_sampler_and_matmul(rng)
    print("  sampler, coins, matmul OK", flush=True)
    print(f"kernel path {isa.kernel_path()} (available: {', '.join(isa.available())}); "
          f"a team went on alone: decode {_generate.team_solo_until() > 0}, "
          f"forward/prefill {_rnn.team_solo_until() > 0}")
    print("exercise_kernels: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
