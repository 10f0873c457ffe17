"""fastlstm: run PyTorch LSTM, GRU and RNN language models on the CPU, without PyTorch.

    >>> import fastlstm
    >>> model = fastlstm.load("model.safetensors")             # or dtype="float16", "int8", ...
    >>> logits, state = model.forward([[1, 2, 3]])

The public API: `load` and `Model` (language models), `LSTM`, `GRU`, `RNN` (recurrent
layers alone), `export` (PyTorch -> fastlstm file; needs the torch extra), `convert` (a model
file in another weight precision), `ModelConfig`.  Batch jobs: `fastlstm.batch.run_batch`,
and on Ray `fastlstm.ray_data` (the ray extra).
"""

from fastlstm import _openblas  # noqa: F401  (loads the BLAS before any kernel module)
from fastlstm import isa  # noqa: F401  (chooses the kernel path before any kernel runs)
from fastlstm.config import ModelConfig
from fastlstm.export import convert, export
from fastlstm.layers import GRU, LSTM, RNN
from fastlstm.model import Model, load

__version__ = "0.1.0"
__all__ = ["GRU", "LSTM", "RNN", "Model", "ModelConfig", "convert", "export", "load", "__version__"]
