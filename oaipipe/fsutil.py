"""Atomic file writes: a temp file in the same folder, optionally fsync'd, moved into place with ``os.replace``.

Readers never see a half-written file: they see the old content or the new. This module imports nothing
from oaipipe, so any part of the package (the embedded engine included) may use it.

Temp files are named ``.<name>.<8 random characters>.oaipipe.tmp`` (or ``<prefix><random>.oaipipe.tmp``).
One left behind by a crash (SIGKILL between creating and renaming it) is removed by
:func:`remove_stale_temps`, which the writer calls while it holds the lock that makes it the only
writer of that file (the run lock for a run directory, a sink's output lock, the registry lock).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["AtomicFile", "atomic_file", "dumps_json", "remove_stale_temps", "remove_stale_temps_in", "same_file",
           "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]

#: the end of every temp file name :func:`atomic_file` makes
TEMP_SUFFIX = ".oaipipe.tmp"


class AtomicFile:
    """The open temp file of :func:`atomic_file` (``.fh``); :meth:`discard` leaves the target untouched."""

    def __init__(self, fh: IO[Any], tmp: str) -> None:
        self.fh = fh
        self.tmp = tmp
        self.discarded = False

    def discard(self) -> None:
        """Do not replace the target: the temp file is removed when the ``with`` block ends."""
        self.discarded = True


@contextmanager
def atomic_file(
    path: Path,
    mode: str = "w",
    *,
    fsync: bool = True,
    encoding: str | None = "utf-8",
    newline: str | None = None,
    prefix: str | None = None,
    mkdir: bool = True,
    errors: str | None = None,
) -> Iterator[AtomicFile]:
    """Write ``path`` through a temp file: ``with atomic_file(p) as out: out.fh.write(...)``.

    The parent folder is created (unless ``mkdir=False``: then a missing folder is a ``FileNotFoundError``,
    for files whose folder must not come back once removed, like a run directory's). On a normal exit the temp file is flushed (and fsync'd unless
    ``fsync=False``) and replaces ``path``, unless :meth:`AtomicFile.discard` was called; on an exception
    the temp file is removed and ``path`` is left as it was. ``prefix`` names the temp file
    (default ``.<name>.``; it always ends in ``.oaipipe.tmp``). ``errors`` is the text encoding's error
    handler (``surrogateescape`` writes back bytes read with it unchanged).
    """
    path = Path(path)
    _refuse_special(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path, prefix), suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:  # name the file the user gave, not a random temp name they never saw
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    binary = "b" in mode
    with contextlib.suppress(OSError):  # mkstemp makes 0600 files; give the usual permissions (umask)
        os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else newline,
                       errors=None if binary else errors) as fh:
            out = AtomicFile(fh, tmp)
            yield out
            if not out.discarded:
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
        if out.discarded:
            Path(tmp).unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refuse_special(path: Path) -> None:
    """A device, FIFO or socket at ``path`` would be replaced by a plain file (``/dev/null`` for everyone,
    when run as root): refuse it with an ``OSError`` naming the path."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OSError(errno.EEXIST, "not a regular file (a device, FIFO or socket): oaipipe writes a new file "
                                    "and moves it into place, which would replace it", str(path))


def _prefix(path: Path, prefix: str | None) -> str:
    return f".{path.name}." if prefix is None else prefix


def remove_stale_temps(path: Path, *, prefix: str | None = None) -> list[Path]:
    """Remove the temp files that atomic writes of ``path`` left behind (a crash between creating the temp
    file and moving it into place); return what was removed.

    Call it only while holding the lock that makes this process the only writer of ``path``: a temp file
    of a writer that is still running would be removed too. ``prefix`` as given to :func:`atomic_file`.
    Files of earlier oaipipe versions (``<prefix><random>.tmp``) are recognised as well.
    """
    path = Path(path)
    return _remove_matching(path.parent, re.compile(re.escape(_prefix(path, prefix)) + _TEMP_TAIL))


def remove_stale_temps_in(folder: Path) -> list[Path]:
    """Remove every temp file of an atomic write in ``folder`` (default prefixes). Only for a folder that
    this process alone writes while it holds a lock (a run directory under its run lock)."""
    return _remove_matching(Path(folder), re.compile(r"\..+\." + _TEMP_TAIL))


_TEMP_TAIL = r"[A-Za-z0-9_]{8}(?:\.oaipipe)?\.tmp"


def _remove_matching(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if pattern.fullmatch(name):
            temp = folder / name
            with contextlib.suppress(OSError):
                if temp.is_file() and not temp.is_symlink():
                    temp.unlink()
                    removed.append(temp)
    return removed


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True, prefix: str | None = None) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_file(path, "wb", fsync=fsync, prefix=prefix) as out:
        out.fh.write(data)


def write_text_atomic(path: Path, text: str, *, fsync: bool = True, encoding: str = "utf-8",
                      newline: str | None = "", prefix: str | None = None) -> None:
    """Replace ``path`` with ``text`` atomically (written as given: ``newline=""`` translates nothing)."""
    with atomic_file(path, "w", fsync=fsync, encoding=encoding, newline=newline, prefix=prefix) as out:
        out.fh.write(text)


def dumps_json(data: Any, *, indent: int | None = None) -> str:
    """``data`` as strict JSON (``ensure_ascii=False``, ``default=str``): NaN and ±Infinity are not JSON
    (other parsers refuse them), so they raise ``ValueError`` instead of being written."""
    try:
        return json.dumps(data, indent=indent, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc} (NaN and Infinity have no JSON form)") from None


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 2, fsync: bool = True,
                      prefix: str | None = None, trailing_newline: bool = True, mkdir: bool = True) -> None:
    """Replace ``path`` with ``data`` as strict JSON (:func:`dumps_json`) atomically; a NaN or Infinity
    raises ``ValueError`` and leaves ``path`` as it was."""
    text = dumps_json(data, indent=indent)
    with atomic_file(path, "w", fsync=fsync, newline="", prefix=prefix, mkdir=mkdir) as out:
        out.fh.write(text + "\n" if trailing_newline else text)


@functools.cache
def _umask() -> int:
    """The process umask, read once. ``os.umask`` can only be read by setting it, which is process-wide: a
    file another thread creates in that instant would get mode 0666, so Linux's /proc is preferred."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal after resolving symlinks, or (when both exist) the same
    inode (a hard link, a bind mount)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
