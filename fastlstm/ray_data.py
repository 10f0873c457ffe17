"""Ray Data integration: generate with fastlstm inside `Dataset.map_batches`, on a Ray cluster.

    import ray
    from fastlstm.ray_data import FastlstmPredictor

    ds = ray.data.read_json("prompts.jsonl")                  # a "prompt" column, maybe "id"
    ds = ds.map_batches(FastlstmPredictor, fn_constructor_kwargs={"max_new_tokens": 64, "seed": 1},
                        batch_size=256, compute=ray.data.ActorPoolStrategy(size=4), num_cpus=1)

`run_batch_ray` is `fastlstm batch --ray`: the single-machine job (fastlstm.batch) with the
generation spread over Ray actors.  The driver reads and checks the rows, skips those already
written and writes the results through the same resumable writer, so the output, its order
and resuming are those of the single-machine job.

Needs the `ray` extra (`pip install "fastlstm[ray]"`); ray is imported only when used.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading

import numpy as np

from fastlstm.batch import (DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, ROW_PARAMS, BatchSummary, Job,
                            JobError, Task, TaskMaker, generate_tasks)

__all__ = ["FastlstmPredictor", "run_batch_ray"]

_OUTPUT_COLUMNS = ("text", "prompt_tokens", "new_tokens", "finish_reason", "seed", "error")
CHUNKS_PER_ROUND = 64  # chunks per Ray dataset: bounds what the driver holds in memory
DEFAULT_MAX_RESTARTS = 3  # restarts of a dying actor (Ray Data's default: forever)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError('fastlstm batch --ray needs Ray Data: pip install "fastlstm[ray]" '
                          '(or "ray[data]")') from None
    return ray


class FastlstmPredictor:
    """A callable class for `ray.data.Dataset.map_batches`: loads the model once per actor,
    then generates a batch of prompts per call, in one batched fastlstm run.

    Args:
        model: a model file path, readable on every node (None: the bundled model).
        num_threads: threads per actor; give map_batches the same `num_cpus`.
        dtype: the precision to hold the weights in (see `fastlstm.load`); None: the file's.
        **params: generation parameters, as `Model.generate` (max_new_tokens, temperature,
            top_k, top_p, min_p, repetition_penalty, stop, eos_token_id, seed).

    Input columns: "prompt" (str, required); optional "id" (str or int); optional per-row
    parameters, as columns named like them ("max_new_tokens", "temperature", ..., "seed": what
    `ray.data.read_json` makes of fastlstm batch's JSONL input; a null is "not set") and/or a
    "params" column holding a JSON object per row; they override **params for that row.  A
    row's seed is its own "seed", else `row_seed(seed, id)` when there is an "id" column (as
    `fastlstm batch` does), else `seed` itself; so a row's text never depends on how rows are
    batched or spread over actors.

    Output: the input columns plus "text", "prompt_tokens", "new_tokens", "finish_reason"
    ("stop" or "length"), "seed" (the one used) and "error" (None, or why a row could not be
    generated: its "text" is then None).
    """

    def __init__(self, model: str | os.PathLike | None = None, *, num_threads: int = 1,
                 dtype: str | None = None, **params):
        from fastlstm.model import load

        self.model = load(model, dtype=dtype, num_threads=num_threads)
        if self.model.tokenizer is None:
            raise ValueError("FastlstmPredictor needs a model with a tokenizer (prompts are text)")
        params = dict(params)
        job_seed = params.pop("seed", None)
        self.tasks = TaskMaker(self.model, params, job_seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "prompt" not in batch:
            raise ValueError(f"the batch has no 'prompt' column (columns: {', '.join(batch)})")
        n = len(batch["prompt"])
        tasks: list[Task] = []
        where: list[int] = []
        errors: list[str | None] = [None] * n
        for i in range(n):
            try:
                tasks.append(self._task(batch, i))
                where.append(i)
            except ValueError as e:
                errors[i] = str(e)
        results = generate_tasks(self.model, tasks) if tasks else []

        out = {k: v for k, v in batch.items()}
        text = np.full(n, None, object)
        prompt_tokens = np.zeros(n, np.int64)
        new_tokens = np.zeros(n, np.int64)
        finish = np.full(n, None, object)
        seeds = np.zeros(n, np.uint64)
        for i, task, result in zip(where, tasks, results):
            seeds[i] = task.seed
            if isinstance(result, str):
                errors[i] = result
                continue
            text[i] = result["text"]
            prompt_tokens[i] = result["prompt_tokens"]
            new_tokens[i] = result["new_tokens"]
            finish[i] = result["finish_reason"]
        out.update(text=text, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                   finish_reason=finish, seed=seeds, error=np.array(errors, object))
        return out

    def _task(self, batch, i: int) -> Task:
        prompt = batch["prompt"][i]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        row_params = {}
        if "params" in batch and _cell(batch["params"][i]) is not None:
            row_params = batch["params"][i]
            row_params = (json.loads(row_params) if isinstance(row_params, (str, bytes))
                          else dict(row_params))
        for name in ROW_PARAMS:  # columns named like parameters, as in fastlstm batch's JSONL
            if name in batch and (value := _cell(batch[name][i], name)) is not None:
                row_params[name] = value
        row_id = _cell(batch["id"][i]) if "id" in batch else None
        return self.tasks.task(0, row_id, prompt, row_params)


_INT_PARAMS = ("max_new_tokens", "top_k", "seed")


def _cell(value, name: str = ""):
    """A value from a batch column as the plain Python value a JSONL row would hold: None
    for a missing one (Arrow's nulls arrive as None or, in number columns, NaN), NumPy scalars
    and arrays as ints, floats, strs and lists; whole floats as ints for integer parameters
    (an int column with nulls arrives as floats)."""
    if isinstance(value, np.ndarray):
        return [_cell(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if value != value:
            return None
        if name in _INT_PARAMS and value.is_integer():
            return int(value)
    if name == "eos_token_id" and isinstance(value, list):
        return [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# fastlstm batch --ray


def run_batch_ray(input: str | os.PathLike, output: str | os.PathLike, model=None, *,
                  address: str | None = None, workers: int | None = None, num_threads: int = 1,
                  dtype: str | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  input_format: str = "auto", errors: str | os.PathLike | None = None,
                  progress: bool = False, report_bad_rows: bool = False,
                  resume_changed: bool = False, max_restarts: int = DEFAULT_MAX_RESTARTS,
                  **params) -> BatchSummary:
    """`fastlstm.batch.run_batch` with the generation spread over Ray actors.

    Same arguments and result as run_batch, and the same output: rows, order, seeds and
    resuming are the driver's (this process), so a file started on one machine can be
    finished on Ray and the other way round.  Besides:

    Args:
        model: a model file path readable at that path on every node (a shared file system),
            or None for the bundled model; a loaded Model is sent by its path.
        address: the Ray cluster to join ("auto", "ray://host:10001", ...); None starts a
            local Ray instance, unless this process has already called ray.init.
        workers: actors, each loading the model once (default: the cluster's CPUs divided by
            num_threads).
        num_threads: threads (and Ray CPUs) per actor.
        dtype: the precision each actor holds the weights in (see `fastlstm.load`); None:
            the file's, or that of a loaded Model.
        max_restarts: how many times Ray restarts an actor whose process dies (killed, out
            of memory, its node lost), retrying the batch it was running each time.  Results
            are keyed by input line, so a retried batch is written once.  When an actor dies
            once more, the job stops with JobError; the chunks written are kept.

    The driver reads at most 64 chunks of rows ahead, runs them as one Ray Dataset through
    `map_batches(FastlstmPredictor, ...)` with an actor pool, and writes each chunk, in input
    order, as soon as its results are in.  A Ray instance started here is shut down at the end.
    """
    ray = _import_ray()
    from fastlstm.model import Model, load

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
    if isinstance(model, Model):
        model, dtype = model.path, dtype or model.dtype
    if os.fspath(input) != "-" and not os.path.isfile(input):
        raise FileNotFoundError(f"no input file {os.fspath(input)!r}")  # before starting Ray
    driver_model = load(model, dtype=dtype, num_threads=1)  # checks rows (tokenizer, parameters) here
    started = not ray.is_initialized()
    if started:
        main_thread = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
        ray.init(address=address, include_dashboard=False, logging_level="ERROR")
        if sigterm is not None:  # ray.init makes SIGTERM exit at once; the caller's stays
            signal.signal(signal.SIGTERM, sigterm)
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1) // num_threads))
        # Ray Data settings for this job, restored after it: the caller's Ray is theirs.
        logger = logging.getLogger("ray.data")
        context = ray.data.DataContext.get_current()
        saved = (logger.level, context.execution_options.preserve_order,
                 context.enable_progress_bars)
        logger.setLevel(logging.ERROR)  # no per-dataset info lines
        context.execution_options.preserve_order = True  # chunks complete in input order
        context.enable_progress_bars = False  # ours counts rows and tokens
        try:
            summary = _run_job(ray, Job(input, output, driver_model, params,
                                        input_format=input_format, chunk_size=chunk_size,
                                        errors=errors, progress=progress,
                                        report_bad_rows=report_bad_rows,
                                        resume_changed=resume_changed),
                               model, dtype, workers, num_threads, batch_size, max_restarts)
        finally:
            logger.setLevel(saved[0])
            context.execution_options.preserve_order, context.enable_progress_bars = saved[1:]
    finally:
        if started:
            ray.shutdown()
    return summary


def _run_job(ray, job: Job, model, dtype: str | None, workers: int, num_threads: int,
             batch_size: int, max_restarts: int) -> BatchSummary:
    # A dead actor is restarted (a fresh process loading the model) and the batch it was
    # running is retried on it, max_restarts times each; Ray Data would retry forever.  (They
    # go through map_batches' **ray_remote_args, which Ray 2.60 deprecates with no named
    # parameter for them yet.)
    predictor = dict(fn=FastlstmPredictor, batch_size=batch_size, batch_format="numpy",
                     fn_constructor_kwargs={"model": model, "num_threads": num_threads,
                                            "dtype": dtype},
                     num_cpus=num_threads, compute=ray.data.ActorPoolStrategy(size=workers),
                     max_restarts=max_restarts, max_task_retries=max_restarts)
    try:
        windows = job.windows()
        while True:
            chunks = [w for _, w in zip(range(CHUNKS_PER_ROUND), windows)]
            if not chunks:
                break
            try:
                _run_round(ray, job, chunks, batch_size, workers, predictor)
            except ray.exceptions.RayError as e:
                raise _job_error(ray, e, job, max_restarts) from e
    finally:
        summary = job.close()
    return summary


def _job_error(ray, error: Exception, job: Job, max_restarts: int) -> JobError:
    """A Ray failure as JobError: what failed (the first line of Ray's message) and that the
    results written are kept."""
    first_line = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else ""
    died = (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError,
            ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)
    if isinstance(error, died):
        what = (f"a Ray worker died more often than its {max_restarts} restart"
                f"{'' if max_restarts == 1 else 's'} allow (max_restarts, --max-restarts)")
    else:
        what = "the Ray job failed"
    return JobError(f"{what}: {type(error).__name__}: {first_line}; the "
                    f"{len(job.writer.done):,} results in {job.writer.path} are kept: run the "
                    "same job again to resume")


def _run_round(ray, job: Job, chunks: list[list[Task]], batch_size: int, workers: int,
               predictor: dict) -> None:
    """Generate `chunks` (windows of tasks) as one Ray Dataset; write each as it completes."""
    import pyarrow as pa

    tasks = [t for chunk in chunks for t in chunk]
    table = pa.table({
        "line": pa.array([t.line for t in tasks], pa.int64()),
        "prompt": pa.array([t.prompt for t in tasks], pa.string()),
        "params": pa.array([t.params_key for t in tasks], pa.string()),
        "seed": pa.array([t.seed for t in tasks], pa.uint64()),
    })
    # Blocks of a batch each, but at least one per worker: a small round still uses them all.
    block = max(1, min(batch_size, -(-len(tasks) // workers)))
    blocks = [table.slice(i, block) for i in range(0, len(tasks), block)]
    ds = ray.data.from_arrow(blocks).map_batches(**predictor)

    by_line = {t.line: (k, t) for k, chunk in enumerate(chunks) for t in chunk}
    results: list[dict] = [{} for _ in chunks]
    next_chunk = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        columns = [batch[c] for c in ("line",) + _OUTPUT_COLUMNS]
        for line, text, prompt_tokens, new_tokens, finish, seed, error in zip(*columns):
            k, task = by_line[int(line)]
            # An all-None "error" column reaches us as Arrow nulls, i.e. NaN: test for str.
            results[k][task.line] = error if isinstance(error, str) else {
                "id": task.id, "prompt": task.prompt, "text": text,
                "prompt_tokens": int(prompt_tokens), "new_tokens": int(new_tokens),
                "finish_reason": finish, "seed": int(seed)}
        while next_chunk < len(chunks) and len(results[next_chunk]) == len(chunks[next_chunk]):
            chunk = chunks[next_chunk]
            job.write(chunk, [results[next_chunk][t.line] for t in chunk])
            results[next_chunk] = {}
            next_chunk += 1
    if next_chunk != len(chunks):
        raise RuntimeError(f"Ray returned results for {sum(map(len, results))} rows of "
                           f"{sum(map(len, chunks[next_chunk:]))} still expected")
