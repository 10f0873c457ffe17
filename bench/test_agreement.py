"""The competitors compute the same model: one cheap check per configuration, untimed.

fastlstm's greedy first token equals PyTorch's argmax for the same prompt, and the logits of
fastlstm and of both ONNX graphs match PyTorch's.
"""

from __future__ import annotations

import numpy as np
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

    sequence = lm.ort_session("sequence", 1).run(["logits"], {"ids": prompt, **lm.zero_state(1)})
    np.testing.assert_allclose(sequence[0][0], expected, rtol=0, atol=tol)

    step = lm.ort_session("step", 1)
    names = list(lm.zero_state(1))
    feeds = lm.zero_state(1)
    for t in range(prompt.shape[1]):
        logits, *state = step.run(None, {"ids": prompt[:, t:t + 1], **feeds})
        feeds = dict(zip(names, state))
        np.testing.assert_allclose(logits[0, 0], expected[t], rtol=0, atol=tol)
