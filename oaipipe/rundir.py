"""Run directories and the per-run journal.

Each run of a pipeline writes ``<run.dir>/<pipeline name>/<run id>/``:

- ``journal.jsonl`` — one line per finished record (``done`` or ``failed``), appended and flushed after the
  sinks have the record: ``{"id", "status", "fields", "exchanges", "error", "where", "time"}`` (``time``:
  when it finished, UTC, to the millisecond; the run store plots throughput from it). It is what a
  resumed run skips, and what ``train:`` builds a dataset from.
- ``errors.jsonl`` — one line per failed record: id, where it came from, the step, the error and its type.
- ``summary.json`` — written at the end (also when aborted or interrupted): counts, tokens, cost, status.
  A run with a ``train:`` step says ``training`` once its records are done, and ``finished`` only once
  the step has an outcome (the job ended, or was launched with ``wait: false``, or training was skipped).
- ``pipeline.json`` — the pipeline as run (secrets masked) and its fingerprint.

No secret reaches these files: ``pipeline.json`` and ``summary.json`` pass through
:func:`~oaipipe.errors.redact_data` here, and the runner hands every record through it before the
journal, ``errors.jsonl`` and the sinks see it.

A journal line is complete or absent: a line cut short by a crash is ignored when reading. A line that is
not valid UTF-8 JSON (a disk error, a hand edit) is skipped with a warning, and on resume moved out of the
journal into ``journal.rejected`` (kept for a look): its record is processed again.

The journal and error log are written through :class:`StateFile`, which notices when the run directory
is deleted under a running run (the file it appends to has no name left) and stops the run with a
:class:`~oaipipe.errors.StorageError` instead of writing on into a deleted file. ``summary.json`` is never
written into a run directory that no longer exists (it is not recreated).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import StorageError, redact_data
from .fsutil import remove_stale_temps_in, write_json_atomic

__all__ = ["RunDir", "StateFile", "find_runs", "new_run_id"]


_last_us = 0


def new_run_id() -> str:
    """``20261125-063000.123456-ab12``: UTC time to the microsecond, so that ids sort in creation order
    (the latest run is the one a rerun resumes), then a random suffix."""
    global _last_us
    now_us = max(time.time_ns() // 1000, _last_us + 1)  # strictly increasing within the process
    _last_us = now_us
    seconds, micro = divmod(now_us, 1_000_000)
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(seconds))}.{micro:06d}-{secrets.token_hex(2)}"


@dataclass
class RunDir:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def journal_path(self) -> Path:
        return self.path / "journal.jsonl"

    @property
    def errors_path(self) -> Path:
        return self.path / "errors.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def meta_path(self) -> Path:
        return self.path / "pipeline.json"

    def create(self, meta: dict[str, Any]) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.meta_path, redact_data(meta), mkdir=False)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.meta_path, doing="write") from None

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def summary(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def deleted_error(self) -> StorageError:
        return StorageError(
            f"the run directory {self.path} was deleted while the run was writing it: the run stopped "
            f"(its journal is gone, so what it did cannot be resumed)",
            path=self.path,
            hint="rerun the same command: a new run starts (sinks in mode overwrite start over); do not remove "
                 "a run directory while its run is going",
        )

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Replace ``summary.json``; never recreates a run directory that was deleted (a StorageError)."""
        if not self.path.is_dir():
            raise self.deleted_error()
        try:
            write_json_atomic(self.summary_path, redact_data(summary), mkdir=False)
        except FileNotFoundError:
            raise self.deleted_error() from None
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.summary_path, doing="write") from None

    def remove_stale_temps(self) -> list[Path]:
        """Remove temp files that a crash mid-write left in the run directory. Only under the run lock."""
        return remove_stale_temps_in(self.path)

    def open_state_file(self, path: Path) -> StateFile:
        """Open the journal or the error log for appending, watched for the deletion of the run directory."""
        try:
            return StateFile(path, self)
        except OSError as exc:
            raise StorageError.from_os_error(exc, path, doing="write") from None

    # --- reading the journal ------------------------------------------------------------------------

    def journal(self, warnings: dict[int, str] | None = None) -> Iterator[dict[str, Any]]:
        """Complete journal entries in order; a torn last line (crash mid-write) is skipped.

        A line that is not valid UTF-8, not JSON, or not an entry is skipped; ``warnings`` (if given)
        collects why, by line number.
        """
        try:
            fh = self.journal_path.open("rb")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.journal_path, doing="read") from None
        with fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.endswith(b"\n"):
                    break
                problem = None
                entry: Any = None
                try:
                    entry = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    problem = f"is not valid UTF-8 (byte {exc.start + 1})"
                except ValueError:
                    problem = "is not valid JSON"
                if problem is None and not (isinstance(entry, dict) and isinstance(entry.get("id"), str)):
                    problem = "is not a journal entry"
                if problem is not None:
                    if warnings is not None and raw.strip():
                        warnings[number] = problem
                    continue
                yield entry

    def status_by_id(self, warnings: dict[int, str] | None = None) -> dict[str, str]:
        """Status of each journaled record id: ``done`` once any of its lines is done (a retried record's
        later ``done`` wins; a later ``failed`` line of that id is a duplicate-id row, not a redo)."""
        statuses: dict[str, str] = {}
        for entry in self.journal(warnings):
            if statuses.get(entry["id"]) != "done":
                statuses[entry["id"]] = entry.get("status", "done")
        return statuses

    @property
    def rejected_path(self) -> Path:
        return self.path / "journal.rejected"

    def repair_journal(self) -> list[str]:
        """Make the journal safe to append to and to train on: cut a torn last line, and move lines that
        cannot be read (not UTF-8, not JSON) into ``journal.rejected``. Returns a warning per moved line."""
        self._cut_torn_line()
        warnings: dict[int, str] = {}
        for _ in self.journal(warnings):
            pass
        if not warnings:
            return []
        from .fsutil import atomic_file

        try:
            with atomic_file(self.journal_path, "wb", mkdir=False) as out, \
                    self.journal_path.open("rb") as src, self.rejected_path.open("ab") as rejected:
                for number, raw in enumerate(src, start=1):
                    (rejected if number in warnings else out.fh).write(raw)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.journal_path, doing="write") from None
        return [f"{self.journal_path.name} line {n} {why}: skipped, and its record is processed again "
                f"(the line is kept in {self.rejected_path})" for n, why in sorted(warnings.items())]

    def _cut_torn_line(self) -> None:
        """Cut a torn last line so that appends start on a fresh line."""
        path = self.journal_path
        if not path.exists() or path.stat().st_size == 0:
            return
        with path.open("rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 1))
            if fh.read(1) == b"\n":
                return
            # find the last newline and truncate after it
            pos = size - 1
            chunk = 4096
            while pos > 0:
                start = max(0, pos - chunk)
                fh.seek(start)
                data = fh.read(pos - start)
                idx = data.rfind(b"\n")
                if idx >= 0:
                    fh.truncate(start + idx + 1)
                    return
                pos = start
            fh.truncate(0)


class StateFile:
    """An append-only state file of a run (``journal.jsonl``, ``errors.jsonl``), file-like (``write``,
    ``flush``, ``close``). Each ``flush`` checks that the file still has a name (``st_nlink``): a run directory
    removed under a running run stops it with a :class:`StorageError`, instead of the run writing on into a
    file nobody can see and exiting 0. I/O errors become a :class:`StorageError` naming the file."""

    def __init__(self, path: Path, run: RunDir) -> None:
        self.path = path
        self.run = run
        self._fh: IO[str] | None = path.open("a", encoding="utf-8")

    def write(self, text: str) -> int:
        assert self._fh is not None, "write() after close()"
        try:
            return self._fh.write(text)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.path, doing="write") from None

    def flush(self) -> None:
        assert self._fh is not None, "flush() after close()"
        try:
            self._fh.flush()
            gone = os.fstat(self._fh.fileno()).st_nlink == 0
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.path, doing="write") from None
        if gone:
            raise self.run.deleted_error()

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError as exc:
                raise StorageError.from_os_error(exc, self.path, doing="write") from None


def find_runs(root: Path) -> list[RunDir]:
    """Run directories under ``root`` (``<run.dir>/<pipeline name>``), oldest first."""
    if not root.is_dir():
        return []
    return [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "pipeline.json").exists()]
