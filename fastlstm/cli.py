"""The `fastlstm` command line: `fastlstm generate ...`, `fastlstm batch ...`, `fastlstm export ...`,
`fastlstm convert ...`, `fastlstm forecast ...`, `fastlstm info ...`, `fastlstm train ...`.

Each subcommand is a pair of functions, `_add_<name>(subparsers)` declaring its arguments and
`_run_<name>(args) -> int` doing the work; list the first in `_SUBCOMMANDS` to add one.
torch is imported only by the subcommands that need it.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from collections.abc import Mapping

from fastlstm.batch import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, JobError
from fastlstm.config import RNN_TYPES
from fastlstm.precision import DTYPES
from fastlstm.ray_data import DEFAULT_MAX_RESTARTS  # ray itself is imported only by --ray

__all__ = ["main"]

_EXIT_ERROR = 2  # argparse's code for usage errors; ours are the same kind: bad input


def main(argv: list[str] | None = None) -> int:
    """Run the fastlstm command line with `argv` (default: sys.argv[1:]); return the exit code.

    Errors in the input (a missing file, an invalid model, ...) and in the environment (a
    full disk, lost Ray workers) print `fastlstm: error: <message>` to stderr and return 2,
    without a traceback.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, ImportError, JobError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return _EXIT_ERROR


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastlstm",
        description="Run LSTM, GRU and RNN language models and forecasters trained in PyTorch "
        "or Keras on the CPU, without PyTorch or Keras.",
        epilog="examples:\n"
        '  fastlstm generate --prompt "ROMEO:"\n'
        "  fastlstm batch prompts.jsonl -o results.jsonl --seed 1\n"
        "  fastlstm export model.pt -o model.safetensors --vocab vocab.json\n"
        "  fastlstm convert model.keras -o model.safetensors --vocab vocab.json\n"
        "  fastlstm forecast forecaster.safetensors --input series.csv --steps 24\n"
        "  fastlstm info model.safetensors\n"
        "  fastlstm train corpus.txt -o model.safetensors --minutes 10\n"
        "\n"
        "Run 'fastlstm COMMAND --help' for the options and examples of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def _add_parser(subparsers, name: str, summary: str, description: str, examples: str):
    """Add a subcommand parser with a one-line summary, a description and an examples epilog."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=f"{summary}\n\n{description}",
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ---------------------------------------------------------------------------------------------
# fastlstm export


def _add_export(subparsers) -> None:
    p = _add_parser(
        subparsers,
        "export",
        "Convert a PyTorch checkpoint (.pt) into a fastlstm model file, or a model file to "
        "another precision.",
        "A .pt checkpoint (needs torch) is read with torch.load(..., weights_only=True),\n"
        "which loads tensors and plain containers but never runs pickled code. It must hold\n"
        "a state_dict, or a dict holding one under 'state_dict', 'model_state_dict' or\n"
        "'model'. A pickled nn.Module is refused: save model.state_dict() instead.\n"
        "A .safetensors input (a fastlstm file or a saved state_dict) needs no torch: use it\n"
        "with --dtype to store the weights in fewer bytes.\n"
        "\n"
        "The model must be an Embedding -> LSTM/GRU/RNN -> Linear language model, like\n"
        "the RNNModel of PyTorch's examples/word_language_model.\n"
        "\n"
        "--dtype sets how the matrices are stored (biases stay float32). At batch 1 each\n"
        "token reads every weight once, so fewer bytes generate faster: float16/bfloat16\n"
        "take half the bytes of float32 (multiplied in float32) and int8 (one float32 scale\n"
        "per output row) a quarter (multiplied exactly in integers with the inputs rounded\n"
        "to 16 bits).",
        "  fastlstm export model.pt -o model.safetensors --rnn-type LSTM\n"
        "  fastlstm export model.pt -o model.safetensors --vocab vocab.json --tokenizer char\n"
        "  fastlstm export model.pt -o model.safetensors --vocab words.txt   # one word per line\n"
        "  fastlstm export model.pt -o model.safetensors --tokenizer byte\n"
        "  fastlstm export model.pt -o model-fp16.safetensors --vocab vocab.json --dtype float16\n"
        "  fastlstm export model.safetensors -o model-int8.safetensors --dtype int8",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="the PyTorch checkpoint (.pt) or model file (.safetensors) to convert")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT.safetensors", help="the file to write"
    )
    p.add_argument(
        "--vocab",
        metavar="FILE",
        help="the tokens, index = id: a JSON list of strings, or a text file with one token "
        "per line",
    )
    p.add_argument(
        "--tokenizer",
        choices=("char", "word", "byte"),
        help="tokenizer kind (default with --vocab: char if every token is one character, "
        "else word)",
    )
    p.add_argument(
        "--rnn-type",
        choices=RNN_TYPES,
        help="the recurrent cell; needed for plain RNNs, whose shapes cannot tell tanh from relu",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="precision of the stored matrices (default: the checkpoint's own; a .safetensors "
        "input needs it)",
    )
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from fastlstm.export import convert, export
    from fastlstm.keras_reader import keras_file_kind

    if keras_file_kind(args.checkpoint) is not None:  # a Keras model: what convert reads
        convert(args.checkpoint, args.output, dtype=args.dtype, rnn_type=args.rnn_type,
                vocab=_read_vocab(args.vocab) if args.vocab else None, tokenizer=args.tokenizer)
    elif _is_safetensors(args.checkpoint):
        if args.dtype is None:
            raise ValueError("converting a .safetensors file needs --dtype (float32, float16, "
                             "bfloat16 or int8)")
        if args.vocab or args.tokenizer:
            raise ValueError("--vocab and --tokenizer apply to .pt checkpoints; a model file "
                             "keeps its own tokenizer")
        convert(args.checkpoint, args.output, dtype=args.dtype, rnn_type=args.rnn_type)
    else:
        state_dict = _load_checkpoint(args.checkpoint)
        vocab = _read_vocab(args.vocab) if args.vocab else None
        export(state_dict, args.output, vocab=vocab, tokenizer=args.tokenizer,
               rnn_type=args.rnn_type, dtype=args.dtype)
    print(f"wrote {args.output}")
    return 0


def _is_safetensors(path: str) -> bool:
    """Whether `path` holds a safetensors file: its name says so, or its first bytes are a
    header length followed by a JSON object (torch.save files are zip archives)."""
    if path.endswith(".safetensors"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def _load_checkpoint(path: str) -> Mapping:
    """Return the state_dict in the checkpoint at `path`, read without unpickling code."""
    import pickle

    from fastlstm.export import import_torch

    torch = import_torch()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # a missing file: its own message says it best
    except pickle.UnpicklingError as e:
        # weights_only refuses any Python object besides tensors and plain containers.
        refused = re.search(r"GLOBAL (\S+)", str(e))
        if refused is None:
            raise ValueError(
                f"cannot read {path} as a PyTorch checkpoint: not a torch.save file, or damaged"
            ) from None
        raise ValueError(
            f"{path} holds a pickled {refused[1]}, not only tensors, and fastlstm never unpickles "
            "Python objects (that can run arbitrary code). Save the weights instead: "
            "torch.save(model.state_dict(), path)"
        ) from None
    except Exception as e:  # torch.load's other failures on a file that is not a checkpoint
        raise ValueError(
            f"cannot read {path} as a PyTorch checkpoint: {type(e).__name__}: {e}"
        ) from None

    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                return checkpoint[key]
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
        keys = ", ".join(map(repr, list(checkpoint)[:10]))
        found = f"keys {keys}" if checkpoint else "an empty dict"
    else:
        found = f"a {type(checkpoint).__name__}"
    raise ValueError(
        f"{path} holds no state_dict: expected a dict of tensors, or a dict holding one under "
        f"'state_dict', 'model_state_dict' or 'model'; found {found}"
    )


def _read_vocab(path: str) -> list:
    """Read a vocabulary: a JSON list of tokens, or else one token per line."""
    with open(path, encoding="utf-8") as f:
        try:
            text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    try:
        tokens = json.loads(text)
    except json.JSONDecodeError:
        tokens = None
    if isinstance(tokens, list):
        return tokens
    # Lines are kept as they are: the tokenizer refuses empty or space-holding word tokens.
    return text.splitlines()


# ---------------------------------------------------------------------------------------------
# fastlstm convert


def _add_convert(subparsers) -> None:
    p = _add_parser(
        subparsers,
        "convert",
        "Write any model fastlstm reads (a Keras .keras or .h5 model, a safetensors state_dict "
        "or fastlstm file) as a fastlstm file, optionally in another precision.",
        "Keras models are read without Keras or TensorFlow (needs h5py: pip install\n"
        "\"fastlstm[keras]\"): Sequential or chain-shaped functional models of Embedding (or\n"
        "float inputs) -> LSTM / GRU / SimpleRNN -> Dense, saved with model.save(\"m.keras\")\n"
        "or, in the legacy HDF5 format, model.save(\"m.h5\") (tf.keras 2.x's too). Anything\n"
        "else (Bidirectional, attention, Conv1D, stateful or go_backwards layers, masking)\n"
        "is refused, naming the layer.  A Keras language model has no tokenizer: give its\n"
        "vocabulary with --vocab so that `fastlstm generate` can take text.\n"
        "\n"
        "A PyTorch checkpoint (.pt) is read by `fastlstm export`.",
        "  fastlstm convert model.keras -o model.safetensors --vocab vocab.json --tokenizer char\n"
        "  fastlstm convert forecaster.h5 -o forecaster.safetensors\n"
        "  fastlstm convert model.safetensors -o model-int8.safetensors --dtype int8",
    )
    p.add_argument("model", metavar="MODEL",
                   help="the model to convert: .keras, .h5, or .safetensors")
    p.add_argument("-o", "--output", required=True, metavar="OUT.safetensors",
                   help="the file to write")
    p.add_argument("--vocab", metavar="FILE",
                   help="a language model's tokens, index = id: a JSON list of strings, or a "
                   "text file with one token per line (replaces the file's own tokenizer)")
    p.add_argument("--tokenizer", choices=("char", "word", "byte"),
                   help="tokenizer kind (default with --vocab: char if every token is one "
                   "character, else word)")
    p.add_argument("--rnn-type", choices=RNN_TYPES,
                   help="the recurrent cell, for plain RNN state_dicts without metadata")
    p.add_argument("--dtype", choices=DTYPES,
                   help="precision of the stored matrices (default: the input's own)")
    p.set_defaults(run=_run_convert)


def _run_convert(args) -> int:
    from fastlstm.export import convert

    convert(args.model, args.output, dtype=args.dtype, rnn_type=args.rnn_type,
            vocab=_read_vocab(args.vocab) if args.vocab else None, tokenizer=args.tokenizer)
    print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------
# fastlstm forecast


def _add_forecast(subparsers) -> None:
    p = _add_parser(
        subparsers,
        "forecast",
        "Forecast a time series with a forecaster (CSV in, CSV out).",
        "INPUT is a CSV file, one row a time step and one column a feature, in the order\n"
        "the model was trained on; a first row that is not all numbers is a header, and is\n"
        "written again above the forecast.  The model runs over every row, then feeds each\n"
        "prediction back as the next input for --steps steps (the model's outputs must be\n"
        "its input features).  The forecast is written as CSV, one row a step, to -o or to\n"
        "stdout, with 9 significant digits (float32 values round-trip exactly).  MODEL is a\n"
        "forecaster file, or a Keras model of float inputs (.keras, .h5).",
        "  fastlstm forecast forecaster.safetensors --input series.csv --steps 24\n"
        "  fastlstm forecast model.keras --input load.csv --steps 96 -o forecast.csv",
    )
    p.add_argument("model", metavar="MODEL", help="a forecaster: .safetensors, .keras or .h5")
    p.add_argument("--input", required=True, metavar="CSV",
                   help='the history, one row a time step ("-" reads stdin)')
    p.add_argument("--steps", required=True, type=int, metavar="N", help="steps to forecast")
    p.add_argument("-o", "--output", metavar="CSV", help="where to write (default: stdout)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads (default: OMP_NUM_THREADS or all cores)")
    _add_dtype_arg(p)
    p.set_defaults(run=_run_forecast)


def _run_forecast(args) -> int:
    import fastlstm

    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    model = fastlstm.load(args.model, dtype=args.dtype, num_threads=args.threads)
    if not isinstance(model, fastlstm.Forecaster):
        raise ValueError(f"{args.model} is a language model (token ids in); `fastlstm forecast` "
                         "needs a forecaster (float features in)")
    header, history = read_series_csv(args.input)
    if history.shape[1] != model.config.input_size:
        raise ValueError(f"{args.input} has {history.shape[1]} columns; the model takes "
                         f"{model.config.input_size} features per step")
    forecast = model.forecast(history, args.steps)
    write_series_csv(args.output, header, forecast)
    return 0


def read_series_csv(path: str):
    """(header or None, float64 array (steps, features)) from a CSV file of numbers, one row
    a time step; blank lines are skipped, a first row that is not all numbers is the header."""
    import csv

    import numpy as np

    if path == "-":
        rows = list(csv.reader(sys.stdin))
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    numbered = [(n, row) for n, row in enumerate(rows, 1) if any(cell.strip() for cell in row)]
    if not numbered:
        raise ValueError(f"{path}: no rows")
    header = None
    if not all(_is_number(cell) for cell in numbered[0][1]):
        header = numbered[0][1]
        numbered = numbered[1:]
        if not numbered:
            raise ValueError(f"{path}: a header and no rows of numbers")
    width = len(numbered[0][1])
    values = []
    for n, row in numbered:
        if len(row) != width:
            raise ValueError(f"{path}:{n}: {len(row)} columns, where the first row has {width}")
        try:
            values.append([float(cell) for cell in row])
        except ValueError:
            bad = next(cell for cell in row if not _is_number(cell))
            raise ValueError(f"{path}:{n}: {bad!r} is not a number (every column must be a "
                             "feature: drop dates and labels)") from None
    array = np.array(values, dtype=np.float64)
    if not np.isfinite(array).all():
        n = numbered[int(np.argwhere(~np.isfinite(array))[0][0])][0]
        raise ValueError(f"{path}:{n}: NaN or infinite values cannot be forecast from")
    if header is not None and len(header) != width:
        raise ValueError(f"{path}: the header has {len(header)} columns, the rows {width}")
    return header, array


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def write_series_csv(path: str | None, header, values) -> None:
    """Write (steps, features) values as CSV rows (9 significant digits: float32 exactly)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    for row in values:
        writer.writerow([f"{float(v):.9g}" for v in row])
    if path is None:
        sys.stdout.write(buffer.getvalue())
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# fastlstm info


def _add_info(subparsers) -> None:
    p = _add_parser(
        subparsers,
        "info",
        "Show the architecture, size and tokenizer of a model file.",
        "Loads the model as fastlstm.load() does, so it also checks that the file is valid:\n"
        "a fastlstm file, a safetensors state_dict, or a Keras model (.keras, .h5).",
        "  fastlstm info model.safetensors\n"
        "  fastlstm info model.keras",
    )
    p.add_argument("model", metavar="MODEL", help="a model file (.safetensors, .keras, .h5)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads the model would run with (default: OMP_NUM_THREADS or all cores)")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    import fastlstm

    model = fastlstm.load(args.model, num_threads=args.threads)
    c = model.config
    yes_no = {True: "yes", False: "no"}
    if isinstance(model, fastlstm.Forecaster):
        rows = [
            ("file", args.model),
            ("kind", "forecaster (float inputs)"),
            ("rnn_type", c.rnn_type),
            ("num_layers", str(c.num_layers)),
            ("input_size", str(c.input_size)),
            ("hidden_size", str(c.hidden_size)),
            ("proj_size", str(c.proj_size) if c.proj_size else "none"),
            ("output_size", str(c.output_size)
             + (" (forecast feeds outputs back)" if c.output_size == c.input_size
                else " (predict only: outputs are not the inputs)")),
            ("bias", f"{yes_no[c.bias]} (head bias: {yes_no[c.head_bias]})"),
            ("parameters", f"{c.num_parameters:,}"),
            ("dtype", model.dtype),
            ("weight bytes", f"{_human_bytes(model.nbytes)} ({model.nbytes:,} bytes in memory)"),
            *_run_rows(model),
        ]
        _print_rows(rows)
        return 0
    rows = [
        ("file", args.model),
        ("rnn_type", c.rnn_type),
        ("num_layers", str(c.num_layers)),
        ("vocab_size", str(c.vocab_size)),
        ("embedding_dim", str(c.embedding_dim)),
        ("hidden_size", str(c.hidden_size)),
        ("proj_size", str(c.proj_size) if c.proj_size else "none"),
        ("bias", f"{yes_no[c.bias]} (head bias: {yes_no[c.head_bias]})"),
        ("tied", yes_no[c.tied]),
        ("parameters", f"{c.num_parameters:,}"),
        ("dtype", model.dtype),
        ("weight bytes", f"{_human_bytes(model.nbytes)} ({model.nbytes:,} bytes in memory)"),
        ("tokenizer", repr(model.tokenizer) if model.tokenizer is not None else "none"),
        *_run_rows(model),
    ]
    _print_rows(rows)
    return 0


def _run_rows(model) -> list[tuple[str, str]]:
    """How the model runs here: the kernel path and the threads."""
    from fastlstm import isa

    return [
        ("kernel path", f"{model.kernel_path} (this CPU runs: {', '.join(isa.available())}; "
                        "FASTLSTM_ISA forces one)"),
        ("threads", f"{model.num_threads} (batches of fewer rows share every product)"
                    if model.num_threads > 1 else "1"),
    ]


def _print_rows(rows) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# ---------------------------------------------------------------------------------------------
# fastlstm train


def _add_train(subparsers) -> None:
    p = _add_parser(
        subparsers,
        "train",
        "Train a language model on a text file and write it as a fastlstm file (needs torch).",
        "Builds the vocabulary from the corpus (char: every distinct character; word:\n"
        "whitespace-separated words plus <eos> per line and <unk>, as PyTorch's\n"
        "word_language_model), holds out the END of the corpus for validation, and trains an\n"
        "Embedding -> LSTM/GRU/RNN -> Linear model with Adam and truncated backpropagation\n"
        "through time. The weights with the best validation loss are written, with the\n"
        "tokenizer, so the file runs with fastlstm.load() alone. Losses are in nats per token.\n"
        "\n"
        "Training stops at --steps, --epochs or --minutes, whichever comes first; with none\n"
        "of them it runs one epoch.",
        "  fastlstm train shakespeare.txt -o shakespeare.safetensors --minutes 10\n"
        "  fastlstm train shakespeare.txt -o tiny.safetensors --layers 1 --hidden 128 --steps 500\n"
        "  fastlstm train wiki.train.txt -o wiki.safetensors --tokenizer word --rnn-type GRU \\\n"
        "      --embedding 256 --hidden 256 --dropout 0.2 --epochs 2",
    )
    p.add_argument("corpus", metavar="CORPUS", help="the training text (UTF-8)")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT.safetensors", help="the file to write"
    )
    p.add_argument(
        "--tokenizer", choices=("char", "word"), default="char", help="token kind (default: char)"
    )
    p.add_argument(
        "--rnn-type", choices=RNN_TYPES, default="LSTM", help="the recurrent cell (default: LSTM)"
    )
    p.add_argument("--layers", type=int, default=2, metavar="N",
                   help="recurrent layers (default: 2)")
    p.add_argument("--hidden", type=int, default=256, metavar="N",
                   help="hidden size of each layer (default: 256)")
    p.add_argument("--embedding", type=int, default=64, metavar="N",
                   help="embedding size (default: 64)")
    p.add_argument("--dropout", type=float, default=0.0, metavar="P",
                   help="dropout on the embedding, between layers and before the head "
                   "(default: 0)")
    p.add_argument("--seq-len", type=int, default=128, metavar="N",
                   help="tokens per backpropagation window (default: 128)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="sequences per step (default: 32)")
    p.add_argument("--lr", type=float, default=2e-3, metavar="X",
                   help="Adam learning rate, decayed to 10%% of it by a cosine schedule when "
                   "the length of training is known (default: 0.002)")
    p.add_argument("--steps", type=int, metavar="N", help="stop after N optimizer steps")
    p.add_argument("--epochs", type=float, metavar="N", help="stop after N passes over the data")
    p.add_argument("--minutes", type=float, metavar="M", help="stop after M minutes of training")
    p.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                   help="fraction of the corpus, taken from its end, held out for validation "
                   "(default: 0.05)")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help="validate every N steps (default: about 20 times per run, at most "
                   "every 500 steps)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads (default: 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from fastlstm.train import train

    result = train(
        args.corpus,
        args.output,
        tokenizer=args.tokenizer,
        rnn_type=args.rnn_type,
        num_layers=args.layers,
        hidden_size=args.hidden,
        embedding_dim=args.embedding,
        dropout=args.dropout,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        steps=args.steps,
        epochs=args.epochs,
        minutes=args.minutes,
        val_fraction=args.val_fraction,
        eval_every=args.eval_every,
        seed=args.seed,
        threads=args.threads,
        progress=not args.quiet,
    )
    print(
        f"validation loss {result['val_loss']:.4f} nats/token "
        f"(train {result['train_loss']:.4f}) after {result['steps']:,} steps "
        f"in {result['seconds'] / 60:.1f} min; best at step {result['best_step']:,}"
    )
    print(
        f"wrote {args.output}: {result['params']:,} parameters, "
        f"{_human_bytes(result['file_bytes'])}"
    )
    return 0


def _add_generate(subparsers) -> None:
    p = _add_parser(
        subparsers,
        "generate",
        "Generate text with a model (the bundled Shakespeare model by default).",
        "Continues the prompt and prints prompt + continuation to stdout.  Sampling runs in "
        "fastlstm's C loop; --seed makes the output reproducible.",
        '  fastlstm generate --prompt "ROMEO:"\n'
        '  fastlstm generate --prompt "JULIET:" --max-new-tokens 400 --temperature 0.7 --seed 1\n'
        "  fastlstm generate --model my.safetensors --prompt 'the' --top-k 40 --stream",
    )
    p.add_argument("--model", metavar="PATH", help="a model file (default: the bundled model)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    _add_generation_args(p)
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to generate")
    p.add_argument("--threads", type=int, metavar="N", help="threads (default: OMP_NUM_THREADS or all cores)")
    _add_dtype_arg(p)
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.set_defaults(run=_run_generate)


def _add_generation_args(p, seed_help: str = "random seed (default: fresh entropy)") -> None:
    """The sampling arguments shared by generate and batch (Model.generate's parameters)."""
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                   help="tokens to generate per sample (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="sampling temperature; 0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K likeliest tokens; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="keep the likeliest tokens holding probability P; 1 = off")
    p.add_argument("--min-p", type=float, default=0.0, metavar="P",
                   help="drop tokens less likely than P x the likeliest; 0 = off")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="penalise tokens already in the text; 1 = off")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop a sample when TEXT is generated (repeatable)")
    p.add_argument("--seed", type=int, metavar="S", help=seed_help)


def _add_dtype_arg(p) -> None:
    p.add_argument("--dtype", choices=DTYPES,
                   help="precision to hold the weights in (default: the file's); float16, "
                   "bfloat16 and int8 generate faster at small batches")


def _generation_params(args) -> dict:
    """The values of _add_generation_args' arguments, as Model.generate's keywords."""
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, stop=args.stop, seed=args.seed)


def _run_generate(args) -> int:
    import fastlstm

    model = fastlstm.load(args.model, dtype=args.dtype, num_threads=args.threads)
    if isinstance(model, fastlstm.Forecaster):
        raise ValueError(f"{args.model} is a forecaster (float features in): use "
                         "`fastlstm forecast`")
    params = _generation_params(args)
    if args.stream:
        if args.num_samples != 1:
            raise ValueError("--stream prints one sample; drop --num-samples or --stream")
        sys.stdout.write(args.prompt)
        for piece in model.stream(args.prompt, **params):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
        return 0
    texts = model.generate([args.prompt], num_return_sequences=args.num_samples, **params)
    print(("\n" + "-" * 40 + "\n").join(args.prompt + text for text in texts))
    return 0


# ---------------------------------------------------------------------------------------------
# fastlstm batch

_EXIT_BAD_ROWS = 1  # the job finished, but some rows could not be generated
_EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
_EXIT_TERMINATED = 143  # SIGTERM (128 + 15): a scheduler stopping the job


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: it stops a batch job exactly as Ctrl-C does (the
    generation loop polls for signals; a chunk being written is finished first)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _add_batch(subparsers) -> None:
    p = _add_parser(
        subparsers,
        "batch",
        "Generate for every prompt of a file; write JSONL results; re-run to resume.",
        "INPUT is JSONL, one object a line: {\"id\": ..., \"prompt\": ...} plus, optionally,\n"
        "any of max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, stop,\n"
        "eos_token_id and seed for that row alone; or plain text, one prompt a line (id = the\n"
        "line number).  --format auto takes .jsonl/.ndjson/.json as JSONL, .txt and stdin (-)\n"
        "as text, and otherwise looks at the first line.  A JSONL row without \"id\" gets its\n"
        "line number.\n"
        "\n"
        "OUTPUT gets one JSON line per row: id, prompt, text (the new text only), prompt_tokens,\n"
        "new_tokens, finish_reason (stop or length) and the seed used.  Results are appended a\n"
        "chunk at a time, in input order, each chunk fsynced: a crash or Ctrl-C loses at most\n"
        "the chunk in flight, and running the same command again skips the ids OUTPUT already\n"
        "holds (an incomplete last line left by a crash is cut off first).\n"
        "\n"
        "Seeds: a row's \"seed\" is used as it is; other rows get a seed derived from --seed and\n"
        "their id alone (fastlstm.batch.row_seed), so every row's text is the same whatever\n"
        "batch, worker or run it lands in, on one machine or on Ray.\n"
        "\n"
        "Resuming checks OUTPUT.manifest, written beside OUTPUT: if the results were made\n"
        "with another model file, precision, seed or generation option, or rows already\n"
        "done have changed in INPUT (prompt or own parameters), the job is refused and the\n"
        "message says what differs; --resume-changed goes on, keeping those results as they\n"
        "are.  Without --seed a resumed job keeps the seed it started with.  Rows added to\n"
        "INPUT are simply generated.\n"
        "\n"
        "Bad rows (invalid JSON, no prompt, unknown fields, invalid parameters, text the\n"
        "model cannot encode, an id seen before) are reported with their line numbers and\n"
        "skipped; the job goes on.  Exit status: 0 all rows done, 1 done but some rows bad,\n"
        "2 error (a bad option or input, a changed job, a full disk, Ray workers that kept\n"
        "dying: the chunks written are kept), 130 interrupted (Ctrl-C), 143 terminated\n"
        "(SIGTERM: as Ctrl-C, the chunk being written is finished).  Every stop leaves\n"
        "whole chunks only, and running the same command again resumes.\n"
        "\n"
        "--ray runs the generation on a Ray cluster (pip install \"fastlstm[ray]\"): this\n"
        "process reads, checks and writes exactly as without it, and --workers actors of\n"
        "--threads threads each generate.  No ADDRESS starts a local Ray; the model file must\n"
        "be readable at the same path on every node.  A worker that dies (its process, or its\n"
        "node) is restarted and its batch retried, up to --max-restarts times per worker;\n"
        "then the job stops.  Put --ray after INPUT, or write --ray=ADDRESS, so that INPUT\n"
        "is not taken for the address.",
        "  fastlstm batch prompts.jsonl -o results.jsonl --max-new-tokens 64 --seed 1\n"
        "  fastlstm batch lines.txt -o results.jsonl --model my.safetensors --temperature 0.7\n"
        "  fastlstm batch prompts.jsonl -o results.jsonl --errors bad_rows.jsonl --quiet\n"
        "  fastlstm batch prompts.jsonl -o results.jsonl --seed 1 --ray             # local Ray\n"
        "  fastlstm batch prompts.jsonl -o results.jsonl --seed 1 --ray=auto --workers 16",
    )
    p.add_argument("input", metavar="INPUT", help='prompts: a JSONL or text file, or "-" for stdin')
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="the JSONL results file (appended to: existing ids are skipped)")
    p.add_argument("--model", metavar="PATH", help="a model file (default: the bundled model)")
    p.add_argument("--format", choices=("auto", "jsonl", "text"), default="auto",
                   help="INPUT's format (default: auto)")
    _add_generation_args(p, seed_help="the job seed rows' seeds derive from (default: a random "
                         "one, printed at the end; each result records its own seed)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"prompts per generate call (default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="N",
                   help="results per write: the most a crash can lose "
                   f"(default: {DEFAULT_CHUNK_SIZE})")
    p.add_argument("--errors", metavar="FILE",
                   help="write every bad row to FILE as JSONL {line, error, id}")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads (default: OMP_NUM_THREADS or all cores; with --ray: per worker, "
                   "default 1)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="generate on a Ray cluster at ADDRESS (e.g. auto, ray://host:10001); "
                   "no ADDRESS: a local Ray")
    p.add_argument("--workers", type=int, metavar="N",
                   help="with --ray: model actors (default: the cluster's CPUs / --threads)")
    p.add_argument("--max-restarts", type=int, metavar="N",
                   help="with --ray: restarts of each worker that dies, its batch retried, "
                   f"before the job stops (default: {DEFAULT_MAX_RESTARTS})")
    p.add_argument("--resume-changed", action="store_true",
                   help="resume OUTPUT even though its results were made with other options "
                   "or from rows that changed since; they are kept as they are")
    _add_dtype_arg(p)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary (bad rows are still reported)")
    p.set_defaults(run=_run_batch)


def _run_batch(args) -> int:
    from fastlstm.batch import run_batch

    options = dict(batch_size=args.batch_size, chunk_size=args.chunk_size,
                   input_format=args.format, errors=args.errors, progress=not args.quiet,
                   dtype=args.dtype, resume_changed=args.resume_changed,
                   report_bad_rows=True, **_generation_params(args))
    if args.ray is None:
        for flag, value in (("--workers", args.workers), ("--max-restarts", args.max_restarts)):
            if value is not None:
                raise ValueError(f"{flag} needs --ray")
    # SIGTERM stops the job as Ctrl-C does (its default would end the process mid-chunk).
    main_thread = threading.current_thread() is threading.main_thread()
    saved = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        if args.ray is not None:
            from fastlstm.ray_data import run_batch_ray

            max_restarts = (DEFAULT_MAX_RESTARTS if args.max_restarts is None
                            else args.max_restarts)
            summary = run_batch_ray(args.input, args.output, args.model,
                                    address=args.ray or None, workers=args.workers,
                                    num_threads=args.threads or 1,
                                    max_restarts=max_restarts, **options)
        else:
            summary = run_batch(args.input, args.output, args.model,
                                num_threads=args.threads, **options)
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
        print(f"fastlstm batch: {how}; the chunks written to {args.output} are kept: "
              "run the same command to resume", file=sys.stderr)
        return _EXIT_TERMINATED if isinstance(e, _Terminated) else _EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, saved if saved is not None else signal.SIG_DFL)
    if not args.quiet:
        print(f"fastlstm batch: {summary}", file=sys.stderr)
    if summary.bad_rows:
        return _EXIT_BAD_ROWS
    return 0


_SUBCOMMANDS = [_add_generate, _add_batch, _add_export, _add_convert, _add_forecast, _add_info,
                _add_train]
