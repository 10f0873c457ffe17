"""The `fastlstm` command line: `fastlstm export ...`, `fastlstm info ...`.

Each subcommand is a pair of functions, `_add_<name>(subparsers)` declaring its arguments and
`_run_<name>(args) -> int` doing the work; list the first in `_SUBCOMMANDS` to add one.
torch is imported only by the subcommands that need it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping

from fastlstm.config import RNN_TYPES

__all__ = ["main"]

_EXIT_ERROR = 2  # argparse's code for usage errors; ours are the same kind: bad input


def main(argv: list[str] | None = None) -> int:
    """Run the fastlstm command line with `argv` (default: sys.argv[1:]); return the exit code.

    Errors in the input (a missing file, an invalid model, ...) print
    `fastlstm: error: <message>` to stderr and return 2, without a traceback.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, ImportError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return _EXIT_ERROR


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastlstm",
        description="Run PyTorch LSTM, GRU and RNN language models on the CPU, without PyTorch.",
        epilog="examples:\n"
        "  fastlstm export model.pt -o model.safetensors --vocab vocab.json\n"
        "  fastlstm info model.safetensors\n"
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
        "Convert a PyTorch checkpoint (.pt) into a fastlstm model file (needs torch).",
        "The checkpoint is read with torch.load(..., weights_only=True), which loads tensors\n"
        "and plain containers but never runs pickled code. It must hold a state_dict, or a\n"
        "dict holding one under 'state_dict', 'model_state_dict' or 'model'. A pickled\n"
        "nn.Module is refused: save model.state_dict() instead.\n"
        "\n"
        "The model must be an Embedding -> LSTM/GRU/RNN -> Linear language model, like\n"
        "the RNNModel of PyTorch's examples/word_language_model.",
        "  fastlstm export model.pt -o model.safetensors --rnn-type LSTM\n"
        "  fastlstm export model.pt -o model.safetensors --vocab vocab.json --tokenizer char\n"
        "  fastlstm export model.pt -o model.safetensors --vocab words.txt   # one word per line\n"
        "  fastlstm export model.pt -o model.safetensors --tokenizer byte",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT.pt", help="the PyTorch checkpoint to convert")
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
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from fastlstm.export import export

    state_dict = _load_checkpoint(args.checkpoint)
    vocab = _read_vocab(args.vocab) if args.vocab else None
    export(state_dict, args.output, vocab=vocab, tokenizer=args.tokenizer, rnn_type=args.rnn_type)
    print(f"wrote {args.output}")
    return 0


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
# fastlstm info


def _add_info(subparsers) -> None:
    p = _add_parser(
        subparsers,
        "info",
        "Show the architecture, size and tokenizer of a fastlstm model file.",
        "Loads the model as fastlstm.load() does, so it also checks that the file is valid.",
        "  fastlstm info model.safetensors",
    )
    p.add_argument("model", metavar="MODEL", help="a fastlstm model file (.safetensors)")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    import fastlstm

    model = fastlstm.load(args.model)
    c = model.config
    yes_no = {True: "yes", False: "no"}
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
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


_SUBCOMMANDS = [_add_export, _add_info]
