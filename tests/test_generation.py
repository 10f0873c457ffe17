"""Generation end to end: Model.generate / generate_ids / stream on small exported models.

Greedy continuations are compared with PyTorch's greedy loop; sampled ones with themselves
(one seed, one text, whatever the threads, the batch and num_return_sequences); stops, the
streaming API, the three tokenizers, and the checks on every parameter.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import fastlstm
from fastlstm import generation
from fastlstm.tokenizers import ByteTokenizer, WordTokenizer
from conftest import LMCase, build_model, inner, stored_model

CHARS = list("\n abcdefghijklmnopqrstuvwxyz.,")  # 30 tokens
WORDS = ["<eos>", "<unk>", "the", "a", "cat", "dog", "sat", "ran", "on", "mat", "and", "then",
         ".", "big", "small", "red", "house", "in", "it", "was"]
PROMPTS = ["the quick brown fox", "a", "hello, world.\nand then", "zz top"]

# Weights ~5x PyTorch's default init, so that the continuations have structure rather than
# being uniform noise; seeds picked so that greedy never meets a near-tie (checked below).
CHAR_CASES = {
    "LSTM": LMCase("LSTM", 2, len(CHARS), 16, 32, seed=2, scale=6.0, save="fastlstm"),
    "GRU": LMCase("GRU", 2, len(CHARS), 16, 32, seed=2, scale=5.0, save="fastlstm"),
    "RNN_TANH": LMCase("RNN_TANH", 2, len(CHARS), 16, 32, seed=2, scale=4.0, save="fastlstm"),
}


@pytest.fixture(scope="module")
def char_models(tmp_path_factory):
    """rnn_type -> (torch module, path of its fastlstm file with a char tokenizer)."""
    out = {}
    for rnn_type, case in CHAR_CASES.items():
        torch_model = build_model(case)
        path = tmp_path_factory.mktemp("gen") / f"{rnn_type}.safetensors"
        fastlstm.export(torch_model, path, vocab=CHARS)
        out[rnn_type] = (torch_model, path)
    return out


@pytest.fixture(scope="module")
def lstm(char_models):
    return fastlstm.load(char_models["LSTM"][1], num_threads=1)


def torch_greedy(torch_model, ids: list[int], steps: int) -> list[int]:
    """PyTorch's greedy loop (float64 on the stored weights), asserting no near-ties."""
    ref = inner(stored_model(torch_model, "float32"))
    out = []
    with torch.no_grad():
        logits, state = ref(torch.tensor([ids]))
        for _ in range(steps):
            last = logits[0, -1]
            top2 = torch.topk(last, 2).values
            assert float(top2[0] - top2[1]) > 1e-4, "pick another seed: near-tie in greedy"
            token = int(torch.argmax(last))
            out.append(token)
            logits, state = ref(torch.tensor([[token]]), state)
    return out


# --------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("rnn_type", list(CHAR_CASES))
def test_greedy_matches_torch(char_models, rnn_type):
    torch_model, path = char_models[rnn_type]
    model = fastlstm.load(path, num_threads=2)
    tok = model.tokenizer
    expected = [torch_greedy(torch_model, tok.encode(p), 100) for p in PROMPTS]

    texts = model.generate(PROMPTS, temperature=0, max_new_tokens=100)
    assert texts == [tok.decode(e) for e in expected]
    assert len(set(texts[0])) > 5  # not a degenerate model
    ids = model.generate_ids([tok.encode(p) for p in PROMPTS], temperature=0, max_new_tokens=100)
    assert ids.dtype == np.int64 and ids.shape == (len(PROMPTS), 100)
    np.testing.assert_array_equal(ids, np.array(expected))
    # One prompt alone, as a str: the same text.
    assert model.generate(PROMPTS[2], temperature=0, max_new_tokens=100) == texts[2]


@pytest.mark.parametrize("case", [
    LMCase("LSTM", 2, len(CHARS), 16, 32, proj=12, seed=2, scale=3.0, save="fastlstm"),
    LMCase("LSTM", 3, len(CHARS), 12, 32, proj=12, tied=True, seed=2, scale=3.0, save="fastlstm"),
    LMCase("LSTM", 1, len(CHARS), 8, 64, bias=False, seed=2, scale=5.0, save="fastlstm"),
    LMCase("GRU", 1, len(CHARS), 40, 24, head_bias=False, seed=2, scale=5.0, save="fastlstm"),
    LMCase("RNN_RELU", 2, len(CHARS), 16, 32, seed=2, scale=1.5, save="fastlstm"),
], ids=lambda case: case.id.split("-encoder")[0])
def test_greedy_matches_torch_model_variants(tmp_path, case):
    torch_model = build_model(case)
    path = tmp_path / "m.safetensors"
    fastlstm.export(torch_model, path, vocab=CHARS)
    model = fastlstm.load(path, num_threads=2)
    prompts = [model.tokenizer.encode(p) for p in PROMPTS]
    expected = [torch_greedy(torch_model, p, 60) for p in prompts]
    np.testing.assert_array_equal(
        model.generate_ids(prompts, temperature=0, max_new_tokens=60), np.array(expected))


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_long_prompts_through_an_embedding(tmp_path, monkeypatch, rnn_type):
    """Prompts longer than prefill's chunk of steps (256 at batch 1) into a one-layer model
    that reads an embedding (its vocabulary makes a layer-0 table too large): layer 0 reads
    its input from the other activation buffer every other chunk.  Greedy as PyTorch, on 1
    and 2 threads (one prompt: a team; two: one each)."""
    monkeypatch.setattr(fastlstm.threads, "TEAM_MIN_WEIGHTS", 0)
    case = LMCase(rnn_type, 1, 600, 4, 24, seed=3, scale=4.0, save="fastlstm")
    torch_model = build_model(case)
    path = tmp_path / "m.safetensors"
    fastlstm.export(torch_model, path, vocab=[f"t{i}" for i in range(600)], tokenizer="word")
    rng = np.random.default_rng(4)
    prompts = [list(rng.integers(0, 600, n)) for n in (700, 300)]
    expected = [torch_greedy(torch_model, p, 20) for p in prompts]
    for threads in (1, 2):
        model = fastlstm.load(path, num_threads=threads)
        assert model.packed.table is None
        np.testing.assert_array_equal(
            model.generate_ids(prompts, temperature=0, max_new_tokens=20), np.array(expected))
        np.testing.assert_array_equal(
            model.generate_ids(prompts[:1], temperature=0, max_new_tokens=20), expected[:1])


def test_greedy_ignores_seed_and_samples_agree(lstm):
    a = lstm.generate("the ", temperature=0, max_new_tokens=40, seed=1, num_return_sequences=3)
    assert a == [a[0]] * 3
    assert lstm.generate("the ", temperature=0, max_new_tokens=40, seed=None) == a[0]


# --------------------------------------------------------------------------- reproducibility

SAMPLED = dict(max_new_tokens=150, temperature=1.0, top_k=20, top_p=0.95)


def test_same_seed_same_text_across_threads(char_models):
    for rnn_type in ("LSTM", "GRU"):
        path = char_models[rnn_type][1]
        one = fastlstm.load(path, num_threads=1)
        two = fastlstm.load(path, num_threads=2)
        kw = dict(SAMPLED, seed=[5, 6, 7, 8], num_return_sequences=3, eos_token_id=[0])
        a = one.generate(PROMPTS, **kw)
        assert a == two.generate(PROMPTS, **kw)
        assert len(set(a)) == len(a)  # every sample differs
        assert one.generate_ids([[3, 4], [5]], **kw | dict(seed=[5, 6])).tolist() == \
            two.generate_ids([[3, 4], [5]], **kw | dict(seed=[5, 6])).tolist()


def test_same_seed_same_text_whatever_else_is_in_the_batch(char_models):
    model = fastlstm.load(char_models["LSTM"][1], num_threads=2)
    target = "hello, world.\nand then"
    # eos "\n" (id 0) stops some rows early, so the batch shrinks mid-run.
    kw = dict(SAMPLED, eos_token_id=[0])
    alone = model.generate(target, seed=11, **kw)
    assert model.generate([target], seed=[11], **kw) == [alone]
    assert model.generate(["a", "zz top", target], seed=[1, 2, 11], **kw)[2] == alone
    assert model.generate([target, "the quick brown fox"], seed=[11, 3], **kw)[0] == alone
    others = ["b", "the cat", target, "q" * 40, "x", target]
    got = model.generate(others, seed=[4, 5, 11, 6, 7, 11], **kw)
    assert got[2] == got[5] == alone
    # An int seed is every prompt's seed.
    assert model.generate(["a", target, "c"], seed=11, **kw)[1] == alone


def test_sample_j_does_not_depend_on_num_return_sequences(lstm):
    two = lstm.generate(["the", "a cat"], seed=3, num_return_sequences=2, **SAMPLED)
    three = lstm.generate(["the", "a cat"], seed=3, num_return_sequences=3, **SAMPLED)
    assert three[0:2] == two[0:2] and three[3:5] == two[2:4]
    assert lstm.generate("a cat", seed=3, **SAMPLED) == three[3]
    # generate_ids: row p * n + j is prompt p's j-th sample.
    ids = lstm.generate_ids([[1, 2], [3]], seed=3, num_return_sequences=3, **SAMPLED)
    assert ids.shape == (6, SAMPLED["max_new_tokens"])
    np.testing.assert_array_equal(ids[3:5], lstm.generate_ids([[3]], seed=3, num_return_sequences=2,
                                                             **SAMPLED))


def test_repeated_calls_are_identical(lstm):
    first = lstm.generate(PROMPTS, seed=21, **SAMPLED)
    for _ in range(3):
        assert lstm.generate(PROMPTS, seed=21, **SAMPLED) == first


def test_different_seeds_differ(lstm):
    texts = [lstm.generate("the ", seed=s, **SAMPLED) for s in range(5)] + \
            [lstm.generate("the ", seed=2**64 - 1, **SAMPLED)]
    assert len(set(texts)) == len(texts)


def test_no_seed_gives_fresh_samples(lstm):
    texts = [lstm.generate("the ", **SAMPLED) for _ in range(4)]
    texts += lstm.generate(["the ", "the "], seed=None, **SAMPLED)
    texts += lstm.generate("the ", num_return_sequences=3, **SAMPLED)
    assert len(set(texts)) == len(texts)


# --------------------------------------------------------------------------- stops


def test_stop_string_ends_the_text_there(lstm):
    free = lstm.generate("the quick", seed=8, max_new_tokens=200)
    # A 2-character stop string first seen mid-text, and one that never appears.
    stop = next(free[i:i + 2] for i in range(20, 150) if free[i:i + 2] not in free[:i + 1])
    end = free.index(stop) + len(stop)
    got = lstm.generate("the quick", seed=8, max_new_tokens=200, stop=[",,,,,,", stop])
    assert got == free[:end]
    assert lstm.generate("the quick", seed=8, max_new_tokens=200, stop=",,,,,,") == free
    # The earlier of two stops wins.
    early = free[5:7]
    got = lstm.generate("the quick", seed=8, max_new_tokens=200, stop=[stop, early])
    assert got == free[:free.index(early) + 2]


def test_stop_and_eos_pad_ids_with_minus_one(lstm):
    tok = lstm.tokenizer
    prompts = [tok.encode("the quick"), tok.encode("a")]
    free = lstm.generate_ids(prompts, seed=[8, 9], max_new_tokens=200)
    # eos: the first id generated in both rows after position 10 of row 0.
    eos = int(free[0, 10])
    got = lstm.generate_ids(prompts, seed=[8, 9], max_new_tokens=200, eos_token_id=eos)
    for row in range(2):
        hits = np.flatnonzero(free[row] == eos)
        end = hits[0] + 1 if len(hits) else 200
        np.testing.assert_array_equal(got[row, :end], free[row, :end])
        assert np.all(got[row, end:] == -1)
    if eos not in free[0, :10]:
        assert got[0, 10] == eos and np.all(got[0, 11:] == -1)
    # Several eos ids: the first of any of them.
    eos2 = [int(free[0, 30]), int(free[0, 40])]
    got = lstm.generate_ids(prompts[:1], seed=8, max_new_tokens=200, eos_token_id=eos2)[0]
    end = np.flatnonzero(np.isin(free[0], eos2))[0] + 1
    np.testing.assert_array_equal(got[:end], free[0, :end])
    assert np.all(got[end:] == -1)
    # A stop string: its ids included, then -1.
    text = tok.decode(free[0])
    stop = text[50:52]
    end = text.index(stop) + 2
    got = lstm.generate_ids(prompts[:1], seed=8, max_new_tokens=200, stop=stop)[0]
    np.testing.assert_array_equal(got[:end], free[0, :end])
    assert np.all(got[end:] == -1)
    assert tok.decode(got[:end]).endswith(stop)


def test_each_row_says_why_it_stopped(lstm):
    """The decode loop records each row's finish reason (batch jobs report it): "stop" when
    its last ids are an eos id or a stop string, even at max_new_tokens, else "length"."""
    tok = lstm.tokenizer
    prompts = [tok.encode(p) for p in ("the quick", "a", "no", "xy")]
    free = lstm.generate_ids(prompts, seed=[1, 2, 3, 4], max_new_tokens=40)
    eos = int(free[0, 20])  # row 0 stops on it, at 21 tokens or before
    stop = tok.decode(free[1, 38:40])  # row 1 stops on it, at the last token or before
    params = generation.GenerationParams(seed=(1, 2, 3, 4), max_new_tokens=40,
                                         eos_token_id=eos, stop=[stop])
    decoder = generation.generate_all(lstm, prompts, params)
    stop_ids = tok.encode(stop)
    reasons = []
    for row in range(4):
        new = decoder.row_ids(row).tolist()
        stopped = new[-1] == eos or new[-len(stop_ids):] == stop_ids
        assert stopped or len(new) == 40
        reasons.append(decoder.finish_reason(row))
        assert reasons[-1] == ("stop" if stopped else "length"), (row, new)
    assert reasons[:2] == ["stop", "stop"]


def test_eos_in_generate_text_included(lstm):
    free = lstm.generate("the quick", seed=8, max_new_tokens=200)
    char = free[12]
    got = lstm.generate("the quick", seed=8, max_new_tokens=200,
                        eos_token_id=lstm.tokenizer.encode(char))
    assert got == free[:free.index(char) + 1]


# --------------------------------------------------------------------------- streaming


def test_stream_pieces_join_to_generate(lstm):
    kw = dict(SAMPLED, max_new_tokens=120, seed=4)
    pieces = list(lstm.stream("the ", **kw))
    assert len(pieces) > 1 and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == lstm.generate("the ", **kw)
    # With a stop: the same early end.
    full = "".join(pieces)
    stop = full[40:42]
    pieces = list(lstm.stream("the ", stop=stop, **kw))
    assert "".join(pieces) == lstm.generate("the ", stop=stop, **kw) == full[:full.index(stop) + 2]
    # Greedy.
    assert "".join(lstm.stream("ab", temperature=0, max_new_tokens=50)) == \
        lstm.generate("ab", temperature=0, max_new_tokens=50)


def test_stream_closed_early_leaves_the_model_usable(lstm):
    kw = dict(SAMPLED, max_new_tokens=10_000, seed=4)
    expected = lstm.generate("the ", **dict(kw, max_new_tokens=100))
    stream = lstm.stream("the ", **kw)
    first = next(stream)
    assert expected.startswith(first)
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    for piece in lstm.stream("the ", **kw):  # break out of a for loop
        break
    assert piece == first
    assert lstm.generate("the ", **dict(kw, max_new_tokens=100)) == expected


def test_streams_interleaved(lstm):
    kw = dict(SAMPLED, max_new_tokens=100)
    a, b = lstm.stream("the ", seed=1, **kw), lstm.stream("a cat", seed=2, **kw)
    got = {"a": [], "b": []}
    live = {"a": a, "b": b}
    while live:
        for name in list(live):
            try:
                got[name].append(next(live[name]))
            except StopIteration:
                del live[name]
        if got["a"] and len(got["b"]) == 1:  # a generate call in between
            lstm.generate(PROMPTS, seed=3, **kw)
    assert "".join(got["a"]) == lstm.generate("the ", seed=1, **kw)
    assert "".join(got["b"]) == lstm.generate("a cat", seed=2, **kw)


# --------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    case = LMCase("LSTM", 1, len(WORDS), 16, 32, seed=4, scale=5.0, save="fastlstm")
    torch_model = build_model(case)
    path = tmp_path_factory.mktemp("word") / "word.safetensors"
    fastlstm.export(torch_model, path, vocab=WORDS)
    return torch_model, fastlstm.load(path, num_threads=1)


def test_word_tokenizer_generation(word_model):
    torch_model, model = word_model
    tok = model.tokenizer
    assert isinstance(tok, WordTokenizer) and tok.eos == "<eos>"
    prompt = "the big cat sat on\nthe"
    prompt_ids = tok.encode(prompt)
    kw = dict(seed=3, max_new_tokens=60)
    text = model.generate(prompt, **kw)
    ids = model.generate_ids([prompt_ids], **kw)[0]
    assert text == tok.stream_decoder(previous=prompt_ids).decode(ids)
    # prompt + text reads as one text: it tokenizes back to the prompt and the new ids.
    assert tok.encode(prompt + text) == prompt_ids + ids.tolist()
    assert "".join(model.stream(prompt, **kw)) == text
    # Greedy agrees with PyTorch.
    expected = torch_greedy(torch_model, prompt_ids, 40)
    np.testing.assert_array_equal(model.generate_ids([prompt_ids], temperature=0,
                                                     max_new_tokens=40)[0], expected)
    # "\n" (the eos token) and a two-word stop string.
    got = model.generate(prompt, stop="\n", **kw)
    assert got.endswith("\n") and got.count("\n") == 1 and text.startswith(got)
    words = text.split()
    stop = next(f"{w} {v}" for w, v in zip(words[3:], words[4:]) if f"{w} {v}" in text)
    got = model.generate(prompt, stop=stop, **kw)
    assert got.endswith(stop) and text.startswith(got)


def test_word_stop_string_outside_the_vocabulary(word_model):
    _, model = word_model
    kw = dict(seed=1, max_new_tokens=80)
    free = model.generate("the", **kw)
    assert "<unk>" in free and "zebra" not in free
    try:
        got = model.generate("the", stop="zebra", **kw)
    except ValueError:
        return  # refused, like a char outside a char vocabulary
    assert got == free  # or never matched


def test_byte_tokenizer_generation(tmp_path):
    case = LMCase("GRU", 1, 256, 16, 32, seed=6, scale=4.0, save="fastlstm")
    path = tmp_path / "byte.safetensors"
    fastlstm.export(build_model(case), path, tokenizer="byte")
    model = fastlstm.load(path, num_threads=1)
    assert isinstance(model.tokenizer, ByteTokenizer)
    prompt = "héllo wörld "
    prompt_ids = list(prompt.encode("utf-8"))
    kw = dict(seed=5, max_new_tokens=300)
    ids = model.generate_ids([prompt_ids], **kw)[0]
    text = model.generate(prompt, **kw)
    assert text == bytes(ids.tolist()).decode("utf-8", errors="replace")
    assert len(set(ids.tolist())) > 30 and np.any(ids >= 0x80)  # bytes of every kind
    # Streamed pieces never split a character: they join to the same text, even one token
    # per piece.
    assert "".join(model.stream(prompt, **kw)) == text
    params = generation.GenerationParams(**kw)
    assert "".join(generation.stream_text(model, prompt, params, chunk_tokens=1)) == text


# --------------------------------------------------------------------------- parameters

BAD_PARAMS = {
    "temperature NaN": dict(temperature=float("nan")),
    "temperature < 0": dict(temperature=-0.5),
    "temperature inf": dict(temperature=float("inf")),
    "top_p 0": dict(top_p=0.0),
    "top_p 1.5": dict(top_p=1.5),
    "top_p NaN": dict(top_p=float("nan")),
    "top_k -1": dict(top_k=-1),
    "top_k 1.5": dict(top_k=1.5),
    "min_p -0.1": dict(min_p=-0.1),
    "min_p 2": dict(min_p=2.0),
    "repetition_penalty 0": dict(repetition_penalty=0.0),
    "repetition_penalty -1": dict(repetition_penalty=-1.0),
    "max_new_tokens 0": dict(max_new_tokens=0),
    "max_new_tokens -1": dict(max_new_tokens=-1),
    "max_new_tokens True": dict(max_new_tokens=True),
    "max_new_tokens 1.0": dict(max_new_tokens=1.0),
    "max_new_tokens 10**15": dict(max_new_tokens=10**15),
    "num_return_sequences 0": dict(num_return_sequences=0),
    "num_return_sequences 10**15": dict(num_return_sequences=10**15),
    "seed -1": dict(seed=-1),
    "seed 2**64": dict(seed=2**64),
    "seed 1.5": dict(seed=1.5),
    "seeds for 2 prompts": dict(seed=[1, 2]),
    "stop ''": dict(stop=""),
    "stop not a str": dict(stop=[3]),
    "eos_token_id -1": dict(eos_token_id=-1),
}
# Checks that need the model (its vocabulary); also made before any work.
VOCAB_CHECKS = {
    "stop not in vocab": dict(stop="É"),
    "eos_token_id >= V": dict(eos_token_id=len(CHARS)),
}


@pytest.mark.parametrize("name", list(BAD_PARAMS) + list(VOCAB_CHECKS))
def test_bad_values_raise_value_error(lstm, name):
    params = (BAD_PARAMS | VOCAB_CHECKS)[name]
    with pytest.raises(ValueError):
        lstm.generate("ab", **params)
    with pytest.raises(ValueError):
        lstm.generate_ids([[1, 2]], **params)
    with pytest.raises(ValueError):
        list(lstm.stream("ab", **params))


@pytest.mark.parametrize("call", [
    lambda m: m.generate(""),
    lambda m: m.generate(["ab", ""]),
    lambda m: m.generate([]),
    lambda m: m.generate(["ab", 3]),
    lambda m: m.generate("aÉ"),  # not in the vocabulary
    lambda m: m.generate(b"ab"),
    lambda m: m.generate_ids([]),
    lambda m: m.generate_ids([[]]),
    lambda m: m.generate_ids([[1, 2], []]),
    lambda m: m.generate_ids([[0, len(CHARS)]]),
    lambda m: m.generate_ids([[-1]]),
    lambda m: m.generate_ids([[1.0, 2.0]]),
    lambda m: m.generate_ids(np.zeros((2, 0), np.int64)),
    lambda m: m.generate_ids(np.zeros(3, np.int64)),  # 1-D: not (batch, steps)
    lambda m: m.generate_ids(np.array([[1, 99]])),
    lambda m: list(m.stream("ab", num_return_sequences=2)),
    lambda m: list(m.stream("")),
    lambda m: list(m.stream(["ab"])),
], ids=["empty prompt", "one empty prompt", "no prompts", "prompt not str", "unknown char",
        "bytes prompt", "no ids", "empty ids", "one empty row", "id = V", "id -1", "float ids",
        "array no steps", "1-D array", "array id out of range", "stream n=2", "stream empty",
        "stream list"])
def test_bad_prompts_raise_value_error(lstm, call):
    with pytest.raises(ValueError):
        call(lstm)


def test_unknown_parameter_name(lstm):
    with pytest.raises(TypeError):
        lstm.generate("ab", temprature=0.5)
    with pytest.raises(TypeError):
        lstm.generate_ids([[1]], max_tokens=5)
    with pytest.raises(TypeError):
        lstm.stream("ab", do_sample=True)


@pytest.fixture
def no_work(monkeypatch):
    """Make any kernel call (prefill or decode) fail the test."""
    def work(*args, **kwargs):
        raise AssertionError("a kernel ran before the bad value was refused")

    monkeypatch.setattr(generation, "_prefill", work)
    monkeypatch.setattr(generation, "_generate", types.SimpleNamespace(decode=work))
    monkeypatch.setattr(generation, "_rnn", types.SimpleNamespace(forward=work))


@pytest.mark.parametrize("name", list(BAD_PARAMS) + list(VOCAB_CHECKS))
def test_bad_values_fail_before_any_work(lstm, no_work, name):
    params = (BAD_PARAMS | VOCAB_CHECKS)[name]
    long_prompt = "the quick brown fox " * 20
    with pytest.raises(ValueError):
        lstm.generate(long_prompt, **params)
    with pytest.raises(ValueError):
        lstm.generate_ids([[1, 2, 3] * 20], **params)


def test_stream_refuses_bad_arguments_when_called(lstm):
    with pytest.raises(ValueError):
        lstm.stream("ab", num_return_sequences=2)
    with pytest.raises(ValueError):
        lstm.stream("")


def test_top_k_at_least_vocab_is_off(lstm):
    kw = dict(SAMPLED, top_k=0, seed=13)
    expected = lstm.generate("the ", **kw)
    for k in (len(CHARS), len(CHARS) + 1, 10**6, 2**31 - 1):
        assert lstm.generate("the ", **dict(kw, top_k=k)) == expected


def test_top_k_beyond_c_int_is_off(lstm):
    kw = dict(SAMPLED, top_k=0, seed=13)
    assert lstm.generate("the ", **dict(kw, top_k=2**31)) == lstm.generate("the ", **kw)


def test_small_top_p_after_top_k_keeps_the_top_token(lstm):
    # top_k=2 then top_p=0.1: only the most likely token survives, as in greedy decoding.
    kw = dict(max_new_tokens=60, seed=1)
    assert lstm.generate("the quick", top_k=2, top_p=0.1, **kw) == \
        lstm.generate("the quick", temperature=0, **kw)


def test_parameter_edge_values_are_accepted(lstm):
    kw = dict(max_new_tokens=20, seed=1)
    greedy = lstm.generate("the ", temperature=0, **kw)
    assert lstm.generate("the ", top_k=1, **kw) == greedy
    assert lstm.generate("the ", min_p=1.0, **kw) == greedy
    assert lstm.generate("the ", top_p=1e-9, **kw) == greedy
    assert lstm.generate("the ", temperature=1e-6, **kw) == greedy
    assert len(lstm.generate("the ", max_new_tokens=1, seed=1)) == 1
    assert lstm.generate("the ", top_p=1.0, min_p=0.0, repetition_penalty=1.0, **kw) == \
        lstm.generate("the ", **kw)
    assert lstm.generate("the ", seed=np.uint64(2**64 - 1), max_new_tokens=5) == \
        lstm.generate("the ", seed=2**64 - 1, max_new_tokens=5)
