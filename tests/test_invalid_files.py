"""fastlstm.load refuses broken or unsupported files with a ValueError that says what is wrong.

Each case starts from a valid state_dict (2-layer LSTM, V=11, E=5, H=6, so E != H and no
role is ambiguous) and breaks one thing. The `match=` patterns are deliberately loose.
"""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import fastlstm
from conftest import LMCase, assert_close, build_model, fastlstm_metadata, stored_model, torch_forward

V, E, H = 11, 5, 6
MISSING = r"(?i)missing|not found|find|absent|\bno\b|without|expected|requires|lacks|need"
FILE_ERROR = r"(?i)safetensors|header|truncat|corrupt|invalid|incomplete|length|size|parse|read|bytes"


def base_state(rnn_type: str = "LSTM", num_layers: int = 2, **kwargs) -> dict[str, torch.Tensor]:
    case = LMCase(rnn_type, num_layers, V, kwargs.pop("emb", E), kwargs.pop("hidden", H),
                  rnn_type_via="metadata", seed=77, **kwargs)
    return {k: v.detach().clone().contiguous() for k, v in build_model(case).state_dict().items()}


def write(tmp_path, tensors, metadata=None, name="model.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def test_base_file_is_valid(tmp_path):
    """The starting point loads: every failure below is caused by the one change it makes."""
    model = fastlstm.load(write(tmp_path, base_state()))
    assert (model.config.num_layers, model.config.hidden_size) == (2, H)


# --------------------------------------------------------------------------- not a valid file


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastlstm.load(str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("cut", ["half", "most", "header-length-only", "4-bytes"])
def test_truncated_file(tmp_path, cut):
    path = write(tmp_path, base_state())
    data = open(path, "rb").read()
    keep = {"half": len(data) // 2, "most": len(data) - 100, "header-length-only": 8, "4-bytes": 4}[cut]
    open(path, "wb").write(data[:keep])
    with pytest.raises(ValueError, match=FILE_ERROR):
        fastlstm.load(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=FILE_ERROR):
        fastlstm.load(str(path))


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=FILE_ERROR):
        fastlstm.load(str(path))


def test_header_length_larger_than_file(tmp_path):
    path = tmp_path / "long.safetensors"
    header = b'{"__metadata__":{"rnn_type":"LSTM"}}'
    path.write_bytes(struct.pack("<Q", 10_000) + header)
    with pytest.raises(ValueError, match=FILE_ERROR):
        fastlstm.load(str(path))


def test_header_not_json(tmp_path):
    path = tmp_path / "notjson.safetensors"
    header = b"this is not json at all!"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ValueError, match=FILE_ERROR + r"|json"):
        fastlstm.load(str(path))


def test_data_offsets_beyond_file(tmp_path):
    """A header that promises more tensor bytes than the file holds."""
    path = write(tmp_path, base_state())
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-16])
    with pytest.raises(ValueError, match=FILE_ERROR):
        fastlstm.load(path)


def test_empty_safetensors(tmp_path):
    with pytest.raises(ValueError, match=r"(?i)missing|not found|no |empty|embedding|weight"):
        fastlstm.load(write(tmp_path, {}))


# --------------------------------------------------------------------------- wrong shapes


def _reshaped(state, key, shape):
    state = dict(state)
    state[key] = torch.randn(shape)
    return state


@pytest.mark.parametrize(
    "key, shape, fragment",
    [
        ("rnn.weight_hh_l1", (4 * H, H + 1), r"weight_hh_l1|shape"),
        ("rnn.weight_hh_l0", (4 * H + 4, H), r"weight_hh_l0|shape|gate"),
        ("rnn.weight_ih_l0", (4 * H, E + 2), r"weight_ih_l0|shape|embedding"),
        ("rnn.weight_ih_l1", (4 * H, H - 1), r"weight_ih_l1|shape"),
        ("rnn.weight_ih_l1", (3 * H, H), r"weight_ih_l1|shape|gate"),
        ("rnn.bias_ih_l0", (4 * H + 1,), r"bias_ih_l0|shape"),
        ("rnn.bias_hh_l1", (4 * H, 1), r"bias_hh_l1|shape"),
        ("decoder.weight", (V, H + 3), r"decoder|head|shape"),
        ("decoder.bias", (V + 2,), r"decoder|head|bias|shape|vocab"),
    ],
)
def test_wrong_shape(tmp_path, key, shape, fragment):
    state = _reshaped(base_state(), key, shape)
    with pytest.raises(ValueError, match=r"(?i)" + fragment):
        fastlstm.load(write(tmp_path, state))


def test_head_rows_differ_from_embedding_rows(tmp_path):
    state = base_state()
    state["decoder.weight"] = torch.randn(V + 1, H)
    state["decoder.bias"] = torch.randn(V + 1)
    with pytest.raises(ValueError, match=r"(?i)vocab|rows|shape|embedding|head|decoder"):
        fastlstm.load(write(tmp_path, state))


def test_projection_wrong_shape(tmp_path):
    state = base_state(proj=3)
    state["rnn.weight_hr_l1"] = torch.randn(3, H + 1)
    with pytest.raises(ValueError, match=r"(?i)weight_hr_l1|shape|proj"):
        fastlstm.load(write(tmp_path, state))


def test_projection_on_one_layer_only(tmp_path):
    state = base_state(proj=3)
    del state["rnn.weight_hr_l1"]
    with pytest.raises(ValueError, match=r"(?i)weight_hr_l1|missing|not found|proj|shape"):
        fastlstm.load(write(tmp_path, state))


# --------------------------------------------------------------------------- missing tensors


@pytest.mark.parametrize(
    "drop, fragment",
    [
        (["rnn.bias_ih_l1"], r"bias_ih_l1|bias"),
        (["rnn.bias_ih_l1", "rnn.bias_hh_l1"], r"bias|l1|layer 1"),
        (["rnn.weight_hh_l0"], r"weight_hh_l0"),
        (["rnn.weight_ih_l1"], r"weight_ih_l1|layer"),
        (["encoder.weight"], r"embedding|encoder"),
        (["decoder.weight"], r"head|decoder|output"),
        (["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
          "rnn.weight_ih_l1", "rnn.weight_hh_l1", "rnn.bias_ih_l1", "rnn.bias_hh_l1"],
         r"recurrent|rnn|weight_ih|layer"),
    ],
    ids=["bias_ih_l1", "layer1-biases", "weight_hh_l0", "weight_ih_l1", "embedding", "head", "all-rnn"],
)
def test_missing_tensor(tmp_path, drop, fragment):
    state = base_state()
    for key in drop:
        del state[key]
    with pytest.raises(ValueError) as err:
        fastlstm.load(write(tmp_path, state))
    assert re.search(MISSING, str(err.value)), str(err.value)
    assert re.search(r"(?i)" + fragment, str(err.value)), str(err.value)


def test_missing_middle_layer(tmp_path):
    state = base_state(num_layers=3)
    for key in [k for k in state if k.endswith("_l1")]:
        del state[key]
    with pytest.raises(ValueError, match=r"(?i)layer|_l1|missing"):
        fastlstm.load(write(tmp_path, state))


# --------------------------------------------------------------------------- rnn_type


@pytest.mark.parametrize("value", ["TRANSFORMER", "lstm2", ""])
def test_unknown_metadata_rnn_type(tmp_path, value):
    with pytest.raises(ValueError, match=r"(?i)rnn_type"):
        fastlstm.load(write(tmp_path, base_state(), {"rnn_type": value}))


def test_unknown_keyword_rnn_type(tmp_path):
    with pytest.raises(ValueError, match=r"(?i)rnn_type"):
        fastlstm.load(write(tmp_path, base_state()), rnn_type="MAMBA")


@pytest.mark.parametrize("claimed", ["GRU", "RNN_TANH", "RNN_RELU"])
def test_metadata_rnn_type_contradicts_shapes(tmp_path, claimed):
    with pytest.raises(ValueError, match=r"(?i)rnn_type|gate|shape|" + claimed):
        fastlstm.load(write(tmp_path, base_state("LSTM"), {"rnn_type": claimed}))


@pytest.mark.parametrize("claimed", ["LSTM", "RNN_TANH"])
def test_keyword_rnn_type_contradicts_shapes(tmp_path, claimed):
    with pytest.raises(ValueError, match=r"(?i)rnn_type|gate|shape|" + claimed):
        fastlstm.load(write(tmp_path, base_state("GRU")), rnn_type=claimed)


def test_plain_rnn_needs_rnn_type(tmp_path):
    with pytest.raises(ValueError, match=r"(?i)rnn_type"):
        fastlstm.load(write(tmp_path, base_state("RNN_TANH")))


def test_fastlstm_file_with_unknown_format_version(tmp_path):
    metadata = fastlstm_metadata("LSTM") | {"format_version": "99"}
    with pytest.raises(ValueError, match=r"(?i)version"):
        fastlstm.load(write(tmp_path, base_state(), metadata))


# --------------------------------------------------------------------------- unexpected content


def test_bidirectional_weights(tmp_path):
    rnn = nn.LSTM(E, H, 2, bidirectional=True)
    state = {k: v for k, v in base_state().items() if not k.startswith("rnn.")}
    state.update({f"rnn.{k}": v.detach().clone() for k, v in rnn.state_dict().items()})
    state["decoder.weight"] = torch.randn(V, 2 * H)
    with pytest.raises(ValueError, match=r"(?i)bidirectional|reverse"):
        fastlstm.load(write(tmp_path, state))


@pytest.mark.parametrize(
    "key, shape",
    [("extra.weight", (3, 4)), ("norm.running_mean", (H,)), ("step", ())],
)
def test_extra_unexplained_tensor(tmp_path, key, shape):
    state = base_state()
    state[key] = torch.randn(shape)
    with pytest.raises(ValueError, match=r"(?i)unexpected|extra|unknown|unexplained|unused|" + key):
        fastlstm.load(write(tmp_path, state))


def test_two_recurrent_stacks(tmp_path):
    state = base_state()
    state.update({k.replace("rnn.", "rnn2."): v.clone() for k, v in state.items() if k.startswith("rnn.")})
    with pytest.raises(ValueError, match=r"(?i)ambiguous|multiple|two|prefix|unexpected|rnn2"):
        fastlstm.load(write(tmp_path, state))


def test_two_candidate_embeddings(tmp_path):
    state = base_state()
    state["other_embedding.weight"] = torch.randn(V, E)
    with pytest.raises(ValueError, match=r"(?i)ambiguous|multiple|two|unexpected|embedding"):
        fastlstm.load(write(tmp_path, state))


def test_ambiguous_embedding_and_head(tmp_path):
    """Untied, E == H and no head bias: two [V, H] matrices that shapes cannot tell apart."""
    state = base_state(emb=H, head_bias=False)
    renamed = {"a.weight": state.pop("encoder.weight"), "b.weight": state.pop("decoder.weight")}
    state.update(renamed)
    with pytest.raises(ValueError, match=r"(?i)ambiguous|embedding|head"):
        fastlstm.load(write(tmp_path, state))


@pytest.mark.parametrize("key", ["encoder.weight", "rnn.weight_hh_l0", "decoder.bias"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_dtype(tmp_path, key, dtype):
    state = base_state()
    state[key] = (state[key] * 10).to(dtype)
    with pytest.raises(ValueError, match=r"(?i)dtype|int|bool|float|type"):
        fastlstm.load(write(tmp_path, state))


def test_float64_loads_or_names_the_dtype(tmp_path):
    """float64 is not listed by the contract: either it loads (and computes right, in fp32)
    or it is a ValueError naming the dtype; never another exception."""
    case = LMCase("LSTM", 2, V, E, H, seed=77)
    torch_model = build_model(case)
    path = write(tmp_path, {k: v.double() for k, v in torch_model.state_dict().items()})
    try:
        model = fastlstm.load(path)
    except ValueError as err:
        assert re.search(r"(?i)dtype|float64|F64", str(err)), str(err)
        return
    ids = np.random.default_rng(0).integers(0, V, (2, 5))
    expected, _ = torch_forward(stored_model(torch_model, "float32"), ids)
    assert_close(model.forward(ids)[0], expected, 1e-4, "float64 file")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(tmp_path, value):
    state = base_state()
    state["rnn.weight_hh_l1"][3, 2] = value
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
        fastlstm.load(write(tmp_path, state))


def test_keyword_contradicts_metadata(tmp_path):
    path = write(tmp_path, base_state("RNN_TANH"), {"rnn_type": "RNN_TANH"})
    assert fastlstm.load(path, rnn_type="RNN_TANH").config.rnn_type == "RNN_TANH"
    with pytest.raises(ValueError, match=r"(?i)rnn_type|contradict|metadata"):
        fastlstm.load(path, rnn_type="RNN_RELU")
