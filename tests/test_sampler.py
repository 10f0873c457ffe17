"""The sampler (fastlstm._generate.sample, the Python twin of the nogil sampler) and the
random coins of the decode loop.

Every expectation comes from `reference_weights` below: a float64 NumPy transcription of
the semantics (Hugging Face's processors, in HF's order) that the kernel promises:

    repetition_penalty on raw logits -> temperature (0 = greedy) -> top_k -> top_p -> min_p
    -> inverse CDF over the kept tokens in id order at the coin u: the first kept token whose
       cumulative mass exceeds u * total.

The reference works in float64 and the kernel in float32, so a case whose answer could flip
under rounding (a coin within 1e-5 of a CDF step, a probability mass within 1e-4 of a top_p
cut, a score within 1e-4 of a min_p cut, two nearly-equal scores on either side of a cut) is
flagged ambiguous and skipped, deterministically.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

import fastlstm
from fastlstm import _generate
from conftest import LMCase, build_model, stored_model, torch_forward

sample = _generate.sample

# --------------------------------------------------------------------------- the reference


def _near_tie_across(z, kept, dropped, tol):
    """Whether a kept and a dropped token have scores within tol of each other (not equal:
    exact ties stay exact in float32, near ones may not)."""
    if not kept.any() or not dropped.any():
        return False
    d = np.abs(z[kept][:, None] - z[dropped][None, :])
    return bool(np.any((d > 0) & (d < tol)))


def reference_weights(logits, seen=None, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                      repetition_penalty=1.0, tol=1e-4):
    """The kept tokens' unnormalised probabilities (float64, zero for dropped ids) and
    whether float32 rounding could change which tokens are kept."""
    s = np.asarray(logits, np.float32).astype(np.float64)
    V = s.size
    ambiguous = False
    if repetition_penalty != 1.0 and seen is not None:
        mask = np.asarray(seen) != 0
        s = np.where(mask, np.where(s > 0, s / repetition_penalty, s * repetition_penalty), s)
    if temperature == 0 or V == 1:
        w = np.zeros(V)
        w[int(np.argmax(s))] = 1.0  # np.argmax: the first maximum
        gap = s.max() - s
        return w, bool(np.any((gap > 0) & (gap < tol)))
    z = (s - s.max()) / temperature
    keep = z > -np.inf
    if 0 < top_k < keep.sum():
        kth = np.sort(z[keep])[::-1][top_k - 1]
        new = keep & (z >= kth)  # ties with the k-th are kept
        ambiguous |= _near_tie_across(z, new, keep & ~new, tol)
        keep = new
    if top_p < 1.0:
        w = np.where(keep, np.exp(z), 0.0)
        total = w.sum()
        ids = np.flatnonzero(keep)
        order = ids[np.lexsort((ids, -z[ids]))]  # descending score, equal scores by id
        before = np.cumsum(w[order]) - w[order]  # mass of the tokens ranked above
        gap = np.abs(before - top_p * total)
        # (the top token has nothing above it: 0 < top_p * total holds exactly in float32 too)
        ambiguous |= bool(np.any((before > 0) & (gap > 0) & (gap < tol * total)))
        new = np.zeros(V, bool)
        new[order[before < top_p * total]] = True
        ambiguous |= _near_tie_across(z, new, keep & ~new, tol)
        keep = new
    if min_p > 0.0:
        cut = z[keep].max() + np.log(min_p)
        gap = np.abs(z - cut)[keep]
        ambiguous |= bool(np.any((gap > 0) & (gap < tol)))
        keep &= z >= cut
    return np.where(keep, np.exp(z), 0.0), ambiguous


def reference_probs(logits, seen=None, **params):
    w, ambiguous = reference_weights(logits, seen, **params)
    assert not ambiguous, "pick another seed: this configuration sits on a cut"
    return w / w.sum()


def reference_token(logits, seen=None, *, coin, tol=1e-5, **params):
    """The token the sampler must return at `coin`, or None when rounding could decide."""
    w, ambiguous = reference_weights(logits, seen, **params)
    if ambiguous:
        return None
    u = float(np.float32(coin))  # the kernel's coin is a float
    cum = np.cumsum(w)
    total = cum[-1]
    steps = cum[np.flatnonzero(w)[:-1]]  # the last kept token's step is `total` > u * total
    # At u = 0 the threshold is exactly 0 in both: only an exp underflowing in float32 flips.
    near = 1e-30 * total if u == 0 else tol * total
    if np.any(np.abs(steps - u * total) < near):
        return None
    return int(np.argmax(cum > u * total))


# --------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("V", [1, 2, 7, 96, 1000])
def test_greedy_is_argmax(V):
    rng = np.random.default_rng(V)
    for _ in range(20):
        logits = rng.normal(0, 3, V).astype(np.float32)
        for coin in (0.0, 0.5, 0.999999):
            assert sample(logits, temperature=0.0, coin_value=coin) == np.argmax(logits)


def test_greedy_ties_pick_the_first_maximum():
    logits = np.array([1.0, 4.0, -2.0, 4.0, 4.0], np.float32)
    assert sample(logits, temperature=0.0, coin_value=0.9) == 1
    assert sample(np.zeros(10, np.float32), temperature=0.0) == 0
    # -inf elsewhere does not matter
    logits = np.array([-np.inf, 3.0, -np.inf, 3.0], np.float32)
    assert sample(logits, temperature=0.0) == 1


def test_greedy_after_repetition_penalty():
    # A seen positive logit is divided, a seen negative one multiplied, before the argmax.
    assert sample([2.0, 1.9], [1, 0], temperature=0.0, repetition_penalty=2.0) == 1
    assert sample([-1.0, -1.5], [1, 0], temperature=0.0, repetition_penalty=2.0) == 1
    assert sample([-1.0, -1.5], [0, 0], temperature=0.0, repetition_penalty=2.0) == 0
    # A penalty below 1 favours what was seen.
    assert sample([1.0, 1.9], [1, 0], temperature=0.0, repetition_penalty=0.5) == 0
    assert sample([-1.0, -0.9], [0, 1], temperature=0.0, repetition_penalty=0.5) == 1


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_greedy_first_token_is_torch_argmax(tmp_path, rnn_type):
    case = LMCase(rnn_type, 2, 40, 16, 32, seed=3, scale=4.0, save="fastlstm")
    torch_model = build_model(case)
    path = tmp_path / "m.safetensors"
    fastlstm.export(torch_model, path)
    model = fastlstm.load(path, num_threads=1)

    ids = np.random.default_rng(0).integers(0, 40, (32, 7))
    logits, _ = torch_forward(stored_model(torch_model, "float32"), ids)
    last = logits[:, -1].astype(np.float64)
    top2 = np.sort(last, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-4), "pick another seed: near-tie in torch logits"

    first = model.generate_ids(ids, temperature=0.0, max_new_tokens=1)[:, 0]
    np.testing.assert_array_equal(first, np.argmax(last, axis=1))
    # The twin on the same logits agrees (whatever the coin).
    assert [sample(row, temperature=0.0, coin_value=0.7) for row in last] == first.tolist()


# --------------------------------------------------------------------------- fixed coins

STRATEGIES = {
    "plain": dict(temperature=1.0),
    "hot": dict(temperature=2.5),
    "cold": dict(temperature=0.3),
    "top_k=1": dict(top_k=1),
    "top_k=3": dict(temperature=0.8, top_k=3),
    "top_k>=V": dict(top_k=10_000),
    "top_p=0.9": dict(top_p=0.9),
    "top_p=0.3": dict(temperature=1.5, top_p=0.3),
    "top_p tiny": dict(top_p=1e-6),
    "min_p=0.1": dict(min_p=0.1),
    "min_p=0.6": dict(temperature=1.3, min_p=0.6),
    "min_p=1": dict(min_p=1.0),
    "penalty": dict(repetition_penalty=1.8),
    "penalty<1": dict(repetition_penalty=0.6),
    "k+p": dict(temperature=0.7, top_k=8, top_p=0.8),
    "p+min_p": dict(top_p=0.95, min_p=0.05),
    "all": dict(temperature=1.2, top_k=10, top_p=0.85, min_p=0.02, repetition_penalty=1.3),
}
COINS = [0.0, 0.999999, 0.5, 0.123, 0.77, 0.31416]

@pytest.mark.parametrize("name", list(STRATEGIES))
def test_fixed_coins_match_reference(name):
    params = STRATEGIES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    checked = skipped = 0
    for trial in range(60):
        V = [3, 20, 64][trial % 3]
        logits = rng.normal(0, 2.0, V).astype(np.float32)
        if trial % 4 == 1:  # ties
            logits = np.round(logits).astype(np.float32)
        if trial % 5 == 2:  # impossible tokens
            logits[rng.integers(0, V, 2)] = -np.inf
        seen = rng.random(V) < 0.3
        for coin in COINS:
            expected = reference_token(logits, seen, coin=coin, **params)
            if expected is None:
                skipped += 1
                continue
            checked += 1
            got = sample(logits, seen, coin_value=coin, **params)
            assert got == expected, (name, logits.tolist(), seen.tolist(), coin)
    assert checked > 10 * skipped  # the skip rule must stay the exception


# (logits, seen, params, coin, expected token): each worked out by hand.
EDGE_CASES = [
    # V = 1: the only token, whatever the parameters.
    ([0.3], None, dict(), 0.0, 0),
    ([0.3], None, dict(), 0.999999, 0),
    ([-5.0], [1], dict(top_k=1, top_p=0.1, min_p=1.0, repetition_penalty=3.0), 0.7, 0),
    # V = 2, equal logits: each has half the mass.
    ([1.0, 1.0], None, dict(), 0.0, 0),
    ([1.0, 1.0], None, dict(), 0.49, 0),
    ([1.0, 1.0], None, dict(), 0.51, 1),
    ([1.0, 1.0], None, dict(), 0.999999, 1),
    # V = 2, p = (1/(1+e), e/(1+e)) = (0.269, 0.731).
    ([0.0, 1.0], None, dict(), 0.25, 0),
    ([0.0, 1.0], None, dict(), 0.28, 1),
    # The draw walks ids in order, not by probability.
    ([5.0, -5.0, 5.0], None, dict(), 0.4999, 0),
    ([5.0, -5.0, 5.0], None, dict(), 0.5001, 2),
    # top_k = 1 keeps every token tied with the maximum.
    ([1.0, 3.0, 3.0, 0.0], None, dict(top_k=1), 0.0, 1),
    ([1.0, 3.0, 3.0, 0.0], None, dict(top_k=1), 0.4, 1),
    ([1.0, 3.0, 3.0, 0.0], None, dict(top_k=1), 0.6, 2),
    # top_k = 2 with a tie at the 2nd: three tokens kept (0 is dropped).
    ([0.0, 2.0, 1.0, 1.0], None, dict(top_k=2), 0.0, 1),
    ([0.0, 2.0, 1.0, 1.0], None, dict(top_k=2), 0.99, 3),
    # top_k >= V: off.
    ([0.0, 2.0, 1.0], None, dict(top_k=3), 0.01, 0),
    ([0.0, 2.0, 1.0], None, dict(top_k=4), 0.01, 0),
    # top_p with four equal tokens: the mass above the 3rd is 0.5, not < 0.5, so two kept
    # (equal scores ranked by id).
    ([0.0, 0.0, 0.0, 0.0], None, dict(top_p=0.5), 0.49, 0),
    ([0.0, 0.0, 0.0, 0.0], None, dict(top_p=0.5), 0.51, 1),
    ([0.0, 0.0, 0.0, 0.0], None, dict(top_p=0.5), 0.999999, 1),
    ([0.0, 0.0, 0.0, 0.0], None, dict(top_p=0.51), 0.999999, 2),
    # top_p tiny on a peaked distribution: only the top token.
    ([0.0, 5.0, 1.0], None, dict(top_p=1e-6), 0.0, 1),
    ([0.0, 5.0, 1.0], None, dict(top_p=1e-6), 0.999999, 1),
    # min_p = 1 keeps the maximum and its ties only.
    ([2.0, 5.0, 5.0, 1.0], None, dict(min_p=1.0), 0.0, 1),
    ([2.0, 5.0, 5.0, 1.0], None, dict(min_p=1.0), 0.999999, 2),
    ([2.0, 5.0, 4.9, 1.0], None, dict(min_p=1.0), 0.999999, 1),
    # min_p = 0.5 with p(1)/p(0) = e^-1 < 0.5: token 1 dropped.
    ([1.0, 0.0, 1.0], None, dict(min_p=0.5), 0.4, 0),
    ([1.0, 0.0, 1.0], None, dict(min_p=0.5), 0.6, 2),
    # ... and e^-0.5 = 0.61 > 0.5: kept.
    ([1.0, 0.5, 1.0], None, dict(min_p=0.5), 0.4, 1),
    # -inf logits are never drawn.
    ([-np.inf, 0.0, -np.inf, 0.0], None, dict(), 0.0, 1),
    ([-np.inf, 0.0, -np.inf, 0.0], None, dict(), 0.999999, 3),
    # Repetition penalty: 2 -> 1 (seen, divided): equal to token 1's 1.0.
    ([2.0, 1.0], [1, 0], dict(repetition_penalty=2.0), 0.49, 0),
    ([2.0, 1.0], [1, 0], dict(repetition_penalty=2.0), 0.51, 1),
    # ... -1 -> -2 (seen, multiplied): equal to token 1's -2.
    ([-1.0, -2.0], [1, 0], dict(repetition_penalty=2.0), 0.51, 1),
    # Temperature scales the mass: T = 1/ln 3 makes logits (0, 1) weigh (1, 3).
    ([0.0, 1.0], None, dict(temperature=1 / np.log(3)), 0.24, 0),
    ([0.0, 1.0], None, dict(temperature=1 / np.log(3)), 0.26, 1),
]


@pytest.mark.parametrize("logits, seen, params, coin, expected", EDGE_CASES)
def test_edge_cases(logits, seen, params, coin, expected):
    assert reference_token(logits, seen, coin=coin, **params) == expected  # the reference too
    assert sample(np.array(logits, np.float32), seen, coin_value=coin, **params) == expected


@pytest.mark.parametrize("logits, params, coin, expected", [
    ([0.0, 1.0], dict(top_p=0.1), 0.0, 1),  # p = (0.27, 0.73): the nucleus is {1}
    ([-3.0, 0.0], dict(temperature=2.0, top_p=0.125), 0.0, 1),
    ([0.0] * 5 + [0.01] + [0.0] * 14, dict(top_p=0.01), 0.0, 5),  # near-uniform, top_p < 1/V
])
def test_top_p_keeps_the_top_token(logits, params, coin, expected):
    assert reference_token(logits, coin=coin, **params) == expected
    assert sample(np.array(logits, np.float32), coin_value=coin, **params) == expected


# --------------------------------------------------------------------------- the distribution

CHI2_CONFIGS = {
    "T=1": dict(temperature=1.0),
    "T=0.6": dict(temperature=0.6),
    "T=2": dict(temperature=2.0),
    "top_k=5": dict(top_k=5),
    "top_p=0.8": dict(top_p=0.8),
    "min_p=0.05": dict(min_p=0.05),
    "penalty=1.5": dict(repetition_penalty=1.5),
    "all": dict(temperature=0.9, top_k=12, top_p=0.9, min_p=0.02, repetition_penalty=1.3),
}


def chisquare_p(counts, probs, draws):
    """p-value of observed counts against probabilities; tokens of zero probability must
    never be drawn, and cells expecting fewer than 5 draws are pooled."""
    counts = np.asarray(counts, np.float64)
    impossible = np.flatnonzero((probs == 0) & (counts > 0))
    assert len(impossible) == 0, f"drew tokens of probability 0: {impossible}"
    expected = probs * draws
    big = expected >= 5
    obs = np.append(counts[big], counts[(~big) & (probs > 0)].sum())
    exp = np.append(expected[big], expected[(~big) & (probs > 0)].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    if len(exp) < 2:
        return 1.0
    return scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.parametrize("name", list(CHI2_CONFIGS))
def test_draws_follow_the_distribution(name):
    params = CHI2_CONFIGS[name]
    rng = np.random.default_rng(2024)
    V = 20
    logits = rng.normal(0, 1.5, V).astype(np.float32)
    seen = rng.random(V) < 0.3
    probs = reference_probs(logits, seen, **params)
    draws = 200_000
    tokens = [sample(logits, seen, coin_value=u, **params) for u in rng.random(draws)]
    counts = np.bincount(tokens, minlength=V)
    assert chisquare_p(counts, probs, draws) > 1e-4


def test_draws_through_the_decode_loop_follow_torch_softmax(tmp_path):
    case = LMCase("LSTM", 1, 24, 16, 32, seed=5, scale=3.0, save="fastlstm")
    torch_model = build_model(case)
    path = tmp_path / "m.safetensors"
    fastlstm.export(torch_model, path)
    model = fastlstm.load(path, num_threads=2)
    prompt = [3, 1, 4, 1, 5, 9]
    logits, _ = torch_forward(stored_model(torch_model, "float32"), [prompt])
    last = logits[0, -1].astype(np.float64)

    draws = 40_000
    for params in (dict(temperature=0.8), dict(temperature=1.1, top_k=6, top_p=0.9)):
        probs = reference_probs(last, **params)
        tokens = model.generate_ids([prompt], max_new_tokens=1, seed=99,
                                    num_return_sequences=draws, **params)[:, 0]
        counts = np.bincount(tokens, minlength=case.vocab)
        assert chisquare_p(counts, probs, draws) > 1e-4, params


# --------------------------------------------------------------------------- NaN


@pytest.mark.parametrize("params", [dict(temperature=0.0), dict(), dict(top_k=2, top_p=0.5),
                                    dict(min_p=0.5, repetition_penalty=1.5)])
@pytest.mark.parametrize("where", [0, 3, 9])
def test_nan_logits_give_minus_one(params, where):
    logits = np.linspace(-1, 1, 10).astype(np.float32)
    logits[where] = np.nan
    seen = np.zeros(10, np.uint8)
    seen[where] = 1
    assert sample(logits, seen, coin_value=0.5, **params) == -1
    assert sample(logits, coin_value=0.0, **params) == -1
    assert sample(np.array([np.nan], np.float32), **params) == -1


# --------------------------------------------------------------------------- the coins


def test_coins_look_uniform():
    coins = _generate.coins(12345, 0, 0, 200_000)
    assert coins.dtype == np.float32
    assert coins.min() >= 0.0 and coins.max() < 1.0
    assert abs(coins.mean() - 0.5) < 0.005
    assert abs(coins.var() - 1 / 12) < 0.002
    assert scipy.stats.kstest(coins, "uniform").pvalue > 1e-4
    # No correlation between successive steps.
    assert abs(np.corrcoef(coins[:-1], coins[1:])[0, 1]) < 0.01


def test_coins_are_a_function_of_seed_stream_and_step():
    a = _generate.coins(7, 3, 0, 1000)
    np.testing.assert_array_equal(a, _generate.coins(7, 3, 0, 1000))
    np.testing.assert_array_equal(a[400:], _generate.coins(7, 3, 400, 600))
    others = [_generate.coins(7, 4, 0, 1000), _generate.coins(8, 3, 0, 1000),
              _generate.coins(2**64 - 1, 3, 0, 1000), _generate.coins(7, 2**63, 0, 1000)]
    for b in others:
        assert np.mean(a == b) < 0.01
    # Across many streams, the first coins are uniform too (rows of one batch).
    firsts = np.array([_generate.coins(7, s, 0, 1)[0] for s in range(20_000)])
    assert scipy.stats.kstest(firsts, "uniform").pvalue > 1e-4


@pytest.mark.parametrize("params", [dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                    dict(top_p=0.9, repetition_penalty=1.4)])
def test_decode_loop_draws_coin_seed_row_step(tmp_path, params):
    """The loop's token t of sample j is the twin's pick on the model's own logits at
    coins(seed, j, t), with seen = prompt + tokens so far."""
    case = LMCase("GRU", 1, 30, 12, 24, seed=8, scale=3.0, save="fastlstm")
    path = tmp_path / "m.safetensors"
    fastlstm.export(build_model(case), path)
    model = fastlstm.load(path, num_threads=1)
    prompt, seed, n, steps = [1, 2, 3], 42, 3, 12
    out = model.generate_ids([prompt], seed=seed, num_return_sequences=n,
                             max_new_tokens=steps, **params)
    checked = 0
    for j in range(n):
        coins = _generate.coins(seed, j, 0, steps)
        for t in range(steps):
            ids = prompt + out[j, :t].tolist()
            logits, _ = model.forward([ids])
            seen = np.zeros(case.vocab, np.uint8)
            seen[ids] = 1
            expected = reference_token(logits[0, -1], seen, coin=coins[t], **params)
            if expected is None:
                continue
            checked += 1
            assert out[j, t] == expected, (j, t)
            assert sample(logits[0, -1], seen, coin_value=coins[t], **params) == expected
    assert checked >= n * steps - 3
