"""Run directories and the per-run journal.

Each run of a pipeline writes ``<run.dir>/<pipeline name>/<run id>/``:

- ``journal.jsonl`` — one line per finished record (``done`` or ``failed``), appended and flushed after the
  sinks have the record: ``{"id", "status", "fields", "exchanges", "error", "where"}``. It is what a
  resumed run skips, and what ``train:`` builds a dataset from.
- ``errors.jsonl`` — one line per failed record: id, where it came from, the step, the error and its type.
- ``summary.json`` — written at the end (also when aborted or interrupted): counts, tokens, cost, status.
- ``pipeline.json`` — the pipeline as run (secrets masked) and its fingerprint.

A journal line is complete or absent: a line cut short by a crash is ignored when reading.

No secret reaches these files: ``pipeline.json`` and ``summary.json`` pass through
:func:`~oaipipe.errors.redact_data` here, and the runner hands every record through it before the
journal, ``errors.jsonl`` and the sinks see it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import redact_data
from .fsutil import write_json_atomic

__all__ = ["RunDir", "find_runs", "new_run_id"]


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
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.meta_path, redact_data(meta))

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

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, redact_data(summary))

    def journal(self) -> Iterator[dict[str, Any]]:
        """Complete journal entries in order; a torn last line (crash mid-write) is skipped."""
        if not self.journal_path.exists():
            return
        with self.journal_path.open("r", encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and "id" in entry:
                    yield entry

    def status_by_id(self) -> dict[str, str]:
        """Status of each journaled record id: ``done`` once any of its lines is done (a retried record's
        later ``done`` wins; a later ``failed`` line of that id is a duplicate-id row, not a redo)."""
        statuses: dict[str, str] = {}
        for entry in self.journal():
            if statuses.get(entry["id"]) != "done":
                statuses[entry["id"]] = entry.get("status", "done")
        return statuses

    def repair_journal(self) -> None:
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


def find_runs(root: Path) -> list[RunDir]:
    """Run directories under ``root`` (``<run.dir>/<pipeline name>``), oldest first."""
    if not root.is_dir():
        return []
    return [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "pipeline.json").exists()]
