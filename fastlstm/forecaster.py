"""Forecasters: float-input models (recurrent layers -> linear head) for time series.

    >>> model = fastlstm.load("forecaster.safetensors")        # or a Keras .keras / .h5 file
    >>> y, state = model.predict(x)            # x (batch, steps, features) -> y (batch, steps, outputs)
    >>> future = model.forecast(history, 64)   # (batch, 64, features), predictions fed back

`predict` runs fastlstm._rnn.forward with the head (one product per layer over all steps);
`forecast` runs the history the same way, then fastlstm._forecast's nogil loop feeds each
prediction back as the next input, for every series of the batch, in one call.
"""

from __future__ import annotations

import numpy as np

from fastlstm import _forecast, _rnn, isa
from fastlstm._packed import PackedModel
from fastlstm.config import ForecasterConfig
from fastlstm.state import State, state_buffers
from fastlstm.pack import pack_layers, pack_matrix
from fastlstm.precision import check_dtype, store
from fastlstm.threads import call_threads, resolve_num_threads
from fastlstm.roles import ForecasterWeights

__all__ = ["Forecaster"]

# The most values one call may return: beyond this the output alone would outgrow memory
# (2**31 float32 values are 8 GiB), and the kernels index rows with C ints.
MAX_OUTPUT_VALUES = 2**31 - 1


class Forecaster:
    """A `LSTM/GRU/RNN -> Linear` model on float inputs, ready to run.

    Build it with `fastlstm.load` (a forecaster file, or a Keras model of float inputs).
    Weights are converted to `dtype` and packed once; every call checks its inputs, allocates
    its outputs and runs in nogil kernels.
    """

    def __init__(self, weights: ForecasterWeights, *, num_threads: int | None = None,
                 dtype: str = "float32", path: str | None = None):
        self.config: ForecasterConfig = weights.config
        self.num_threads = resolve_num_threads(num_threads)
        self.dtype = dtype = check_dtype(dtype)
        self.path = path
        self.tokenizer = None  # float inputs: nothing to tokenize
        # As in Model: matmul.h's panels, plus row-major copies for BLAS in predict() only
        # for float32 on CPUs without matmul.h's vector paths.
        blas = dtype == "float32" and not isa.vector_kernels()
        head = store(weights.head_weight, dtype, "the head")  # (outputs, out)
        self.packed = PackedModel(
            self.config.rnn_type, pack_layers(weights.recurrent, dtype, row_major=blas),
            head=pack_matrix(head),
            head_w=head.data if blas else None,  # (outputs, out) row-major, for BLAS
            head_b=(None if weights.head_bias is None
                    else np.ascontiguousarray(weights.head_bias, dtype=np.float32)))

    @property
    def nbytes(self) -> int:
        """Bytes of weights held in memory (any row-major copies for BLAS included)."""
        return self.packed.nbytes

    @property
    def kernel_path(self) -> str:
        """The instruction sets the kernels run on (see Model.kernel_path)."""
        return isa.kernel_path()

    def __repr__(self) -> str:
        c = self.config
        proj = f", proj_size={c.proj_size}" if c.proj_size else ""
        return (f"Forecaster({c.rnn_type}, layers={c.num_layers}, inputs={c.input_size}, "
                f"hidden={c.hidden_size}{proj}, outputs={c.output_size}, "
                f"params={c.num_parameters:,}, dtype={self.dtype}, threads={self.num_threads}, "
                f"kernels={self.kernel_path})")

    def _threads(self, batch: int) -> int:
        return call_threads(self.num_threads, batch, self.packed.step_weights)

    def initial_state(self, batch_size: int = 1) -> State:
        """Zeros, in PyTorch's layout: LSTM (h, c), else h; (num_layers, batch, size)."""
        h, c = self._state(None, batch_size)
        return (h, c) if c is not None else h

    def _state(self, state, batch: int):
        cfg = self.config
        return state_buffers(state, cfg.rnn_type, cfg.num_layers, batch, cfg.state_size,
                             cfg.hidden_size)

    def _check_series(self, x, name: str) -> tuple[np.ndarray, bool]:
        """x as C-contiguous float32 (batch, steps, features), and whether it came unbatched."""
        F = self.config.input_size
        try:
            array = np.asarray(x)
        except ValueError:
            raise ValueError(f"{name} must be a rectangular array of floats") from None
        if array.dtype.kind not in "fiu" or array.dtype == bool or array.ndim not in (2, 3):
            raise ValueError(f"{name} must be numbers of shape (batch, steps, {F}) or "
                             f"(steps, {F}); got dtype {array.dtype} and shape {array.shape}")
        if array.shape[-1] != F:
            raise ValueError(f"{name} has {array.shape[-1]} features per step; this model "
                             f"takes {F} (shape (batch, steps, {F}) or (steps, {F}))")
        if array.shape[-2] == 0 or array.size == 0:
            raise ValueError(f"{name} must hold at least one step; got shape {array.shape}")
        with np.errstate(over="ignore"):  # float64 beyond float32's range: refused just below
            series = np.ascontiguousarray(array.reshape((-1,) + array.shape[-2:]), dtype=np.float32)
        if not np.isfinite(series).all():
            bad = np.argwhere(~np.isfinite(series))[0]
            where = tuple(int(i) for i in (bad if array.ndim == 3 else bad[1:]))
            raise ValueError(f"{name} holds {array[where]} at index {where}: every value must "
                             "be finite (NaN, Inf, or beyond float32's range)")
        return series, array.ndim == 2

    def predict(self, x, state: State | None = None) -> tuple[np.ndarray, State]:
        """Run the model over float inputs.

        Args:
            x: (batch, steps, input_size), or (steps, input_size) for one series.
            state: the state returned by a previous call, to continue those series; None
                starts from zeros.  Unbatched x takes an unbatched state ((num_layers, size)).

        Returns:
            (y, state): y float32 (batch, steps, output_size), the head's output at every
            step ((steps, output_size) for unbatched x); the final state in PyTorch's layout.
        """
        series, unbatched = self._check_series(x, "x")
        state = _batched_state(state, unbatched)
        batch, steps = series.shape[:2]
        h, c = self._state(state, batch)
        _check_output_size(batch * steps * self.config.output_size)
        y = np.empty((batch, steps, self.config.output_size), np.float32)
        _rnn.forward(self.packed, h=h, c=c, x=series, logits=y, num_threads=self._threads(batch))
        if unbatched:
            return y[0], _unbatched_state(h, c)
        return y, ((h, c) if c is not None else h)

    def forecast(self, history, steps: int, state: State | None = None) -> np.ndarray:
        """Forecast `steps` steps past `history`, feeding each prediction back as the input.

        The model runs over `history` (from `state`, or zeros), predicts the next step, feeds
        that prediction in as the next input, and so on: all in one nogil loop for every
        series of the batch.  Needs output_size == input_size.

        Args:
            history: (batch, steps, input_size), or (steps, input_size) for one series; at
                least one step.
            steps: how many steps to forecast, at least 1.
            state: the state before `history` (None: zeros), as `predict` takes it.

        Returns:
            float32 (batch, steps, input_size) ((steps, input_size) for unbatched history):
            row t is the prediction for the step t + 1 after the history ends.  Each series'
            forecast is bitwise the same whatever else is in the batch and however many
            threads run (every product is matmul.h's, whose rows are independent).
        """
        cfg = self.config
        if cfg.output_size != cfg.input_size:
            raise ValueError(f"forecast feeds each prediction back as the next input, so the "
                             f"head's {cfg.output_size} outputs must be the {cfg.input_size} "
                             "input features; use predict() for this model")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be an integer of at least 1, got {steps!r}")
        series, unbatched = self._check_series(history, "history")
        state = _batched_state(state, unbatched)
        batch = series.shape[0]
        _check_output_size(batch * int(steps) * cfg.input_size)
        h, c = self._state(state, batch)
        # The history: one product per layer for its input projections (on the panels, never
        # BLAS, so a series' forecast does not depend on the batch or the threads); only the
        # state is kept.
        _rnn.forward(self.packed, h=h, c=c, x=series, num_threads=self._threads(batch),
                     panels_only=True)
        out = np.empty((batch, int(steps), cfg.input_size), np.float32)
        _forecast.forecast(self.packed, h=h, c=c, out=out, num_threads=self._threads(batch))
        return out[0] if unbatched else out


def _check_output_size(values: int) -> None:
    if values > MAX_OUTPUT_VALUES:
        raise ValueError(f"the output would hold {values:,} values; at most "
                         f"{MAX_OUTPUT_VALUES:,} per call (split the batch or the steps)")


def _batched_state(state, unbatched: bool):
    """An unbatched state (num_layers, size) as a batch of one, for unbatched inputs."""
    if state is None or not unbatched:
        return state
    def batch_of_one(s):
        s = np.asarray(s)
        return s[:, None] if s.ndim >= 1 else s  # else state_buffers names the bad shape

    if isinstance(state, (tuple, list)):
        return tuple(batch_of_one(s) for s in state)
    return batch_of_one(state)


def _unbatched_state(h, c):
    return (h[:, 0], c[:, 0]) if c is not None else h[:, 0]
