"""The run store: one SQLite file (``<run.dir>/runs.db``) that indexes what the runs under ``run.dir`` did.

It holds four tables (``runs``, ``records``, ``exchanges`` with a full-text index ``exchanges_fts``,
``sentiments``), documented in docs/results.md so that ``sqlite3 runs/runs.db`` and ``datasette
runs/runs.db`` work on it. It is **never the only copy of anything**: every row is derived from the run
directories (``pipeline.json``, ``journal.jsonl``, ``summary.json``), and :meth:`RunStore.sync` brings it up
to date from them. That is how it is written as a run goes (the ``run_store`` plugin calls :meth:`sync_run`
from the run's hooks), how it catches up after a SIGKILL (a transaction that did not commit is simply not
there; the next sync reads the journal from the last committed offset), and how runs made before the
store existed, or a deleted ``runs.db``, are covered: ``oaipipe runs``/``logs``/``report`` sync first.

How a run's journal is followed: the store keeps, per run, the journal's inode, the byte offset and line
count it has read (only complete lines). A journal that grew is read from the offset; one that was replaced
or shrank (``repair_journal`` moves unreadable lines out) is read again from the start. Rows are keyed so
that reading a line twice changes nothing: records by ``(run_id, id)`` (``done`` wins, as on resume),
exchanges by ``(run_id, line, idx)``.

No click here: the commands in :mod:`oaipipe.commands` call this.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, StorageError

__all__ = ["DB_NAME", "SCHEMA_VERSION", "ExchangeQuery", "RunStore", "find_run_dirs", "open_store", "runs_dir_for",
           "store_path"]

DB_NAME = "runs.db"
#: bumped when the tables change: an older file is rebuilt from the run directories (it is only an index)
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    pipeline_file TEXT,
    fingerprint TEXT,
    endpoint TEXT,
    status TEXT,
    backend TEXT,
    model TEXT,
    started_at TEXT,
    finished_at TEXT,
    records_total INTEGER,
    records_done INTEGER NOT NULL DEFAULT 0,
    records_failed INTEGER NOT NULL DEFAULT 0,
    calls INTEGER,
    cached INTEGER,
    attempts INTEGER,
    retries INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL,
    elapsed_s REAL,
    summary TEXT,
    config TEXT,
    journal_inode INTEGER,
    journal_offset INTEGER NOT NULL DEFAULT 0,
    journal_lines INTEGER NOT NULL DEFAULT 0,
    summary_stamp TEXT
);
CREATE TABLE IF NOT EXISTS records (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    line INTEGER NOT NULL,
    status TEXT NOT NULL,
    location TEXT,
    error TEXT,
    error_class TEXT,
    fields TEXT,
    time TEXT,
    PRIMARY KEY (run_id, id)
);
CREATE INDEX IF NOT EXISTS records_status ON records(run_id, status);
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    record_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    step TEXT,
    model TEXT,
    backend TEXT,
    system TEXT,
    input TEXT,
    reply TEXT,
    messages TEXT,
    input_sentiment TEXT,
    input_score REAL,
    reply_sentiment TEXT,
    reply_score REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    latency REAL,
    cached INTEGER,
    cost_usd REAL,
    request_id TEXT,
    time TEXT,
    UNIQUE (run_id, line, idx)
);
CREATE INDEX IF NOT EXISTS exchanges_run ON exchanges(run_id, step);
CREATE VIRTUAL TABLE IF NOT EXISTS exchanges_fts USING fts5(
    system, input, reply, content='exchanges', content_rowid='id'
);
CREATE TRIGGER IF NOT EXISTS exchanges_ai AFTER INSERT ON exchanges BEGIN
    INSERT INTO exchanges_fts(rowid, system, input, reply) VALUES (new.id, new.system, new.input, new.reply);
END;
CREATE TRIGGER IF NOT EXISTS exchanges_ad AFTER DELETE ON exchanges BEGIN
    INSERT INTO exchanges_fts(exchanges_fts, rowid, system, input, reply)
    VALUES ('delete', old.id, old.system, old.input, old.reply);
END;
CREATE TRIGGER IF NOT EXISTS exchanges_au AFTER UPDATE ON exchanges BEGIN
    INSERT INTO exchanges_fts(exchanges_fts, rowid, system, input, reply)
    VALUES ('delete', old.id, old.system, old.input, old.reply);
    INSERT INTO exchanges_fts(rowid, system, input, reply) VALUES (new.id, new.system, new.input, new.reply);
END;
CREATE TABLE IF NOT EXISTS sentiments (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    record_id TEXT NOT NULL,
    field TEXT NOT NULL,
    analyzer TEXT,
    label TEXT,
    score REAL,
    PRIMARY KEY (run_id, record_id, field)
);
"""

_TABLES = ("exchanges_fts", "sentiments", "exchanges", "records", "runs", "meta")
_ERROR_CLASS = re.compile(r"\b([A-Z][A-Za-z0-9]*(?:Error|Exception|Aborted|Exit|Interrupt))\b")
#: journal lines read per transaction: a long journal is caught up in bounded steps
_BATCH_LINES = 2000


def store_path(runs_dir: str | Path) -> Path:
    """The store of the runs under ``runs_dir`` (a pipeline's ``run.dir``): ``<runs_dir>/runs.db``."""
    return Path(runs_dir) / DB_NAME


def find_run_dirs(runs_dir: str | Path) -> list[Path]:
    """Every run directory under ``runs_dir`` (``<runs_dir>/<pipeline>/<run id>/`` with a ``pipeline.json``),
    oldest first by run id."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob("*/*/pipeline.json")]
    return sorted(found, key=lambda p: (p.name, str(p)))


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (a field missing or of the wrong type)."""
    return value if isinstance(value, dict) else {}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _text(content: Any) -> str:
    """A message's content as text: a string as is, the text parts of a list of parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                parts.append("[image]")
        return " ".join(parts)
    return "" if content is None else str(content)


def error_class(error: str | None) -> str | None:
    """The exception class an error message names (``step ask:reply: ServerError: ...`` → ``ServerError``);
    ``RecordError`` for a record the source could not read (its message names no class)."""
    if not error:
        return None
    found = _ERROR_CLASS.search(error)
    return found.group(1) if found else "RecordError"


@dataclass(frozen=True)
class SentimentField:
    """A record field written by a step that uses an analyzer (``analyzer:`` and ``output:`` in its block)."""

    field: str
    analyzer: str
    input: str | None
    score: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> list[SentimentField]:
        found = []
        for block in config.get("steps") or []:
            if not isinstance(block, dict) or "analyzer" not in block or not isinstance(block.get("output"), str):
                continue
            analyzer = block["analyzer"]
            name = analyzer.get("type", "?") if isinstance(analyzer, dict) else str(analyzer)
            found.append(cls(block["output"], name, block.get("input") if isinstance(block.get("input"), str)
                             else None, block.get("score", True) is not False))
        return found

    def rendered(self, fields: dict[str, Any]) -> str | None:
        if self.input is None:
            return None
        from .templates import render

        try:
            return render(self.input, fields)
        except Exception:  # noqa: BLE001 - a field the record lacks: this step says nothing about it
            return None


@dataclass
class ExchangeQuery:
    """What ``oaipipe logs`` asks for. ``sentiment`` matches the input or the reply; ``query`` is FTS5."""

    run: str | None = None
    step: str | None = None
    model: str | None = None
    sentiment: str | None = None
    input_sentiment: str | None = None
    reply_sentiment: str | None = None
    query: str | None = None
    failed: bool = False
    pipeline: str | None = None
    limit: int | None = 10


class RunStore:
    """An open run store. Use :func:`open_store`; close it (or use it as a context manager) when done."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.warnings: list[str] = []
        self.conn = self._connect()

    # --- the file -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the run store {self.path}: {exc}", path=self.path,
                               hint="check the permissions of the folder; the store is rebuilt from the run "
                                    "directories, so it can also be deleted") from None
        try:
            self._prepare(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StorageError(f"the run store {self.path} stayed locked for {self.timeout:.0f}s: {exc}",
                                   path=self.path, hint="another oaipipe process is writing it; try again") from None
            # not a database (a torn copy, a foreign file): it is only an index, so put it aside and rebuild
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(str(self.path) + suffix)
            self.warnings.append(f"{self.path} could not be read ({exc}); it was moved to {aside.name} and is "
                                 f"rebuilt from the run directories")
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            self._prepare(conn)
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        version = None
        with contextlib.suppress(sqlite3.OperationalError):
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else None
        if version == SCHEMA_VERSION:
            return
        drops = "".join(f"DROP TABLE IF EXISTS {t};" for t in _TABLES) if version is not None else ""
        try:  # an older layout is dropped (it is only an index) and the tables made, in one transaction
            conn.executescript(f"BEGIN IMMEDIATE;{drops}{SCHEMA}INSERT OR REPLACE INTO meta VALUES "
                               f"('schema_version', '{SCHEMA_VERSION}');COMMIT;")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- bringing it up to date --------------------------------------------------------------------

    def sync(self, runs_dir: str | Path) -> list[str]:
        """Bring the store up to date with every run directory under ``runs_dir``; runs whose directory is
        gone are dropped. Returns the ids of the runs that changed."""
        changed = []
        dirs = find_run_dirs(runs_dir)
        present = {d.name for d in dirs}
        for run_dir in dirs:
            if self.sync_run(run_dir):
                changed.append(run_dir.name)
        root = str(Path(runs_dir).resolve())
        gone = [r["run_id"] for r in self.conn.execute("SELECT run_id, run_dir FROM runs")
                if r["run_id"] not in present and str(Path(r["run_dir"]).resolve()).startswith(root + os.sep)]
        if gone:
            with self._transaction() as conn:
                conn.executemany("DELETE FROM runs WHERE run_id = ?", [(g,) for g in gone])
        return changed

    def sync_run(self, run_dir: str | Path, *, status: str | None = None) -> bool:
        """Bring one run up to date: its ``pipeline.json`` and ``summary.json``, and the journal lines not
        read yet. ``status`` (``running``) is used while the run has no ``summary.json``. Returns whether
        anything changed."""
        run_dir = Path(run_dir)
        changed = self._sync_meta(run_dir, status)
        while True:
            read = self._ingest(run_dir)
            changed = changed or read > 0
            if read < _BATCH_LINES:
                break
        return changed

    def _sync_meta(self, run_dir: Path, status: str | None) -> bool:
        run_id = run_dir.name
        stamp = _stamp(run_dir / "summary.json") + "|" + _stamp(run_dir / "pipeline.json")
        row = self.conn.execute("SELECT summary_stamp, status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        summary = _read_json(run_dir / "summary.json")
        if summary is None:
            stamp += "|" + (status or _liveness(run_dir))
        if row is not None and row["summary_stamp"] == stamp:
            return False
        meta = _read_json(run_dir / "pipeline.json") or {}
        values = _run_values(run_dir, meta, summary, status)
        values["summary_stamp"] = stamp
        with self._transaction() as conn:
            if row is None:
                cols = ", ".join(values)
                conn.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' for _ in values)})",
                             tuple(values.values()))
            else:
                conn.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE run_id = ?",
                             (*values.values(), run_id))
        return True

    def _ingest(self, run_dir: Path) -> int:
        """Read the next complete journal lines of a run (at most :data:`_BATCH_LINES`) in one transaction.
        Returns how many lines were read."""
        run_id = run_dir.name
        journal = run_dir / "journal.jsonl"
        try:
            st = journal.stat()
        except OSError:
            return 0
        with self._transaction() as conn:
            row = conn.execute("SELECT journal_inode, journal_offset, journal_lines, config FROM runs "
                               "WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return 0
            offset, lines = row["journal_offset"], row["journal_lines"]
            if row["journal_inode"] != st.st_ino or st.st_size < offset:  # replaced or cut: read it again
                for table in ("records", "exchanges", "sentiments"):
                    conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                offset, lines = 0, 0
            if st.st_size == offset and row["journal_inode"] == st.st_ino:
                return 0
            config = json.loads(row["config"] or "{}")
            ingest = _Ingest(conn, run_id, config)
            read = 0
            with journal.open("rb") as fh:
                fh.seek(offset)
                for raw in fh:
                    if not raw.endswith(b"\n"):
                        break  # torn by a crash mid-write, or being written: read it next time
                    offset += len(raw)
                    lines += 1
                    read += 1
                    ingest.line(lines, raw)
                    if read >= _BATCH_LINES:
                        break
            ingest.flush()
            conn.execute(
                "UPDATE runs SET journal_inode = ?, journal_offset = ?, journal_lines = ?, "
                "records_done = (SELECT count(*) FROM records WHERE run_id = ? AND status = 'done'), "
                "records_failed = (SELECT count(*) FROM records WHERE run_id = ? AND status = 'failed') "
                "WHERE run_id = ?", (st.st_ino, offset, lines, run_id, run_id, run_id))
            return read

    # --- reading ------------------------------------------------------------------------------------

    def runs(self, *, pipeline: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Runs, newest first."""
        where, args = (["pipeline = ?"], [pipeline]) if pipeline else ([], [])
        sql, args = _select("SELECT * FROM runs", where, args, order="run_id DESC", limit=limit)
        return [_run_dict(r) for r in self.conn.execute(sql, args)]

    def resolve(self, ref: str | None, *, pipeline: str | None = None) -> str:
        """The run id ``ref`` names: a whole id, a unique prefix or suffix, ``latest`` (or nothing), or
        ``latest~N`` (N runs before the latest). A :class:`ConfigError` lists the runs otherwise."""
        runs = self.runs(pipeline=pipeline)
        if not runs:
            raise ConfigError("no runs found" + (f" of pipeline '{pipeline}'" if pipeline else ""),
                              hint="run a pipeline first (`oaipipe run pipeline.yaml`), or point --runs-dir at "
                                   "the folder that holds its runs")
        ids = [r["run_id"] for r in runs]
        ref = (ref or "latest").strip()
        match = re.fullmatch(r"latest(?:~(\d+))?", ref)
        if match:
            back = int(match.group(1) or 0)
            if back < len(ids):
                return ids[back]
            raise ConfigError(f"there are only {len(ids)} runs: {ref} names none", hint="use latest, latest~1, ...")
        if ref in ids:
            return ref
        found = [i for i in ids if i.startswith(ref) or i.endswith(ref)]
        if len(found) == 1:
            return found[0]
        shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
        if found:
            raise ConfigError(f"run '{ref}' is ambiguous: {', '.join(found[:5])}", hint="give more of the id")
        raise ConfigError(f"no run '{ref}'", hint=f"`oaipipe runs` lists them; the latest: {shown}")

    def run(self, run_id: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no run '{run_id}'", hint="`oaipipe runs` lists them")
        return _run_dict(row)

    def exchanges(self, q: ExchangeQuery) -> list[dict[str, Any]]:
        """Exchanges matching ``q``, newest first (by run, then journal line)."""
        where: list[str] = []
        args: list[Any] = []
        join = ""
        if q.run:
            where.append("e.run_id = ?")
            args.append(q.run)
        if q.pipeline:
            where.append("r.pipeline = ?")
            args.append(q.pipeline)
        for column, value in (("e.step", q.step), ("e.model", q.model)):
            if value:
                where.append(f"({column} = ? OR {column} LIKE ?)")
                args += [value, f"%{value}%"]
        if q.sentiment:
            where.append("(e.input_sentiment = ? OR e.reply_sentiment = ?)")
            args += [q.sentiment, q.sentiment]
        if q.input_sentiment:
            where.append("e.input_sentiment = ?")
            args.append(q.input_sentiment)
        if q.reply_sentiment:
            where.append("e.reply_sentiment = ?")
            args.append(q.reply_sentiment)
        if q.failed:
            where.append("rec.status = 'failed'")
        if q.query:
            join = "JOIN exchanges_fts f ON f.rowid = e.id"
            where.append("exchanges_fts MATCH ?")
            args.append(fts_query(q.query))
        sql, args = _select(f"SELECT e.*, rec.status AS record_status, rec.error AS record_error, "
                            f"r.pipeline AS pipeline FROM exchanges e JOIN runs r ON r.run_id = e.run_id "
                            f"LEFT JOIN records rec ON rec.run_id = e.run_id AND rec.id = e.record_id {join}",
                            where, args, order="e.run_id DESC, e.line DESC, e.idx DESC", limit=q.limit)
        try:
            rows = self.conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if q.query and "fts5" in str(exc).lower():
                raise ConfigError(f"cannot search for {q.query!r}: {exc}",
                                  hint='use words, "a phrase", word*, AND/OR/NOT (SQLite FTS5 syntax)') from None
            raise
        return [_exchange_dict(r) for r in rows]

    def records(self, run_id: str, *, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where, args = ["run_id = ?"], [run_id]
        if status:
            where.append("status = ?")
            args.append(status)
        sql, args = _select("SELECT * FROM records", where, args, order="line", limit=limit)
        out = []
        for row in self.conn.execute(sql, args):
            d = dict(row)
            d["fields"] = json.loads(d["fields"]) if d.get("fields") else {}
            out.append(d)
        return out

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, tuple(args)).fetchall()


# --- one journal line --------------------------------------------------------------------------------

_RECORD_UPSERT = (
    "INSERT INTO records (run_id, id, line, status, location, error, error_class, fields, time) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, id) DO UPDATE SET line = excluded.line, "
    "status = excluded.status, location = excluded.location, error = excluded.error, "
    "error_class = excluded.error_class, fields = excluded.fields, time = excluded.time "
    "WHERE records.status != 'done' OR excluded.status = 'done'")
_EXCHANGE_UPSERT = (
    "INSERT OR REPLACE INTO exchanges (run_id, record_id, line, idx, step, model, backend, system, input, "
    "reply, messages, input_sentiment, input_score, reply_sentiment, reply_score, prompt_tokens, "
    "completion_tokens, total_tokens, latency, cached, cost_usd, request_id, time) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class _Ingest:
    """Writes the rows of journal lines of one run (inside the caller's transaction)."""

    def __init__(self, conn: sqlite3.Connection, run_id: str, config: dict[str, Any]) -> None:
        from .pricing import price_table, tier_of

        self.conn = conn
        self.run_id = run_id
        self.fields = SentimentField.from_config(config)
        self.prices = price_table(config.get("prices") or None, config.get("models") or None)
        # batch prices when the run's backend declared itself batched (runs made before backends declared
        # their capabilities in pipeline.json are priced at standard rates here; summary.json has their cost)
        capabilities = config.get("backend_capabilities")
        self.batch = isinstance(capabilities, dict) and bool(capabilities.get("batched"))
        # a free backend (the local engine) costs nothing unless `prices:` names the id it answers with
        self.priced = not isinstance(capabilities, dict) or capabilities.get("priced") is not False
        self.tier_of = tier_of  # imported here, once per ingest, not once per exchange
        self.records: list[tuple[Any, ...]] = []
        self.sentiments: list[tuple[Any, ...]] = []
        self.exchanges: list[tuple[Any, ...]] = []

    def line(self, number: int, raw: bytes) -> None:
        try:
            entry = json.loads(raw.decode("utf-8"))
        except ValueError:
            return  # an unreadable line: the journal's own rule skips it too (and a resume moves it out)
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            return
        rid = entry["id"]
        status = entry.get("status", "done")
        fields = _mapping(entry.get("fields"))
        error = entry.get("error")
        self.records.append((self.run_id, rid, number, status, entry.get("where"), error, error_class(error),
                             _json(fields), entry.get("time")))
        for sf in self.fields:
            if sf.field in fields and fields[sf.field] is not None:
                score = fields.get(f"{sf.field}_score")
                self.sentiments.append((self.run_id, rid, sf.field, sf.analyzer, str(fields[sf.field]),
                                        score if isinstance(score, int | float) else None))
        for idx, exchange in enumerate(entry.get("exchanges") or []):
            if isinstance(exchange, dict):
                self._exchange(number, idx, rid, exchange, fields, entry.get("time"))

    def _exchange(self, number: int, idx: int, rid: str, ex: dict[str, Any], fields: dict[str, Any],
                  when: Any) -> None:
        messages = [m for m in ex.get("messages") or [] if isinstance(m, dict)]
        system = next((_text(m.get("content")) for m in messages if m.get("role") == "system"), None)
        user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        reply = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
        user_text = _text(user.get("content")) if user else None
        reply_text = _text(reply.get("content")) if reply else None
        in_label, in_score = self._sentiment(user, fields, lambda text: bool(user_text) and text in (user_text or ""))
        out_label, out_score = self._sentiment(reply, fields, lambda text: text == reply_text)
        usage = _mapping(ex.get("usage"))
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cached = bool(ex.get("cached"))
        model = str(ex.get("model") or "")
        cost = 0.0
        if not cached:  # priced as the run's summary prices it (oaipipe.stats.RunStats.add_call)
            requested = ex.get("requested")
            price = self.prices.lookup(model, priced=self.priced,
                                       requested=requested if isinstance(requested, str) else None)
            if price.known:
                tier = self.tier_of(ex.get("service_tier") if isinstance(ex.get("service_tier"), str) else None,
                               batch=self.batch)
                cost = price.cost(prompt, completion, tier=tier, cached_tokens=int(usage.get("cached_tokens") or 0))
        self.exchanges.append(
            (self.run_id, rid, number, idx, ex.get("step"), model, ex.get("backend"), system, user_text,
             reply_text, _json(messages), in_label, in_score, out_label, out_score, prompt, completion,
             int(usage.get("total_tokens") or prompt + completion), ex.get("latency"), int(cached),
             round(cost, 8), ex.get("request_id"), when))

    def flush(self) -> None:
        """Write the rows of the lines read so far (in the caller's transaction)."""
        if self.records:
            self.conn.executemany(_RECORD_UPSERT, self.records)
        if self.sentiments:
            self.conn.executemany("INSERT OR REPLACE INTO sentiments VALUES (?, ?, ?, ?, ?, ?)", self.sentiments)
        if self.exchanges:
            self.conn.executemany(_EXCHANGE_UPSERT, self.exchanges)
        self.records, self.sentiments, self.exchanges = [], [], []

    def _sentiment(self, message: dict[str, Any] | None, fields: dict[str, Any],
                   fits: Any) -> tuple[str | None, float | None]:
        """A message's sentiment: the one the journal gives it (a step scored that exact text), else that of
        the sentiment step whose input text the message holds (``Reply to: {text}`` holds ``{text}``)."""
        if message is None:
            return None, None
        given = message.get("sentiment")
        if isinstance(given, dict) and given.get("label"):
            return str(given["label"]), given.get("score")
        for sf in self.fields:
            label = fields.get(sf.field)
            text = sf.rendered(fields)
            if label is not None and text and fits(text):
                score = fields.get(f"{sf.field}_score")
                return str(label), score if isinstance(score, int | float) else None
        return None, None


# --- run rows ------------------------------------------------------------------------------------------


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "-"
    return f"{st.st_mtime_ns}:{st.st_size}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _liveness(run_dir: Path) -> str:
    """``running`` when the run root's lock names this run and its process lives on this host, else
    ``incomplete`` (killed, crashed, or stopped before writing its summary). For display only: nothing
    decides from it."""
    from .runlock import RUN_LOCK_NAME, read_holder

    holder = read_holder(run_dir.parent / RUN_LOCK_NAME)
    if holder.get("run_id") == run_dir.name and holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except (OSError, ValueError):
            return "incomplete"
        return "running"
    return "incomplete"


def _run_values(run_dir: Path, meta: dict[str, Any], summary: dict[str, Any] | None,
                status: str | None) -> dict[str, Any]:
    config = dict(meta["config"]) if isinstance(meta.get("config"), dict) else {}
    if isinstance(meta.get("backend_capabilities"), dict):  # kept with the config: exchanges are priced by it
        config["backend_capabilities"] = meta["backend_capabilities"]
    s = summary or {}
    records = _mapping(s.get("records"))
    tokens = _mapping(s.get("tokens"))
    retries = s.get("retries")
    retries_total = retries.get("total") if isinstance(retries, dict) else retries
    backend = _mapping(config.get("backend"))
    return {
        "run_id": run_dir.name,
        "pipeline": meta.get("pipeline") or s.get("pipeline") or run_dir.parent.name,
        "run_dir": str(run_dir.resolve()),
        "pipeline_file": meta.get("file"),
        "fingerprint": meta.get("fingerprint"),
        "endpoint": meta.get("endpoint"),
        "status": s.get("status") or status or _liveness(run_dir),
        "backend": s.get("backend") or backend.get("type"),
        "model": s.get("model") or backend.get("model"),
        "started_at": meta.get("started"),
        "finished_at": s.get("finished_at") if summary else None,
        "records_total": records.get("total"),
        "calls": s.get("calls"),
        "cached": s.get("cached"),
        "attempts": s.get("attempts"),
        "retries": retries_total if isinstance(retries_total, int) else None,
        "prompt_tokens": tokens.get("prompt"),
        "completion_tokens": tokens.get("completion"),
        "cost_usd": s.get("cost_usd"),
        "elapsed_s": s.get("elapsed_s"),
        "summary": _json(summary),
        "config": _json(config),
    }


def _select(base: str, where: list[str], args: list[Any], *, order: str,
            limit: int | None) -> tuple[str, list[Any]]:
    """``base`` with its conditions (AND), order and optional limit, and the arguments in order."""
    sql = base + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order}"
    if limit:
        return sql + " LIMIT ?", [*args, limit]
    return sql, list(args)


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for key in ("summary", "config"):
        d[key] = json.loads(d[key]) if d.get(key) else None
    for key in ("journal_inode", "journal_offset", "journal_lines", "summary_stamp"):
        d.pop(key, None)
    return d


def _exchange_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["messages"] = json.loads(d["messages"]) if d.get("messages") else []
    d["cached"] = bool(d.get("cached"))
    return d


def fts_query(text: str) -> str:
    """``text`` as an FTS5 query: plain words are ANDed (each quoted, so ``don't`` or ``a-b`` cannot break
    the syntax); text using FTS5 operators (quotes, ``*``, AND/OR/NOT, NEAR, parentheses) is passed as is."""
    if re.search(r'["*()]|\b(AND|OR|NOT|NEAR)\b', text):
        return text
    words = [w for w in text.split() if w]
    return " ".join('"' + w.replace('"', '""') + '"' for w in words) or '""'


def open_store(runs_dir: str | Path, *, sync: bool = True) -> RunStore:
    """The store of ``runs_dir`` (``<runs_dir>/runs.db``), brought up to date with its run directories
    unless ``sync`` is false."""
    store = RunStore(store_path(runs_dir))
    if sync:
        try:
            store.sync(runs_dir)
        except BaseException:
            store.close()
            raise
    return store


def runs_dir_for(pipeline: str | Path | None = None, runs_dir: str | Path | None = None) -> Path:
    """Where the runs are: ``runs_dir`` when given; else the ``run.dir`` of ``pipeline`` (default
    ``pipeline.yaml`` when it exists in the working folder); else ``./runs``."""
    if runs_dir is not None:
        return Path(runs_dir)
    candidate = Path(pipeline) if pipeline is not None else Path("pipeline.yaml")
    if pipeline is not None or candidate.is_file():
        from .config import load_config

        loaded = load_config(candidate)
        return loaded.base_dir / loaded.config.run.dir
    return Path("runs")
