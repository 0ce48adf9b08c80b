"""What the columnar sinks (``parquet``, ``hf-dataset``) share: a row log that survives a kill, and its
conversion to Arrow in batches.

A Parquet file or a saved dataset cannot be appended to in place, so these sinks write each finished
record, as it comes, to a hidden JSON-lines row log next to the output (``.<name>.rows.jsonl``: append
and flush, with the resume rules of every file sink, see :mod:`oaipipe.kit.sinks`), and on ``close()`` turn
the row log into the output in batches (two passes: one to find a schema every batch fits, one to
write), replacing the output atomically. A run killed before ``close()`` leaves the row log complete; the
resumed run's ``close()`` writes the output with every record exactly once.

Types survive the row log: values JSON cannot hold (datetimes, dates, times, decimals, bytes) are written
as tagged objects and restored before Arrow sees them. A column whose values Arrow cannot put in one type
(``1`` in one row, ``"a"`` in another) is written as JSON text, and said so on stderr.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..extras import require
from ..types import RecordResult, RunInfo
from .sinks import JsonlAppendingSink, jsonl_written_by, reconcile_jsonl, refused_output, start_over

__all__ = ["ColumnarSink", "arrow_batches", "decode_row", "encode_value"]

_TAG = "$oaipipe"
BATCH_ROWS = 4096


def encode_value(value: Any) -> Any:
    """``json.dumps(default=...)``: a tagged object for the values JSON cannot hold."""
    if isinstance(value, _dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, _dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, _dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if hasattr(value, "isoformat"):  # pandas Timestamp and the like
        return {_TAG: "datetime", "v": value.isoformat()}
    return str(value)


def _untag(obj: dict[str, Any]) -> Any:
    kind = obj.get(_TAG)
    if kind is None or len(obj) != 2:
        return obj
    value = obj["v"]  # len(obj) == 2: the tag and the value
    if kind == "datetime":
        return _dt.datetime.fromisoformat(value)
    if kind == "date":
        return _dt.date.fromisoformat(value)
    if kind == "time":
        return _dt.time.fromisoformat(value)
    if kind == "decimal":
        return decimal.Decimal(value)
    if kind == "bytes":
        return base64.b64decode(value)
    return obj


def decode_row(line: bytes | str) -> dict[str, Any] | None:
    """One line of the row log as a row (tagged values decoded), or ``None`` for a line cut short by a crash."""
    try:
        row = json.loads(line, object_hook=_untag)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _rows(path: Path) -> Iterator[list[dict[str, Any]]]:
    """The row log in batches of :data:`BATCH_ROWS` (complete lines only)."""
    batch: list[dict[str, Any]] = []
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            row = decode_row(line)
            if row is not None:
                batch.append(row)
            if len(batch) >= BATCH_ROWS:
                yield batch
                batch = []
    if batch:
        yield batch


def _table(pa: Any, batch: list[dict[str, Any]], as_text: set[str], order: list[str]) -> Any:
    """An Arrow table of ``batch``: columns in ``order`` (extended by new keys), those in ``as_text`` as
    JSON text; a column Arrow cannot type is added to ``as_text`` (and the batch redone)."""
    for row in batch:
        for key in row:
            if key not in order:
                order.append(key)
    arrays = {}
    for key in order:
        values = [row.get(key) for row in batch]
        if key in as_text:
            values = [None if v is None else json.dumps(v, ensure_ascii=False, default=encode_value)
                      for v in values]
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
            as_text.add(key)
            return _table(pa, batch, as_text, order)
    return pa.table(arrays)


def arrow_batches(path: Path) -> tuple[Any, Iterator[Any], set[str]]:
    """(schema, batches as Arrow tables cast to it, columns written as JSON text) of a row log."""
    pa = require("pyarrow", extra="parquet", feature="writing Parquet or Hugging Face datasets")
    order: list[str] = ["_id", "_run"]
    as_text: set[str] = set()
    schema = None
    for _attempt in range(64):  # each retry turns one more conflicting column into text
        schema = None
        try:
            for batch in _rows(path):
                table = _table(pa, batch, as_text, order)
                schema = table.schema if schema is None else pa.unify_schemas(
                    [schema, table.schema], promote_options="permissive")
            break
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            bad = next((name for name in order if name not in as_text and name in str(exc)), None)
            if bad is None:
                bad = next(name for name in reversed(order) if name not in as_text and name not in ("_id", "_run"))
            as_text.add(bad)
    if schema is None:
        schema = pa.schema([("_id", pa.string()), ("_run", pa.string())])
    schema = pa.schema([schema.field(n) if n in schema.names else pa.field(n, pa.null()) for n in order])
    schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema])

    def batches() -> Iterator[Any]:
        for batch in _rows(path):
            table = _table(pa, batch, set(as_text), list(order))
            columns = [table.column(n) if n in table.column_names else pa.nulls(len(table), f.type)
                       for n, f in zip(schema.names, schema, strict=True)]
            yield pa.Table.from_arrays([c.cast(f.type) for c, f in zip(columns, schema, strict=True)],
                                       schema=schema)

    return schema, batches(), as_text


class ColumnarSink(JsonlAppendingSink):
    """A sink whose output is written whole from its row log on ``close()`` (:meth:`materialize`)."""

    run_key = "_run"
    id_key = "_id"
    extra: ClassVar[str] = "parquet"
    options: Any

    @property
    def rows_path(self) -> Path:
        out = self.file
        return out.parent / f".{out.name}.rows.jsonl"

    def _output_exists(self) -> bool:
        return self.file.exists()

    def open(self, run: RunInfo, done_ids: set[str] | None = None) -> None:
        require("pyarrow", extra=self.extra, feature=f"the {self.kind}")  # before any record, not at close
        rows = self.rows_path
        rows.parent.mkdir(parents=True, exist_ok=True)
        mode = getattr(self.options, "mode", "overwrite")
        has_rows = rows.is_file() and jsonl_written_by(rows, self.run_key, self.id_key)
        if self._output_exists() and not has_rows and not (rows.is_file() and rows.stat().st_size == 0):
            raise refused_output(
                self.file, f"{self.file} exists and was not written by this sink (its row log {rows.name} is "
                f"missing); it is not {'overwritten' if mode == 'overwrite' else 'appended to'}")
        start_over(rows, mode=mode, done_ids=done_ids, ours=lambda p: jsonl_written_by(p, self.run_key, self.id_key))
        reconcile_jsonl(rows, run_id=run.run_id, done_ids=done_ids, run_key=self.run_key, id_key=self.id_key)
        self._open_for_append(rows, run, newline="\n")

    def write(self, result: RecordResult) -> None:
        run = self._open_run()
        if result.error is not None and not getattr(self.options, "include_failed", False):
            return
        obj: dict[str, Any] = {"_id": result.record.id, "_run": run.run_id}
        obj.update((k, v) for k, v in result.fields.items() if k not in ("_id", "_run", "_error"))
        if result.error is not None:
            obj["_error"] = result.error
        self._append(json.dumps(obj, ensure_ascii=False, default=encode_value) + "\n")

    def close(self) -> None:
        was_open = self._fh is not None
        super().close()
        if was_open and self.rows_path.is_file():
            schema, batches, as_text = arrow_batches(self.rows_path)
            self.materialize(schema, batches)
            if as_text:
                print(f"oaipipe: {self.kind} {self.options.path}: column(s) {', '.join(sorted(as_text))} hold values "
                      f"of different types; written as JSON text", file=sys.stderr)

    def materialize(self, schema: Any, batches: Iterator[Any]) -> None:
        """Write the output from ``batches`` (Arrow tables of ``schema``), replacing it atomically."""
        raise NotImplementedError
