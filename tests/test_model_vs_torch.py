"""fastlstm.load(...).forward against PyTorch on a seeded matrix of language models.

Each case builds a word_language_model-style module (conftest.RNNModel), saves it the way a
user would (safetensors save_file / save_model, or a fastlstm file), loads it with fastlstm
and compares logits and states with PyTorch run in float64 on the same stored weights.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from safetensors.torch import save_file

import fastlstm
from conftest import (
    LMCase,
    assert_close,
    assert_state_close,
    build_model,
    inner,
    random_rnn_state,
    save_case,
    stored_model,
    torch_forward,
)

REL = 1e-4  # max |logit diff| <= REL * max |logit|
GREEDY_STEPS = 100
NEAR_TIE = 1e-5  # torch's top-two gap (relative to max(1, max |logit|)) that excuses a divergence

NAMES = [
    ("encoder", "rnn", "decoder"),
    ("embedding", "lstm", "fc"),
    ("embed", "gru", "head"),
    ("emb", "cell", "out"),
    ("tok_embeddings", "recurrent", "lm_head"),
    ("wte", "layers", "proj"),
]


# --------------------------------------------------------------------------- the matrix


def _explicit_cases() -> list[LMCase]:
    """Hand-picked corners: sizes 1, 7, 257; vocab 2 and 1000; every cell and save path."""
    C = LMCase
    return [
        C("LSTM", 1, 2, 3, 1, seq=1, seed=1),
        C("LSTM", 2, 50, 16, 7, proj=3, batch=2, seq=6, seed=2, names=NAMES[1]),
        C("LSTM", 3, 1000, 32, 257, batch=3, seq=7, save="save_model", names=NAMES[1], seed=3),
        C("LSTM", 2, 1000, 64, 257, proj=64, tied=True, save="save_model", batch=2, seq=4, seed=4),
        C("LSTM", 2, 200, 20, 20, batch=2, seq=9, seed=5),  # untied, E == H, head bias (wlm default)
        C("LSTM", 1, 40, 8, 7, bias=False, head_bias=False, names=NAMES[3], seq=8, seed=6),
        C("LSTM", 2, 64, 12, 12, tied=True, head_bias=False, save="fastlstm", prefix="lm", seed=7),
        C("GRU", 1, 2, 1, 1, seq=3, names=NAMES[2], seed=8),
        C("GRU", 3, 300, 257, 257, tied=True, save="save_model", names=NAMES[2], batch=2, seq=5, seed=9),
        C("GRU", 2, 100, 10, 7, bias=False, save="fastlstm", batch=4, seq=6, seed=10),
        C("GRU", 2, 80, 16, 16, rnn_type_via="metadata", prefix="model", batch=2, seed=11),
        C("RNN_TANH", 2, 30, 8, 7, rnn_type_via="metadata", batch=2, seq=6, seed=12),
        C("RNN_TANH", 1, 2, 1, 1, rnn_type_via="keyword", seq=4, seed=13),
        C("RNN_TANH", 3, 500, 40, 257, save="fastlstm", names=NAMES[4], batch=2, seed=14),
        C("RNN_RELU", 3, 100, 16, 257, rnn_type_via="keyword", scale=1.2, seq=6, seed=15),
        C("RNN_RELU", 1, 20, 7, 7, bias=False, rnn_type_via="metadata", tied=True, save="save_model",
          scale=1.2, batch=3, seed=16),
        C("RNN_RELU", 2, 60, 5, 9, head_bias=False, save="fastlstm", scale=1.2, seq=1, batch=2, seed=17),
        # stored in half precision: the reference runs the same rounded weights
        C("LSTM", 2, 120, 24, 33, dtype="float16", batch=2, seq=6, seed=18),
        C("LSTM", 2, 90, 16, 40, proj=16, tied=True, save="save_model", dtype="bfloat16", seed=19),
        C("GRU", 2, 70, 12, 19, dtype="bfloat16", save="fastlstm", batch=2, seed=20),
        C("RNN_TANH", 1, 50, 10, 21, dtype="float16", rnn_type_via="keyword", seed=21),
        C("LSTM", 3, 257, 257, 257, dtype="bfloat16", batch=2, seq=3, names=NAMES[5], seed=22),
    ]


def _random_cases(n: int, seed: int = 2024) -> list[LMCase]:
    """`n` seeded random configurations that satisfy PyTorch's and the format's constraints."""
    r = random.Random(seed)
    cases = []
    while len(cases) < n:
        rnn_type = r.choice(["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
        hidden = r.choice([1, 2, 5, 7, 8, 16, 31, 64, 100, 257])
        proj = 0
        if rnn_type == "LSTM" and hidden > 1 and r.random() < 0.35:
            proj = r.randint(1, hidden - 1)
        out = proj or hidden
        tied = r.random() < 0.3
        emb = out if tied else r.choice([1, 3, 8, 17, 32, out])
        head_bias = r.random() < 0.7
        if not tied and not head_bias and emb == out:
            emb = out + 1  # else only the module names tell embedding from head (tested apart)
        save = r.choice(["save_model", "fastlstm"] + ([] if tied else ["save_file"]))
        if rnn_type.startswith("RNN"):
            via = r.choice(["metadata", "keyword"])
        else:
            via = r.choice(["shape", "shape", "metadata", "keyword"])
        case = LMCase(
            rnn_type,
            num_layers=r.randint(1, 3),
            vocab=r.choice([2, 3, 10, 37, 128, 500, 1000]),
            emb=emb,
            hidden=hidden,
            proj=proj,
            bias=r.random() < 0.75,
            head_bias=head_bias,
            tied=tied,
            names=r.choice(NAMES),
            prefix=r.choice(["", "", "", "lm", "model"]),
            save=save,
            rnn_type_via=via,
            dtype=r.choice(["float32"] * 4 + ["float16", "bfloat16"]),
            batch=r.choice([1, 1, 2, 3, 5]),
            seq=r.choice([1, 2, 3, 8, 13]),
            seed=1000 + len(cases),
            scale=1.3 if rnn_type == "RNN_RELU" else r.choice([1.5, 2.0, 2.5]),
        )
        cases.append(case.check())
    return cases


CASES = [c.check() for c in _explicit_cases()] + _random_cases(16)
assert len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- helpers


class Loaded:
    """A case, its torch module, the float64 reference and the fastlstm model from the file."""

    def __init__(self, case: LMCase, tmp_path):
        self.case = case
        self.torch_model = build_model(case)
        path = tmp_path / "model.safetensors"
        self.load_kwargs = save_case(self.torch_model, case, path)
        self.path = path
        self.ref = stored_model(self.torch_model, case.dtype)
        self.model = fastlstm.load(str(path), **self.load_kwargs)

    def ids(self, batch: int, seq: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, self.case.vocab, (batch, seq), dtype=np.int64)

    def initial_state(self, batch: int, seed: int):
        return random_rnn_state(inner(self.torch_model).rnn_module, batch, seed)


_LOADED: dict[str, Loaded] = {}


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def loaded(request, tmp_path_factory) -> Loaded:
    """Built, saved and loaded once per case (forward keeps no state between calls)."""
    case = request.param
    if case.id not in _LOADED:
        _LOADED[case.id] = Loaded(case, tmp_path_factory.mktemp("case"))
    return _LOADED[case.id]


def _check_forward(loaded: Loaded, ids, state=None, what=""):
    expected_logits, expected_state = torch_forward(loaded.ref, ids, state)
    logits, new_state = loaded.model.forward(ids, state)
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32, f"{what}: logits {type(logits)}"
    assert_close(logits, expected_logits, REL, f"{what} logits")
    assert_state_close(new_state, expected_state, REL, f"{what} state")
    return logits, new_state


# --------------------------------------------------------------------------- per-case tests


def test_config(loaded: Loaded):
    c, cfg = loaded.case, loaded.model.config
    assert isinstance(cfg, fastlstm.ModelConfig)
    assert (cfg.rnn_type, cfg.num_layers, cfg.vocab_size) == (c.rnn_type, c.num_layers, c.vocab)
    assert (cfg.embedding_dim, cfg.hidden_size, cfg.proj_size) == (c.emb, c.hidden, c.proj)
    assert (cfg.bias, cfg.head_bias) == (c.bias, c.head_bias)
    assert cfg.tied == c.tied
    text = repr(loaded.model)
    assert c.rnn_type in text and str(c.hidden) in text, text


def test_logits_and_state(loaded: Loaded):
    c = loaded.case
    _check_forward(loaded, loaded.ids(c.batch, c.seq, seed=c.seed), what=c.id)


def test_initial_state(loaded: Loaded):
    c = loaded.case
    ids = loaded.ids(c.batch, c.seq, seed=c.seed + 1)
    state = loaded.initial_state(c.batch, seed=c.seed + 2)
    logits, _ = _check_forward(loaded, ids, state, what="with initial state")
    # the given state must matter (guards against an implementation that ignores it)
    zero_logits, _ = loaded.model.forward(ids)
    ref_zero, _ = torch_forward(loaded.ref, ids)
    ref_given, _ = torch_forward(loaded.ref, ids, state)
    if np.max(np.abs(ref_zero - ref_given)) > 100 * REL * np.max(np.abs(ref_given)):
        assert not np.allclose(logits, zero_logits), "the initial state was ignored"


def test_state_is_not_modified(loaded: Loaded):
    """Passing a state twice gives the same result: forward never writes into its input."""
    c = loaded.case
    ids = loaded.ids(c.batch, 3, seed=c.seed + 3)
    state = loaded.initial_state(c.batch, seed=c.seed + 4)
    arrays = state if isinstance(state, tuple) else (state,)
    copies = [a.copy() for a in arrays]
    first, _ = loaded.model.forward(ids, state)
    second, _ = loaded.model.forward(ids, state)
    np.testing.assert_array_equal(first, second)
    for a, b in zip(arrays, copies):
        np.testing.assert_array_equal(a, b)


def test_two_pieces_equal_whole(loaded: Loaded):
    c = loaded.case
    seq = max(c.seq, 2)
    ids = loaded.ids(c.batch, seq, seed=c.seed + 5)
    split = random.Random(c.seed).randint(1, seq - 1)
    whole_logits, whole_state = loaded.model.forward(ids)
    first_logits, state = loaded.model.forward(ids[:, :split])
    second_logits, final_state = loaded.model.forward(ids[:, split:], state)
    expected_logits, expected_state = torch_forward(loaded.ref, ids)
    pieces = np.concatenate([first_logits, second_logits], axis=1)
    assert_close(pieces, whole_logits, REL, f"pieces split at {split} vs whole")
    assert_close(pieces, expected_logits, REL, f"pieces split at {split} vs torch")
    assert_state_close(final_state, whole_state, REL, "final state, pieces vs whole")
    assert_state_close(final_state, expected_state, REL, "final state, pieces vs torch")


def test_greedy_continuation(loaded: Loaded):
    """Greedy decoding step by step (argmax fed back with the state), fastlstm and torch
    independently: the ids must agree, except right after a step where torch's two best
    logits are a near tie; from there on that row is no longer compared."""
    c = loaded.case
    prompt = loaded.ids(c.batch, c.seq, seed=c.seed + 6)
    ref_logits, ref_state = torch_forward(loaded.ref, prompt)
    fast_logits, fast_state = loaded.model.forward(prompt)
    live = np.ones(c.batch, dtype=bool)  # rows whose two trajectories still coincide
    for step in range(GREEDY_STEPS):
        ref_last, fast_last = ref_logits[:, -1], fast_logits[:, -1]
        if live.any():
            assert_close(fast_last[live], ref_last[live], REL, f"step {step} logits")
        ref_next, fast_next = ref_last.argmax(-1), fast_last.argmax(-1)
        for row in np.flatnonzero(live & (ref_next != fast_next)):
            top2 = np.sort(ref_last[row].astype(np.float64))[-2:]
            gap = top2[1] - top2[0]
            allowed = NEAR_TIE * max(1.0, float(np.max(np.abs(ref_last[row]))))
            assert gap < allowed, (
                f"row {row} step {step}: fastlstm picked {fast_next[row]}, torch {ref_next[row]}"
                f" with a top-two gap of {gap:.3g}"
            )
            live[row] = False
        ref_logits, ref_state = torch_forward(loaded.ref, ref_next[:, None], ref_state)
        fast_logits, fast_state = loaded.model.forward(fast_next[:, None].astype(np.int64), fast_state)
        assert fast_logits.shape == (c.batch, 1, c.vocab)


def test_one_dimensional_ids(loaded: Loaded):
    c = loaded.case
    ids = loaded.ids(1, c.seq, seed=c.seed + 7)
    logits_2d, state_2d = loaded.model.forward(ids)
    logits_1d, state_1d = loaded.model.forward(ids[0])
    assert logits_1d.shape == (1, c.seq, c.vocab)
    assert_close(logits_1d, logits_2d, REL, "1-D ids vs (1, T)")
    assert_state_close(state_1d, state_2d, REL, "1-D ids state")


# --------------------------------------------------------------------------- single tests


def _make(tmp_path, **kwargs) -> Loaded:
    return Loaded(LMCase(**kwargs).check(), tmp_path)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, "list"])
def test_ids_types(tmp_path, dtype):
    lo = _make(tmp_path, rnn_type="LSTM", num_layers=2, vocab=20, emb=6, hidden=9, batch=2, seq=4, seed=30)
    ids = lo.ids(2, 4, seed=1)
    expected, _ = torch_forward(lo.ref, ids)
    given = ids.tolist() if dtype == "list" else ids.astype(dtype)
    logits, _ = lo.model.forward(given)
    assert_close(logits, expected, REL, f"ids as {dtype}")


@pytest.mark.parametrize("bad", [-1, 20, 10**6])
def test_ids_out_of_range(tmp_path, bad):
    lo = _make(tmp_path, rnn_type="GRU", num_layers=1, vocab=20, emb=6, hidden=9, seed=31)
    ids = np.array([[1, 2, bad, 3]], dtype=np.int64)
    with pytest.raises(ValueError, match=r"(?i)range|vocab|id"):
        lo.model.forward(ids)


def test_rnn_keyword_selects_nonlinearity(tmp_path):
    """Plain-RNN weights carry no nonlinearity: the keyword decides, and it must be obeyed."""
    case = LMCase("RNN_TANH", 2, 30, 8, 11, rnn_type_via="keyword", batch=2, seq=6, seed=32, scale=2.0)
    tanh_lo = Loaded(case, tmp_path)
    path = str(tanh_lo.path)
    ids = tanh_lo.ids(2, 6, seed=2)
    relu_torch = build_model(LMCase("RNN_RELU", 2, 30, 8, 11, rnn_type_via="keyword", seed=32, scale=2.0))
    relu_ref = stored_model(relu_torch, "float32")
    for rnn_type, ref in [("RNN_TANH", tanh_lo.ref), ("RNN_RELU", relu_ref)]:
        model = fastlstm.load(path, rnn_type=rnn_type)
        assert model.config.rnn_type == rnn_type
        expected, _ = torch_forward(ref, ids)
        logits, _ = model.forward(ids)
        assert_close(logits, expected, REL, rnn_type)
    tanh_logits, _ = torch_forward(tanh_lo.ref, ids)
    relu_logits, _ = torch_forward(relu_ref, ids)
    assert not np.allclose(tanh_logits, relu_logits, atol=1e-3)  # the two really differ


@pytest.mark.parametrize("rnn_type", ["RNN_TANH", "RNN_RELU"])
def test_metadata_and_matching_keyword(tmp_path, rnn_type):
    lo = _make(tmp_path, rnn_type=rnn_type, num_layers=2, vocab=25, emb=5, hidden=6,
               rnn_type_via="metadata", batch=2, seq=5, seed=33, scale=1.2)
    model = fastlstm.load(str(lo.path), rnn_type=rnn_type)
    ids = lo.ids(2, 5, seed=3)
    expected, _ = torch_forward(lo.ref, ids)
    assert model.config.rnn_type == rnn_type
    assert_close(model.forward(ids)[0], expected, REL, "metadata + keyword")


def test_lstm_gru_keyword_matching_shapes(tmp_path):
    for rnn_type in ("LSTM", "GRU"):
        lo = _make(tmp_path, rnn_type=rnn_type, num_layers=1, vocab=25, emb=5, hidden=6, seed=34)
        model = fastlstm.load(str(lo.path), rnn_type=rnn_type)
        assert model.config.rnn_type == rnn_type


@pytest.mark.parametrize("num_threads", [1, 2])
def test_num_threads(tmp_path, num_threads):
    case = LMCase("LSTM", 2, 300, 32, 257, batch=5, seq=6, seed=35).check()
    torch_model = build_model(case)
    path = tmp_path / "m.safetensors"
    save_case(torch_model, case, path)
    ref = stored_model(torch_model, "float32")
    model = fastlstm.load(str(path), num_threads=num_threads)
    ids = np.random.default_rng(4).integers(0, 300, (5, 6))
    expected_logits, expected_state = torch_forward(ref, ids)
    logits, state = model.forward(ids)
    assert_close(logits, expected_logits, REL, f"num_threads={num_threads}")
    assert_state_close(state, expected_state, REL)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_blas_forward_on_cpus_without_vector_kernels(tmp_path, monkeypatch, num_threads):
    """Where the CPU has no AVX2, float32 models keep row-major copies and forward() runs
    BLAS for rows a thread has alone (batch 5), matmul.h's scalar path in teams (batch 1)."""
    monkeypatch.setattr(fastlstm.isa, "vector_kernels", lambda: False)
    case = LMCase("LSTM", 2, 300, 32, 57, proj=20, batch=5, seq=6, seed=35).check()
    torch_model = build_model(case)
    path = tmp_path / "m.safetensors"
    save_case(torch_model, case, path)
    ref = stored_model(torch_model, "float32")
    model = fastlstm.load(str(path), num_threads=num_threads)
    assert model.packed.head_w is not None and model.packed.layers[0].w_ih is not None
    assert fastlstm.load(str(path), dtype="float16").packed.head_w is None
    for batch in (5, 1):
        ids = np.random.default_rng(4).integers(0, 300, (batch, 6))
        expected_logits, expected_state = torch_forward(ref, ids)
        logits, state = model.forward(ids)
        assert_close(logits, expected_logits, REL, f"BLAS, batch {batch}")
        assert_state_close(state, expected_state, REL)


def test_vector_kernels_hold_no_row_major_copies(tmp_path):
    if not fastlstm.isa.vector_kernels():
        pytest.skip("this CPU runs the portable path")
    lo = _make(tmp_path, rnn_type="LSTM", num_layers=2, vocab=12, emb=4, hidden=5, seed=36)
    assert lo.model.packed.head_w is None
    assert all(layer.w_ih is None and layer.w_hh is None for layer in lo.model.packed.layers)


def test_load_accepts_pathlike(tmp_path):
    lo = _make(tmp_path, rnn_type="GRU", num_layers=1, vocab=12, emb=4, hidden=5, seed=36)
    model = fastlstm.load(lo.path)  # a pathlib.Path, not a str
    ids = lo.ids(1, 3, seed=5)
    assert_close(model.forward(ids)[0], torch_forward(lo.ref, ids)[0], REL, "Path")


@pytest.mark.parametrize("names", NAMES, ids=["/".join(n) for n in NAMES])
def test_square_roles_told_apart_by_name(tmp_path, names):
    """Untied, E == H and no head bias: both matrices fit both roles, so the module names
    (encoder/decoder, embedding/fc, ...) are all that tells the embedding from the head."""
    lo = _make(tmp_path, rnn_type="GRU", num_layers=2, vocab=30, emb=9, hidden=9, head_bias=False,
               names=names, batch=2, seq=5, seed=37)
    assert not lo.model.config.tied
    ids = lo.ids(2, 5, seed=6)
    assert_close(lo.model.forward(ids)[0], torch_forward(lo.ref, ids)[0], REL, "/".join(names))


def test_tied_model_saved_with_save_file(tmp_path):
    """save_file refuses shared tensors, so users clone: both names are then present."""
    case = LMCase("LSTM", 2, 40, 10, 10, tied=True, save="save_model", batch=2, seq=5, seed=38).check()
    torch_model = build_model(case)
    path = tmp_path / "cloned.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in torch_model.state_dict().items()}, str(path))
    model = fastlstm.load(str(path))
    ids = np.random.default_rng(7).integers(0, 40, (2, 5))
    ref = stored_model(torch_model, "float32")
    assert_close(model.forward(ids)[0], torch_forward(ref, ids)[0], REL, "cloned tie")


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_state_of_wrong_layout_is_refused(tmp_path, rnn_type):
    lo = _make(tmp_path, rnn_type=rnn_type, num_layers=2, vocab=20, emb=6, hidden=9, batch=2, seed=39)
    ids = lo.ids(2, 3, seed=8)
    good = lo.initial_state(2, seed=9)
    h = good[0] if rnn_type == "LSTM" else good
    bad_states = [h[:, :1], h[:1], np.zeros((2, 2, 8), np.float32)]
    bad_states.append(h if rnn_type == "LSTM" else (h, h))  # LSTM needs (h, c); GRU takes h only
    for bad in bad_states:
        if rnn_type == "LSTM" and not isinstance(bad, tuple) and bad is not h:
            bad = (bad, good[1])
        with pytest.raises(ValueError, match=r"(?i)state|shape|tuple"):
            lo.model.forward(ids, bad)


def test_packed_model_checks_its_parts():
    """fastlstm._packed.PackedModel is checked once, at load, and the kernels trust it: parts
    that do not fit together are refused with a ValueError naming the part."""
    from fastlstm._packed import PackedModel

    model = fastlstm.load()
    p = model.packed
    parts = dict(emb=p.emb, table=p.table, head=p.head, head_w=p.head_w, head_b=p.head_b)
    assert PackedModel(p.rnn_type, p.layers, **parts).step_weights == p.step_weights
    with pytest.raises(ValueError, match="rnn_type"):
        PackedModel("LSTMX", p.layers, **parts)
    with pytest.raises(ValueError, match="hidden units"):
        PackedModel("GRU", p.layers, **parts)  # LSTM weights: 4 gates, not 3
    with pytest.raises(ValueError, match="head_b"):
        PackedModel(p.rnn_type, p.layers, **{**parts, "head_b": p.head_b[:-1].copy()})
    with pytest.raises(ValueError, match="layer 1 takes 64 inputs"):  # 64: the embedding
        PackedModel(p.rnn_type, [p.layers[1], p.layers[0]], **parts)
    with pytest.raises(ValueError, match="the embedding has 1536 columns; layer 0 takes 64"):
        PackedModel(p.rnn_type, p.layers, **{**parts, "emb": p.table, "table": None})
    with pytest.raises(ValueError, match="embedding or a lookup table, not both"):
        PackedModel(p.rnn_type, p.layers, **{**parts, "emb": p.table})
