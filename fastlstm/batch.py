"""Batch jobs: a file of prompts in, a JSONL file of results out, resumable after a crash.

    fastlstm batch prompts.jsonl -o results.jsonl --max-new-tokens 64 --seed 1

    >>> from fastlstm.batch import run_batch
    >>> summary = run_batch("prompts.jsonl", "results.jsonl", max_new_tokens=64, seed=1)

The data flow, top to bottom in this file:

    INPUT ─read_rows─▶ Row | BadRow (line numbers; JSON, fields, ids checked)
          ─Job──────▶ Task (params merged and checked, prompt tokenized, seed fixed, rows
                       already in OUTPUT skipped), in windows of chunk_size rows sorted by
                       (parameters, prompt length)
          ─generate_tasks─▶ one Model.generate_ids call per batch of equal parameters
          ─ResultWriter──▶ OUTPUT, one window (a chunk) at a time, in input order:
                       complete lines only, flushed and fsynced, so a crash loses at most the
                       chunk in flight; a re-run skips the ids already there.
          ─Manifest─────▶ OUTPUT.manifest (fastlstm.manifest): the job's options and each
                       row's prompt digest and own parameters, written before its chunk, so
                       a re-run can refuse to mix results of a changed input or job.

Seeds: a row's output depends on nothing but the row and the job's parameters.  A row with a
"seed" field uses it; every other row gets `row_seed(job_seed, id)`, a hash of the job seed
and the row's id (never its position), so a row gives the same text in any batch, chunk, worker
or resumed run.  The seed used is written in each result, so
`model.generate(prompt, seed=result["seed"], ...)` gives the same text again.

The Ray Data integration (fastlstm.ray_data) runs the same job on a Ray cluster and shares
everything here but the generation loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fastlstm.durable import append_whole, fsync_dir, lock, recover_lines
from fastlstm.generation import generate_all
from fastlstm.manifest import MANIFEST_SUFFIX, Manifest, job_options, option_differences
from fastlstm.params import GenerationParams

__all__ = [
    "BadRow",
    "BatchSummary",
    "ChangedJobError",
    "JobError",
    "ResultWriter",
    "Row",
    "ROW_PARAMS",
    "read_rows",
    "row_seed",
    "run_batch",
]

# Generation parameters a JSONL row may set for itself (Hugging Face names, as Model.generate).
ROW_PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
              "stop", "eos_token_id", "seed")
_ROW_FIELDS = ("id", "prompt") + ROW_PARAMS

DEFAULT_BATCH_SIZE = 256  # prompts per generate call; far larger batches run slower (cache)
DEFAULT_CHUNK_SIZE = 1024  # results per write (and fsync): what a crash can lose at most
_MAX_REPORTED = 20  # bad rows printed to stderr; the errors file and the summary count them all
_MAX_CHANGED_SHOWN = 5  # changed rows a refusal describes (it counts them all)


class ChangedJobError(ValueError):
    """Resuming an output whose results were made from other input rows or job options
    (model, precision, seed, generation parameters); the message says what differs."""


class JobError(RuntimeError):
    """A batch job stopped part way for a cause outside its input (e.g. its Ray workers kept
    dying).  The chunks already written are kept; running the job again resumes it."""


# ---------------------------------------------------------------------------------------------
# Rows: reading the input


@dataclass(frozen=True)
class Row:
    """One valid input row: its 1-based line number, id, prompt and per-row parameters."""

    line: int
    id: int | str
    prompt: str
    params: dict = field(default_factory=dict)  # generation parameters the row sets itself

    @property
    def key(self) -> str:
        """The id as canonical JSON: what resuming and duplicate checks compare."""
        return id_key(self.id)


@dataclass(frozen=True)
class BadRow:
    """An input row that cannot be generated: its line number, id (if known) and why."""

    line: int
    error: str
    id: int | str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" (id {self.id!r})" if self.id is not None else "")
        return f"{where}: {self.error}"


def id_key(row_id: int | str) -> str:
    """A row id as canonical JSON text: 7 and "7" are different ids."""
    return json.dumps(row_id, ensure_ascii=False)


def row_seed(job_seed: int, row_id: int | str) -> int:
    """The seed of the row `row_id` in a job seeded with `job_seed`, in [0, 2**64).

    blake2b (8 bytes, little-endian, personalisation b"fastlstm-batch") of
    f"{job_seed}\\0{json.dumps(row_id, ensure_ascii=False)}": fixed by the id alone, so a row
    gets the same text wherever it runs.
    """
    data = f"{job_seed}\0{id_key(row_id)}".encode()
    digest = hashlib.blake2b(data, digest_size=8, person=b"fastlstm-batch").digest()
    return int.from_bytes(digest, "little")


def read_rows(path: str | os.PathLike, input_format: str = "auto") -> Iterator[Row | BadRow]:
    """Read prompts from `path` ("-" for stdin), yielding a Row or a BadRow per non-blank line.

    input_format:
        "jsonl": one JSON object a line, {"id": ..., "prompt": ..., optional parameters}.
            "id" is a string or an integer (default: the line number); "prompt" a non-empty
            string; the optional fields are the names in ROW_PARAMS.  Any other field, invalid
            JSON or a wrong type is a BadRow (a misspelt parameter must not pass unnoticed).
        "text": one prompt a line (the line without its line ending), id = line number.
            Blank lines are skipped; a prompt that holds a line break needs JSONL.
        "auto": "jsonl" for names ending .jsonl, .ndjson or .json, "text" for .txt and for
            stdin, and otherwise "jsonl" if the first non-blank line is a JSON object.

    Line numbers are 1-based, so errors can be found with an editor.  Parameter values are
    checked later, when merged with the job's (see run_batch).
    """
    fmt = _input_format(path, input_format)
    with _open_input(path) as f:
        for line, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\r\n")
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield BadRow(line, f"not UTF-8 text: {e.reason} at byte {e.start}")
                continue
            if fmt == "text":
                if text:
                    yield Row(line, line, text)
            elif text.strip():
                yield _parse_json_row(line, text)


def _input_format(path, input_format: str) -> str:
    if input_format not in ("auto", "jsonl", "text"):
        raise ValueError(f"input format must be 'auto', 'jsonl' or 'text', got {input_format!r}")
    if input_format != "auto":
        return input_format
    name = os.fspath(path).lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".txt") or name == "-":
        return "text"
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    return "jsonl" if isinstance(json.loads(raw), dict) else "text"
                except ValueError:
                    return "text"
    return "text"


def _open_input(path):
    if os.fspath(path) == "-":
        return open(sys.stdin.fileno(), "rb", closefd=False)
    return open(path, "rb")


def _parse_json_row(line: int, text: str) -> Row | BadRow:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        return BadRow(line, f"invalid JSON: {e}")
    if not isinstance(obj, dict):
        return BadRow(line, f"expected a JSON object, got {type(obj).__name__}")
    row_id = obj.get("id", line)
    if isinstance(row_id, bool) or not isinstance(row_id, (int, str)):
        return BadRow(line, f'"id" must be a string or an integer, got {row_id!r}')
    unknown = [k for k in obj if k not in _ROW_FIELDS]
    if unknown:
        return BadRow(line, f"unknown field {unknown[0]!r} (a row may hold "
                            f"{', '.join(_ROW_FIELDS)})", row_id)
    prompt = obj.get("prompt")
    if prompt is None:
        return BadRow(line, 'missing "prompt"', row_id)
    if not isinstance(prompt, str):
        return BadRow(line, f'"prompt" must be a string, got {type(prompt).__name__}', row_id)
    if not prompt:
        return BadRow(line, '"prompt" is empty: generation needs at least one token', row_id)
    params = {k: v for k, v in obj.items() if k in ROW_PARAMS}
    return Row(line, row_id, prompt, params)


def count_lines(path) -> int | None:
    """Lines in `path` (for a progress bar's total); None for stdin or an unreadable file."""
    if os.fspath(path) == "-":
        return None
    n, last = 0, b"\n"
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                n += block.count(b"\n")
                last = block[-1:]
    except OSError:
        return None
    return n + (last != b"\n")


# ---------------------------------------------------------------------------------------------
# Tasks: checked rows, ready to generate, and the generation itself


@dataclass(slots=True)
class Task:
    """A row ready to generate: params are the merged, checked generation parameters (seed
    excluded; `params_key` is their canonical JSON), ids the tokenized prompt."""

    line: int
    id: int | str
    prompt: str
    ids: list[int]
    params: dict
    params_key: str
    seed: int
    own: dict = field(default_factory=dict)  # the parameters the row set itself (the manifest's)


class TaskMaker:
    """Rows -> Tasks, for batch jobs and the Ray predictor alike.

    A row's parameters go over the job's `defaults` (each distinct set is checked once,
    against the model); its seed is its own "seed", else row_seed(job_seed, id), else the job
    seed itself (no id), else fresh entropy (no seed anywhere); its prompt is tokenized.
    """

    def __init__(self, model, defaults: dict, job_seed: int | None):
        self.model = model
        self.defaults = defaults
        self.job_seed = job_seed
        self._checked: dict[str, tuple[dict, str] | str] = {}  # raw params JSON -> checked

    def task(self, line: int, row_id: int | str | None, prompt: str, row_params: dict) -> Task:
        """The row's Task; ValueError (why) for bad parameters, a bad seed or an empty prompt."""
        params = {**self.defaults, **row_params}
        seed = params.pop("seed", None)
        raw = json.dumps(params, sort_keys=True)
        checked = self._checked.get(raw)
        if checked is None:
            try:
                checked = check_params(params, self.model)
            except ValueError as e:
                checked = str(e)
            self._checked[raw] = checked
        if isinstance(checked, str):
            raise ValueError(checked)
        if seed is None and self.job_seed is not None:
            job_seed = check_seed(self.job_seed)
            seed = row_seed(job_seed, row_id) if row_id is not None else job_seed
        seed = check_seed(seed) if seed is not None else secrets.randbits(63)
        ids = self.model.tokenizer.encode(prompt)
        if not ids:
            raise ValueError("the prompt is empty after tokenizing")
        return Task(line, row_id, prompt, ids, checked[0], checked[1], seed, row_params)


def generate_tasks(model, tasks: list[Task]) -> list[dict | str]:
    """Generate every task; return per task its result record, or an error message.

    Tasks with equal parameters share one batched `Model.generate_ids` call (one seed per
    prompt).  If a call raises ValueError, its halves run apart, so only the rows at fault fail.
    """
    groups: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(task.params_key, []).append(i)
    results: list[dict | str] = [""] * len(tasks)
    for members in groups.values():
        for i, record in zip(members, _generate_or_split(model, [tasks[i] for i in members])):
            results[i] = record
    return results


def _generate_or_split(model, group: list[Task]) -> list[dict | str]:
    """Generate a group; if it raises ValueError, each half on its own, down to the rows at
    fault (the job checks parameters up front, so this is a safety net, seldom taken)."""
    try:
        return _generate_group(model, group)
    except ValueError as e:
        if len(group) == 1:
            return [str(e)]
    half = len(group) // 2
    return _generate_or_split(model, group[:half]) + _generate_or_split(model, group[half:])


def _generate_group(model, tasks: list[Task]) -> list[dict]:
    params = GenerationParams(**tasks[0].params, seed=tuple(t.seed for t in tasks))
    decoder = generate_all(model, [t.ids for t in tasks], params)
    records = []
    for row, task in enumerate(tasks):
        new = decoder.row_ids(row).tolist()
        stream = model.tokenizer.stream_decoder(previous=task.ids)
        text = stream.decode(new) + stream.flush()
        records.append({"id": task.id, "prompt": task.prompt, "text": text,
                        "prompt_tokens": len(task.ids), "new_tokens": len(new),
                        "finish_reason": decoder.finish_reason(row), "seed": task.seed})
    return records


def check_params(params: dict, model=None) -> tuple[dict, str]:
    """Check generation parameters (seed excluded) as Model.generate would; return them with
    canonical values and their canonical JSON, the key that groups rows into calls.

    With a `model`, also generate one token with them, which checks what only the model can
    (stop strings it cannot generate, eos ids outside its vocabulary)."""
    checked = GenerationParams(**params)  # raises ValueError, with the parameter's name
    if checked.num_return_sequences != 1:
        raise ValueError("num_return_sequences must be 1 in a batch job: give each sample its "
                         "own row and id")
    normal = {k: getattr(checked, k) for k in params}
    for k in ("stop", "eos_token_id"):
        if k in normal:
            normal[k] = list(normal[k])
    if model is not None:
        model.generate_ids([[0]], **{**normal, "max_new_tokens": 1}, seed=0)
    return normal, json.dumps(normal, sort_keys=True)


def check_seed(seed) -> int:
    """A seed as generate takes it: an int in [0, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return seed


# ---------------------------------------------------------------------------------------------
# The output: a resumable, chunked JSONL writer


class ResultWriter:
    """Appends result records to a JSONL file, a chunk at a time, safely across crashes.

    Opening an existing file reads the ids already there (`done`, as canonical JSON) so a job
    can skip them.  Lines are only ever appended whole and each chunk is flushed and fsynced,
    so after a crash the file holds every chunk written before it, plus possibly part of the
    chunk in flight: complete lines of it are kept, and a torn tail (a last line without its
    newline, lines holding NUL bytes) is cut off when the file is next opened.  Any other line that
    is not a result means the file is not a fastlstm result file (or was edited): that raises
    ValueError rather than touching it (see fastlstm.durable.recover_lines).  An exclusive
    lock (flock, where the OS has it) keeps two jobs from writing the same file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.done: set[str] = set()
        self.repaired_bytes = 0  # bytes of a damaged tail cut off when opening
        created = not os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            lock(self._fd, self.path)
            self._recover()
            if created:
                fsync_dir(self.path)
        except BaseException:
            os.close(self._fd)
            raise

    def _recover(self) -> None:
        def accept(number: int, record: dict) -> bool:
            if "id" not in record or "text" not in record:
                return False
            self.done.add(id_key(record["id"]))
            return True

        self.repaired_bytes = recover_lines(self._fd, self.path, accept,
                                            "fastlstm batch result")

    def write(self, records: Iterable[dict]) -> None:
        """Append records (dicts with an "id"), one JSON line each, and fsync: all of them or,
        if the write fails (a full disk: OSError naming the file), none; SIGINT and SIGTERM
        wait until they are written (see fastlstm.durable)."""
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        if not lines:
            return
        append_whole(self._fd, "".join(lines).encode("utf-8"), self.path,
                     hint=f"; the {len(self.done):,} results written before are kept: make "
                     "room, then run the same job again to resume")
        self.done.update(id_key(r["id"]) for r in records)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# The job: rows -> tasks in windows, results -> the writer, bad rows, progress, summary


@dataclass
class BatchSummary:
    """What a batch job did.  `bad_rows` lists every row that could not be generated."""

    generated: int = 0  # rows generated and written by this run
    skipped: int = 0  # rows whose id was already in the output (done by an earlier run)
    new_tokens: int = 0
    seconds: float = 0.0
    job_seed: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    repaired_bytes: int = 0  # a damaged tail cut off the output when the job started

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.generated:,} prompts generated ({self.new_tokens:,} tokens in "
                f"{self.seconds:.1f} s, {self.tokens_per_second:,.0f} tokens/s), "
                f"{self.skipped:,} already done, {len(self.bad_rows):,} bad "
                f"row{'' if len(self.bad_rows) == 1 else 's'}; "
                f"job seed {self.job_seed}")


class Job:
    """The driver side of a batch job, shared by run_batch and the Ray runner.

    Reads and checks the rows, skips those already written, reports bad rows, hands out
    windows of tasks, writes each window's results in input order, and keeps the summary.

    Resuming (the output holds results): the job seed defaults to the one the output was
    started with, and the job refuses, with ChangedJobError before anything runs, to add to
    results made from other options (model file, weight precision, seed, generation
    parameters: the manifest's last JOB) or from rows that changed since (a done id whose
    prompt or own parameters differ from its manifest entry), or that it cannot check (no
    manifest).  resume_changed=True goes on instead: those results are kept as they are, the
    new options and the changed rows' entries are recorded, and later runs compare with them.
    Rows added to the input are simply generated; results of rows gone from it stay.
    """

    def __init__(self, input, output, model, params: dict, *, input_format: str = "auto",
                 chunk_size: int = DEFAULT_CHUNK_SIZE, errors: str | os.PathLike | None = None,
                 progress: bool = True, report_bad_rows: bool = True,
                 resume_changed: bool = False):
        if model.tokenizer is None:
            raise ValueError("batch jobs need a model with a tokenizer (prompts are text)")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        params = dict(params)
        seed = params.pop("seed", None)
        unknown = [k for k in params if k not in ROW_PARAMS]
        if unknown:
            raise ValueError(f"unknown generation parameter {unknown[0]!r}")
        check_params(params, model)  # the job's parameters: a bad one stops it before it starts
        if os.fspath(input) != "-" and not os.path.isfile(input):
            raise FileNotFoundError(f"no input file {os.fspath(input)!r}")
        self.input = input
        self.input_format = _input_format(input, input_format)
        self.chunk_size = chunk_size
        self._seen: dict[str, int] = {}  # id key -> line, for duplicates
        self._report = report_bad_rows
        self._resume_changed = resume_changed
        self._accepted: list[tuple] = []  # changed done rows kept (resume_changed): entries due
        self._errors = None
        self.manifest = None
        self.writer = ResultWriter(output)
        try:
            self.manifest = Manifest(self.writer.path + MANIFEST_SUFFIX,
                                     keep=bool(self.writer.done))
            if seed is None and self.writer.done and self.manifest.job is not None:
                seed = self.manifest.job.get("seed")  # resuming: the seed the job began with
            self.summary = BatchSummary(job_seed=check_seed(seed) if seed is not None
                                        else secrets.randbits(63),
                                        repaired_bytes=self.writer.repaired_bytes)
            self.tasks = TaskMaker(model, params, self.summary.job_seed)
            options = job_options(model, params, self.summary.job_seed, input)
            warning = self._check_resume(options) if self.writer.done else None
            if not self.writer.done:
                self.manifest.start(options)
            if errors is not None:
                self._errors = open(errors, "w", encoding="utf-8")
        except BaseException:
            if self.manifest is not None:
                self.manifest.close()
            self.writer.close()
            raise
        self.progress = _Progress(count_lines(input) if progress else None, enabled=progress)
        self._start = time.perf_counter()
        if self.writer.repaired_bytes:
            self.progress.write(f"{self.writer.path}: cut off {self.writer.repaired_bytes} bytes "
                                "of an incomplete last chunk (an earlier run was interrupted)")
        if warning:
            self.progress.write(warning)

    # -- resuming: is the output's job this one? -------------------------------------------

    def _check_resume(self, options: dict) -> str | None:
        """Compare this job with the one the output's results were made by; raise
        ChangedJobError if they differ, or (resume_changed) record the change and return a
        warning.  Reads the whole input first, unless it is stdin (rows are then checked as
        they are read, in _task)."""
        manifest, n = self.manifest, len(self.writer.done)
        changes = []
        if manifest.job is None:
            changes.append(f"there is no manifest {manifest.path} (an older fastlstm wrote "
                           "the output, or the manifest was moved), so they cannot be checked")
        else:
            changes += option_differences(manifest.job, options)
        if os.fspath(self.input) != "-":
            count, shown = self._changed_done_rows()
            if count and manifest.job is not None:
                why = manifest.explain([(r.id, r.prompt, r.params) for r in shown])
                listed = "; ".join(f"line {r.line} (id {r.id!r}): {w}"
                                   for r, w in zip(shown, why))
                more = f"; and {count - len(shown):,} more" if count > len(shown) else ""
                done = "row already done has" if count == 1 else "rows already done have"
                changes.append(f"{count:,} {done} changed in {self.input}: {listed}{more}")
        if not changes:
            return None
        if not self._resume_changed:
            raise ChangedJobError(
                f"{self.writer.path} holds {n:,} result{'' if n == 1 else 's'} of a "
                "different job, which resuming "
                "would mix with results of this one:\n"
                + "".join(f"  - {c}\n" for c in changes)
                + "Write to another output, or pass --resume-changed (resume_changed=True) to "
                "keep those results as they are and go on with this input and these options.")
        manifest.resume_with_changes(options, changes, [])
        return (f"{self.writer.path}: resuming although this job differs from the one that "
                f"made its {n:,} results (--resume-changed); they are kept as they are:\n"
                + "".join(f"  - {c}\n" for c in changes).rstrip("\n"))

    def _changed_done_rows(self) -> tuple[int, list[Row]]:
        """Done rows of the input (first row of each id) that differ from their manifest
        entries: how many, and the first few."""
        seen: set[str] = set()
        count, shown = 0, []
        for row in read_rows(self.input, self.input_format):
            if isinstance(row, BadRow) or row.key in seen:
                continue
            seen.add(row.key)
            if row.key in self.writer.done and not self.manifest.matches(row.id, row.prompt,
                                                                         row.params):
                count += 1
                if len(shown) < _MAX_CHANGED_SHOWN:
                    shown.append(row)
        return count, shown

    # -- rows -> tasks ----------------------------------------------------------------------

    def windows(self) -> Iterator[list[Task]]:
        """Tasks still to do, chunk_size at a time, each window sorted by (parameters, prompt
        length) so batches are homogeneous.  Bad rows are reported as they are met."""
        window: list[Task] = []
        last_line = 0
        for row in read_rows(self.input, self.input_format):
            self.progress.advance_lines(row.line - last_line - 1)  # blank lines
            last_line = row.line
            task = self._task(row)
            if task is None:
                self.progress.advance_lines(1)
                continue
            window.append(task)
            if len(window) == self.chunk_size:
                yield _sorted(window)
                window = []
        if window:
            yield _sorted(window)

    def _task(self, row: Row | BadRow) -> Task | None:
        if isinstance(row, BadRow):
            self.bad(row)
            return None
        key = row.key
        first = self._seen.setdefault(key, row.line)
        if first != row.line:
            self.bad(BadRow(row.line, f"duplicate id (first on line {first})", row.id))
            return None
        if key in self.writer.done:
            if not self.manifest.matches(row.id, row.prompt, row.params):
                self._changed_done_row(row)
            self.summary.skipped += 1
            return None
        try:
            return self.tasks.task(row.line, row.id, row.prompt, row.params)
        except ValueError as e:
            self.bad(BadRow(row.line, str(e), row.id))
            return None

    def _changed_done_row(self, row: Row) -> None:
        """A done row that differs from its manifest entry, met while generating (stdin
        input, or a file edited during the job): refused, or kept (resume_changed)."""
        if not self._resume_changed:
            why = (self.manifest.explain([(row.id, row.prompt, row.params)])[0]
                   if self.manifest.job is not None else "no manifest to check it against")
            raise ChangedJobError(
                f"{self.writer.path}: line {row.line} of {self.input} (id {row.id!r}) changed "
                f"since its result was written ({why}); the results written are kept. Restore "
                "the row, write to another output, or pass --resume-changed "
                "(resume_changed=True) to keep its result as it is.")
        self._accepted.append((row.id, row.prompt, row.params))
        if len(self._accepted) >= self.chunk_size:
            self.manifest.record(self._accepted)
            self._accepted = []

    def bad(self, bad: BadRow) -> None:
        """Record (and report) a row that cannot be generated."""
        self.summary.bad_rows.append(bad)
        n = len(self.summary.bad_rows)
        if self._report and n <= _MAX_REPORTED:
            self.progress.write(f"{self.input}:{bad.line}: bad row: {bad.error}"
                                + (f" (id {bad.id!r})" if bad.id is not None else ""))
            if n == _MAX_REPORTED:
                self.progress.write("(further bad rows are counted but not shown"
                                    + ("; the errors file lists them all)" if self._errors
                                       else "; --errors FILE lists them all)"))
        if self._errors is not None:
            entry = {"line": bad.line, "error": bad.error}
            if bad.id is not None:
                entry["id"] = bad.id
            self._errors.write(json.dumps(entry, ensure_ascii=False) + "\n")

    # -- results -> output ------------------------------------------------------------------

    def write(self, window: list[Task], results: list[dict | str]) -> None:
        """Write one window's results, in input order; error strings become bad rows."""
        ordered = sorted(zip(window, results), key=lambda pair: pair[0].line)
        # The rows' manifest entries first: every result in the output has one.
        self.manifest.record(self._accepted + [(t.id, t.prompt, t.own) for t, _ in ordered])
        self._accepted = []
        records = []
        for task, result in ordered:
            if isinstance(result, str):
                self.bad(BadRow(task.line, result, task.id))
            else:
                records.append(result)
        self.writer.write(records)
        tokens = sum(r["new_tokens"] for r in records)
        self.summary.generated += len(records)
        self.summary.new_tokens += tokens
        self.progress.done(len(window), tokens)

    def close(self) -> BatchSummary:
        """Close the output (and errors file); return the summary."""
        self.summary.seconds = time.perf_counter() - self._start
        self.progress.close()
        try:
            if self._accepted:
                self.manifest.record(self._accepted)
        finally:
            self.manifest.close()
            self.writer.close()
            if self._errors is not None:
                self._errors.close()
        return self.summary


def _sorted(window: list[Task]) -> list[Task]:
    return sorted(window, key=lambda t: (t.params_key, len(t.ids)))


def batches(window: list[Task], batch_size: int) -> Iterator[list[Task]]:
    """A sorted window cut into batches of at most batch_size tasks."""
    for start in range(0, len(window), batch_size):
        yield window[start:start + batch_size]


class _Progress:
    """A progress bar over input lines with tokens/s: tqdm when installed, else a line on
    stderr every 10 seconds.  Lines skipped or bad count as done."""

    def __init__(self, total: int | None, enabled: bool):
        self.enabled = enabled
        self.tokens = 0
        self.start = time.perf_counter()
        self._bar = None
        self._lines = 0
        self._total = total
        self._last_print = self.start
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit=" rows", unit_scale=True, file=sys.stderr,
                                 dynamic_ncols=True, smoothing=0.1)

    def advance_lines(self, n: int) -> None:
        if n > 0:
            self._lines += n
            if self._bar is not None:
                self._bar.update(n)

    def done(self, rows: int, tokens: int) -> None:
        self.tokens += tokens
        self._lines += rows
        if not self.enabled:
            return
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{rate:,.0f} tokens/s", refresh=False)
            self._bar.update(rows)
        elif time.perf_counter() - self._last_print >= 10:
            self._last_print = time.perf_counter()
            total = f"/{self._total:,}" if self._total else ""
            print(f"{self._lines:,}{total} rows, {rate:,.0f} tokens/s", file=sys.stderr)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            if self._total is not None and self._total > self._lines:
                self._bar.update(self._total - self._lines)  # trailing blank lines
            self._bar.close()


# ---------------------------------------------------------------------------------------------
# The single-machine job


def run_batch(input: str | os.PathLike, output: str | os.PathLike, model=None, *,
              batch_size: int = DEFAULT_BATCH_SIZE, chunk_size: int = DEFAULT_CHUNK_SIZE,
              input_format: str = "auto", errors: str | os.PathLike | None = None,
              num_threads: int | None = None, dtype: str | None = None, progress: bool = False,
              report_bad_rows: bool = False, resume_changed: bool = False,
              **params) -> BatchSummary:
    """Generate for every prompt of `input` and append the results to `output` (JSONL).

    Args:
        input: a JSONL or plain-text file of prompts, or "-" for stdin (see `read_rows`).
        output: the JSONL results file, one line per row: {"id", "prompt", "text",
            "prompt_tokens", "new_tokens", "finish_reason" ("stop" or "length"), "seed"}.
            If it exists, rows whose id it holds are skipped: re-running resumes.  Beside it,
            OUTPUT.manifest records what the results were made with (fastlstm.manifest).
        model: a loaded `Model`, a model file path, or None for the bundled model.
        batch_size: prompts per generate call (rows are sorted by parameters and length
            within each chunk first).
        chunk_size: rows per write; each chunk is written whole, in input order, and fsynced,
            so a crash loses at most one chunk of work.
        input_format: "auto", "jsonl" or "text".
        errors: a file to write every bad row to, as JSONL {"line", "error", "id"}.
        num_threads: threads, when `model` is loaded here.
        dtype: the precision to load `model` in (see `fastlstm.load`), when it is a path.
        progress: show a progress bar (tqdm if installed) on stderr.
        report_bad_rows: print bad rows to stderr (the first 20) as they are found.
        resume_changed: resume even if the output's results were made from other input
            rows or options (see Job); otherwise that raises ChangedJobError.
        **params: the job's generation parameters (Model.generate's names: max_new_tokens,
            temperature, top_k, top_p, min_p, repetition_penalty, stop, eos_token_id, seed);
            a JSONL row may override any of them for itself.  `seed` is the job seed each
            row's seed is derived from (see `row_seed`); None draws one at random, or, when
            resuming, takes the seed the output was started with.

    Returns:
        A BatchSummary: rows generated, skipped, bad rows with their line numbers, tokens.

    Raises:
        ValueError: a bad job option, or an output that is not a result file; the subclass
            ChangedJobError when resuming an output made by a different job.
        OSError: a missing input, or an output that cannot be written (a full disk): the file
            then holds whole chunks only, and running the job again resumes it.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    model = _load(model, num_threads, dtype)
    job = Job(input, output, model, params, input_format=input_format,
              chunk_size=chunk_size, errors=errors, progress=progress,
              report_bad_rows=report_bad_rows, resume_changed=resume_changed)
    try:
        for window in job.windows():
            results: list[dict | str] = []
            for batch in batches(window, batch_size):
                results += generate_tasks(model, batch)
            job.write(window, results)
    finally:
        summary = job.close()
    return summary


def _load(model, num_threads, dtype):
    from fastlstm.model import Model, load

    if isinstance(model, Model):
        if dtype is not None and dtype != model.dtype:
            raise ValueError(f"dtype={dtype!r}, but the model given is loaded as {model.dtype}")
        return model
    return load(model, dtype=dtype, num_threads=num_threads)
