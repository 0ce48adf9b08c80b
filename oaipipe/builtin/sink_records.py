"""Built-in sinks ``jsonl`` and ``csv``: the enriched records themselves (input + every field steps added).

* ``jsonl``: one JSON object per finished record: its ``fields`` plus ``"_id"`` (the record id) and
  ``"_run"`` (the run id); with ``include_failed: true`` failed records are written too, with ``"_error"``.
* ``csv``: one row per finished record: ``record_id``, then ``columns`` (or the first record's fields, in
  order), then ``run_id``. Later records' extra fields are ignored and missing ones left empty; dict/list
  values are JSON-encoded. Appending to an existing CSV keeps its header.

Both hold the records of the latest run by default (``mode: overwrite``: a new run starts the file over;
``mode: append`` collects every run). They append and flush after each record (during a run: after each
group of records, before the journal; a worker process renders the text: ``renders_in_worker``), and on resume drop the rows
this run wrote for records that did not finish (and a row cut short by a crash), so each record ends up
exactly once.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..base import PluginOptions
from ..fsutil import atomic_file
from ..hookspecs import hookimpl
from ..kit.sinks import (
    MODE_FIELD_DOC,
    AppendingSink,
    JsonlAppendingSink,
    first_line,
    jsonl_text,
    refused_output,
    start_over,
    unfinished,
)
from ..types import RecordResult, RunInfo

ID_COLUMN = "record_id"
RUN_COLUMN = "run_id"


class JsonlRecordsSink(JsonlAppendingSink):
    """Enriched records, one JSON object per line, with ``_id`` and ``_run``."""

    kind = "jsonl sink"
    run_key = "_run"
    id_key = "_id"

    class Options(PluginOptions):
        path: str = Field("out/records.jsonl", description="Output .jsonl file, relative to the pipeline file")
        mode: Literal["overwrite", "append"] = Field("overwrite", description=MODE_FIELD_DOC)
        include_failed: bool = Field(False, description="Also write failed records, with an '_error' field")

    options: Options

    renders_in_worker = True

    def render(self, result: RecordResult, run: RunInfo) -> str:
        if result.error is not None and not self.options.include_failed:
            return ""
        obj: dict[str, Any] = {"_id": result.record.id, "_run": run.run_id}
        # a record field named like ours must not break resume: ours win
        obj.update((k, v) for k, v in result.fields.items() if k not in ("_id", "_run", "_error"))
        if result.error is not None:
            obj["_error"] = result.error
        return jsonl_text([obj])


def cell(value: Any) -> str:
    """A CSV cell: strings as they are, None empty, dicts/lists as JSON, anything else str()."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


class CsvRecordsSink(AppendingSink):
    """Enriched records as CSV rows: record_id, the record's fields, run_id."""

    kind = "csv sink"

    class Options(PluginOptions):
        path: str = Field("out/records.csv", description="Output .csv file, relative to the pipeline file")
        mode: Literal["overwrite", "append"] = Field("overwrite", description=MODE_FIELD_DOC)
        columns: list[str] | None = Field(
            None, description="Columns to write (default: the first record's fields, in order)"
        )
        delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator")

    options: Options

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._writer: Any = None
        self._header: list[str] | None = None  # full header, once known
        self._header_written = False
        self._row: tuple[io.StringIO, Any] | None = None  # a row rendered to text: (buffer, csv writer on it)

    def _header_for(self, fields: list[str]) -> list[str]:
        middle = [f for f in fields if f not in (ID_COLUMN, RUN_COLUMN)]
        return [ID_COLUMN, *middle, RUN_COLUMN]

    def _read_existing(self, path: Path, run: RunInfo, done_ids: set[str] | None) -> None:
        """Adopt an existing file's header; on resume (or after a crash mid-row) rewrite it, streaming,
        without the rows that must go."""
        size = path.stat().st_size
        if size == 0:
            return
        with path.open("rb") as fh:
            fh.seek(size - 1)
            truncated = fh.read(1) not in (b"\n", b"\r")
        # bytes that are not UTF-8 (a row torn inside a character by a kill, a hand edit) are carried through
        # unchanged (surrogateescape): the torn last row is dropped below, any other row is kept byte for byte
        with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as text:
            header = next(csv.reader(text, delimiter=self.options.delimiter), [])
        if not header:
            return
        if ID_COLUMN not in header or RUN_COLUMN not in header:
            raise refused_output(
                path, f"csv sink: {path} exists but has no '{ID_COLUMN}' and '{RUN_COLUMN}' columns, so it was not "
                f"written by this sink; it will not be appended to")
        if self.options.columns is not None and header != self._header_for(self.options.columns):
            raise refused_output(
                path, f"csv sink: {path} exists with columns {', '.join(header)}, but `columns:` asks for "
                f"{', '.join(self._header_for(self.options.columns))}",
                fix="use the same columns as the existing file, or point `path:` at a new file, then rerun the "
                    "same command")
        self._header = header
        self._header_written = True
        if done_ids is None and not truncated:
            return
        id_i, run_i = header.index(ID_COLUMN), header.index(RUN_COLUMN)
        dropped = 0
        with atomic_file(path, newline="", errors="surrogateescape") as out, \
                path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as src:
            writer = csv.writer(out.fh, delimiter=self.options.delimiter, lineterminator="\n")
            rows = csv.reader(src, delimiter=self.options.delimiter)
            writer.writerow(next(rows))

            def keep(row: list[str], last: bool) -> bool:
                if (last and truncated) or len(row) != len(header):
                    return False  # cut short by a crash mid-write
                return not unfinished(row[run_i], row[id_i], run_id=run.run_id, done_ids=done_ids)

            previous: list[str] | None = None
            for row in rows:
                if previous is not None:
                    if keep(previous, False):
                        writer.writerow(previous)
                    else:
                        dropped += 1
                previous = row
            if previous is not None:
                if keep(previous, True):
                    writer.writerow(previous)
                else:
                    dropped += 1
            if not (dropped or truncated):
                out.discard()

    def open(self, run: RunInfo, done_ids: set[str] | None = None) -> None:
        path = self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        self._header = None
        self._header_written = False
        start_over(path, mode=self.options.mode, done_ids=done_ids, ours=_csv_written_by_us)
        if path.is_file():
            self._read_existing(path, run, done_ids)
        if self._header is None and self.options.columns is not None:
            self._header = self._header_for(self.options.columns)
        self._open_for_append(path, run, newline="")
        self._writer = csv.writer(self._fh, delimiter=self.options.delimiter, lineterminator="\n")
        if self._header is not None and not self._header_written:
            self._write_header()

    def _write_header(self) -> None:
        assert self._header is not None
        if self._fh.tell() == 0:
            self._writer.writerow(self._header)
        self._header_written = True
        self._fh.flush()

    renders_in_worker = True

    def render(self, result: RecordResult, run: RunInfo) -> str | None:
        """The record's row; ``None`` while the header is unknown (no ``columns:``, before the first row: a
        worker never knows it, and :meth:`write` writes the header with the first row)."""
        header = self._header if self._header is not None else (
            self._header_for(self.options.columns) if self.options.columns is not None else None)
        if result.error is not None:
            return ""
        if header is None:
            return None
        values = dict(result.fields)
        values[ID_COLUMN] = result.record.id
        values[RUN_COLUMN] = run.run_id
        if self._row is None:
            rows = io.StringIO(newline="")
            self._row = (rows, csv.writer(rows, delimiter=self.options.delimiter, lineterminator="\n"))
        buffer, writer = self._row
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([cell(values.get(col)) for col in header])
        return buffer.getvalue()

    def write(self, result: RecordResult) -> None:
        run = self._open_run()
        if result.error is not None:
            return
        if self._header is None:
            self._header = self._header_for(list(result.fields))
            self._write_header()
        text = self.render(result, run)
        assert text is not None
        self._append(text)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._writer = None


def _csv_written_by_us(path: Path) -> bool:
    header = next(csv.reader([first_line(path)]), [])
    return ID_COLUMN in header and RUN_COLUMN in header


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("jsonl", JsonlRecordsSink)
    register("csv", CsvRecordsSink)
