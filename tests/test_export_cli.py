"""fastlstm.export and the command line: what the file holds, what is refused, and that it loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import fastlstm
from fastlstm.cli import main
from fastlstm.export import export
from fastlstm.tokenizers import ByteTokenizer, CharTokenizer, WordTokenizer

V, E, H = 11, 8, 8  # E == H so that the head can be tied to the embedding


class RNNModel(nn.Module):
    """PyTorch's examples/word_language_model RNNModel, as it is there (minus its forward's
    reshapes): encoder, rnn, decoder, dropout, optional weight tying."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight

    def forward(self, ids, hidden=None):  # ids (seq, batch), batch_first=False as upstream
        output, hidden = self.rnn(self.drop(self.encoder(ids)), hidden)
        return self.decoder(self.drop(output)), hidden


def make_model(rnn_type="LSTM", tied=False, layers=2, seed=0):
    torch.manual_seed(seed)
    return RNNModel(rnn_type, V, E, H, layers, tie_weights=tied).eval()


def file_contents(path):
    """(tensor names, metadata) of a safetensors file, read without fastlstm."""
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys()), f.metadata()


def torch_logits(module, ids):
    with torch.no_grad():
        logits, _ = module(torch.tensor(ids).T)  # (seq, batch, V)
    return logits.transpose(0, 1).numpy()


# --------------------------------------------------------------------------- export a module


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_export_word_language_model(tmp_path, rnn_type, tied):
    module = make_model(rnn_type, tied)
    path = tmp_path / "model.safetensors"
    export(module, path)

    keys, metadata = file_contents(path)
    expected = set(module.state_dict())
    if tied:  # stored once, the way safetensors.torch.save_model records it
        expected.discard("decoder.weight")
        assert metadata["decoder.weight"] == "encoder.weight"
    else:
        assert "decoder.weight" not in metadata
    assert keys == expected
    assert metadata["format"] == "fastlstm"
    assert metadata["format_version"] == "1"
    assert metadata["rnn_type"] == rnn_type
    assert "tokenizer" not in metadata

    model = fastlstm.load(path)
    c = model.config
    assert (c.rnn_type, c.num_layers, c.vocab_size, c.embedding_dim, c.hidden_size, c.tied) == (
        rnn_type, 2, V, E, H, tied)
    ids = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    logits, _ = model.forward(ids)
    np.testing.assert_allclose(logits, torch_logits(module, ids), rtol=1e-4, atol=1e-5)


def test_export_lstm_with_projection(tmp_path):
    module = nn.Sequential()  # any module layout works: the roles come from the module types
    module.add_module("emb", nn.Embedding(V, E))
    module.add_module("lstm", nn.LSTM(E, 16, 1, proj_size=6, batch_first=True))
    module.add_module("head", nn.Linear(6, V, bias=False))
    export(module, tmp_path / "m.safetensors")
    c = fastlstm.load(tmp_path / "m.safetensors").config
    assert (c.proj_size, c.head_bias) == (6, False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_export_keeps_dtype(tmp_path, dtype):
    module = make_model(tied=True).to(dtype)
    path = tmp_path / "m.safetensors"
    export(module, path)
    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    # Matrices keep the module's precision; biases are written as float32 (exactly).
    assert {t.dtype for t in stored.values() if t.ndim == 2} == {dtype}
    assert {t.dtype for t in stored.values() if t.ndim == 1} == {torch.float32}
    state = module.state_dict()
    for name, tensor in stored.items():
        assert torch.equal(tensor, state[name].to(tensor.dtype)), name
    assert fastlstm.load(path).dtype == str(dtype).removeprefix("torch.")


def test_export_with_tokenizer(tmp_path):
    chars = list("abcdefghij\n")
    path = tmp_path / "m.safetensors"
    export(make_model(), path, vocab=chars)
    _, metadata = file_contents(path)
    assert json.loads(metadata["tokenizer"]) == {"type": "char", "vocab": chars, "unk": None}
    assert fastlstm.load(path).tokenizer == CharTokenizer(chars)

    words = ["<eos>", "<unk>"] + [f"w{i}" for i in range(V - 2)]
    export(make_model(), path, vocab=words)
    assert fastlstm.load(path).tokenizer == WordTokenizer(words)
    export(make_model(), path, tokenizer=WordTokenizer(words, unk=None))
    assert fastlstm.load(path).tokenizer == WordTokenizer(words, unk=None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocab=list("abc")), "the tokenizer has 3 tokens but the model's vocab_size is 11"),
        (dict(tokenizer="byte"), "the tokenizer has 256 tokens"),
        (dict(vocab=list("abcdefghijk"), tokenizer=CharTokenizer(list("abcdefghijk"))), "not with a Tokenizer"),
        (dict(tokenizer="bpe", vocab=list("abcdefghijk")), "unknown tokenizer kind"),
        (dict(rnn_type="GRU"), "rnn_type='GRU' contradicts the module's 'rnn', which is LSTM"),
        (dict(rnn_type="LSTMX"), "unknown rnn_type"),
    ],
)
def test_export_refuses_bad_arguments(tmp_path, kwargs, message):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match=message):
        export(make_model(), path, **kwargs)
    assert not path.exists()


def test_export_refuses_modules_that_are_not_one_language_model(tmp_path):
    path = tmp_path / "m.safetensors"
    bidirectional = make_model()
    bidirectional.rnn = nn.LSTM(E, H, 1, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        export(bidirectional, path)

    two_heads = make_model()
    two_heads.extra = nn.Linear(H, H)
    with pytest.raises(ValueError, match=r"exactly one nn.Linear in the module, found 2: 'decoder', 'extra'"):
        export(two_heads, path)

    no_rnn = nn.Sequential(nn.Embedding(V, E), nn.Linear(E, V))
    with pytest.raises(ValueError, match="exactly one nn.LSTM, nn.GRU or nn.RNN in the module, found 0: none"):
        export(no_rnn, path)

    extra_params = make_model()
    extra_params.norm = nn.LayerNorm(H)
    with pytest.raises(ValueError, match="parameters outside .*: norm.weight, norm.bias"):
        export(extra_params, path)

    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        export(make_model().double(), path)
    with pytest.raises(ValueError, match="expected an nn.Module or a state_dict"):
        export([1, 2], path)
    assert not path.exists()


# --------------------------------------------------------------------------- export a state_dict


def test_export_state_dict_with_shared_storage_stores_head_once(tmp_path):
    module = make_model(tied=True)
    path = tmp_path / "m.safetensors"
    export(module.state_dict(), path)
    keys, metadata = file_contents(path)
    assert "decoder.weight" not in keys and metadata["decoder.weight"] == "encoder.weight"
    assert metadata["rnn_type"] == "LSTM"  # inferred from the shapes


def test_export_numpy_state_dict_with_equal_values_stores_head_once(tmp_path):
    state = {k: v.numpy().copy() for k, v in make_model("GRU", tied=True).state_dict().items()}
    assert state["decoder.weight"] is not state["encoder.weight"]
    path = tmp_path / "m.safetensors"
    export(state, path)
    keys, metadata = file_contents(path)
    assert keys == set(state) - {"decoder.weight"}
    assert metadata["decoder.weight"] == "encoder.weight" and metadata["rnn_type"] == "GRU"
    assert fastlstm.load(path).config.tied


def test_export_state_dict_of_plain_rnn_needs_rnn_type(tmp_path):
    state = make_model("RNN_RELU").state_dict()
    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="rnn_type"):
        export(state, path)
    assert not path.exists()
    export(state, path, rnn_type="RNN_RELU")
    assert file_contents(path)[1]["rnn_type"] == "RNN_RELU"
    assert fastlstm.load(path).config.rnn_type == "RNN_RELU"


def test_export_state_dict_that_is_not_a_model(tmp_path):
    state = make_model().state_dict()
    del state["rnn.weight_hh_l1"]
    with pytest.raises(ValueError, match="missing tensor 'rnn.weight_hh_l1'"):
        export(state, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"state_dict\['x'\] is a int"):
        export({**make_model().state_dict(), "x": 3}, tmp_path / "m.safetensors")


# --------------------------------------------------------------------------- the command line


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "wrap",
    [lambda sd: sd, lambda sd: {"state_dict": sd}, lambda sd: {"model_state_dict": sd, "epoch": 3},
     lambda sd: {"model": sd, "optimizer": {"lr": torch.tensor(0.1)}}],
    ids=["state_dict", "under_state_dict", "under_model_state_dict", "under_model"],
)
def test_cli_export(tmp_path, capsys, wrap):
    module = make_model(tied=True)
    checkpoint = tmp_path / "model.pt"
    torch.save(wrap(module.state_dict()), checkpoint)
    out_path = tmp_path / "model.safetensors"
    code, out, err = run(["export", checkpoint, "-o", out_path], capsys)
    assert (code, err) == (0, "")
    assert str(out_path) in out
    keys, metadata = file_contents(out_path)
    assert keys == set(module.state_dict()) - {"decoder.weight"}
    assert metadata["rnn_type"] == "LSTM"


def test_cli_export_vocab_files_and_rnn_type(tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    torch.save(make_model("RNN_TANH").state_dict(), checkpoint)
    out_path = tmp_path / "model.safetensors"

    words = ["<eos>", "<unk>"] + [f"w{i}" for i in range(V - 2)]
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    code, _, err = run(["export", checkpoint, "-o", out_path, "--vocab", tmp_path / "words.txt",
                        "--rnn-type", "RNN_TANH"], capsys)
    assert (code, err) == (0, "")
    model = fastlstm.load(out_path)
    assert model.config.rnn_type == "RNN_TANH"
    assert model.tokenizer == WordTokenizer(words)

    chars = list("abcdefghi \n")
    (tmp_path / "chars.json").write_text(json.dumps(chars), encoding="utf-8")
    code, _, err = run(["export", checkpoint, "-o", out_path, "--vocab", tmp_path / "chars.json",
                        "--rnn-type", "RNN_TANH", "--tokenizer", "char"], capsys)
    assert (code, err) == (0, "")
    assert fastlstm.load(out_path).tokenizer == CharTokenizer(chars)


def test_cli_export_byte_tokenizer(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    torch.save(RNNModel("GRU", 256, E, H, 1, dropout=0.0).state_dict(), checkpoint)
    out_path = tmp_path / "model.safetensors"
    assert run(["export", checkpoint, "-o", out_path, "--tokenizer", "byte"], capsys)[0] == 0
    assert fastlstm.load(out_path).tokenizer == ByteTokenizer()


def test_cli_refuses_pickled_module(tmp_path, capsys):
    checkpoint = tmp_path / "whole_model.pt"
    torch.save(make_model(), checkpoint)  # the whole nn.Module, pickled
    out_path = tmp_path / "model.safetensors"
    code, out, err = run(["export", checkpoint, "-o", out_path], capsys)
    assert code == 2 and out == ""
    assert err.startswith("fastlstm: error: ")
    assert "holds a pickled" in err and "RNNModel" in err
    assert "torch.save(model.state_dict(), path)" in err
    assert "Traceback" not in err
    assert not out_path.exists()


@pytest.mark.parametrize(
    "make, args, message",
    [
        (None, [], "No such file"),
        (lambda p: p.write_bytes(b"not a checkpoint at all"), [], "cannot read"),
        (lambda p: torch.save({"epoch": 3, "lr": 0.1}, p), [], "holds no state_dict.*'epoch', 'lr'"),
        (lambda p: torch.save(make_model("RNN_TANH").state_dict(), p), [], "rnn_type"),
        (lambda p: torch.save(make_model().state_dict(), p), ["--vocab", "MISSING"], "No such file"),
    ],
    ids=["missing", "garbage", "no_state_dict", "plain_rnn", "missing_vocab"],
)
def test_cli_export_errors(tmp_path, capsys, make, args, message):
    checkpoint = tmp_path / "model.pt"
    if make is not None:
        make(checkpoint)
    args = [str(tmp_path / a) if a == "MISSING" else a for a in args]
    code, out, err = run(["export", checkpoint, "-o", tmp_path / "m.safetensors", *args], capsys)
    assert code == 2
    assert err.startswith("fastlstm: error: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_cli_info(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    export(make_model("GRU", tied=True), path, vocab=list("abcdefghij\n"))
    code, out, err = run(["info", path], capsys)
    assert (code, err) == (0, "")
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    model = fastlstm.load(path)
    c = model.config
    assert rows["rnn_type"] == "GRU"
    assert rows["num_layers"] == "2"
    assert rows["vocab_size"] == str(V)
    assert rows["tied"] == "yes"
    assert rows["parameters"] == f"{c.num_parameters:,}"
    assert rows["dtype"] == "float32"
    assert rows["tokenizer"] == f"CharTokenizer(vocab_size={V})"
    assert f"({model.nbytes:,} bytes in memory)" in rows["weight bytes"]
    assert rows["kernel path"].startswith(f"{fastlstm.isa.kernel_path()} (this CPU runs: "
                                          f"{', '.join(fastlstm.isa.available())};")
    assert rows["threads"].split()[0] == str(model.num_threads)
    # Values start in one column: the table is aligned.
    assert len({line.index(value) for line, value in zip(out.splitlines(), rows.values())}) == 1


def test_cli_info_threads(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    export(make_model("GRU"), path, vocab=list("abcdefghij\n"))
    for threads in ("1", "2"):
        code, out, _ = run(["info", path, "--threads", threads], capsys)
        assert code == 0 and re.search(rf"^threads\s+{threads}\b", out, re.M), out


def test_cli_info_errors(tmp_path, capsys):
    code, _, err = run(["info", tmp_path / "missing.safetensors"], capsys)
    assert code == 2 and err.startswith("fastlstm: error: ")
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    code, _, err = run(["info", tmp_path / "bad.safetensors"], capsys)
    assert code == 2 and "not a safetensors file" in err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "export" in out and "info" in out
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "weights_only=True" in out


def test_python_dash_m_and_no_torch_import(tmp_path):
    # The fastlstm being tested, wherever it is imported from (source tree or installed).
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(fastlstm.__file__))}
    # `import fastlstm` (and its export/cli modules) must not import torch.
    code = "import sys, fastlstm, fastlstm.cli, fastlstm.export, fastlstm.tokenizers; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=env, cwd=tmp_path)
    assert result.stdout.strip() == "False"
    result = subprocess.run([sys.executable, "-m", "fastlstm", "--help"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0 and "export" in result.stdout


def test_cli_export_without_torch_says_how_to_install(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(fastlstm.__file__))}
    code = ("import sys; sys.modules['torch'] = None  # as if torch were not installed\n"
            "from fastlstm.cli import main\n"
            "sys.exit(main(['export', 'model.pt', '-o', 'model.safetensors']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("fastlstm: error: ")
    assert "pip install fastlstm[torch]" in result.stderr
