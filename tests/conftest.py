"""Shared fixtures: word_language_model-style PyTorch models, ways to save them, and the
PyTorch reference that every numeric expectation in the suite is computed from.

Nothing here imports fastlstm, so the torch side can be exercised on its own.
The reference runs PyTorch in float64 on the exact float32 (or fp16/bf16-rounded) weights
that the file holds: the difference to fastlstm then measures fastlstm's error alone.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import nn

torch.set_num_threads(1)  # small models: threads only add noise and startup cost

# --------------------------------------------------------------------------- the model


class RNNModel(nn.Module):
    """Embedding -> LSTM/GRU/RNN -> Linear, as in PyTorch's examples/word_language_model,
    with the three module attributes named as the caller likes."""

    def __init__(
        self,
        rnn_type: str,
        vocab: int,
        emb: int,
        hidden: int,
        num_layers: int = 1,
        *,
        proj: int = 0,
        bias: bool = True,
        head_bias: bool = True,
        tied: bool = False,
        names: tuple[str, str, str] = ("encoder", "rnn", "decoder"),
    ):
        super().__init__()
        self.rnn_type = rnn_type
        self._names = names
        out = proj or hidden
        if rnn_type == "LSTM":
            rnn = nn.LSTM(emb, hidden, num_layers, bias=bias, batch_first=True, proj_size=proj)
        elif rnn_type == "GRU":
            assert not proj
            rnn = nn.GRU(emb, hidden, num_layers, bias=bias, batch_first=True)
        elif rnn_type in ("RNN_TANH", "RNN_RELU"):
            assert not proj
            nonlinearity = rnn_type[4:].lower()
            rnn = nn.RNN(emb, hidden, num_layers, bias=bias, batch_first=True, nonlinearity=nonlinearity)
        else:
            raise ValueError(rnn_type)
        setattr(self, names[0], nn.Embedding(vocab, emb))
        setattr(self, names[1], rnn)
        setattr(self, names[2], nn.Linear(out, vocab, bias=head_bias))
        if tied:
            assert emb == out, "tying needs embedding_dim == output size"
            self.head_module.weight = self.embedding_module.weight

    @property
    def embedding_module(self) -> nn.Embedding:
        return getattr(self, self._names[0])

    @property
    def rnn_module(self) -> nn.Module:
        return getattr(self, self._names[1])

    @property
    def head_module(self) -> nn.Linear:
        return getattr(self, self._names[2])

    def forward(self, ids, state=None):
        out, state = self.rnn_module(self.embedding_module(ids), state)
        return self.head_module(out), state


class Wrapper(nn.Module):
    """Nests a model under one more module, so every key gains a prefix ("lm.encoder.weight")."""

    def __init__(self, name: str, inner: nn.Module):
        super().__init__()
        self._inner_name = name
        setattr(self, name, inner)

    @property
    def inner(self) -> RNNModel:
        return getattr(self, self._inner_name)


def randomize_(model: nn.Module, seed: int, scale: float = 2.0) -> nn.Module:
    """Overwrite every parameter with seeded uniform noise sized so that activations stay in
    the non-saturated range: recurrent/head weights U(-a, a), a = scale / sqrt(fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied weight is listed once
            if p.dim() == 2 and name.endswith("weight") and isinstance(
                _owner(model, name), nn.Embedding
            ):
                bound = 2.0  # embedding rows drive the state: greedy paths visit many tokens
            elif p.dim() == 2:
                bound = scale / p.shape[1] ** 0.5
            else:
                bound = 0.5
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
    return model


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    return model.get_submodule(param_name.rpartition(".")[0])


# --------------------------------------------------------------------------- a test case


@dataclass(frozen=True)
class LMCase:
    """One model configuration, how it is written to disk, and the input it is run on."""

    rnn_type: str
    num_layers: int
    vocab: int
    emb: int
    hidden: int
    proj: int = 0
    bias: bool = True
    head_bias: bool = True
    tied: bool = False
    names: tuple[str, str, str] = ("encoder", "rnn", "decoder")
    prefix: str = ""  # "" or a module name the model is nested under
    save: str = "save_file"  # "save_file", "save_model" or "fastlstm" (save_file + our metadata)
    rnn_type_via: str = "shape"  # "shape", "metadata" (file) or "keyword" (load argument)
    dtype: str = "float32"  # storage dtype of the file
    batch: int = 1
    seq: int = 5
    seed: int = 0
    scale: float = 2.0

    @property
    def out(self) -> int:
        return self.proj or self.hidden

    @property
    def id(self) -> str:
        parts = [
            f"{self.rnn_type}",
            f"L{self.num_layers}",
            f"V{self.vocab}",
            f"E{self.emb}",
            f"H{self.hidden}",
        ]
        if self.proj:
            parts.append(f"P{self.proj}")
        if not self.bias:
            parts.append("nobias")
        if not self.head_bias:
            parts.append("noheadbias")
        if self.tied:
            parts.append("tied")
        parts += [
            "/".join(self.names),
            *([f"pre={self.prefix}"] if self.prefix else []),
            self.save,
            f"via={self.rnn_type_via}",
            self.dtype,
            f"B{self.batch}",
            f"T{self.seq}",
            f"s{self.seed}",
        ]
        return "-".join(parts)

    def check(self) -> "LMCase":
        assert not (self.proj and self.rnn_type != "LSTM")
        assert self.proj < self.hidden
        if self.tied:
            assert self.emb == self.out and self.save in ("save_model", "fastlstm")
        if self.rnn_type.startswith("RNN"):
            assert self.rnn_type_via in ("metadata", "keyword") or self.save == "fastlstm"
        return self


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_model(case: LMCase) -> nn.Module:
    """The PyTorch module for `case`, randomised with its seed (nested if case.prefix)."""
    torch.manual_seed(case.seed)
    model = RNNModel(
        case.rnn_type,
        case.vocab,
        case.emb,
        case.hidden,
        case.num_layers,
        proj=case.proj,
        bias=case.bias,
        head_bias=case.head_bias,
        tied=case.tied,
        names=case.names,
    )
    randomize_(model, case.seed, case.scale)
    model.eval()
    return Wrapper(case.prefix, model) if case.prefix else model


def inner(model: nn.Module) -> RNNModel:
    return model.inner if isinstance(model, Wrapper) else model


def stored_model(model: nn.Module, dtype: str) -> nn.Module:
    """A float64 copy of `model` holding exactly the values a `dtype` file stores."""
    clone = copy.deepcopy(model)
    return clone.to(TORCH_DTYPES[dtype]).double().eval()


def fastlstm_metadata(rnn_type: str) -> dict[str, str]:
    return {"format": "fastlstm", "format_version": "1", "rnn_type": rnn_type}


def save_case(model: nn.Module, case: LMCase, path) -> dict:
    """Write `model` as `case` says; return the keyword arguments for fastlstm.load."""
    path = str(path)
    dtype = TORCH_DTYPES[case.dtype]
    metadata: dict[str, str] = {}
    if case.save == "fastlstm":
        metadata.update(fastlstm_metadata(case.rnn_type))
    elif case.rnn_type_via == "metadata":
        metadata["rnn_type"] = case.rnn_type
    if case.save == "save_file":
        state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(state, path, metadata=metadata or None)
    elif case.save in ("save_model", "fastlstm"):
        save_model(copy.deepcopy(model).to(dtype), path, metadata=metadata or None)
    else:
        raise ValueError(case.save)
    return {"rnn_type": case.rnn_type} if case.rnn_type_via == "keyword" else {}


# --------------------------------------------------------------------------- the reference


def _state_to_torch(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(torch.from_numpy(np.asarray(s, dtype=np.float64)) for s in state)
    return torch.from_numpy(np.asarray(state, dtype=np.float64))


def _state_to_numpy(state):
    if isinstance(state, tuple):
        return tuple(s.detach().numpy().astype(np.float32) for s in state)
    return state.detach().numpy().astype(np.float32)


def torch_forward(ref: nn.Module, ids, state=None):
    """PyTorch's logits (B, T, V) float32 and final state (numpy, PyTorch layout) for `ids`
    (B, T); `ref` is a float64 module from `stored_model`."""
    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    with torch.no_grad():
        logits, new_state = inner(ref)(ids_t, _state_to_torch(state))
    return logits.numpy().astype(np.float32), _state_to_numpy(new_state)


def random_rnn_state(rnn: nn.RNNBase, batch: int | None, seed: int):
    """Initial state for `rnn` (None batch = unbatched), numpy float32, values in (-1, 1)."""
    rng = np.random.default_rng(seed)
    lead = (rnn.num_layers,) if batch is None else (rnn.num_layers, batch)
    out = (rnn.proj_size or rnn.hidden_size) if isinstance(rnn, nn.LSTM) else rnn.hidden_size
    h = rng.uniform(-1, 1, lead + (out,)).astype(np.float32)
    if isinstance(rnn, nn.LSTM):
        c = rng.uniform(-2, 2, lead + (rnn.hidden_size,)).astype(np.float32)
        return (h, c)
    return h


# --------------------------------------------------------------------------- comparisons


def fma_chain(x, w, bias=None, y=None):
    """matmul.h's definition for float32/float16/bfloat16 weights W (given as float32),
    emulated: acc = fma(x[r, kk], W[j, kk], acc) from 0 over kk, then + bias, then y + that.
    float32 products are exact in float64, so one float64 add rounded to float32 is the fma
    (double rounding can differ only on exact float32 ties, which random data does not hit)."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    acc = np.zeros((x.shape[0], w.shape[0]), dtype=np.float32)
    for kk in range(x.shape[1]):
        acc = (np.outer(x64[:, kk], w64[:, kk]) + acc).astype(np.float32)
    if bias is not None:
        acc = acc + bias
    if y is not None:
        acc = y + acc
    return acc


def assert_close(actual, expected, rel: float, what: str = "", floor: float = 1e-3):
    """max |actual - expected| <= rel * max(max |expected|, floor), with shapes equal."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, floor)
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected))) if expected.size else 0.0
    assert diff <= rel * scale, f"{what}: max |diff| {diff:.3g} > {rel:g} * {scale:.3g}"


def assert_state_close(actual, expected, rel: float, what: str = "state"):
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), (
            f"{what}: expected a tuple (h, c), got {type(actual).__name__}"
        )
        for name, a, e in zip("hc", actual, expected):
            assert_close(a, e, rel, f"{what}.{name}", floor=1.0)
    else:
        assert not isinstance(actual, tuple), f"{what}: expected one array, got a tuple"
        assert_close(actual, expected, rel, what, floor=1.0)


def pytest_generate_tests(metafunc):
    """A test that takes `vector_path` runs once per vector kernel path this CPU has
    (fastlstm.isa: avx2, avx512), with that path selected; on a CPU without one, once on
    the portable path."""
    if "vector_path" in metafunc.fixturenames:
        from fastlstm import isa

        paths = [p for p in isa.available() if p != "portable"] or ["portable"]
        metafunc.parametrize("vector_path", paths, indirect=True)


@pytest.fixture
def vector_path(request):
    from fastlstm import isa

    before = isa.kernel_path()
    isa._select(request.param)
    yield request.param
    isa._select(before)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
