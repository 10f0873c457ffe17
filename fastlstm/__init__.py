"""fastlstm: run PyTorch LSTM, GRU and RNN language models on the CPU, without PyTorch.

    >>> import fastlstm
    >>> model = fastlstm.load("model.safetensors")
    >>> logits, state = model.forward([[1, 2, 3]])

The public API: `load` and `Model` (language models), `LSTM`, `GRU`, `RNN` (recurrent
layers alone), `export` (PyTorch -> fastlstm file; needs the torch extra), `ModelConfig`.
"""

from fastlstm import _openblas  # noqa: F401  (loads the BLAS before any kernel module)
from fastlstm.config import ModelConfig
from fastlstm.export import convert, export
from fastlstm.layers import GRU, LSTM, RNN
from fastlstm.model import Model, load

__version__ = "0.1.0"
__all__ = ["GRU", "LSTM", "RNN", "Model", "ModelConfig", "convert", "export", "load", "__version__"]
