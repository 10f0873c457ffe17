"""A model whose logits become NaN or infinite during generation makes generation raise
FloatingPointError; it never emits tokens sampled from them.

The model is real, not a patched sampler: an Embedding -> ReLU RNN -> Linear built in PyTorch
whose recurrent weight is 1.9 I, so with non-negative inputs the state grows 1.9x per step
and overflows float32 after ~140 steps.  Its weights are small and pass the loader's
magnitude check (which bounds only the first step of a ReLU RNN, whose state PyTorch leaves
unbounded over time).  PyTorch, run in float64 on the same weights, says at which step
float32 overflows; fastlstm must generate PyTorch's greedy tokens up to there and raise at
that step, whatever the threads, the batch or the way in (generate, generate_ids, stream).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import fastlstm
from fastlstm.precision import store
from conftest import RNNModel, stored_model

VOCAB = list("abcdefghijklmnop")
FLOAT32_MAX = float(np.finfo(np.float32).max)
GROWTH = 1.9  # of the state, per step


@pytest.fixture(scope="module")
def exploding(tmp_path_factory):
    """(path, reference): the exported model and its float64 PyTorch twin (the same stored
    float32 weights)."""
    V, E, H = len(VOCAB), 4, 8
    module = RNNModel("RNN_RELU", V, E, H).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        module.encoder.weight.copy_(torch.rand(V, E, generator=gen))  # >= 0
        module.rnn.weight_ih_l0.copy_(torch.rand(H, E, generator=gen) * 0.5)  # >= 0
        module.rnn.weight_hh_l0.copy_(GROWTH * torch.eye(H))
        module.rnn.bias_ih_l0.fill_(0.1)
        module.rnn.bias_hh_l0.zero_()
        # |logit| <= 0.8 max |h|: the state overflows first, in one product 1.9 * h, not a
        # logit in a sum whose partial results depend on the summation order.
        module.decoder.weight.copy_((torch.rand(V, H, generator=gen) * 2 - 1) * 0.1)
        module.decoder.bias.copy_(torch.rand(V, generator=gen) * 2 - 1)
    path = tmp_path_factory.mktemp("numerics") / "exploding_relu.safetensors"
    fastlstm.export(module, path, vocab=VOCAB)
    return path, stored_model(module, "float32")


def magnitudes(ref, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's float64 run over `ids`: per position, the largest |value| in the state or
    the logits (float32 overflows there when it is beyond float32's largest value), and the
    logits."""
    with torch.no_grad():
        x = torch.tensor([ids])
        h, _ = ref.rnn(ref.encoder(x))
        logits = ref.decoder(h)
    size = torch.maximum(h.abs().amax(-1), logits.abs().amax(-1))[0].numpy()
    return size, logits[0].numpy()


def reference_greedy(ref, prompt: list[int], limit: int = 400) -> tuple[list[int], int]:
    """PyTorch's greedy tokens before the first step whose float32 logits are not finite,
    and that step (0 = the first new token)."""
    ids = list(prompt)
    for step in range(limit):
        size, logits = magnitudes(ref, ids)
        if size[-1] > FLOAT32_MAX:
            # Overflow by a clear margin, not by rounding (the state grows 1.9x per step),
            # so float32 kernels overflow at this very step whatever their summation order.
            assert size[-1] > 1.05 * FLOAT32_MAX and size[-2] < FLOAT32_MAX / 1.05, size[-2:]
            return ids[len(prompt):], step
        ids.append(int(logits[-1].argmax()))
    raise AssertionError(f"no overflow within {limit} steps")


@pytest.fixture(scope="module")
def greedy(exploding):
    """{prompt: (PyTorch's greedy tokens before the overflow, the overflowing step)}."""
    _, ref = exploding
    return {p: reference_greedy(ref, list(p)) for p in [(0,), (3, 1, 4, 1, 5), (2,) * 60]}


@pytest.mark.parametrize("threads", [1, 2])
def test_generate_ids_matches_torch_until_the_overflow_then_raises(exploding, greedy, threads):
    model = fastlstm.load(exploding[0], num_threads=threads)
    for prompt, (tokens, step) in greedy.items():
        assert step > 50  # the file loads, and generates for a while before it overflows
        out = model.generate_ids([list(prompt)], max_new_tokens=step, temperature=0)
        assert out[0].tolist() == tokens
        with pytest.raises(FloatingPointError, match="NaN or infinite logits"):
            model.generate_ids([list(prompt)], max_new_tokens=step + 1, temperature=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_one_row_overflowing_fails_the_batch(exploding, greedy, threads):
    """Rows on different threads, stopping at different steps: only the long prompt's row
    overflows within max_new_tokens, and the whole call raises."""
    model = fastlstm.load(exploding[0], num_threads=threads)
    long_prompt, short_prompt = [2] * 60, [0]
    steps = greedy[tuple(long_prompt)][1] + 1
    assert steps < greedy[(0,)][1]  # the short prompt's row alone stays finite
    prompts = [short_prompt, short_prompt, long_prompt, short_prompt]
    with pytest.raises(FloatingPointError):
        model.generate_ids(prompts, max_new_tokens=steps, temperature=0)
    with pytest.raises(FloatingPointError):
        model.generate_ids(prompts, max_new_tokens=steps, temperature=0.9, top_k=4, top_p=0.9,
                           repetition_penalty=1.3, seed=5, num_return_sequences=2)
    ok = model.generate_ids([short_prompt] * 3, max_new_tokens=steps, temperature=0)
    assert (ok == greedy[(0,)][0][:steps]).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_generate_text_raises(exploding, greedy, threads):
    model = fastlstm.load(exploding[0], num_threads=threads)
    with pytest.raises(FloatingPointError):
        model.generate("a", max_new_tokens=300, temperature=0)
    with pytest.raises(FloatingPointError):
        model.generate("a", max_new_tokens=300, temperature=0.8, seed=1)
    with pytest.raises(FloatingPointError):
        model.generate(["a", "dbebf", "b"], max_new_tokens=300, temperature=0.7, seed=2)
    with pytest.raises(FloatingPointError):  # overflows in the prompt (prefill) already
        model.generate(["a", "c" * 300], max_new_tokens=1)
    tokens, step = greedy[(0,)]
    assert model.generate("a", max_new_tokens=step, temperature=0) == \
        "".join(VOCAB[t] for t in tokens)


def test_stream_yields_the_finite_part_then_raises(exploding, greedy):
    model = fastlstm.load(exploding[0], num_threads=1)
    tokens, step = greedy[(0,)]
    pieces = []
    with pytest.raises(FloatingPointError):
        for piece in model.stream("a", max_new_tokens=300, temperature=0):
            pieces.append(piece)
    # Streaming runs 16 tokens per chunk: the chunk holding the overflow yields nothing.
    assert "".join(pieces) == "".join(VOCAB[t] for t in tokens[:step // 16 * 16])
    assert pieces


@pytest.mark.parametrize("threads", [1, 2])
def test_the_model_stays_usable_after_the_error(exploding, threads):
    model = fastlstm.load(exploding[0], num_threads=threads)
    before = model.generate(["ab", "p"], max_new_tokens=30, temperature=0.8, seed=7)
    ids_before = model.generate_ids([[1, 2]], max_new_tokens=30, temperature=0)
    for _ in range(3):
        with pytest.raises(FloatingPointError):
            model.generate_ids([[1], [2] * 200], max_new_tokens=300, temperature=0)
        with pytest.raises(FloatingPointError):
            "".join(model.stream("ab", max_new_tokens=300, temperature=0.5, seed=1))
    assert model.generate(["ab", "p"], max_new_tokens=30, temperature=0.8, seed=7) == before
    assert np.array_equal(model.generate_ids([[1, 2]], max_new_tokens=30, temperature=0),
                          ids_before)
    logits, _ = model.forward([[1, 2, 3]])
    assert np.isfinite(logits).all()


def test_forward_returns_the_overflow_as_torch_does(exploding):
    """forward hands back the logits as they are (no sampling): finite where PyTorch's
    float32 logits are, and not finite from the same step on."""
    path, ref = exploding
    ids = [0] * 200
    logits, _ = fastlstm.load(path, num_threads=1).forward([ids])
    size, expected = magnitudes(ref, ids)
    finite = np.isfinite(logits[0]).all(axis=-1)
    assert finite.tolist() == (size <= FLOAT32_MAX).tolist()
    assert 50 < finite.sum() < 200
    np.testing.assert_allclose(logits[0, finite], expected[finite], rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8"])
def test_every_precision_raises_at_the_overflow(exploding, dtype):
    """The reduced precisions (int8: its integer products, scaled back to float32) overflow
    where PyTorch, run in float64 on the weights rounded to that precision, says."""
    path, ref32 = exploding
    ref = copy.deepcopy(ref32)
    with torch.no_grad():
        for tensor in ref.parameters():
            if tensor.ndim == 2:
                rounded = store(tensor.numpy().astype(np.float32), dtype).to_float32()
                tensor.copy_(torch.from_numpy(rounded.astype(np.float64)))
    model = fastlstm.load(path, dtype=dtype, num_threads=1)
    for prompt in [(0,), (3, 1, 4, 1, 5)]:
        tokens, step = reference_greedy(ref, list(prompt))
        out = model.generate_ids([list(prompt)], max_new_tokens=step, temperature=0)
        assert out[0].tolist() == tokens
        with pytest.raises(FloatingPointError, match="NaN or infinite logits"):
            model.generate_ids([list(prompt)], max_new_tokens=step + 1, temperature=0)
