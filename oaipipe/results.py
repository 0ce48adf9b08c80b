"""What ``oaipipe.Pipeline.run()`` returns: a :class:`RunResult` reading the run directory.

Nothing of the records is held in memory: :attr:`RunResult.records`, :attr:`~RunResult.errors` and
:attr:`~RunResult.exchanges` stream the run directory's journal (``journal.jsonl``) and error log
(``errors.jsonl``) each time they are iterated; :meth:`RunResult.to_pandas` builds a DataFrame from them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExitCode

__all__ = ["RunResult"]


@dataclass
class RunResult:
    """The outcome of one run: its summary, and its records read back from the run directory."""

    #: what ``summary.json`` holds (status, counts, calls, tokens, cost, paths)
    summary: dict[str, Any]

    @property
    def run_dir(self) -> Path | None:
        """The run directory (``None`` for a dry run)."""
        where = self.summary.get("run_dir")
        return Path(where) if where else None

    @property
    def status(self) -> str:
        return str(self.summary.get("status"))

    @property
    def exit_code(self) -> ExitCode:
        """What ``oaipipe run`` would exit with for this run."""
        from .commands.run import summary_exit_code

        return summary_exit_code(self.summary)

    def _lines(self, name: str) -> Iterator[dict[str, Any]]:
        run_dir = self.run_dir
        path = run_dir / name if run_dir else None
        if path is None or not path.exists():
            return
        with path.open("rb") as fh:
            for raw in fh:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue  # a torn last line of an interrupted run
                if isinstance(entry, dict):
                    yield entry

    def _latest(self) -> Iterator[dict[str, Any]]:
        """Each record's latest journal entry (a retried record appears once), in journal order."""
        last: dict[str, int] = {}
        for n, entry in enumerate(self._lines("journal.jsonl")):
            last[str(entry.get("id"))] = n
        for n, entry in enumerate(self._lines("journal.jsonl")):
            if last.get(str(entry.get("id"))) == n:
                yield entry

    @property
    def records(self) -> Iterator[dict[str, Any]]:
        """Every record of the run: ``{"id", "status", "fields", "error"?}``, streamed from the journal."""
        for entry in self._latest():
            out = {"id": entry.get("id"), "status": entry.get("status"), "fields": entry.get("fields") or {}}
            if entry.get("error"):
                out["error"] = entry["error"]
            yield out

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The records that failed (``{"id", "where", "error", "time"}``), from ``errors.jsonl``."""
        failed = {str(e.get("id")) for e in self._latest() if e.get("status") == "failed"}
        return [e for e in self._lines("errors.jsonl") if str(e.get("id")) in failed]

    @property
    def exchanges(self) -> Iterator[dict[str, Any]]:
        """Every call of the run (messages, model, usage, latency), streamed from the journal."""
        for entry in self._latest():
            yield from entry.get("exchanges") or []

    def to_pandas(self) -> Any:
        """One row per record (index: the record id), every field a column: the input's and the steps'
        outputs; an ``_error`` column when some record failed. Needs pandas (``pip install 'oaipipe[pandas]'``)."""
        from .extras import require

        pd = require("pandas", extra="pandas", feature="RunResult.to_pandas()")
        ids: list[str] = []
        rows: list[dict[str, Any]] = []
        failed = False
        for record in self.records:
            ids.append(str(record["id"]))
            row = dict(record["fields"])
            if record.get("error"):
                row["_error"] = record["error"]
                failed = True
            rows.append(row)
        frame = pd.DataFrame.from_records(rows, index=pd.Index(ids, name="id"))
        if failed and "_error" not in frame.columns:  # pragma: no cover - set above
            frame["_error"] = None
        return frame

    def __repr__(self) -> str:
        records = self.summary.get("records") or {}
        return (f"RunResult(status={self.status!r}, done={records.get('done', 0)}, "
                f"failed={records.get('failed', 0)}, run_dir={str(self.run_dir)!r})")
