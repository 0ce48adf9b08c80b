"""The default response-cache store: one SQLite file, ``<cache dir>/cache.sqlite3``.

* **Concurrency.** WAL journal, ``synchronous=NORMAL``, a busy timeout: any number of threads (one
  connection per thread) and processes (two runs sharing a cache) read and write at once; readers never
  wait for writers. Each ``put`` is its own transaction: an answer stored before a kill is kept (a power
  cut may lose the last few, never the file).
* **Bounds.** ``max_age`` (``30d``): an entry stored that long ago or longer is a miss, and is deleted (once a day, when
  a run opens the cache, and by ``oaipipe cache clear --older-than``). ``max_size`` (``500MB``): when the
  file grows past it, entries are dropped, least recently used first, down to 90 % of it. "Recently used"
  is kept to the day so that a hit costs no write: rows are kept in the order they were stored, and an
  entry that is read again more than a day after it was stored (or last moved) moves to the back. The
  oldest rows are therefore contiguous, so deleting them frees whole pages and the file really shrinks
  (``auto_vacuum=INCREMENTAL``).
* **Compact values.** Compact JSON text of only what a hit needs (no ``cached``, ``latency`` or empty
  fields). ``compress: true`` stores it zlib-compressed with a preset dictionary (about half the file) at
  the cost of a slower hit; measured in bench/cache.py, the plain text is the default because a hit must
  cost less than the JSON-file read it replaces, and compressed it is about even.
* **Migration.** The one-file-per-entry layout of earlier versions (``<cache dir>/ab/<key>.json``) is
  imported when the store is first opened, a batch per transaction. A shard folder whose files are all
  committed is moved into ``imported-json-files/``, deleted by a background thread. A kill part-way leaves
  a working cache; the next open imports the rest (an entry already in the database wins). Nothing of the
  old layout is left once it is done.
* **Damage.** A file that is not a database (or fails ``quick_check`` after a run saw it malformed) is
  moved aside to ``cache.sqlite3.corrupt-<time>`` and recreated, with one warning. A database that stays
  locked past the busy timeout raises; the response cache then warns once and the run goes on uncached.

Opening (schema, repair, migration, the daily age sweep) happens on the first call, under a lock file
(``cache.sqlite3.lock``) so that two processes never repair or migrate at once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from . import runlock
from .base import Context, PluginOptions
from .cache import (
    DEFAULT_CACHE_DIR,
    CacheStore,
    _iso,
    _shards,
    compact_entry,
    format_duration,
    parse_duration,
    parse_size,
    read_file_entry,
)
from .errors import redact_data

__all__ = ["DB_NAME", "SqliteStore"]

DB_NAME = "cache.sqlite3"
_SCHEMA_VERSION = 1
#: an entry read again this long after it was stored (or last moved) moves to the back of the eviction order
_REFRESH_AFTER = 86400
#: how often (seconds) expired entries are deleted when a store is opened
_SWEEP_EVERY = 86400
#: hits and misses are added to the file's totals at most this often (seconds), and when the store closes
_FLUSH_EVERY = 2.0
#: eviction brings the file down to this share of ``max_size``
_SHRINK_TO = 0.9
#: files imported per transaction when migrating a directory cache
_MIGRATE_BATCH = 500
#: the folder (in the cache folder) of imported shard folders, deleted in the background
_IMPORTED = "imported-json-files"
#: called after each committed migration batch (tests use it to kill the process there)
_after_migration_batch: Callable[[int], None] | None = None

#: the preset dictionary of compressed values (codec 1): frequent English words and the fields of a cache
#: entry (the end of a preset dictionary weighs most). Never change it: rows written with it must stay
#: readable; a new dictionary needs a new codec byte.
_ZDICT = (b" the of and to in is that for it with as was on be by this are not or you your from have an at which"
          b" can will if they their more one all has but would there we when what so about our been"
          b'","model":"gpt-4o-mini","backend":"openai","usage":{"prompt_tokens":0,"completion_tokens":0,'
          b'"total_tokens":0},"request_id":"chatcmpl-","finish_reason":"stop"}}{"format":1,"response":{"text":"')
_ZLIB = b"\x01"  # first byte of a compressed value (JSON text never starts with it)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,   -- the eviction order: oldest stored (or least recently moved) first
    h INTEGER NOT NULL,       -- the first 64 bits of the key
    key TEXT NOT NULL,
    created INTEGER NOT NULL, -- unix time the answer was stored (max_age, clear --older-than)
    used INTEGER NOT NULL,    -- unix time it was stored or last moved to the back (to the day)
    value NOT NULL            -- JSON text, or a compressed BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_h ON entries(h);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('hits', 0), ('misses', 0), ('migrated', 0), ('swept', 0), ('created', 0);
"""

#: connections of a process that forked: never used nor closed in the child (that would disturb the parent)
_ABANDONED: list[sqlite3.Connection] = []
#: the states of every open store, reset in a forked child
_STATES: weakref.WeakSet[_State] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for state in list(_STATES):
        state.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _h(key: str) -> int:
    """The 64-bit row handle of a key: its first 16 hex digits (a cache key is a SHA-256), else a hash. Two
    keys with one handle replace each other (a miss later, never a wrong answer: ``get`` compares keys)."""
    if len(key) == 64:
        with contextlib.suppress(ValueError):
            return int(key[:16], 16) - (1 << 63)
    import hashlib

    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def encode(value: dict[str, Any], compress: bool = False) -> str | bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if not compress:
        return text
    raw = text.encode("utf-8")
    z = zlib.compressobj(6, zdict=_ZDICT)
    packed = _ZLIB + z.compress(raw) + z.flush()
    return packed if len(packed) < len(raw) else text


def decode(blob: str | bytes) -> dict[str, Any]:
    if isinstance(blob, bytes):
        if blob[:1] != _ZLIB:
            raise ValueError("unknown value encoding")
        d = zlib.decompressobj(zdict=_ZDICT)
        blob = (d.decompress(blob[1:]) + d.flush()).decode("utf-8")
    value = json.loads(blob)
    if not isinstance(value, dict):
        raise ValueError("not a cache entry")
    return value


def _is_corrupt(exc: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file is damaged (as opposed to busy, locked or unwritable)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (11, 26)
    text = str(exc)
    return "malformed" in text or "not a database" in text


class _State:
    """What the connections of one store in one process share (kept apart for ``weakref.finalize``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.local = threading.local()
        self.conns: list[sqlite3.Connection] = []
        self.ready = False
        self.hits = 0
        self.misses = 0
        self.flushed = time.monotonic()

    def forked(self) -> None:
        """In a forked child: the parent's connections are not ours to use (nor to close)."""
        _ABANDONED.extend(self.conns)
        self.conns, self.local, self.pid = [], threading.local(), os.getpid()
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def flush_counts(self, conn: sqlite3.Connection, *, every: float = 0.0) -> None:
        """Add the hits and misses counted since the last flush to the file's totals (at most once per
        ``every`` seconds)."""
        if not (self.hits or self.misses) or time.monotonic() - self.flushed < every:
            return
        hits, misses, self.hits, self.misses = self.hits, self.misses, 0, 0
        self.flushed = time.monotonic()
        with contextlib.suppress(sqlite3.OperationalError):  # busy: they are counted a little short
            conn.execute("UPDATE meta SET value = value + (CASE name WHEN 'hits' THEN ? ELSE ? END) "
                         "WHERE name IN ('hits', 'misses')", (hits, misses))

    def close(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
            self.local = threading.local()
        if os.getpid() != self.pid:
            _ABANDONED.extend(conns)
            return
        for i, conn in enumerate(conns):
            with contextlib.suppress(sqlite3.Error):
                if i == 0:
                    self.flush_counts(conn)
                conn.close()


class SqliteStore(CacheStore):
    """One SQLite file (WAL): safe for threads and processes, optionally bounded in size and age."""

    class Options(PluginOptions):
        path: str | None = Field(None, description="The database file (default: cache.sqlite3 in run.cache_dir)")
        max_size: int | None = Field(None, description="Largest file size, e.g. 500MB or 2GiB; past it the least "
                                                       "recently used entries are dropped")
        max_age: float | None = Field(None, description="Entries stored this long ago or longer are misses and are deleted, "
                                                        "e.g. 30d, 12h")
        compress: bool = Field(False, description="Store values zlib-compressed: about half the file, a slower hit")
        busy_timeout: float = Field(5.0, gt=0, le=600, description="Seconds to wait for another writer")

        @field_validator("max_size", mode="before")
        @classmethod
        def _size(cls, value: Any) -> Any:
            return None if value is None else parse_size(value)

        @field_validator("max_age", mode="before")
        @classmethod
        def _age(cls, value: Any) -> Any:
            return None if value is None else parse_duration(value)

    options: SqliteStore.Options

    def __init__(self, options: PluginOptions | None = None, context: Context | None = None) -> None:
        super().__init__(options, context)
        cache_dir = self.context.settings.get("cache_dir") or self.context.path(DEFAULT_CACHE_DIR)
        self.root = Path(cache_dir)
        self.path = self.context.path(self.options.path) if self.options.path else self.root / DB_NAME
        #: the clock (seconds since the epoch); tests move it
        self.clock: Callable[[], float] = time.time
        self._state = _State(self.path)
        _STATES.add(self._state)
        weakref.finalize(self, _State.close, self._state)
        self._pending = 0
        self._page_size = 4096
        #: the thread deleting the files of an imported directory cache, if one was started
        self.cleanup: threading.Thread | None = None

    @classmethod
    def at(cls, root: str | Path, **options: Any) -> SqliteStore:
        """The store in the cache folder ``root`` (``options`` as in ``run.cache``)."""
        return cls(cls.Options(**options), Context(settings={"cache_dir": str(root)}))

    @property
    def where(self) -> str:
        return str(self.path)

    # --- connections ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.options.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        state = self._state
        conn: sqlite3.Connection | None = getattr(state.local, "conn", None)
        if conn is not None:
            return conn
        with state.lock:
            if not state.ready:
                conn = self._open()
                state.ready = True
            else:
                conn = self._connect()
            state.local.conn = conn
            state.conns.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        """First use in this process: create, repair, migrate and sweep, under the store's lock file; return
        the connection."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock: runlock.HeldLock | None
        try:
            lock = runlock.acquire(self.path.with_name(self.path.name + ".lock"), wait=self.options.busy_timeout,
                                   purpose="response cache")
        except runlock.LockBusy:
            lock = None  # another process is migrating or repairing: use the file as it is
        try:
            if lock is not None:
                self._repair()
            conn = self._connect()
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    self._create(conn)
                elif version > _SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(f"{self.path} was written by a newer oaipipe (schema {version})")
                self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                if lock is not None:
                    self._migrate(conn)
                    self.cleanup = self._remove_imported()
                    self._sweep(conn)
                    if self.options.max_size:
                        self._evict_size(conn)
            except BaseException:
                conn.close()
                raise
            return conn
        finally:
            if lock is not None:
                lock.release()

    def _repair(self) -> None:
        """A file that is not a database, or that a run saw malformed and fails ``quick_check``: move it
        aside; the caller starts a new one."""
        marker = self.path.with_name(self.path.name + ".check")
        reason = None
        conn = sqlite3.connect(self.path, timeout=self.options.busy_timeout, isolation_level=None)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if marker.exists():
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    reason = f"quick_check: {result}"
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            reason = str(exc)
        finally:
            conn.close()
        with contextlib.suppress(OSError):
            marker.unlink()
        if reason is None:
            return
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        self.warn(f"the response cache {self.path} was damaged ({reason}): moved aside to {aside.name}; a new "
                  f"cache starts empty")

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # before the first table: lets eviction shrink the file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("UPDATE meta SET value = ? WHERE name = 'created' AND value = 0", (int(self.clock()),))
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _damaged(self, exc: BaseException) -> None:
        """A run saw the file malformed: the next open checks it and moves it aside if it is."""
        if _is_corrupt(exc):
            with contextlib.suppress(OSError):
                self.path.with_name(self.path.name + ".check").touch()

    # --- the contract ---------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        state = self._state
        try:
            conn = self._conn()
            row = conn.execute("SELECT id, key, created, used, value FROM entries WHERE h = ?", (_h(key),)).fetchone()
        except sqlite3.Error as exc:
            self._damaged(exc)
            raise
        now = self.clock()
        max_age = self.options.max_age
        if row is None or row[1] != key or (max_age is not None and row[2] <= now - max_age):
            state.misses += 1
            state.flush_counts(conn, every=_FLUSH_EVERY)
            return None
        try:
            value = decode(row[4])
        except (ValueError, zlib.error):
            state.misses += 1
            return None
        if now - row[3] >= _REFRESH_AFTER:  # used again after a day: to the back of the eviction order
            with contextlib.suppress(sqlite3.Error):  # only an eviction hint: a busy file skips it
                conn.execute("UPDATE entries SET id = (SELECT max(id) FROM entries) + 1, used = ? WHERE id = ?",
                             (int(now), row[0]))
        state.hits += 1
        state.flush_counts(conn, every=_FLUSH_EVERY)
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        blob = encode(value, self.options.compress)
        now = int(self.clock())
        try:
            conn = self._conn()
            conn.execute("INSERT OR REPLACE INTO entries (h, key, created, used, value) VALUES (?, ?, ?, ?, ?)",
                         (_h(key), key, now, now, blob))
        except sqlite3.Error as exc:
            self._damaged(exc)
            raise
        max_size = self.options.max_size
        if max_size:
            self._pending += len(blob) + 100
            if self._pending >= max(4096, max_size // 50):
                self._pending = 0
                self._evict_size(conn)

    def evict(self) -> int:
        conn = self._conn()
        removed = self._sweep(conn, force=True)
        if self.options.max_size:
            removed += self._evict_size(conn)
        return removed

    def clear(self, older_than: float | None = None) -> int:
        if not self.path.exists() and not _shards(self.root):
            return 0
        conn = self._conn()
        if older_than is None:
            removed = conn.execute("DELETE FROM entries").rowcount
        else:
            removed = conn.execute("DELETE FROM entries WHERE created < ?",
                                   (int(self.clock() - older_than),)).rowcount
        self._shrink(conn)
        return removed

    def close(self) -> None:
        self._state.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"store": self.name or "sqlite", "path": str(self.path), "entries": 0, "size_bytes": 0,
                               "oldest": None, "newest": None, "hits": 0, "misses": 0,
                               "max_size": self.options.max_size,
                               "max_age": format_duration(self.options.max_age) if self.options.max_age else None}
        if not self.path.exists() and not _shards(self.root):
            return out  # nothing stored yet: do not create the file just to say so
        conn = self._conn()
        n, oldest, newest = conn.execute("SELECT count(*), min(created), max(created) FROM entries").fetchone()
        counts = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.path.getsize(f"{self.path}{suffix}")
        out.update(entries=n, size_bytes=size, oldest=_iso(oldest), newest=_iso(newest),
                   hits=int(counts.get("hits") or 0) + self._state.hits,
                   misses=int(counts.get("misses") or 0) + self._state.misses,
                   migrated=int(counts.get("migrated") or 0))
        return out

    def __len__(self) -> int:
        if not self.path.exists() and not _shards(self.root):
            return 0
        return int(self._conn().execute("SELECT count(*) FROM entries").fetchone()[0])

    # --- bounds ---------------------------------------------------------------------------------

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    def _shrink(self, conn: sqlite3.Connection) -> None:
        """Give freed pages back to the file system (incremental vacuum, then a WAL checkpoint)."""
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute("PRAGMA incremental_vacuum").fetchall()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _evict_size(self, conn: sqlite3.Connection) -> int:
        """Past ``max_size``: drop the oldest rows (least recently used, to the day) down to 90 % of it."""
        max_size = self.options.max_size
        if not max_size:
            return 0
        used = self._used_bytes(conn)
        if used <= max_size:
            return 0
        target = int(max_size * _SHRINK_TO)
        removed = 0
        entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        for _ in range(50):
            if used <= target or entries <= 0:
                break
            per_entry = used / entries
            n = max(1, min(entries, int((used - target) / per_entry) + 1))
            deleted = conn.execute("DELETE FROM entries WHERE id IN (SELECT id FROM entries ORDER BY id LIMIT ?)",
                                   (n,)).rowcount
            if deleted <= 0:
                break
            removed += deleted
            entries -= deleted
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("PRAGMA incremental_vacuum").fetchall()
            used = self._used_bytes(conn)
        return removed

    def _sweep(self, conn: sqlite3.Connection, *, force: bool = False) -> int:
        """Delete the entries past ``max_age`` (once a day unless ``force``)."""
        max_age = self.options.max_age
        if not max_age:
            return 0
        now = int(self.clock())
        swept = conn.execute("SELECT value FROM meta WHERE name = 'swept'").fetchone()
        if not force and swept is not None and now - int(swept[0] or 0) < _SWEEP_EVERY:
            return 0
        removed = conn.execute("DELETE FROM entries WHERE created <= ?", (int(now - max_age),)).rowcount
        conn.execute("UPDATE meta SET value = ? WHERE name = 'swept'", (now,))
        if removed:
            self._shrink(conn)
        return removed

    # --- migration from the directory cache -----------------------------------------------------

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Import ``<cache dir>/ab/<key>.json`` files, a batch per transaction. Once every batch of a shard
        folder is committed, the folder is moved (one rename) into ``imported-json-files/``, which a
        background thread deletes. A kill before the move leaves the folder to import again next time, which
        changes nothing (an entry already in the database wins)."""
        shards = _shards(self.root)
        if shards:
            n = sum(1 for shard in shards for _ in shard.glob("*.json"))
            self.note(f"response cache: importing {n:,} answers of the one-file-per-answer cache in {self.root} "
                      f"into {self.path.name} (once; an interrupted import goes on next time)")
        trash = self.root / _IMPORTED
        for shard in shards:
            paths = sorted(shard.glob("*.json"))
            for start in range(0, len(paths), _MIGRATE_BATCH):
                self._import_batch(conn, paths[start:start + _MIGRATE_BATCH])
            trash.mkdir(exist_ok=True)
            target = trash / f"{shard.name}-{os.getpid()}-{time.monotonic_ns()}"
            with contextlib.suppress(FileNotFoundError):  # another process moved it meanwhile
                os.replace(shard, target)

    def _import_batch(self, conn: sqlite3.Connection, batch: list[Path]) -> None:
        rows = []
        for path in batch:
            try:
                key, value = read_file_entry(path)
                created = int(path.stat().st_mtime)
            except (OSError, ValueError):
                continue  # unreadable: it was a miss before, and goes with the others
            # masked as ResponseCache.put masks a new answer: entries of older versions were stored as they came
            value = redact_data(compact_entry(value))
            rows.append((_h(key), key, created, created, encode(value, self.options.compress)))
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO entries (h, key, created, used, value) VALUES (?, ?, ?, ?, ?)",
                             rows)
            added = conn.total_changes - before
            conn.execute("UPDATE meta SET value = value + ? WHERE name = 'migrated'", (added,))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if _after_migration_batch is not None:
            _after_migration_batch(len(batch))

    def _remove_imported(self) -> threading.Thread | None:
        """Delete the imported folders in a background thread (removing a million small files takes a while;
        a run need not wait for it). Whatever a process leaves is deleted by the next one."""
        trash = self.root / _IMPORTED
        if not trash.is_dir():
            return None
        thread = threading.Thread(target=shutil.rmtree, args=(trash,), kwargs={"ignore_errors": True},
                                  name="oaipipe-cache-cleanup", daemon=True)
        thread.start()
        return thread
