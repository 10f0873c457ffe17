"""The job manifest: what a batch job's results were made with, kept beside its output.

A `fastlstm batch` job writing OUTPUT keeps OUTPUT.manifest, a JSON-lines file appended to
like the output and as safely (whole lines, fsynced, a torn last line cut off when opened):

    {"manifest": "fastlstm batch", "version": 1, "job": JOB}        first line: the options
    {"rows": [[id, prompt_digest], [id, prompt_digest, {own parameters}], ...]}   per chunk
    {"job": JOB, "resumed_with_changes": [what differed, ...]}        after an override

JOB holds what decides the text of every row: the model file's SHA-256 and the precision its
weights were held in, the job seed, and every generation parameter of the job (defaults
included, so `max_new_tokens=100` and leaving it out are the same job); plus, for the record
only, the model and input paths and the fastlstm version.  A row's entry holds its id, a
digest of its prompt (BLAKE2b, 8 bytes, hex) and the parameters the row sets itself (its JSONL
fields besides id and prompt).  A chunk's entries are written before the chunk's results, so
every result has an entry; a crash in between leaves entries for rows not done, which the next
run writes again.  The last JOB line and the last entry of each id are the ones that count.

When a job resumes, fastlstm.batch.Job compares the options it is given with the last JOB and
each already-done row of the input with its entry, and refuses to mix results made from
different rows or options unless told to (`resume_changed`, `--resume-changed`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from fastlstm.durable import append_whole, recover_lines

__all__ = ["MANIFEST_SUFFIX", "Manifest", "job_options", "option_differences"]

MANIFEST_SUFFIX = ".manifest"
_FORMAT = "fastlstm batch"
_VERSION = 1
_COMPARED = ("model.sha256", "model.dtype", "seed")  # and every "params" entry


def job_options(model, params: dict, seed: int, input) -> dict:
    """The JOB record of a job run with `model` (a loaded Model), its generation `params`
    (checked, without seed), its resolved job `seed` and its `input` path."""
    from fastlstm import __version__
    from fastlstm.params import GenerationParams

    full = GenerationParams(**params)
    canonical = {}
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "min_p",
                 "repetition_penalty", "stop", "eos_token_id"):
        value = getattr(full, name)
        canonical[name] = list(value) if isinstance(value, tuple) else value
    return {"model": {"file": model.path, "sha256": _file_sha256(model.path),
                      "dtype": model.dtype},
            "seed": seed, "params": canonical, "input": os.fspath(input),
            "fastlstm": __version__}


def _file_sha256(path: str | None) -> str | None:
    if path is None:  # a Model built without a file: nothing to identify it by
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def option_differences(then: dict, now: dict) -> list[str]:
    """What differs between two JOB records, in words ("temperature: 0.8 then, 0.9 now")."""
    out = []
    model_then, model_now = then.get("model", {}), now["model"]
    if model_then.get("sha256") != model_now["sha256"]:
        out.append(f"the model: {_short(model_then.get('sha256'))} "
                   f"({model_then.get('file')}) then, {_short(model_now['sha256'])} "
                   f"({model_now['file']}) now (SHA-256 of the file)")
    if model_then.get("dtype") != model_now["dtype"]:
        out.append(f"the weight precision (dtype): {model_then.get('dtype')} then, "
                   f"{model_now['dtype']} now")
    if then.get("seed") != now["seed"]:
        out.append(f"the job seed: {then.get('seed')} then, {now['seed']} now")
    params_then = then.get("params", {})
    for name, value in now["params"].items():
        if params_then.get(name, _ABSENT) != value:
            out.append(f"{name}: {_show(params_then.get(name, _ABSENT))} then, "
                       f"{_show(value)} now")
    return out


class _Absent:
    def __repr__(self) -> str:
        return "not set"


_ABSENT = _Absent()


def _show(value) -> str:
    return repr(value) if value is _ABSENT else json.dumps(value, ensure_ascii=False)


def _short(sha: str | None) -> str:
    return "unknown" if sha is None else sha[:12]


def prompt_digest(prompt: str) -> str:
    """16 hex digits identifying a prompt (BLAKE2b, 8 bytes)."""
    return hashlib.blake2b(prompt.encode("utf-8"), digest_size=8,
                           person=b"fastlstm-prompt").hexdigest()


def _fingerprint(digest: str, own: dict) -> int:
    """One int per entry: what resuming compares (held in memory for every done row)."""
    data = digest + "\0" + json.dumps(own, sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "little")


def _key(row_id) -> str:
    return json.dumps(row_id, ensure_ascii=False)  # as fastlstm.batch.id_key


def _parse(record, first: bool) -> dict[str, int] | None:
    """A manifest line's entries as {id key: fingerprint}, or None if it is not one."""
    if not isinstance(record, dict) or not ("job" in record or "rows" in record):
        return None
    if "job" in record and not isinstance(record["job"], dict):
        return None
    if first and (record.get("manifest") != _FORMAT or "job" not in record):
        return None
    rows = {}
    for entry in record.get("rows", ()):
        if not (isinstance(entry, list) and 2 <= len(entry) <= 3 and isinstance(entry[1], str)
                and isinstance(entry[2] if len(entry) > 2 else {}, dict)):
            return None
        rows[_key(entry[0])] = _fingerprint(entry[1], entry[2] if len(entry) > 2 else {})
    return rows


class Manifest:
    """OUTPUT.manifest, open for appending.  Open it while holding the output's lock.

    Args:
        path: the manifest's path (the output's path + MANIFEST_SUFFIX).
        keep: False empties it (a job starting on an output with no results); True reads it.

    After opening, `job` is the last JOB record (None if there is none) and `missing` says
    whether the file did not exist.
    """

    def __init__(self, path: str, keep: bool):
        self.path = path
        self.missing = not os.path.exists(path)
        self.job: dict | None = None
        self._rows: dict[str, int] = {}  # id key -> fingerprint of its last entry
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if keep:
                self._read()
            else:
                os.ftruncate(self._fd, 0)
        except BaseException:
            os.close(self._fd)
            raise

    def _read(self) -> None:
        def accept(number: int, record: dict) -> bool:
            rows = _parse(record, first=number == 1)
            if rows is None:
                return False
            if number == 1 and record.get("version") != _VERSION:
                raise ValueError(f"{self.path} is a version {record.get('version')} "
                                 f"manifest; this fastlstm reads version {_VERSION}")
            if "job" in record:
                self.job = record["job"]
            self._rows.update(rows)
            return True

        recover_lines(self._fd, self.path, accept, "fastlstm batch manifest line")

    # -- writing ----------------------------------------------------------------------------

    def start(self, job: dict) -> None:
        """Write the first line: the options of a job starting on an empty output."""
        self._append({"manifest": _FORMAT, "version": _VERSION, "job": job})
        self.job = job

    def resume_with_changes(self, job: dict, changes: list[str],
                            rows: Iterable[tuple]) -> None:
        """Record that a job resumed although `changes` differed: its options become the ones
        later runs compare with, and `rows` (id, prompt, own parameters) the new entries of
        the done rows that changed, kept as they are."""
        if self.job is None:
            self._append({"manifest": _FORMAT, "version": _VERSION, "job": job,
                          "resumed_with_changes": changes})
        else:
            self._append({"job": job, "resumed_with_changes": changes})
        self.job = job
        self.record(rows)

    def record(self, rows: Iterable[tuple]) -> None:
        """Write the entries of `rows` (id, prompt, own parameters): before their results."""
        entries = []
        for row_id, prompt, own in rows:
            digest = prompt_digest(prompt)
            entries.append([row_id, digest, own] if own else [row_id, digest])
        if not entries:
            return
        self._append({"rows": entries})
        for entry in entries:
            self._rows[_key(entry[0])] = _fingerprint(entry[1],
                                                      entry[2] if len(entry) > 2 else {})

    def _append(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        append_whole(self._fd, data, self.path, hint="; the results written so far are kept: "
                     "make room, then run the same job again to resume")

    # -- comparing --------------------------------------------------------------------------

    def matches(self, row_id, prompt: str, own: dict) -> bool:
        """Whether a row's last entry has this prompt and these own parameters."""
        return self._rows.get(_key(row_id)) == _fingerprint(prompt_digest(prompt), own)

    def explain(self, rows: list[tuple]) -> list[str]:
        """For rows (id, prompt, own parameters) that do not match: what differs, in words.
        Reads the file again (only done when refusing a job, for a few rows)."""
        wanted = {_key(r[0]) for r in rows}
        last: dict[str, list] = {}
        with open(self._fd, "rb", closefd=False) as f:
            f.seek(0)
            for raw in f:
                for entry in json.loads(raw).get("rows", ()):
                    if _key(entry[0]) in wanted:
                        last[_key(entry[0])] = entry
        out = []
        for row_id, prompt, own in rows:
            entry = last.get(_key(row_id))
            if entry is None:
                out.append("not in the manifest")
                continue
            what = []
            if entry[1] != prompt_digest(prompt):
                what.append("the prompt")
            own_then = entry[2] if len(entry) > 2 else {}
            for name in sorted(set(own_then) | set(own)):
                if own_then.get(name, _ABSENT) != own.get(name, _ABSENT):
                    what.append(f"{name}: {_show(own_then.get(name, _ABSENT))} then, "
                                f"{_show(own.get(name, _ABSENT))} now")
            out.append(", ".join(what) or "its parameters")
        return out

    def close(self) -> None:
        if self._fd >= 0:
            # A job refused before writing anything leaves no empty manifest behind.
            empty = os.fstat(self._fd).st_size == 0
            os.close(self._fd)
            self._fd = -1
            if empty and self.missing:
                os.unlink(self.path)
