"""What a recurrent language model is: its cell type and sizes, independent of any weights."""

from __future__ import annotations

from dataclasses import dataclass

# PyTorch's word_language_model names, and how many gates each cell stacks in weight_ih/hh;
# GRU_RESET_BEFORE is Keras's GRU(reset_after=False), which PyTorch does not have:
# n = tanh(W_in x + b_in + W_hn (r * h) + b_hn) where nn.GRU has r * (W_hn h + b_hn).
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1, "GRU_RESET_BEFORE": 3}
RNN_TYPES = tuple(GATES)


def check_rnn_type(rnn_type: str) -> str:
    """Return `rnn_type` in canonical form, or raise ValueError naming the accepted values."""
    if not isinstance(rnn_type, str):
        raise ValueError(f"rnn_type must be a string, one of {', '.join(RNN_TYPES)}; got {rnn_type!r}")
    canonical = rnn_type.upper()
    aliases = {"RNN": "RNN_TANH", "TANH": "RNN_TANH", "RELU": "RNN_RELU"}
    canonical = aliases.get(canonical, canonical)
    if canonical not in GATES:
        raise ValueError(f"unknown rnn_type {rnn_type!r}: expected one of {', '.join(RNN_TYPES)}")
    return canonical


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of an `Embedding -> recurrent stack -> Linear` language model.

    Attributes:
        rnn_type: "LSTM", "GRU", "GRU_RESET_BEFORE", "RNN_TANH" or "RNN_RELU".
        num_layers: number of stacked recurrent layers.
        vocab_size: V, rows of the embedding and of the output head.
        embedding_dim: E, the input size of the first recurrent layer.
        hidden_size: H, the size of the cell state (and of h without projection).
        proj_size: P, LSTM output projection size; 0 means no projection.
        bias: whether the recurrent layers have bias_ih/bias_hh.
        head_bias: whether the output Linear has a bias.
        tied: whether the output head shares its weight with the embedding.
    """

    rnn_type: str
    num_layers: int
    vocab_size: int
    embedding_dim: int
    hidden_size: int
    proj_size: int = 0
    bias: bool = True
    head_bias: bool = True
    tied: bool = False

    @property
    def gates(self) -> int:
        """Number of gate blocks stacked in weight_ih/weight_hh (LSTM 4, GRU 3, RNN 1)."""
        return GATES[self.rnn_type]

    @property
    def output_size(self) -> int:
        """Size of h, the output of each layer: proj_size if set, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied head counts once)."""
        V, E, H, P, G = self.vocab_size, self.embedding_dim, self.hidden_size, self.proj_size, self.gates
        out = self.output_size
        total = V * E
        for layer in range(self.num_layers):
            in_size = E if layer == 0 else out
            total += G * H * (in_size + out)
            if self.bias:
                total += 2 * G * H
            if P:
                total += P * H
        if not self.tied:
            total += V * out
        if self.head_bias:
            total += V
        return total


@dataclass(frozen=True)
class ForecasterConfig:
    """The architecture of a float-input model, `recurrent stack -> Linear`, for time series.

    Attributes:
        rnn_type: "LSTM", "GRU", "GRU_RESET_BEFORE", "RNN_TANH" or "RNN_RELU".
        num_layers: number of stacked recurrent layers.
        input_size: F, the features of each time step (layer 0's input size).
        hidden_size: H, the size of the cell state (and of h without projection).
        output_size: the head's outputs per time step; forecasting feeds them back as the
            next input, so it needs output_size == input_size.
        proj_size: P, LSTM output projection size; 0 means no projection.
        bias: whether the recurrent layers have bias_ih/bias_hh.
        head_bias: whether the head has a bias.
    """

    rnn_type: str
    num_layers: int
    input_size: int
    hidden_size: int
    output_size: int
    proj_size: int = 0
    bias: bool = True
    head_bias: bool = True

    @property
    def gates(self) -> int:
        """Number of gate blocks stacked in weight_ih/weight_hh (LSTM 4, GRU 3, RNN 1)."""
        return GATES[self.rnn_type]

    @property
    def state_size(self) -> int:
        """Size of h, the output of each recurrent layer: proj_size if set, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def num_parameters(self) -> int:
        """Number of parameters (recurrent biases counted as PyTorch holds them, two sets)."""
        H, P, G, out = self.hidden_size, self.proj_size, self.gates, self.state_size
        total = 0
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else out
            total += G * H * (in_size + out)
            if self.bias:
                total += 2 * G * H
            if P:
                total += P * H
        total += self.output_size * out
        if self.head_bias:
            total += self.output_size
        return total
