"""The models benchmarked and the loops each runtime runs on them.

Every decode competitor runs the same loop, one token per step for every row of the batch:
step the model, softmax(logits / 0.8), sample one id, feed it back.  Each starts from a
one-token prompt (row b: id b mod V) and a zero state, so no competitor does any prefill:

  fastlstm          model.generate_ids(prompts, max_new_tokens=N, temperature=0.8, seed=...):
                    the whole loop runs in C, Python is entered once per round.
  fastlstm_fp16     the same loop on the model loaded with fastlstm.load(path, dtype=...):
  fastlstm_bf16     "float16", "bfloat16" (multiplied in float32) or "int8" (per-output-row
  fastlstm_int8     scales; multiplied in integers by the inputs rounded to int16 per
                    vector).  The file is the same float32 export; load converts.
  torch             a Python loop calling the nn.Module one step at a time with its state,
                    torch.softmax, torch.multinomial; torch.set_num_threads(T); inference_mode.
  torch_onednn_off  the same inside torch.backends.mkldnn.flags(enabled=False).
  onnxruntime       the module exported as a one-step graph (ids (B,1) int64, h[, c] ->
                    logits, h[, c]), intra_op_num_threads=T, inter_op 1, sequential; the
                    softmax and sampling in NumPy.
  onnxruntime_int8  the same loop on that graph after ONNX Runtime's dynamic quantization,
                    quantize_dynamic(graph, weight_type=QuantType.QInt8) with its defaults
                    (op_types_to_quantize=None: every op of its IntegerOps registry, which
                    holds LSTM and MatMul but not GRU or Gemm; per_channel=False).  For an LSTM
                    graph that is every weight: each ONNX LSTM op becomes DynamicQuantizeLSTM
                    (W and R int8, one scale per tensor, biases float32), the head MatMul
                    becomes DynamicQuantizeLinear + MatMulInteger (activations uint8 per call),
                    and the embedding Gather reads uint8 rows.  For a GRU graph only the head
                    and the embedding: the GRU ops stay float32.
  floor_matmul      the same matrix products and nothing else: per token and layer
                    x.W_ih^T and h.W_hh^T, then h.W_head^T (numpy.matmul into preallocated
                    outputs, NumPy's OpenBLAS limited to T threads by threadpoolctl; each
                    weight in whichever layout, W or W^T, BLAS reads faster here).  Layer 0
                    multiplies an embedding row by W_ih like PyTorch does (fastlstm may read a
                    precomputed table instead).  About 1.5 us of Python per product is included.
  floor_read        one read of those weight bytes (every W_ih, W_hh, bias and the head) per
                    token: np.bitwise_or.reduce over them as uint32, the fastest single pass
                    NumPy makes over memory here (faster than np.add.reduce or a copy, which
                    writes too).  One thread, batch 1 only: at batch 64 the bound is arithmetic.

Prefill runs the model over (1, S) ids from a zero state and returns all S logits: fastlstm
`model.forward(ids)` (fastlstm_fp16/bf16/int8: the same on a model loaded in that dtype, which
runs forward on fastlstm's own kernels, not BLAS), the torch module's forward, ONNX Runtime on
a sequence graph (dynamic S; onnxruntime_int8 on that graph quantized as above), and
floor_matmul: one GEMM per layer for the input projections of all steps, S GEMVs with W_hh
per layer, one GEMM for the head.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fastlstm

TEMPERATURE = 0.8
SEED = 1234


# ---------------------------------------------------------------------------------------------
# The configurations
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchConfig:
    """One model shape, and how many decode steps a timed round takes at batch 1 and 64."""

    name: str
    rnn_type: str  # "LSTM" or "GRU"
    num_layers: int
    embedding_dim: int
    hidden_size: int
    vocab_size: int
    steps_b1: int
    steps_b64: int

    def decode_steps(self, batch: int, quick: bool = False) -> int:
        steps = self.steps_b1 if batch == 1 else self.steps_b64
        return max(4, steps // 8) if quick else steps

    @property
    def gates(self) -> int:
        return {"LSTM": 4, "GRU": 3}[self.rnn_type]


CONFIGS = [
    BenchConfig("char_lstm_2x512", "LSTM", 2, 64, 512, 96, steps_b1=128, steps_b64=32),
    BenchConfig("char_gru_2x512", "GRU", 2, 64, 512, 96, steps_b1=128, steps_b64=32),
    BenchConfig("word_lstm_2x650", "LSTM", 2, 650, 650, 10000, steps_b1=64, steps_b64=16),
    BenchConfig("char_lstm_1x128", "LSTM", 1, 64, 128, 96, steps_b1=256, steps_b64=64),
]


class RNNModel(nn.Module):
    """Embedding -> LSTM/GRU -> Linear, as PyTorch's examples/word_language_model builds it
    (batch first here; dropout is irrelevant in eval mode).  forward returns the logits."""

    def __init__(self, rnn_type: str, ntoken: int, ninp: int, nhid: int, nlayers: int):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, batch_first=True)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, ids, state=None):
        output, state = self.rnn(self.encoder(ids), state)
        return self.decoder(output), state


class _FlatLSTM(nn.Module):
    """The model with flat tensor inputs and outputs, for ONNX export: (ids, h, c)."""

    def __init__(self, model: RNNModel):
        super().__init__()
        self.model = model

    def forward(self, ids, h, c):
        logits, (h, c) = self.model(ids, (h, c))
        return logits, h, c


class _FlatGRU(nn.Module):
    def __init__(self, model: RNNModel):
        super().__init__()
        self.model = model

    def forward(self, ids, h):
        logits, h = self.model(ids, h)
        return logits, h


def vocabulary(cfg: BenchConfig) -> list[str]:
    if cfg.vocab_size == 96:  # printable ASCII and a newline
        return [chr(i) for i in range(32, 127)] + ["\n"]
    return [f"w{i}" for i in range(cfg.vocab_size - 1)] + ["<eos>"]


class BenchModel:
    """One configuration, built once per session: the torch module with random weights, its
    fastlstm file, and (lazily) fastlstm models, ONNX graphs, sessions and raw matrices."""

    def __init__(self, cfg: BenchConfig, directory: Path, seed: int):
        self.cfg = cfg
        self.dir = Path(directory)
        torch.manual_seed(seed)
        self.module = RNNModel(cfg.rnn_type, cfg.vocab_size, cfg.embedding_dim, cfg.hidden_size,
                               cfg.num_layers).eval()
        self.path = self.dir / f"{cfg.name}.safetensors"
        fastlstm.export(self.module, self.path, vocab=vocabulary(cfg))
        self._cache = {}

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def is_lstm(self) -> bool:
        return self.cfg.rnn_type == "LSTM"

    def prompt_ids(self, batch: int) -> np.ndarray:
        """The one-token prompts, int64 (batch, 1): row b holds id b mod V."""
        return (np.arange(batch, dtype=np.int64) % self.cfg.vocab_size)[:, None]

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        shape = (self.cfg.num_layers, batch, self.cfg.hidden_size)
        state = {"h": np.zeros(shape, np.float32)}
        if self.is_lstm:
            state["c"] = np.zeros(shape, np.float32)
        return state

    # -- fastlstm ---------------------------------------------------------------------------

    def fastlstm(self, threads: int, dtype: str = "float32") -> fastlstm.Model:
        """The model file loaded with num_threads=threads and its weights held in `dtype`."""
        return self._cached(("fastlstm", threads, dtype),
                            lambda: fastlstm.load(self.path, dtype=dtype, num_threads=threads))

    # -- ONNX Runtime -----------------------------------------------------------------------

    def onnx_path(self, kind: str) -> Path:
        """The module as an ONNX graph: kind "step" (ids (B, 1), dynamic B) or "sequence"
        (ids (1, S), dynamic S)."""
        return self._cached(("onnx", kind), lambda: self._export_onnx(kind))

    def _export_onnx(self, kind: str) -> Path:
        cfg = self.cfg
        path = self.dir / f"{cfg.name}.{kind}.onnx"
        flat = _FlatLSTM(self.module) if self.is_lstm else _FlatGRU(self.module)
        names = ["h", "c"] if self.is_lstm else ["h"]
        batch, steps = (2, 1) if kind == "step" else (1, 8)
        ids = torch.zeros(batch, steps, dtype=torch.long)
        state = tuple(torch.zeros(cfg.num_layers, batch, cfg.hidden_size) for _ in names)
        if kind == "step":
            axes = {"ids": {0: "batch"}, "logits": {0: "batch"}}
            axes.update({n: {1: "batch"} for n in names})
            axes.update({f"{n}_out": {1: "batch"} for n in names})
        else:
            axes = {"ids": {1: "steps"}, "logits": {1: "steps"}}
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            # The TorchScript exporter writes ONNX's fused LSTM/GRU ops, ORT's fast path.
            torch.onnx.export(flat, (ids, *state), str(path), input_names=["ids", *names],
                              output_names=["logits", *(f"{n}_out" for n in names)],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        return path

    def onnx_int8_path(self, kind: str) -> Path:
        """The `kind` graph after ONNX Runtime's dynamic int8 quantization (see the module
        docstring for what it quantizes)."""
        return self._cached(("onnx_int8", kind), lambda: self._quantize_onnx(kind))

    def _quantize_onnx(self, kind: str) -> Path:
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        source = self.onnx_path(kind)
        path = self.dir / f"{self.cfg.name}.{kind}.int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # "Please consider to run pre-processing" on every call
        try:
            quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return path

    def ort_session(self, kind: str, threads: int, int8: bool = False):
        def make():
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            path = self.onnx_int8_path(kind) if int8 else self.onnx_path(kind)
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        return self._cached(("ort", kind, threads, int8), make)

    # -- raw weights, for the floors --------------------------------------------------------

    def matrices(self) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """[(W_ih (G*H, in), W_hh (G*H, H)) per layer], W_head (V, H): float32 copies."""

        def make():
            sd = {k: v.detach().numpy() for k, v in self.module.state_dict().items()}
            layers = [(np.array(sd[f"rnn.weight_ih_l{k}"], np.float32),
                       np.array(sd[f"rnn.weight_hh_l{k}"], np.float32))
                      for k in range(self.cfg.num_layers)]
            return layers, np.array(sd["decoder.weight"], np.float32)

        return self._cached("matrices", make)

    def weight_bytes(self) -> np.ndarray:
        """Every weight a token reads (all W_ih, W_hh, biases, head weight and bias; not the
        embedding table), as one contiguous float32 array."""

        def make():
            parts = [p.detach().numpy().ravel() for name, p in self.module.named_parameters()
                     if not name.startswith("encoder.")]
            return np.concatenate(parts).astype(np.float32)

        return self._cached("weight_bytes", make)

    def close(self):
        self._cache.clear()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

_threadpool_controller = None


def blas_threads(threads: int):
    """Limit every BLAS loaded in the process to `threads` (restored on exit)."""
    global _threadpool_controller
    from threadpoolctl import ThreadpoolController

    if _threadpool_controller is None:
        _threadpool_controller = ThreadpoolController()
    return _threadpool_controller.limit(limits=threads, user_api="blas")


@contextmanager
def torch_threads(threads: int, onednn: bool):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with nullcontext() if onednn else torch.backends.mkldnn.flags(enabled=False):
            yield
    finally:
        torch.set_num_threads(before)


def faster_layout(a: np.ndarray, w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """w^T (in, out) for numpy.matmul(a, w^T, out=out), as whichever of the two memory layouts
    of the same bytes BLAS multiplies faster here (a transposed view of w, or a copy of w^T)."""
    candidates = [w.T, np.ascontiguousarray(w.T)]
    best, best_time = None, float("inf")
    for wt in candidates:
        np.matmul(a, wt, out=out)
        for _ in range(5):
            start = time.perf_counter()
            np.matmul(a, wt, out=out)
            elapsed = time.perf_counter() - start
            if elapsed < best_time:
                best, best_time = wt, elapsed
    return best


def sample_numpy(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One id per row of logits (B, V) from softmax(logits / TEMPERATURE): int64 (B,)."""
    z = logits / np.float32(TEMPERATURE)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    cdf = np.cumsum(z, axis=1)
    u = rng.random((len(z), 1), dtype=np.float32) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), z.shape[1] - 1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Decode: each yields a function running one round (steps tokens per row), returning the
# generated ids (batch, steps) (the floors return their last output)
# ---------------------------------------------------------------------------------------------

@contextmanager
def decode_fastlstm(lm: BenchModel, batch: int, steps: int, threads: int,
                    dtype: str = "float32"):
    model = lm.fastlstm(threads, dtype)
    prompts = lm.prompt_ids(batch)

    def run():
        return model.generate_ids(prompts, max_new_tokens=steps, temperature=TEMPERATURE,
                                  seed=SEED)

    yield run


def decode_fastlstm_fp16(lm, batch, steps, threads):
    return decode_fastlstm(lm, batch, steps, threads, dtype="float16")


def decode_fastlstm_bf16(lm, batch, steps, threads):
    return decode_fastlstm(lm, batch, steps, threads, dtype="bfloat16")


def decode_fastlstm_int8(lm, batch, steps, threads):
    return decode_fastlstm(lm, batch, steps, threads, dtype="int8")


def _decode_torch(lm: BenchModel, batch: int, steps: int, threads: int, onednn: bool):
    module = lm.module
    prompts = torch.from_numpy(lm.prompt_ids(batch))
    generator = torch.Generator().manual_seed(SEED)

    def run():
        with torch.inference_mode():
            out = torch.empty(batch, steps, dtype=torch.long)
            ids, state = prompts, None
            for t in range(steps):
                logits, state = module(ids, state)
                probs = torch.softmax(logits[:, -1] / TEMPERATURE, dim=-1)
                ids = torch.multinomial(probs, 1, generator=generator)
                out[:, t] = ids[:, 0]
        return out.numpy()

    return torch_threads(threads, onednn), run


@contextmanager
def decode_torch(lm, batch, steps, threads):
    context, run = _decode_torch(lm, batch, steps, threads, onednn=True)
    with context:
        yield run


@contextmanager
def decode_torch_onednn_off(lm, batch, steps, threads):
    context, run = _decode_torch(lm, batch, steps, threads, onednn=False)
    with context:
        yield run


@contextmanager
def decode_onnxruntime(lm: BenchModel, batch: int, steps: int, threads: int,
                       int8: bool = False):
    session = lm.ort_session("step", threads, int8)
    prompts = lm.prompt_ids(batch)
    names = list(lm.zero_state(1))

    def run():
        rng = np.random.default_rng(SEED)
        out = np.empty((batch, steps), np.int64)
        feeds = {"ids": prompts, **lm.zero_state(batch)}
        for t in range(steps):
            logits, *state = session.run(None, feeds)
            ids = sample_numpy(logits[:, -1], rng)
            out[:, t] = ids
            feeds = {"ids": ids[:, None], **dict(zip(names, state))}
        return out

    yield run


def decode_onnxruntime_int8(lm, batch, steps, threads):
    return decode_onnxruntime(lm, batch, steps, threads, int8=True)


@contextmanager
def decode_floor_matmul(lm: BenchModel, batch: int, steps: int, threads: int):
    layers, head = lm.matrices()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, lm.cfg.embedding_dim), dtype=np.float32)
    products = []  # (input (B, in), weight, output (B, out)), in order
    for w_ih, w_hh in layers:
        h = rng.uniform(-1, 1, (batch, w_hh.shape[1])).astype(np.float32)
        products.append((x, w_ih, np.empty((batch, w_ih.shape[0]), np.float32)))
        products.append((h, w_hh, np.empty((batch, w_hh.shape[0]), np.float32)))
        x = h
    logits = np.empty((batch, head.shape[0]), np.float32)
    products.append((x, head, logits))
    matmul = np.matmul

    with blas_threads(threads):
        products = [(a, faster_layout(a, w, y), y) for a, w, y in products]

        def run():
            for _ in range(steps):
                for a, wt, y in products:
                    matmul(a, wt, out=y)
            return logits

        yield run


@contextmanager
def decode_floor_read(lm: BenchModel, batch: int, steps: int, threads: int):
    assert batch == 1 and threads == 1, "the weight-read floor is one thread, batch 1"
    words = lm.weight_bytes().view(np.uint32)
    reduce = np.bitwise_or.reduce

    def run():
        for _ in range(steps):
            acc = reduce(words)
        return acc

    yield run


DECODE = {
    "fastlstm": decode_fastlstm,
    "fastlstm_fp16": decode_fastlstm_fp16,
    "fastlstm_bf16": decode_fastlstm_bf16,
    "fastlstm_int8": decode_fastlstm_int8,
    "torch": decode_torch,
    "torch_onednn_off": decode_torch_onednn_off,
    "onnxruntime": decode_onnxruntime,
    "onnxruntime_int8": decode_onnxruntime_int8,
    "floor_matmul": decode_floor_matmul,
    "floor_read": decode_floor_read,
}


# ---------------------------------------------------------------------------------------------
# Prefill: each yields a function running the model over ids (1, S) from a zero state and
# returning the logits (1, S, V) (the floor returns the head's output)
# ---------------------------------------------------------------------------------------------

def prefill_ids(lm: BenchModel, steps: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, lm.cfg.vocab_size, (1, steps), dtype=np.int64)


@contextmanager
def prefill_fastlstm(lm: BenchModel, steps: int, threads: int, dtype: str = "float32"):
    model = lm.fastlstm(threads, dtype)
    ids = prefill_ids(lm, steps)
    yield lambda: model.forward(ids)[0]


def prefill_fastlstm_fp16(lm, steps, threads):
    return prefill_fastlstm(lm, steps, threads, dtype="float16")


def prefill_fastlstm_bf16(lm, steps, threads):
    return prefill_fastlstm(lm, steps, threads, dtype="bfloat16")


def prefill_fastlstm_int8(lm, steps, threads):
    return prefill_fastlstm(lm, steps, threads, dtype="int8")


def _prefill_torch(lm: BenchModel, steps: int):
    ids = torch.from_numpy(prefill_ids(lm, steps))

    def run():
        with torch.inference_mode():
            return lm.module(ids)[0].numpy()

    return run


@contextmanager
def prefill_torch(lm, steps, threads):
    with torch_threads(threads, onednn=True):
        yield _prefill_torch(lm, steps)


@contextmanager
def prefill_torch_onednn_off(lm, steps, threads):
    with torch_threads(threads, onednn=False):
        yield _prefill_torch(lm, steps)


@contextmanager
def prefill_onnxruntime(lm: BenchModel, steps: int, threads: int, int8: bool = False):
    session = lm.ort_session("sequence", threads, int8)
    feeds = {"ids": prefill_ids(lm, steps), **lm.zero_state(1)}
    yield lambda: session.run(["logits"], feeds)[0]


def prefill_onnxruntime_int8(lm, steps, threads):
    return prefill_onnxruntime(lm, steps, threads, int8=True)


@contextmanager
def prefill_floor_matmul(lm: BenchModel, steps: int, threads: int):
    layers, head = lm.matrices()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps, lm.cfg.embedding_dim), dtype=np.float32)
    plan = []  # per layer: (inputs (S, in), W_ih, gates_x (S, G*H), h (1, H), W_hh, gates_h)
    for w_ih, w_hh in layers:
        hidden = w_hh.shape[1]
        plan.append((x, w_ih, np.empty((steps, w_ih.shape[0]), np.float32),
                     rng.uniform(-1, 1, (1, hidden)).astype(np.float32), w_hh,
                     np.empty((1, w_hh.shape[0]), np.float32)))
        x = rng.uniform(-1, 1, (steps, hidden)).astype(np.float32)
    logits = np.empty((steps, head.shape[0]), np.float32)
    matmul = np.matmul

    with blas_threads(threads):
        plan = [(inputs, faster_layout(inputs, w_ih, gx), gx, h, faster_layout(h, w_hh, gh), gh)
                for inputs, w_ih, gx, h, w_hh, gh in plan]
        head_t = faster_layout(x, head, logits)

        def run():
            for inputs, w_ih_t, gates_x, h, w_hh_t, gates_h in plan:
                matmul(inputs, w_ih_t, out=gates_x)
                for _ in range(steps):
                    matmul(h, w_hh_t, out=gates_h)
            matmul(x, head_t, out=logits)
            return logits[None]

        yield run


PREFILL = {
    "fastlstm": prefill_fastlstm,
    "fastlstm_fp16": prefill_fastlstm_fp16,
    "fastlstm_bf16": prefill_fastlstm_bf16,
    "fastlstm_int8": prefill_fastlstm_int8,
    "torch": prefill_torch,
    "torch_onednn_off": prefill_torch_onednn_off,
    "onnxruntime": prefill_onnxruntime,
    "onnxruntime_int8": prefill_onnxruntime_int8,
    "floor_matmul": prefill_floor_matmul,
}
