"""Built-in source and sink ``sqlite``: tables of an SQLite database (the standard library's ``sqlite3``).

Source: ``{type: sqlite, path: data.db, table: reviews, id_column: id}`` (or ``query: "SELECT ..."``
instead of ``table``) reads the rows ``batch_size`` at a time from a read-only connection; values keep
SQLite's types (integer, real, text, blob, null).

Sink: ``{type: sqlite, path: out/records.db, table: records}`` writes one row per finished record, with
``_id`` and ``_run`` columns (the key: one row per record and run) and a column per field, added as new
fields appear. Each record is committed before the run journals it (WAL mode), so a kill loses nothing;
on resume the rows of this run's unfinished records are deleted, so each record is there exactly once.
``mode: overwrite`` (default) empties the table when a new run starts; ``append`` keeps earlier runs'
rows. Lists and dicts are stored as JSON text, booleans as 0/1, dates and times as ISO 8601 text. A table
that has no ``_id``/``_run`` columns was not written by this sink and is refused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sqlite3
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, model_validator

from ..base import PluginOptions, Sink
from ..errors import InputError
from ..hookspecs import hookimpl
from ..kit.sinks import MODE_FIELD_DOC, refused_output
from ..kit.sources import FileSource, check_columns, records_of_batches, wanted_columns
from ..types import Record, RecordResult, RunInfo

__all__ = ["SqliteSink", "SqliteSource", "quote"]


def quote(name: str) -> str:
    """An SQL identifier, quoted (any name, even one with quotes in it, is safe)."""
    return '"' + name.replace('"', '""') + '"'


class SqliteSource(FileSource):
    """Rows of an SQLite table or query, read a batch at a time."""

    kind = "SQLite"
    wrong_kind_hint = "point `source.path` at an SQLite database file"

    class Options(PluginOptions):
        path: str = Field(..., description="SQLite database file, relative to the pipeline file")
        table: str | None = Field(None, description="Table (or view) to read")
        query: str | None = Field(None, description="A SELECT to read instead of a table")
        id_column: str | None = Field(None, description="Column holding a unique, stable id; without it "
                                                        "ids are row-1, row-2, ...")
        columns: list[str] | None = Field(None, description="Keep only these columns (default: all)")
        batch_size: int = Field(1024, ge=1, description="Rows fetched at a time")

        @model_validator(mode="after")
        def _one_of(self) -> SqliteSource.Options:
            if (self.table is None) == (self.query is None):
                raise ValueError("give exactly one of `table:` and `query:`")
            return self

    options: Options

    def _connect(self) -> sqlite3.Connection:
        path = self._check_exists()
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise InputError(f"{self.options.path}: not a readable SQLite database: {exc}",
                             hint="check the file (`sqlite3 FILE .tables`)") from None
        return conn

    def _sql(self, conn: sqlite3.Connection) -> str:
        if self.options.query is not None:
            return self.options.query
        table = self.options.table or ""
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        if table not in names:
            from ..kit.sources import did_you_mean

            raise InputError(f"{self.options.path}: no table '{table}'{did_you_mean(table, names)}",
                             hint=f"tables: {', '.join(names) or '(none)'}")
        return f"SELECT * FROM {quote(table)}"

    def _cursor(self, conn: sqlite3.Connection, limit0: bool = False) -> sqlite3.Cursor:
        sql = self._sql(conn)
        try:
            return conn.execute(f"SELECT * FROM ({sql}) LIMIT 0" if limit0 else sql)
        except sqlite3.Error as exc:
            raise InputError(f"{self.options.path}: the query cannot run: {exc}", hint="check `query:`") from None

    @property
    def _label(self) -> str:
        return f"{self.options.path} table '{self.options.table}'" if self.options.table else self.options.path

    def fields(self) -> list[str] | None:
        with contextlib.closing(self._connect()) as conn:
            names = [d[0] for d in self._cursor(conn, limit0=True).description]
        check_columns(self._label, names, self.options.id_column, self.options.columns)
        return wanted_columns(self.options.id_column, self.options.columns) or names

    def count(self) -> int | None:
        if self.options.table is None:
            return None
        with contextlib.closing(self._connect()) as conn:
            self._sql(conn)
            return int(conn.execute(f"SELECT count(*) FROM {quote(self.options.table)}").fetchone()[0])

    def records(self) -> Iterator[Record]:
        opts = self.options
        with contextlib.closing(self._connect()) as conn:
            cursor = self._cursor(conn)
            names = [d[0] for d in cursor.description]
            check_columns(self._label, names, opts.id_column, opts.columns)
            wanted = wanted_columns(opts.id_column, opts.columns) or names

            def rows() -> Iterator[tuple[int, dict[str, Any]]]:
                number = 0
                while batch := cursor.fetchmany(opts.batch_size):
                    for values in batch:
                        number += 1
                        row = dict(zip(names, values, strict=True))
                        yield number, {k: row[k] for k in wanted}

            yield from records_of_batches(rows(), label=self._label, id_column=opts.id_column)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bytes):
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


class SqliteSink(Sink):
    """Enriched records as rows of an SQLite table (``_id``, ``_run``, a column per field)."""

    class Options(PluginOptions):
        path: str = Field("out/records.db", description="SQLite database file, relative to the pipeline file")
        table: str = Field("records", min_length=1, description="Table to write (created when missing)")
        mode: Literal["overwrite", "append"] = Field("overwrite", description=MODE_FIELD_DOC)
        include_failed: bool = Field(False, description="Also write failed records, with an '_error' column")

    options: Options

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._conn: sqlite3.Connection | None = None
        self._columns: list[str] = []
        self._run: RunInfo | None = None

    @property
    def file(self) -> Any:
        return self.context.path(self.options.path)

    def open(self, run: RunInfo, done_ids: set[str] | None = None) -> None:
        path = self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        self._run = run
        conn = self._conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        table = quote(self.options.table)
        self._columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        if self._columns and not {"_id", "_run"} <= set(self._columns):
            raise refused_output(path, f"{path}: table '{self.options.table}' exists and was not written by this "
                                 f"sink (it has no _id and _run columns); it is not changed",
                                 fix="name another `table:`, or point `path:` at another file, then rerun the same "
                                     "command")
        conn.execute("BEGIN IMMEDIATE")
        if not self._columns:
            conn.execute(f"CREATE TABLE {table} (_id TEXT NOT NULL, _run TEXT NOT NULL, PRIMARY KEY (_run, _id))")
            self._columns = ["_id", "_run"]
        elif done_ids is None and self.options.mode == "overwrite":
            conn.execute(f"DELETE FROM {table}")  # a new run starts the table over
        elif done_ids is not None:  # resumed: this run's rows of records that did not finish go (redone)
            gone = [(run.run_id, rid) for (rid,) in conn.execute(f"SELECT _id FROM {table} WHERE _run = ?",
                                                                 (run.run_id,)) if rid not in done_ids]
            conn.executemany(f"DELETE FROM {table} WHERE _run = ? AND _id = ?", gone)
        conn.execute("COMMIT")

    def write(self, result: RecordResult) -> None:
        conn, run = self._conn, self._run
        if conn is None or run is None:
            raise RuntimeError("sqlite sink: write() before open()")
        if result.error is not None and not self.options.include_failed:
            return
        row: dict[str, Any] = {"_id": result.record.id, "_run": run.run_id}
        row.update((k, _cell(v)) for k, v in result.fields.items() if k not in row and k != "_error")
        if result.error is not None:
            row["_error"] = result.error
        table = quote(self.options.table)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for name in row:
                if name not in self._columns:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote(name)}")
                    self._columns.append(name)
            conn.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(quote(k) for k in row)}) "
                         f"VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("sqlite", SqliteSource)


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("sqlite", SqliteSink)
