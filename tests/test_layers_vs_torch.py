"""fastlstm.LSTM / GRU / RNN (recurrent layers alone) against torch.nn.LSTM / GRU / RNN.

Built both from the torch module and from a dict of PyTorch-named arrays; run with and
without an initial state, batched (B, T, I) and unbatched (T, I); compared with PyTorch run
in float64 on the same float32 weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fastlstm
from conftest import assert_close, assert_state_close, random_rnn_state

REL = 1e-5

# (kind, input_size, hidden_size, num_layers, proj_size, bias)
# kind: "LSTM", "GRU", "RNN_TANH", "RNN_RELU"
SPECS = [
    ("LSTM", 3, 5, 1, 0, True),
    ("LSTM", 4, 7, 2, 0, False),
    ("LSTM", 6, 8, 3, 3, True),
    ("LSTM", 5, 9, 1, 4, False),
    ("LSTM", 1, 1, 2, 0, True),
    ("GRU", 3, 5, 1, 0, True),
    ("GRU", 7, 6, 2, 0, False),
    ("GRU", 2, 11, 3, 0, True),
    ("RNN_TANH", 4, 6, 1, 0, True),
    ("RNN_TANH", 5, 3, 3, 0, False),
    ("RNN_RELU", 4, 6, 2, 0, True),
    ("RNN_RELU", 3, 8, 1, 0, False),
]


def spec_id(spec) -> str:
    kind, i, h, layers, proj, bias = spec
    return f"{kind}-I{i}-H{h}-L{layers}" + (f"-P{proj}" if proj else "") + ("" if bias else "-nobias")


def make_torch_layer(spec, seed: int) -> nn.RNNBase:
    kind, input_size, hidden, layers, proj, bias = spec
    torch.manual_seed(seed)
    if kind == "LSTM":
        module = nn.LSTM(input_size, hidden, layers, bias=bias, batch_first=True, proj_size=proj)
    elif kind == "GRU":
        module = nn.GRU(input_size, hidden, layers, bias=bias, batch_first=True)
    else:
        module = nn.RNN(input_size, hidden, layers, bias=bias, batch_first=True,
                        nonlinearity=kind[4:].lower())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # wider than torch's default init so the gates are not all near 0.5
        for name, p in module.named_parameters():
            bound = (1.2 if kind == "RNN_RELU" else 1.8) / (p.shape[1] ** 0.5 if p.dim() == 2 else 2.0)
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
    return module.eval()


def fast_layer(module: nn.RNNBase, kind: str, construct: str):
    cls = {"LSTM": fastlstm.LSTM, "GRU": fastlstm.GRU}.get(kind, fastlstm.RNN)
    if construct == "from_torch":
        return cls.from_torch(module)
    weights = {name: p.detach().numpy().copy() for name, p in module.named_parameters()}
    if kind.startswith("RNN"):
        return cls(weights, nonlinearity=kind[4:].lower())
    return cls(weights)


def torch_run(module: nn.RNNBase, x: np.ndarray, state=None):
    """PyTorch's output and final state (float64 computation, float32 numpy results)."""
    ref = copy.deepcopy(module).double()
    xt = torch.from_numpy(x.astype(np.float64))
    if isinstance(state, tuple):
        st_ = tuple(torch.from_numpy(s.astype(np.float64)) for s in state)
    elif state is not None:
        st_ = torch.from_numpy(state.astype(np.float64))
    else:
        st_ = None
    with torch.no_grad():
        out, new_state = ref(xt, st_)
    if isinstance(new_state, tuple):
        new_state = tuple(s.numpy().astype(np.float32) for s in new_state)
    else:
        new_state = new_state.numpy().astype(np.float32)
    return out.numpy().astype(np.float32), new_state


def check_layer(module, layer, x, state=None, what=""):
    expected_out, expected_state = torch_run(module, x, state)
    out, new_state = layer(x, state) if state is not None else layer(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32, f"{what}: output {type(out)}"
    assert_close(out, expected_out, REL, f"{what} output", floor=1.0)
    assert_state_close(new_state, expected_state, REL, f"{what} state")
    return out, new_state


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("construct", ["from_torch", "from_arrays"])
@pytest.mark.parametrize("spec", SPECS, ids=[spec_id(s) for s in SPECS])
def test_layer_matches_torch(spec, construct, with_state, batched):
    seed = SPECS.index(spec) * 10 + 1
    module = make_torch_layer(spec, seed)
    layer = fast_layer(module, spec[0], construct)
    rng = np.random.default_rng(seed)
    batch, seq = (3, 6) if batched else (None, 6)
    shape = (batch, seq, spec[1]) if batched else (seq, spec[1])
    x = rng.uniform(-1.5, 1.5, shape).astype(np.float32)
    state = random_rnn_state(module, batch, seed + 1) if with_state else None
    out, _ = check_layer(module, layer, x, state, spec_id(spec))
    out_size = spec[4] or spec[2]
    assert out.shape == ((batch, seq, out_size) if batched else (seq, out_size))


@pytest.mark.parametrize("spec", [SPECS[2], SPECS[6], SPECS[9], SPECS[10]], ids=spec_id)
def test_layer_two_pieces_equal_whole(spec):
    module = make_torch_layer(spec, 99)
    layer = fast_layer(module, spec[0], "from_torch")
    x = np.random.default_rng(5).uniform(-1, 1, (2, 9, spec[1])).astype(np.float32)
    whole, whole_state = layer(x)
    first, state = layer(x[:, :4])
    second, final_state = layer(x[:, 4:], state)
    assert_close(np.concatenate([first, second], axis=1), whole, REL, "pieces vs whole", floor=1.0)
    assert_state_close(final_state, whole_state, REL, "final state, pieces vs whole")
    check_layer(module, layer, x, what="whole")


@pytest.mark.parametrize("spec", [SPECS[1], SPECS[5], SPECS[8]], ids=spec_id)
def test_layer_seq_len_one_and_batch_one(spec):
    module = make_torch_layer(spec, 7)
    layer = fast_layer(module, spec[0], "from_arrays")
    rng = np.random.default_rng(8)
    for shape in [(1, 1, spec[1]), (1, 5, spec[1]), (4, 1, spec[1]), (1, spec[1])]:
        check_layer(module, layer, rng.uniform(-1, 1, shape).astype(np.float32), what=str(shape))


def test_rnn_nonlinearity_from_arrays_is_obeyed():
    spec = ("RNN_TANH", 4, 6, 2, 0, True)
    tanh_module = make_torch_layer(spec, 3)
    relu_module = make_torch_layer(("RNN_RELU",) + spec[1:], 3)
    relu_module.load_state_dict(tanh_module.state_dict())
    weights = {k: v.numpy().copy() for k, v in tanh_module.state_dict().items()}
    x = np.random.default_rng(0).uniform(-1, 1, (2, 5, 4)).astype(np.float32)
    check_layer(tanh_module, fastlstm.RNN(weights, nonlinearity="tanh"), x, what="tanh")
    check_layer(relu_module, fastlstm.RNN(weights, nonlinearity="relu"), x, what="relu")
    check_layer(relu_module, fastlstm.RNN.from_torch(relu_module), x, what="relu from_torch")


def test_num_threads_keyword():
    spec = ("LSTM", 16, 33, 2, 0, True)
    module = make_torch_layer(spec, 4)
    weights = {k: v.numpy().copy() for k, v in module.state_dict().items()}
    x = np.random.default_rng(1).uniform(-1, 1, (8, 5, 16)).astype(np.float32)
    for threads in (1, 2):
        check_layer(module, fastlstm.LSTM(weights, num_threads=threads), x, what=f"{threads} threads")


def test_blas_on_cpus_without_vector_kernels(monkeypatch):
    monkeypatch.setattr(fastlstm.isa, "vector_kernels", lambda: False)
    for spec in [("LSTM", 16, 33, 2, 9, True), ("GRU", 16, 33, 2, 0, True)]:
        module = make_torch_layer(spec, 4)
        layer = fastlstm.LSTM.from_torch(module) if spec[0] == "LSTM" else fastlstm.GRU.from_torch(module)
        assert layer._packed.row_major  # BLAS reads the row-major copies
        x = np.random.default_rng(1).uniform(-1, 1, (8, 5, 16)).astype(np.float32)
        check_layer(module, layer, x, what=f"{spec[0]} with BLAS")


def test_bidirectional_module_is_refused():
    module = nn.LSTM(3, 4, 1, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match=r"(?i)bidirectional|reverse"):
        fastlstm.LSTM.from_torch(module)
    weights = {k: v.detach().numpy() for k, v in module.named_parameters()}
    with pytest.raises(ValueError, match=r"(?i)bidirectional|reverse|unexpected"):
        fastlstm.LSTM(weights)


def test_missing_array_is_refused():
    module = make_torch_layer(("GRU", 3, 4, 2, 0, True), 5)
    weights = {k: v.numpy() for k, v in module.state_dict().items() if k != "weight_hh_l1"}
    with pytest.raises(ValueError, match=r"(?i)missing|weight_hh_l1|not found"):
        fastlstm.GRU(weights)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]),
    input_size=st.integers(1, 9),
    hidden=st.integers(1, 12),
    layers=st.integers(1, 3),
    proj_fraction=st.floats(0, 0.99),
    bias=st.booleans(),
    batch=st.integers(1, 4),
    seq=st.integers(1, 7),
)
def test_layer_random_shapes(kind, input_size, hidden, layers, proj_fraction, bias, batch, seq):
    proj = int(proj_fraction * hidden) if kind == "LSTM" else 0
    spec = (kind, input_size, hidden, layers, proj, bias)
    module = make_torch_layer(spec, 11)
    layer = fast_layer(module, kind, "from_torch")
    x = np.random.default_rng(batch * 100 + seq).uniform(-1, 1, (batch, seq, input_size)).astype(np.float32)
    check_layer(module, layer, x, random_rnn_state(module, batch, 12), spec_id(spec))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_module_batch_first_false_still_runs_batch_first(kind):
    """fastlstm layers always take (batch, steps, features): a module built with
    batch_first=False gives the same weights, and torch's answer is the transposed one."""
    spec = (kind, 4, 5, 2, 0, True)
    module = make_torch_layer(spec, 21)
    seq_first = copy.deepcopy(module)
    seq_first.batch_first = False
    layer = fast_layer(seq_first, kind, "from_torch")
    x = np.random.default_rng(2).uniform(-1, 1, (3, 6, 4)).astype(np.float32)
    check_layer(module, layer, x, what="batch_first=False module")


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[1], SPECS[7], SPECS[9]], ids=spec_id)
def test_sequences_longer_than_one_chunk(spec, monkeypatch):
    """_rnn.forward runs a batch row's steps in chunks of ROWS_PER_CHUNK // rows steps (256
    at batch 1, 85 at batch 3), swapping its two activation buffers after every layer: with
    an odd number of layers, layer 0 reads its input from the other buffer every other chunk.
    1, 2 and 3 layers, 600 steps, batch 1 (on 2 threads: a team) and 3, 1 and 2 threads."""
    monkeypatch.setattr(fastlstm.threads, "TEAM_MIN_WEIGHTS", 0)
    module = make_torch_layer(spec, 13)
    weights = {name: p.detach().numpy().copy() for name, p in module.named_parameters()}
    cls = {"LSTM": fastlstm.LSTM, "GRU": fastlstm.GRU}.get(spec[0], fastlstm.RNN)
    kw = {"nonlinearity": spec[0][4:].lower()} if spec[0].startswith("RNN") else {}
    rng = np.random.default_rng(14)
    for batch in (1, 3):
        x = rng.uniform(-1, 1, (batch, 600, spec[1])).astype(np.float32)
        for threads in (1, 2):
            layer = cls(weights, num_threads=threads, **kw)
            check_layer(module, layer, x, what=f"{spec_id(spec)} B{batch} {threads} threads")
