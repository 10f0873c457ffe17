"""Recurrent layers alone: nn.LSTM, nn.GRU and nn.RNN on float sequences, without PyTorch.

For recurrent time-series models, which have no embedding or vocabulary.  Inputs are batch
first, (batch, steps, input_size), or unbatched (steps, input_size), as PyTorch's modules take
them with batch_first=True.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fastlstm import _rnn, isa
from fastlstm._packed import PackedModel
from fastlstm.pack import pack_layers
from fastlstm.roles import find_recurrent_layers
from fastlstm.state import state_buffers
from fastlstm.threads import call_threads, resolve_num_threads


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; duck-typed so torch is never imported here
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


class _Recurrent:
    """Shared machinery of LSTM, GRU and RNN; see those classes."""

    _module_name = ""  # the torch.nn class this mirrors

    def __init__(self, weights: Mapping, *, num_threads: int | None = None,
                 _rnn_type: str | None = None):
        tensors = {name: _to_numpy(value) for name, value in dict(weights).items()}
        stack = find_recurrent_layers(tensors, _rnn_type)
        extra = set(tensors) - {f"{kind}_l{k}" for k in range(len(stack.layers))
                                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
        if extra:
            raise ValueError(f"unexpected tensors for an nn.{self._module_name}: {sorted(extra)}")
        self.rnn_type = stack.rnn_type
        self.input_size = stack.input_size
        self.hidden_size = stack.hidden_size
        self.proj_size = stack.proj_size
        self.num_layers = len(stack.layers)
        self.bias = stack.bias
        self.num_threads = resolve_num_threads(num_threads)
        self._packed = PackedModel(stack.rnn_type, pack_layers(stack, row_major=not isa.vector_kernels()))

    @classmethod
    def _check_module(cls, module):
        if type(module).__name__ != cls._module_name:
            raise ValueError(f"expected a torch.nn.{cls._module_name}, got {type(module).__name__}")
        if module.bidirectional:
            raise ValueError("bidirectional layers are not supported")

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def __repr__(self) -> str:
        proj = f", proj_size={self.proj_size}" if self.proj_size else ""
        kind = "" if self._module_name != "RNN" else f", nonlinearity={self.nonlinearity!r}"
        return (f"fastlstm.{self._module_name}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, bias={self.bias}{proj}{kind})")

    def __call__(self, x, state=None):
        """Run the layers over `x`; returns (output, final state) as PyTorch does.

        Args:
            x: float (batch, steps, input_size), or (steps, input_size) unbatched.
            state: initial state, PyTorch's layout (LSTM (h0, c0), else h0), each
                (num_layers, batch, size), or (num_layers, size) for unbatched x; None = zeros.

        Returns:
            output (batch, steps, output_size) float32 and the final state in the layout given.
        """
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise ValueError(f"x must be floats of shape (batch, steps, {self.input_size}) or "
                             f"(steps, {self.input_size}); got dtype {x.dtype}, shape {x.shape}")
        if x.shape[-2] == 0 or x.size == 0:
            raise ValueError(f"x must hold at least one step; got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or Inf")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[None]
            if state is not None:
                state = tuple(s[:, None] for s in state) if isinstance(state, (tuple, list)) \
                    else np.asarray(state)[:, None]
        x = np.ascontiguousarray(x, dtype=np.float32)
        batch, steps = x.shape[:2]
        h, c = state_buffers(state, self.rnn_type, self.num_layers, batch, self.output_size,
                             self.hidden_size)
        out = np.empty((batch, steps, self.output_size), np.float32)
        _rnn.forward(self._packed, h=h, c=c, x=x, y=out,
                     num_threads=call_threads(self.num_threads, batch, self._packed.step_weights))
        if unbatched:
            out, h = out[0], h[:, 0]
            c = c[:, 0] if c is not None else None
        return out, ((h, c) if c is not None else h)


class LSTM(_Recurrent):
    """nn.LSTM (gates i, f, g, o; optional proj_size) running in fastlstm's kernel.

    Build from a module, `fastlstm.LSTM.from_torch(lstm)`, or from its parameters,
    `fastlstm.LSTM({"weight_ih_l0": ..., "weight_hh_l0": ..., "bias_ih_l0": ..., ...})`
    (PyTorch names; numpy arrays or tensors).  Call as `output, (h, c) = layer(x, (h0, c0))`.
    """

    _module_name = "LSTM"

    def __init__(self, weights: Mapping, *, num_threads: int | None = None):
        super().__init__(weights, num_threads=num_threads, _rnn_type="LSTM")

    @classmethod
    def from_torch(cls, module, *, num_threads: int | None = None) -> LSTM:
        """Copy the weights of a torch.nn.LSTM (unidirectional; batch_first does not matter)."""
        cls._check_module(module)
        return cls(module.state_dict(), num_threads=num_threads)


class GRU(_Recurrent):
    """nn.GRU (gates r, z, n) running in fastlstm's kernel.

    Build with `fastlstm.GRU.from_torch(gru)` or `fastlstm.GRU({"weight_ih_l0": ..., ...})`;
    call as `output, h = layer(x, h0)`.
    """

    _module_name = "GRU"

    def __init__(self, weights: Mapping, *, num_threads: int | None = None):
        super().__init__(weights, num_threads=num_threads, _rnn_type="GRU")

    @classmethod
    def from_torch(cls, module, *, num_threads: int | None = None) -> GRU:
        """Copy the weights of a torch.nn.GRU (unidirectional; batch_first does not matter)."""
        cls._check_module(module)
        return cls(module.state_dict(), num_threads=num_threads)


class RNN(_Recurrent):
    """nn.RNN (h = tanh or relu of W_ih x + b_ih + W_hh h + b_hh) running in fastlstm's kernel.

    Build with `fastlstm.RNN.from_torch(rnn)` or `fastlstm.RNN({...}, nonlinearity="relu")`;
    call as `output, h = layer(x, h0)`.
    """

    _module_name = "RNN"

    def __init__(self, weights: Mapping, nonlinearity: str = "tanh", *,
                 num_threads: int | None = None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(weights, num_threads=num_threads, _rnn_type=f"RNN_{nonlinearity.upper()}")

    @classmethod
    def from_torch(cls, module, *, num_threads: int | None = None) -> RNN:
        """Copy the weights of a torch.nn.RNN (unidirectional; batch_first does not matter)."""
        cls._check_module(module)
        return cls(module.state_dict(), module.nonlinearity, num_threads=num_threads)
