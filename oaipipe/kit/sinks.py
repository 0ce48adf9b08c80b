"""What the file sinks share: appending with a flush per record, and the resume rules.

On resume (``done_ids`` given) a sink drops what this run wrote for records that did not finish
(:func:`unfinished`), and always drops a last line cut short by a crash, so that every record ends up in
the file exactly once. :class:`AppendingSink` holds the append/flush/fsync plumbing of ``jsonl``, ``csv``
and ``dialogue-jsonl``; :class:`JsonlAppendingSink` adds the JSONL resume rewrite (:func:`reconcile_jsonl`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from ..base import Context, Sink
from ..errors import InputError
from ..fsutil import atomic_file
from ..types import RunInfo
from .sources import FileOptionsT

__all__ = ["AppendingSink", "JsonlAppendingSink", "MODE_FIELD_DOC", "first_line", "jsonl_written_by", "reconcile_jsonl", "start_over", "unfinished", "utc_now"]


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds: ``2026-11-25T06:30:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


MODE_FIELD_DOC = ("overwrite: a new run (the first, or --fresh, or after a change) starts the file over; "
                  "append: the file collects every run (each entry carries its run id). A resumed run always "
                  "continues the file")


def start_over(path: Path, *extra: Path, mode: str, done_ids: set[str] | None,
               ours: Callable[[Path], bool]) -> None:
    """For ``mode: overwrite``, remove the files a *new* run (``done_ids is None``) must start over.

    Only a file that oaipipe wrote (``ours(path)``) is removed: anything else is the user's, and is refused.
    """
    if mode != "overwrite" or done_ids is not None:
        return
    if path.is_file() and path.stat().st_size and not ours(path):
        raise InputError(f"{path} exists and was not written by this sink; it is not overwritten",
                         hint="move it away, or point the sink's `path:` elsewhere")
    for p in (path, *extra):
        p.unlink(missing_ok=True)


def first_line(path: Path) -> str:
    """The first line of the text file ``path`` (undecodable bytes replaced), ``""`` when it is empty."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        return fh.readline()


def jsonl_written_by(path: Path, *keys: str) -> bool:
    """Whether the first line of ``path`` is a JSON object with all of ``keys`` (one of our lines)."""
    try:
        obj = json.loads(first_line(path))
    except ValueError:
        return False
    return isinstance(obj, dict) and all(k in obj for k in keys)


def unfinished(run_value: Any, record_id: Any, *, run_id: str, done_ids: set[str] | None) -> bool:
    """Whether an entry written with ``run_value``/``record_id`` must go on resume: it belongs to this run
    (``run_id``) and its record is not among ``done_ids`` (it will be processed again). Never on a new run."""
    return done_ids is not None and run_value == run_id and str(record_id) not in done_ids


def reconcile_jsonl(path: Path, *, run_id: str, done_ids: set[str] | None, run_key: str, id_key: str) -> int:
    """Make an existing JSONL log safe to append to; returns the number of lines dropped.

    Drops a truncated last line (a crash mid-write) and, when ``done_ids`` is given (a resumed run), every
    line of this run (``line[run_key] == run_id``) whose ``line[id_key]`` is not in ``done_ids``: those
    records will be processed again. Other lines, including other runs' and lines that are not JSON, are
    kept byte for byte. The file is rewritten atomically, and only if something was dropped.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    needle = json.dumps(run_id).encode("utf-8")
    dropped = 0
    with atomic_file(path, "wb") as out, path.open("rb") as src:
        for line in src:
            if not line.endswith(b"\n"):
                dropped += 1  # truncated by a crash mid-write
                continue
            if done_ids is not None and needle in line:
                try:
                    obj = json.loads(line)
                except ValueError:
                    obj = None
                if isinstance(obj, dict) and unfinished(obj.get(run_key), obj.get(id_key), run_id=run_id,
                                                        done_ids=done_ids):
                    dropped += 1
                    continue
            out.fh.write(line)
        if not dropped:
            out.discard()
    return dropped


class AppendingSink(Sink[FileOptionsT]):
    """A sink that appends to the file ``options.path``, flushing after each record and fsync'ing on close.

    Subclasses open with :meth:`_open_for_append`, check with :meth:`_open_run` and write with
    :meth:`_append`; ``kind`` names the sink in messages.
    """

    kind: ClassVar[str] = "sink"

    def __init__(self, options: FileOptionsT | None = None, context: Context | None = None) -> None:
        super().__init__(options, context)
        self._fh: Any = None
        self._run: RunInfo | None = None

    @property
    def file(self) -> Path:
        return self.context.path(self.options.path)

    def _open_for_append(self, path: Path, run: RunInfo, *, newline: str) -> None:
        self._run = run
        self._fh = path.open("a", encoding="utf-8", newline=newline)

    def _open_run(self) -> RunInfo:
        """The run being written; a ``RuntimeError`` before :meth:`open`."""
        if self._fh is None or self._run is None:
            raise RuntimeError(f"{self.kind}: write() before open()")
        return self._run

    def _append(self, text: str) -> None:
        self._fh.write(text)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            finally:
                self._fh.close()
                self._fh = None


class JsonlAppendingSink(AppendingSink[FileOptionsT]):
    """An :class:`AppendingSink` of JSON lines that carry the run id (``run_key``) and record id (``id_key``)."""

    run_key: ClassVar[str]
    id_key: ClassVar[str]

    def open(self, run: RunInfo, done_ids: set[str] | None = None) -> None:
        path = self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        start_over(path, mode=getattr(self.options, "mode", "append"), done_ids=done_ids,
                   ours=lambda p: jsonl_written_by(p, self.run_key, self.id_key))
        reconcile_jsonl(path, run_id=run.run_id, done_ids=done_ids, run_key=self.run_key, id_key=self.id_key)
        self._open_for_append(path, run, newline="\n")

    def _append_objects(self, objects: list[dict[str, Any]]) -> None:
        """Append one JSON line per object, in one write."""
        self._append("".join(json.dumps(obj, ensure_ascii=False, default=str) + "\n" for obj in objects))
