"""Durable appends for batch jobs: a chunk of bytes reaches a file whole, or not at all.

`append_whole` writes a chunk with os.write (looping over short writes) and fsyncs it.  If the
write fails part way (a full disk, a quota, an I/O error), the file is cut back to where the
chunk began, so it never ends in part of a chunk, and the OSError names the file.  SIGINT and
SIGTERM that arrive while a chunk is written are held until it is fsynced (`deferred_signals`),
so Ctrl-C or a scheduler's SIGTERM stops a job between chunks, never inside one.  Only SIGKILL
or a power loss can leave a torn chunk, which `recover_lines` cuts off when the file is
next opened (by fastlstm.batch.ResultWriter and fastlstm.manifest.Manifest).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["append_whole", "deferred_signals", "fsync_dir", "lock", "recover_lines"]

_DEFERRED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


@contextmanager
def deferred_signals(signums: tuple[int, ...] = _DEFERRED) -> Iterator[None]:
    """Hold SIGINT and SIGTERM during the block; deliver them, once each, when it ends.

    Python runs signal handlers in the main thread only, so only there can a signal split the
    block; elsewhere this does nothing.  Signals whose handler was not set from Python (it
    could not be put back) or that are ignored are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {}
    try:
        for signum in signums:
            handler = signal.getsignal(signum)
            if handler is None or handler == signal.SIG_IGN:
                continue
            saved[signum] = signal.signal(signum, lambda s, frame: caught.append(s))
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)  # its own handler now: KeyboardInterrupt, exit, ...


def append_whole(fd: int, data: bytes, path: str, hint: str = "") -> None:
    """Append `data` to the file open as `fd` (with O_APPEND) and fsync it, whole or not at all.

    Raises OSError (errno kept) saying "cannot write to PATH: <reason>" plus `hint`, after
    cutting the file back to its length before the call.  A signal that arrives meanwhile
    takes effect after the fsync (see deferred_signals).
    """
    with deferred_signals():
        start = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException as e:
            _cut_back(fd, start)
            if isinstance(e, OSError):
                raise _named(e, path, hint) from e
            raise


def _named(error: OSError, path: str, hint: str) -> OSError:
    """An OSError with the original's errno whose message names the file and says what is
    kept (strerror and filename stay unset: OSError would then print "[Errno 28] ..." only)."""
    named = OSError(f"cannot write to {path}: {error.strerror or error}{hint}")
    named.errno = error.errno
    return named


def recover_lines(fd: int, path: str, accept: Callable[[int, dict], bool], what: str) -> int:
    """Read the JSON-lines file open as `fd`; cut off a torn tail; return the bytes cut off.

    Each whole line that is a JSON object goes to accept(line_number, record), which says
    whether it is one of ours (`what`, e.g. "fastlstm batch result").  A torn tail is what a
    crash in the middle of an append can leave after the last whole line: a last line without
    its newline, and lines holding NUL bytes (blocks the file system allotted but never
    wrote, after a power loss; JSON text never holds one).  Anything else that is not ours, or
    a line of ours after a torn tail, means the file is not ours or was edited: ValueError,
    and the file is left as it is.
    """
    good_end, torn_line = 0, None
    with open(fd, "rb", closefd=False) as f:
        f.seek(0)
        for number, raw in enumerate(f, 1):
            record = None
            if raw.endswith(b"\n"):
                try:
                    record = json.loads(raw)
                except (ValueError, RecursionError):
                    pass
            if isinstance(record, dict) and accept(number, record):
                if torn_line is not None:
                    raise ValueError(f"{path} line {torn_line} is not a {what} but line "
                                     f"{number} is: not a file this job can resume; move it "
                                     "away or choose another output")
                good_end = f.tell()
            elif not raw.endswith(b"\n") or b"\0" in raw:
                torn_line = torn_line or number
            else:
                raise ValueError(f"{path} line {number} is not a {what}: not a file this job "
                                 "can resume (nothing was changed in it); move it away or "
                                 "choose another output")
        size = f.seek(0, os.SEEK_END)
    if size > good_end:
        os.ftruncate(fd, good_end)
        os.fsync(fd)
    return size - good_end


def _cut_back(fd: int, length: int) -> None:
    """Drop a partly written chunk.  Truncating frees space, so it works on a full disk; if even
    this fails, the next open cuts the torn tail off, as after a crash."""
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    except OSError:
        pass


def lock(fd: int, path: str) -> None:
    """Take an exclusive advisory lock on `fd`, or raise ValueError if another job holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one job per output is then up to the user
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(f"{path} is being written by another fastlstm batch job") from None


def fsync_dir(path: str) -> None:
    """Make a new file's directory entry durable too (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
