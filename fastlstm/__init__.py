"""fastlstm: run PyTorch LSTM, GRU and RNN language models on the CPU, without PyTorch.

    >>> import fastlstm
    >>> model = fastlstm.load("model.safetensors")             # or dtype="float16", "int8", ...
    >>> logits, state = model.forward([[1, 2, 3]])

The public API: `load`, `Model` (language models) and `Forecaster` (float-input models for
time series: `predict`, `forecast`), `LSTM`, `GRU`, `RNN` (recurrent layers alone), `export`
(PyTorch -> fastlstm file; needs the torch extra), `convert` (any model file `load` reads,
Keras's included, -> a fastlstm file, optionally in another weight precision), `ModelConfig`,
`ForecasterConfig`.  Batch jobs: `fastlstm.batch.run_batch`,
and on Ray `fastlstm.ray_data` (the ray extra).
"""

from fastlstm import _openblas  # noqa: F401  (loads the BLAS before any kernel module)
from fastlstm import isa  # noqa: F401  (chooses the kernel path before any kernel runs)
from fastlstm.config import ForecasterConfig, ModelConfig
from fastlstm.export import convert, export
from fastlstm.forecaster import Forecaster
from fastlstm.layers import GRU, LSTM, RNN
from fastlstm.model import Model, load

__version__ = "0.1.0"
__all__ = ["GRU", "LSTM", "RNN", "Forecaster", "ForecasterConfig", "Model", "ModelConfig",
           "convert", "export", "load", "__version__"]
