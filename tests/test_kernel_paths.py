"""Every kernel path gives bitwise the portable path's results, and threads change nothing.

fastlstm picks its kernels at run time (fastlstm.isa: portable C, AVX2, AVX-512); the
promise is that the path and the thread count change only the speed.  Each model below
(every cell type, every weight precision, with and without a layer-0 lookup table) runs on
every path this CPU has, on 1 and 2 threads, at batch 1 (where two threads share each
product: stack.pxd's Team) and batch 3 (where threads take whole rows), and must give the
bits of the portable path on one thread: logits, final states, generated ids.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastlstm
from fastlstm import isa
from conftest import LMCase, build_model

PACKAGE_PARENT = str(Path(fastlstm.__file__).resolve().parents[1])

DTYPES = ["float32", "float16", "bfloat16", "int8"]
# Sizes not multiples of 8 or 16 (vector tails, partial panels); big enough that two
# threads split the head's panels and the hidden units.  The last has no lookup table
# (its vocabulary is large next to the model), so layer 0 multiplies embedding rows.
CASES = {
    "LSTM": LMCase("LSTM", 2, 41, 12, 37, seed=3, scale=4.0, save="fastlstm"),
    "LSTM-proj": LMCase("LSTM", 2, 41, 12, 40, proj=19, seed=3, scale=4.0, save="fastlstm"),
    "GRU": LMCase("GRU", 2, 41, 12, 37, seed=3, scale=4.0, save="fastlstm"),
    "RNN_TANH": LMCase("RNN_TANH", 2, 41, 12, 37, seed=3, scale=3.0, save="fastlstm"),
    "RNN_RELU": LMCase("RNN_RELU", 2, 41, 12, 37, seed=3, scale=1.0, save="fastlstm"),
    "GRU-no-table": LMCase("GRU", 1, 600, 8, 24, seed=3, scale=4.0, save="fastlstm"),
}
SAMPLING = dict(temperature=0.9, top_k=30, top_p=0.95, repetition_penalty=1.1)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    paths = {}
    for name, case in CASES.items():
        path = tmp_path_factory.mktemp("paths") / f"{name}.safetensors"
        fastlstm.export(build_model(case), path, vocab=[f"t{i}" for i in range(case.vocab)],
                        tokenizer="word")
        paths[name] = path
    return paths


@pytest.fixture(autouse=True)
def teams_for_small_models(monkeypatch):
    """These models are small: let two threads share one sequence anyway (threads.py would
    give it one thread), so that the team split is what batch 1 tests."""
    monkeypatch.setattr(fastlstm.threads, "TEAM_MIN_WEIGHTS", 0)


@pytest.fixture
def on_path():
    """on_path(name) runs the kernels on `name` until the test ends."""
    before = isa.kernel_path()
    yield isa._select
    isa._select(before)


def run_everything(path, dtype, threads):
    """Logits and states of forward (batch 1 and 3), seeded and greedy ids (batch 1 and 3)."""
    model = fastlstm.load(path, dtype=dtype, num_threads=threads)
    V = model.config.vocab_size
    rng = np.random.default_rng(0)
    results = {}
    for batch in (1, 3):
        ids = rng.integers(0, V, (batch, 9))
        logits, state = model.forward(ids)
        more, state = model.forward(ids[:, :2], state)  # continuing from a given state
        results[f"forward B{batch}"] = (logits, more, *_tuple(state))
        prompts = [list(rng.integers(0, V, 1 + 4 * b)) for b in range(batch)]
        results[f"sampled B{batch}"] = model.generate_ids(
            prompts, max_new_tokens=40, seed=list(range(7, 7 + batch)), **SAMPLING)
        results[f"greedy B{batch}"] = model.generate_ids(prompts, max_new_tokens=40,
                                                         temperature=0)
    return results


def assert_same_bits(got: dict, expected: dict, what: str):
    for key, arrays in expected.items():
        for a, b in zip(_tuple(got[key]), _tuple(arrays)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape, (what, key)
            view = np.uint32 if a.dtype == np.float32 else a.dtype
            np.testing.assert_array_equal(a.view(view), b.view(view), err_msg=f"{what}: {key}")


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_every_path_and_thread_count_gives_the_portable_bits(model_files, on_path, name, dtype):
    on_path("portable")
    reference = run_everything(model_files[name], dtype, threads=1)
    for path in isa.available():
        on_path(path)
        for threads in (1, 2):
            if (path, threads) != ("portable", 1):
                assert_same_bits(run_everything(model_files[name], dtype, threads), reference,
                                 f"{path}, {threads} threads")


def test_threads_share_a_sequence_only_when_its_steps_are_big_enough(monkeypatch):
    monkeypatch.undo()  # the real threshold
    from fastlstm.threads import TEAM_MIN_WEIGHTS, call_threads
    assert call_threads(2, 1, TEAM_MIN_WEIGHTS) == 2  # a team
    assert call_threads(2, 1, TEAM_MIN_WEIGHTS - 1) == 1  # one thread, the row's own
    assert call_threads(4, 3, 10) == 3 and call_threads(2, 64, 10) == 2  # rows for every thread
    assert fastlstm.load().packed.step_weights > TEAM_MIN_WEIGHTS  # the bundled model shares


def test_the_fastest_path_is_the_default_and_models_say_which():
    assert isa.kernel_path() == isa.available()[-1]
    assert isa.available()[0] == "portable"
    model = fastlstm.load(num_threads=2)
    assert model.kernel_path == isa.kernel_path()
    assert repr(model).endswith(f", threads=2, kernels={isa.kernel_path()})")


def test_selecting_a_path_the_cpu_lacks_is_an_error(monkeypatch):
    monkeypatch.setattr(isa, "available", lambda: ("portable",))
    with pytest.raises(ValueError, match="cannot run the 'avx2' kernels"):
        isa._select("avx2")
    with pytest.raises(ValueError, match="unknown kernel path"):
        isa._select("sse9")
    assert isa.kernel_path() in isa.PATHS  # nothing changed


def run_python(code: str, kernel_path: str, cwd) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with FASTLSTM_ISA=kernel_path, importing the fastlstm
    under test (started outside the checkout, whose sources have no compiled kernels)."""
    env = {"FASTLSTM_ISA": kernel_path, "PATH": "/usr/bin:/bin", "PYTHONPATH": PACKAGE_PARENT}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("value, error", [
    ("neon", "is not a kernel path"),
    ("", None),
    ("Portable", None),
])
def test_the_environment_variable(tmp_path, value, error):
    result = run_python("import fastlstm; print(fastlstm.isa.kernel_path())", value, tmp_path)
    if error:
        assert result.returncode != 0 and error in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr
        expected = value.lower() or isa.available()[-1]
        assert result.stdout.strip() == expected


def test_every_path_forced_by_the_environment_gives_the_same_text(tmp_path):
    code = ("import fastlstm; m = fastlstm.load(num_threads=2); "
            "print(fastlstm.isa.kernel_path(), repr(m.generate('ROMEO.', max_new_tokens=60, "
            "seed=4)), repr(fastlstm.load(dtype='int8', num_threads=2).generate('ROMEO.', "
            "max_new_tokens=60, seed=4)))")
    outputs = set()
    for path in isa.available():
        result = run_python(code, path, tmp_path)
        assert result.returncode == 0, result.stderr
        name, texts = result.stdout.split(" ", 1)
        assert name == path
        outputs.add(texts)
    assert len(outputs) == 1, outputs


@pytest.mark.parametrize("batch", [1, 64])
def test_a_seed_gives_the_same_text_on_one_and_two_threads(batch):
    """Batch 1: two threads share each product (the team split); batch 64: each thread takes
    whole rows.  Every row's text must be the one-thread text."""
    prompts = ["ROMEO.", "JULIET.", "Enter", "O"] * (batch // 4) if batch > 1 else ["ROMEO."]
    kw = dict(max_new_tokens=80, temperature=0.8, top_p=0.9, seed=list(range(len(prompts))))
    for dtype in (None, "int8"):
        one = fastlstm.load(dtype=dtype, num_threads=1).generate(prompts, **kw)
        two = fastlstm.load(dtype=dtype, num_threads=2).generate(prompts, **kw)
        assert one == two
        assert len(set(one)) > 1 or batch == 1
