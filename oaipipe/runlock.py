"""OS locks that end with their process: one run per run root, one writer per output file, one launch per
dataset, one writer of the job registry at a time.

Each lock is ``flock(2)`` (``LOCK_EX``) on a small lock file. The kernel drops it when the process ends,
however it ends (SIGKILL, a crash, a power cut of a container), so a lock is never stale and nothing ever
guesses from a pid or an age whether it still is. The holder writes who it is into the file (pid, host,
since when, what it does), so that a second process can say who holds it.

The lock file is removed by its holder on release. A process that opened the file before it was removed
sees, once it has the lock, that the path no longer leads to the file it locked, and opens it again: two
processes never both hold "the" lock of one path.

Do not delete a lock file by hand: while its holder runs, that would let a second process in.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import RunLockedError

__all__ = ["HeldLock", "LockBusy", "acquire", "describe_holder", "lock_outputs", "lock_run_root", "output_lock_path",
           "read_holder"]

#: the lock file of a run root (``<run.dir>/<pipeline name>/``)
RUN_LOCK_NAME = ".run.lock"

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            return False
        return True

except ImportError:  # pragma: no cover - Windows: a byte far past the holder's note
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True


class LockBusy(Exception):
    """The lock is held by another process (or another open of the file in this one); ``holder`` says who."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is locked by {describe_holder(holder)}")


class HeldLock:
    """A lock this process holds; :meth:`release` (or the end of a ``with`` block, or of the process) ends it."""

    def __init__(self, path: Path, fd: int, info: dict[str, Any]) -> None:
        self.path = path
        self._fd: int | None = fd
        self.info = info

    @property
    def held(self) -> bool:
        return self._fd is not None

    def update(self, **info: Any) -> None:
        """Add to what the holder says about itself (e.g. the run id once it is known)."""
        self.info.update(info)
        if self._fd is not None:
            _write_note(self._fd, self.info)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                if _same_file(fd, self.path):
                    self.path.unlink()  # while still holding it: see the module docstring
        finally:
            os.close(fd)  # closing the last descriptor drops the lock

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release: close its descriptor
        with contextlib.suppress(Exception):
            if self._fd is not None:
                os.close(self._fd)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_note(fd: int, info: dict[str, Any]) -> None:
    data = json.dumps(info, ensure_ascii=False, default=str).encode("utf-8") + b"\n"
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)


def _read_note(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        note = json.loads(os.read(fd, 65536).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def read_holder(path: Path) -> dict[str, Any]:
    """What the holder of the lock file ``path`` wrote about itself (``{}`` if nothing can be read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read_note(fd) or {}
    finally:
        os.close(fd)


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 4242 on host build-1 since 2026-11-25T06:30:00+00:00 (`oaipipe run p.yaml`)``."""
    if not holder:
        return "another process (it has not said who it is yet)"
    text = f"pid {holder.get('pid', '?')}"
    if holder.get("host"):
        text += f" on host {holder['host']}"
    if holder.get("since"):
        text += f" since {holder['since']}"
        with contextlib.suppress(ValueError, TypeError):
            age = (_dt.datetime.now(_dt.UTC) - _dt.datetime.fromisoformat(holder["since"])).total_seconds()
            text += f" ({_ago(age)})"
    if holder.get("command"):
        text += f" (`{holder['command']}`)"
    return text


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _command() -> str:
    argv = [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv and sys.argv[0] else []
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def acquire(path: Path, *, wait: float = 0.0, poll: float = 0.02, **info: Any) -> HeldLock:
    """Take the lock file ``path`` (its folder is created), waiting up to ``wait`` seconds for a holder to end.

    ``info`` is added to what the holder writes about itself (``pid``, ``host``, ``since``, ``command``).
    Raises :class:`LockBusy` naming the holder when the lock is still held after ``wait``; ``OSError``
    when the file cannot be created (the caller maps it onto a :class:`~oaipipe.errors.StorageError`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if _try_lock(fd):
                if _same_file(fd, path):  # not removed by a holder that released it meanwhile
                    note = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(),
                            "command": _command(), **info}
                    _write_note(fd, note)
                    held, fd = HeldLock(path, fd, note), -1
                    return held
            elif time.monotonic() >= deadline:
                holder = _read_note(fd) or {}
                for _ in range(25):  # a holder that has just taken it writes its note right after
                    if holder:
                        break
                    time.sleep(0.02)
                    holder = _read_note(fd) or {}
                raise LockBusy(path, holder)
        finally:
            if fd >= 0:
                os.close(fd)
        time.sleep(poll)


# --- the locks of a run --------------------------------------------------------------------------


def lock_run_root(root: Path, *, pipeline: str, file: str | None = None) -> HeldLock:
    """The lock of one pipeline's run root: one run of it at a time. A second run stops at once with a
    :class:`~oaipipe.errors.RunLockedError` naming the holder (exit code 10)."""
    path = Path(root) / RUN_LOCK_NAME
    try:
        return acquire(path, pipeline=pipeline, file=file)
    except LockBusy as busy:
        holder = busy.holder
        raise RunLockedError(
            f"another run of pipeline '{pipeline}' is running: {describe_holder(holder)}; it holds the lock "
            f"{path}",
            path=path, holder=holder,
            hint="wait for it to finish and rerun the same command (it continues where that run stops), or stop "
                 f"it (kill {holder.get('pid', 'PID')}; Ctrl-C in its terminal). The lock ends with its process: "
                 "there is nothing to delete",
        ) from None


def output_lock_path(target: Path, folder: Path) -> Path:
    """The lock file of the output file ``target`` in ``folder`` (named by a hash of the resolved path)."""
    resolved = os.path.realpath(target)
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:24]
    return Path(folder) / f"out-{digest}.lock"


def lock_outputs(targets: list[tuple[str, Path]], folder: Path, *, pipeline: str,
                 run_id: str | None = None) -> list[HeldLock]:
    """Lock each output file (``(sink name, path)``) so that two runs never write one file at once, even
    runs of different pipelines. On a conflict every lock taken is released and a
    :class:`~oaipipe.errors.RunLockedError` names the file and the other run."""
    held: list[HeldLock] = []
    seen: set[Path] = set()
    try:
        for name, target in targets:
            lock = output_lock_path(target, folder)
            if lock in seen:  # two sinks of this pipeline on one file: not a conflict between runs
                continue
            seen.add(lock)
            try:
                held.append(acquire(lock, pipeline=pipeline, run_id=run_id, output=str(target), sink=name))
            except LockBusy as busy:
                holder = busy.holder
                other = f"pipeline '{holder['pipeline']}'" if holder.get("pipeline") else "another run"
                raise RunLockedError(
                    f"sink {name}: {target} is being written by {other}: {describe_holder(holder)}",
                    path=target, holder=holder,
                    hint="two runs must not write one file at once: point this sink's `path:` elsewhere, or wait "
                         "for the other run to finish and rerun",
                ) from None
    except BaseException:
        for lock_ in held:
            lock_.release()
        raise
    return held
