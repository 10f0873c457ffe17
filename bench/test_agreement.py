"""The competitors compute the same model: one cheap check per configuration, untimed.

fastlstm's greedy first token equals PyTorch's argmax for the same prompt, and the logits of
fastlstm and of both ONNX graphs match PyTorch's.  The reduced-precision modes (fastlstm
float16, bfloat16, int8; ONNX Runtime's dynamic int8) match within a tolerance per precision,
and fastlstm's greedy decoding in each precision picks tokens float32 would (nearly) pick.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.competitors import SEED


def _scale(x) -> float:
    return max(float(np.abs(x).max()), 1.0)


def test_outputs_agree(lm):
    cfg = lm.cfg
    rng = np.random.default_rng(SEED)
    for _ in range(10):  # a prompt whose top two logits are not a near tie
        prompt = rng.integers(0, cfg.vocab_size, (1, 16), dtype=np.int64)
        with torch.inference_mode():
            expected = lm.module(torch.from_numpy(prompt))[0][0].numpy()  # (16, V)
        second, first = np.sort(expected[-1])[-2:]
        if first - second > 1e-3 * _scale(expected):
            break
    model = lm.fastlstm(1)
    greedy = model.generate_ids(prompt, max_new_tokens=1, temperature=0)
    assert greedy[0, 0] == expected[-1].argmax()

    tol = 1e-4 * _scale(expected)
    np.testing.assert_allclose(model.forward(prompt)[0][0], expected, rtol=0, atol=tol)

    _check_onnxruntime(lm, prompt, expected, tol, int8=False)


def _check_onnxruntime(lm, prompt, expected, tol, int8):
    """ONNX Runtime's sequence graph, and its one-step graph step by step, give `expected`
    (steps, V) for `prompt` (1, steps) within `tol`."""
    sequence = lm.ort_session("sequence", 1, int8=int8)
    logits = sequence.run(["logits"], {"ids": prompt, **lm.zero_state(1)})[0]
    np.testing.assert_allclose(logits[0], expected, rtol=0, atol=tol)

    step = lm.ort_session("step", 1, int8=int8)
    names = list(lm.zero_state(1))
    feeds = lm.zero_state(1)
    for t in range(prompt.shape[1]):
        logits, *state = step.run(None, {"ids": prompt[:, t:t + 1], **feeds})
        feeds = dict(zip(names, state))
        np.testing.assert_allclose(logits[0, 0], expected[t], rtol=0, atol=tol)


# Reduced precisions: fewer bytes per weight change the logits by a little, never by much.
# Tolerances are in units of the standard deviation of PyTorch's float32 logits over the
# prompt, about 4x the worst error seen on the four benchmark models (fp16 1.4e-3, bf16 1.1e-2,
# fastlstm int8 3.7e-2, ORT int8 5.6e-2 of that deviation).  A mode that computed a different
# model (wrong scales, a transposed panel, garbage) is off by the order of one deviation.
TOLERANCE = {"float16": 0.006, "bfloat16": 0.04, "int8": 0.15, "onnxruntime_int8": 0.2}


def _torch_logits(lm, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return lm.module(torch.from_numpy(ids))[0].numpy()  # (B, S, V)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8"])
def test_reduced_precision_agrees(lm, dtype):
    """fastlstm in `dtype`: forward's logits are within TOLERANCE of PyTorch's float32 ones, and
    greedy decoding (the loop the benchmark times, at batch 1 and 64) picks at every step a
    token whose float32 logit is within twice that of the float32 maximum: a broken decode
    kernel cannot hide behind a good forward."""
    cfg = lm.cfg
    rng = np.random.default_rng(SEED)
    prompts = rng.integers(0, cfg.vocab_size, (64, 16), dtype=np.int64)
    expected = _torch_logits(lm, prompts[:1])[0]
    tol = TOLERANCE[dtype] * float(expected.std())
    model = lm.fastlstm(1, dtype)
    assert model.dtype == dtype
    np.testing.assert_allclose(model.forward(prompts[:1])[0][0], expected, rtol=0, atol=tol)

    steps = 16
    for batch in (1, 64):
        greedy = model.generate_ids(prompts[:batch], max_new_tokens=steps, temperature=0)
        assert greedy.shape == (batch, steps) and greedy.min() >= 0
        full = _torch_logits(lm, np.concatenate([prompts[:batch], greedy], axis=1))
        chosen = full[:, 15:-1]  # the logits each generated token was picked from (B, steps, V)
        picked = np.take_along_axis(chosen, greedy[:, :, None], axis=2)[..., 0]
        shortfall = chosen.max(axis=2) - picked
        assert shortfall.max() <= 2 * tol, (batch, float(shortfall.max()), tol)


def test_onnxruntime_int8_agrees(lm):
    """ONNX Runtime's dynamically quantized one-step and sequence graphs: logits within
    TOLERANCE of PyTorch's float32 ones, step by step over a prompt."""
    cfg = lm.cfg
    prompt = np.random.default_rng(SEED).integers(0, cfg.vocab_size, (1, 16), dtype=np.int64)
    expected = _torch_logits(lm, prompt)[0]
    tol = TOLERANCE["onnxruntime_int8"] * float(expected.std())

    _check_onnxruntime(lm, prompt, expected, tol, int8=True)
