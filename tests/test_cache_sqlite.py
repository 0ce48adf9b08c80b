"""The response cache in one SQLite file: the store protocol and its plugin hook, threads and processes,
eviction by size and age, migration from the directory cache (a kill part-way included), a damaged or
locked file, and ``oaipipe cache stats|clear``."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from _scale_util import chat_requests, write_pipeline

from oaipipe.cache import FileStore, ResponseCache, cache_wrapper, parse_duration, parse_size, store_for
from oaipipe.cache_sqlite import DB_NAME, SqliteStore
from oaipipe.cli import main
from oaipipe.errors import ConfigError
from oaipipe.pipeline import load_pipeline
from oaipipe.runner import run_pipeline_file
from oaipipe.types import ChatRequest, ChatResponse, Usage

DAY = 86400


def _req(text: str = "hi", **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], model=kw.pop("model", "gpt-4o-mini"), **kw)


def _resp(text: str = "hello") -> ChatResponse:
    return ChatResponse(text=text, model="gpt-4o-mini", backend="openai", usage=Usage(3, 4, 7), latency=0.5)


def _key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _value(i: int, size: int = 0) -> dict:
    # random hex does not compress: `size` bytes of it make an entry of a known size on disk
    return {"format": 1, "i": i, "pad": os.urandom(size // 2).hex() if size else ""}


class Clock:
    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the protocol and the plugin hook ---------------------------------------------------------------

DICT_STORE_PLUGIN = '''
import json
from pathlib import Path
from pydantic import Field
from oaipipe import CacheStore, PluginOptions, hookimpl


class JsonDictStore(CacheStore):
    """A dict kept in one JSON file, logging every call (a test double)."""

    class Options(PluginOptions):
        file: str = Field(..., description="The JSON file")
        fail: bool = False

    def _load(self):
        path = self.context.path(self.options.file)
        return json.loads(path.read_text()) if path.exists() else {"entries": {}, "log": []}

    def _save(self, data):
        self.context.path(self.options.file).write_text(json.dumps(data))

    def get(self, key):
        if self.options.fail:
            raise ConnectionError("the store is unreachable")
        data = self._load()
        data["log"].append(["get", key, key in data["entries"]])
        self._save(data)
        return data["entries"].get(key)

    def put(self, key, value):
        data = self._load()
        data["entries"][key] = value
        data["log"].append(["put", key])
        self._save(data)

    def stats(self):
        return {"store": self.name, "path": self.options.file, "entries": len(self._load()["entries"])}

    def clear(self, older_than=None):
        data = self._load()
        n = len(data["entries"])
        data["entries"] = {}
        self._save(data)
        return n


@hookimpl
def register_cache_stores(register):
    register("mydict", JsonDictStore)
'''


def _dict_pipeline(tmp_path: Path, server, cache: str, n: int = 3) -> Path:
    (tmp_path / "dict_store.py").write_text(DICT_STORE_PLUGIN, encoding="utf-8")
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}'}}", n=n,
                          extra=f"run: {{cache: {cache}}}\n")
    text = path.read_text(encoding="utf-8").replace("name: t\n", "name: t\nplugins: [dict_store.py]\n")
    path.write_text(text, encoding="utf-8")
    return path


def test_a_plugin_store_registered_by_the_hook_is_used(tmp_path: Path, server) -> None:
    path = _dict_pipeline(tmp_path, server, "{type: mydict, file: store.json}")
    first = run_pipeline_file(path)
    assert first["status"] == "finished" and chat_requests(server) == 3
    data = json.loads((tmp_path / "store.json").read_text())
    assert len(data["entries"]) == 3
    assert [e[0] for e in data["log"]].count("put") == 3
    assert all(len(k) == 64 for k in data["entries"])
    assert not (tmp_path / ".oaipipe" / "cache").exists(), "the default store is not touched"
    second = run_pipeline_file(path, fresh=True)
    assert second["cached"] == 3 and chat_requests(server) == 3, "answered from the plugin's store"
    assert second["cache"]["hits"] == 3
    hits = [e for e in json.loads((tmp_path / "store.json").read_text())["log"] if e[0] == "get" and e[2]]
    assert len(hits) == 3


def test_a_failing_plugin_store_warns_once_and_the_run_goes_on_uncached(tmp_path: Path, server) -> None:
    path = _dict_pipeline(tmp_path, server, "{type: mydict, file: store.json, fail: true}", n=4)
    summary = run_pipeline_file(path)
    assert summary["status"] == "finished" and summary["records"]["done"] == 4
    assert chat_requests(server) == 4
    warnings = summary["cache"]["warnings"]
    assert len(warnings) == 1 and "ConnectionError: the store is unreachable" in warnings[0]
    assert "goes on without it" in warnings[0]
    assert summary["cache"]["writes"] == 0  # switched off after the failure: nothing half-stored


def test_run_cache_mapping_is_validated_with_file_and_line(tmp_path: Path, server) -> None:
    url = server.base_url
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{url}'}}", extra="run:\n  cache: {type: redis}\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    text = str(info.value)
    assert f"{path}:" in text and "run.cache.type" in text and "redis" in text and "sqlite" in text
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{url}'}}",
                          extra="run:\n  cache: {max_size: lots}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:\d+.*run\.cache\.max_size.*not a size"):
        load_pipeline(path)
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{url}'}}", extra="run:\n  cache: sqlite\n")
    with pytest.raises(ConfigError, match=r"run\.cache.*true, false or a store block"):
        load_pipeline(path)
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{url}'}}",
                          extra="run:\n  cache: {type: sqlite, max_age: 30d, max_size: 1GiB}\n")
    store = store_for(load_pipeline(path))
    assert isinstance(store, SqliteStore)
    assert store.options.max_age == 30 * DAY and store.options.max_size == 2**30


def test_sizes_and_durations() -> None:
    assert parse_size("500MB") == 500_000_000 and parse_size("2GiB") == 2 * 2**30 and parse_size(4096) == 4096
    assert parse_size("1.5 kb") == 1500
    assert parse_duration("30d") == 30 * DAY and parse_duration("12h") == 43200 and parse_duration(90) == 90
    for bad in ("lots", "-1MB", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)
    for bad in ("soon", "3y", "0s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_the_key_covers_extra(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    cache.put(_req(extra={"seed": 1}), _resp())
    assert cache.get(_req(extra={"seed": 1})) is not None
    assert cache.get(_req(extra={"seed": 2})) is None
    assert cache.get(_req()) is None


# --- the SQLite store ---------------------------------------------------------------------------------


def test_one_file_and_compact_values(tmp_path: Path) -> None:
    value = {"format": 1, "response": {"text": "the same words again and again " * 20}}
    for folder, options in ((tmp_path / "plain", {}), (tmp_path / "z", {"compress": True})):
        store = SqliteStore.at(folder, **options)
        store.put(_key(1), value)
        assert store.get(_key(1)) == value
        assert store.get(_key(2)) is None
        store.close()
        db = sqlite3.connect(folder / DB_NAME)
        (blob,) = db.execute("SELECT value FROM entries").fetchone()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
        if options:
            assert isinstance(blob, bytes) and len(blob) < len(json.dumps(value)) / 3  # stored compressed
        else:
            assert blob == json.dumps(value, separators=(",", ":"))  # compact JSON text
        assert [p.name for p in folder.iterdir()] == [DB_NAME], "one file"
    cache = ResponseCache(tmp_path / "front")
    cache.put(_req(), _resp())
    (stored,) = cache.store._conn().execute("SELECT value FROM entries").fetchone()
    assert json.loads(stored) == {"format": 1, "response": {"text": "hello", "model": "gpt-4o-mini",
                                                             "backend": "openai", "usage": {"prompt_tokens": 3,
                                                             "completion_tokens": 4, "total_tokens": 7}}}


def test_threads_share_one_store(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(60):
                cache.put(_req(f"q{i % 20}"), _resp(f"a{i % 20}"))
                hit = cache.get(_req(f"q{(i + n) % 20}"))
                assert hit is None or hit.text == f"a{(i + n) % 20}"
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and cache.stats.errors == 0 and not cache.stats.warnings
    assert len(cache) == 20
    assert all(cache.get(_req(f"q{i}")).text == f"a{i}" for i in range(20))
    assert len(cache.store._state.conns) >= 2  # one connection per thread


def _process_writer(root: str, n: int, start: multiprocessing.synchronize.Event) -> None:
    cache = ResponseCache(root)
    start.wait(30)
    for i in range(150):
        cache.put(_req(f"q{i % 50}"), _resp(f"a{i % 50}"))
        hit = cache.get(_req(f"q{(i * 7 + n) % 50}"))
        assert hit is None or hit.text == f"a{(i * 7 + n) % 50}"
    assert cache.stats.errors == 0 and not cache.stats.warnings, cache.stats.warnings


def test_two_processes_write_one_cache_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_process_writer, args=(str(tmp_path), n, start)) for n in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    cache = ResponseCache(tmp_path)
    assert len(cache) == 50
    assert all(cache.get(_req(f"q{i}")).text == f"a{i}" for i in range(50))


def _bounded_store(tmp_path: Path, clock: Clock) -> SqliteStore:
    """A 500 KB store holding entries 0-299 of ~1.1 KB each (about 450 fit), on ``clock``."""
    store = SqliteStore.at(tmp_path, max_size="500KB", compress=False)
    store.clock = clock
    for i in range(300):
        store.put(_key(i), _value(i, 1000))
    return store


def test_max_size_drops_the_least_recently_used_first(tmp_path: Path) -> None:
    clock = Clock()
    store = _bounded_store(tmp_path, clock)
    assert len(store) == 300  # still under the bound
    clock.now += 2 * DAY
    assert store.get(_key(0)) is not None  # read again after a day: it moves to the back of the queue
    for i in range(300, 600):
        store.put(_key(i), _value(i, 1000))
    store.evict()
    assert store._used_bytes(store._conn()) <= 500_000
    store.close()
    assert os.path.getsize(tmp_path / DB_NAME) <= 500_000  # the file really shrinks
    store = SqliteStore.at(tmp_path, max_size="500KB")
    kept = [i for i in range(600) if store.get(_key(i)) is not None]
    assert 300 < len(kept) < 500
    assert kept[0] == 0, "the entry read again outlived older ones"
    assert kept[1:] == list(range(kept[1], 600)), "the oldest others went first, the newest are all kept"


def test_max_age_makes_old_entries_misses_and_removes_them(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore.at(tmp_path, max_age="30d")
    store.clock = clock
    store.put(_key(1), _value(1))
    clock.now += 20 * DAY
    store.put(_key(2), _value(2))
    assert store.get(_key(1)) is not None
    clock.now += 11 * DAY
    assert store.get(_key(1)) is None, "stored 31 days ago: a miss"
    assert store.get(_key(2)) is not None
    assert store.evict() == 1
    assert len(store) == 1
    store.close()
    # a later open sweeps expired entries too (once a day)
    again = SqliteStore.at(tmp_path, max_age="30d")
    again.clock = clock
    clock.now += 20 * DAY
    assert again.get(_key(2)) is None and len(again) == 0


def test_clear_older_than(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore.at(tmp_path)
    store.clock = clock
    store.put(_key(1), _value(1))
    clock.now += 40 * DAY
    store.put(_key(2), _value(2))
    assert store.clear(older_than=30 * DAY) == 1
    assert store.get(_key(1)) is None and store.get(_key(2)) is not None
    assert store.clear() == 1 and len(store) == 0


# --- migration from the directory cache -------------------------------------------------------------


def _directory_cache(root: Path, n: int) -> list[ChatRequest]:
    old = ResponseCache(root, store=FileStore.at(root), namespace="srv")
    requests = [_req(f"question {i}") for i in range(n)]
    for i, r in enumerate(requests):
        old.put(r, _resp(f"answer {i}"))
    assert len(list(root.glob("??/*.json"))) == n
    return requests


def _wait_until_removed(cache: ResponseCache, folder: Path) -> None:
    """The imported files are deleted by a background thread: wait for it, then nothing of them is left."""
    thread = cache.store.cleanup
    assert thread is not None
    thread.join(30)
    assert not thread.is_alive()
    assert [p.name for p in folder.iterdir() if p.is_dir()] == [], "the old files and folders are gone"


def test_a_directory_cache_is_imported_on_first_use(tmp_path: Path) -> None:
    before = ResponseCache(tmp_path, namespace="srv")
    before.put(_req("question 1"), _resp("newer"))  # already in the database: it wins over the old file
    before.close()
    requests = _directory_cache(tmp_path, 30)
    cache = ResponseCache(tmp_path, namespace="srv")
    (tmp_path / cache.key_for(requests[0])[:2] / ".abc.oaipipe.tmp").write_text("cut short")  # a crash's leftover
    hits = [cache.get(r) for r in requests]
    assert all(h is not None for h in hits)
    assert [h.text for h in hits] == ["answer 0", "newer", *[f"answer {i}" for i in range(2, 30)]]
    assert len(cache) == 30
    assert not list(tmp_path.glob("??")), "no shard folder is read again"
    _wait_until_removed(cache, tmp_path)
    assert cache.store.stats()["migrated"] == 29


MIGRATE_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    import oaipipe.cache_sqlite as cs
    cs._MIGRATE_BATCH = 3
    done = []
    def die(n):
        done.append(n)
        if len(done) == 2:  # two batches committed, their files not yet removed
            os.kill(os.getpid(), signal.SIGKILL)
    cs._after_migration_batch = die
    cs.SqliteStore.at(sys.argv[1]).get("0" * 64)
    """)


def test_a_kill_mid_migration_leaves_a_working_cache_that_finishes_next_time(tmp_path: Path) -> None:
    requests = _directory_cache(tmp_path, 40)
    proc = subprocess.run([sys.executable, "-c", MIGRATE_AND_DIE, str(tmp_path)], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    db = sqlite3.connect(tmp_path / DB_NAME)
    imported = db.execute("SELECT count(*) FROM entries").fetchone()[0]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    left = len(list(tmp_path.glob("??/*.json")))
    assert imported >= 1 and left >= 1 and imported + left >= 40, (imported, left)
    cache = ResponseCache(tmp_path, namespace="srv")
    assert [cache.get(r).text for r in requests] == [f"answer {i}" for i in range(40)]
    assert len(cache) == 40, "the files imported twice are not duplicated"
    assert not list(tmp_path.glob("??"))
    _wait_until_removed(cache, tmp_path)


def test_entries_imported_from_an_old_directory_cache_have_their_secrets_masked(tmp_path: Path) -> None:
    from oaipipe.cache import _FORMAT
    from oaipipe.errors import register_secret

    secret = "sk-stored-unmasked-by-an-old-version-0123456789"
    register_secret(secret)
    cache = ResponseCache(tmp_path, store=FileStore.at(tmp_path), namespace="srv")
    request = _req("what key do I use?")
    # written the way versions before the masking wrote it: the answer as it came, echoing the key
    cache.store.put(cache.key_for(request), {"format": _FORMAT, "response": _resp(f"you sent {secret}").to_dict()})
    assert secret.encode() in b"".join(p.read_bytes() for p in tmp_path.glob("??/*.json"))
    imported = ResponseCache(tmp_path, namespace="srv")
    hit = imported.get(request)
    assert hit is not None and hit.text == "you sent ***"
    _wait_until_removed(imported, tmp_path)
    imported.close()
    from oaipipe.cache_sqlite import decode

    rows = sqlite3.connect(tmp_path / DB_NAME).execute("SELECT value FROM entries").fetchall()
    assert len(rows) == 1 and secret not in json.dumps(decode(rows[0][0]))  # the stored row, decompressed


# --- damage and locks -----------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_moved_aside_and_recreated(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 200)
    notes: list[str] = []
    cache = ResponseCache(tmp_path, notify=notes.append)
    assert cache.get(_req()) is None
    cache.put(_req(), _resp())
    assert cache.get(_req()).text == "hello"
    assert len(notes) == 1 and "moved aside" in notes[0]
    assert cache.stats.warnings == [notes[0].removeprefix("warning: ")] and cache.broken is None
    aside = list(tmp_path.glob(f"{DB_NAME}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")


def test_a_damaged_database_is_misses_with_one_warning_then_replaced(tmp_path: Path) -> None:
    store = SqliteStore.at(tmp_path)
    keys = [_key(i * 7919 + 1) for i in range(2000)]
    for i, k in enumerate(keys):
        store.put(k, _value(i, 400))
    store.close()
    path = tmp_path / DB_NAME
    with path.open("r+b") as fh:  # scribble over pages in the middle of the file
        fh.seek(path.stat().st_size // 2)
        fh.write(b"\xab" * 64 * 1024)
    notes: list[str] = []
    cache = ResponseCache(tmp_path, notify=notes.append)
    answers = [cache.get(_req(), key=k) for k in keys]  # never raises
    assert cache.broken is not None and "malformed" in cache.broken
    assert len(notes) == 1 and "goes on without it" in notes[0]
    assert answers[-1] is None and cache.stats.hits + cache.stats.misses == len(keys)
    assert (tmp_path / f"{DB_NAME}.check").exists(), "the next open checks the file"
    cache.close()
    again = ResponseCache(tmp_path, notify=notes.append)  # the next run: checked, moved aside, recreated
    again.put(_req(), _resp("fresh"))
    assert again.get(_req()).text == "fresh"
    assert len(list(tmp_path.glob(f"{DB_NAME}.corrupt-*"))) == 1
    assert any("moved aside" in n for n in notes)


def test_a_locked_database_is_misses_with_one_warning(tmp_path: Path) -> None:
    first = ResponseCache(tmp_path)
    first.put(_req(), _resp())
    first.close()
    holder = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("DELETE FROM meta WHERE name = 'nothing'")
    try:
        notes: list[str] = []
        cache = ResponseCache(tmp_path, store=SqliteStore.at(tmp_path, busy_timeout=0.2), notify=notes.append)
        assert cache.get(_req()) is None
        assert cache.get(_req("other")) is None
        cache.put(_req("third"), _resp())
        assert len(notes) == 1 and "locked" in notes[0]
        assert cache.stats.misses == 2 and cache.stats.writes == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ResponseCache(tmp_path).get(_req()).text == "hello"


def test_a_run_with_a_damaged_cache_file_finishes_and_the_next_run_uses_the_new_one(tmp_path: Path,
                                                                                   server) -> None:
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}'}}", n=3)
    folder = tmp_path / ".oaipipe" / "cache"
    folder.mkdir(parents=True)
    (folder / DB_NAME).write_bytes(b"\0garbage" * 1000)
    first = run_pipeline_file(path)
    assert first["status"] == "finished" and chat_requests(server) == 3
    assert any("moved aside" in w for w in first["cache"]["warnings"])
    second = run_pipeline_file(path, fresh=True)
    assert second["cached"] == 3 and chat_requests(server) == 3


# --- the chain: a hit never waits for the rate limit ------------------------------------------------


def test_a_cache_hit_never_waits_for_the_rate_limit(tmp_path: Path, server) -> None:
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}', concurrency: 4}}", n=6)
    run_pipeline_file(path)
    # one request a minute: six calls through the limiter would take five minutes; six hits take none of it
    again = run_pipeline_file(path, ["backend.rpm=1"], fresh=True)
    assert again["cached"] == 6 and chat_requests(server) == 6
    assert again["rate_limit"]["rpm"] == 1 and again["rate_limit"]["waited_s"] == 0


def test_the_wrapper_works_against_any_store(tmp_path: Path) -> None:
    import asyncio

    calls = []

    async def backend(request: ChatRequest) -> ChatResponse:
        calls.append(request)
        return _resp()

    for store in (FileStore.at(tmp_path / "f"), SqliteStore.at(tmp_path / "s")):
        call = cache_wrapper(ResponseCache(store=store))(backend)
        assert asyncio.run(call(_req())).cached is False
        assert asyncio.run(call(_req())).cached is True
    assert len(calls) == 2


# --- oaipipe cache stats | clear ----------------------------------------------------------------------


def test_cache_stats_and_clear_commands(tmp_path: Path, capsys) -> None:
    path = write_pipeline(tmp_path, "{type: openai, base_url: 'http://127.0.0.1:9/v1'}", n=1)
    cache = ResponseCache(tmp_path / ".oaipipe" / "cache")
    for i in range(4):
        assert cache.get(_req(f"q{i}")) is None
        cache.put(_req(f"q{i}"), _resp())
        assert cache.get(_req(f"q{i}")) is not None
    cache.close()  # the store adds its hits and misses to the file's totals when it closes
    assert main(["cache", "stats", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["store"] == "sqlite" and data["entries"] == 4 and data["enabled"] is True
    assert data["path"] == str(tmp_path / ".oaipipe" / "cache" / DB_NAME)
    assert data["size_bytes"] > 0 and data["oldest"] and data["newest"]
    assert data["hits"] == 4 and data["misses"] == 4
    assert main(["cache", "stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "entries: 4" in out and DB_NAME in out and "hits:    4, misses: 4" in out
    assert main(["cache", "clear", str(path), "--older-than", "30d"]) == 0
    assert "removed 0 entries stored more than 30d ago" in capsys.readouterr().out
    assert main(["cache", "clear", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 4
    assert main(["cache", "stats", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 0
    assert main(["cache", "clear", str(path), "--older-than", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_cache_stats_does_not_create_a_cache(tmp_path: Path, capsys) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=1, extra="run: {cache: false}\n")
    assert main(["cache", "stats", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entries"] == 0 and data["enabled"] is False
    assert not (tmp_path / ".oaipipe").exists()


def test_a_run_closes_its_cache_and_adds_its_hits_and_misses(tmp_path: Path, server, capsys) -> None:
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}'}}", n=3)
    run_pipeline_file(path)
    folder = tmp_path / ".oaipipe" / "cache"
    # closed when the run ended (not whenever the garbage collector gets to it): its journal is folded in
    assert (folder / DB_NAME).exists() and not (folder / f"{DB_NAME}-wal").exists()
    run_pipeline_file(path, fresh=True)
    assert not (folder / f"{DB_NAME}-wal").exists()
    assert main(["cache", "stats", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["entries"], data["hits"], data["misses"]) == (3, 3, 3)


def test_calls_merged_in_flight_are_not_counted_as_misses(tmp_path: Path, server, capsys) -> None:
    # every record asks the same question: one call is made; the others are answered from the store or by
    # waiting for that call (merged). The run's cache block and `cache stats` count the same lookups.
    steps = '- {type: ask, prompt: "Say hello to the shop.", output: reply}\n'
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}', concurrency: 8}}", n=12,
                          steps=steps)
    summary = run_pipeline_file(path)
    block = summary["cache"]
    assert chat_requests(server) == 1 and summary["cached"] == 11
    assert (block["misses"], block["hits"] + block["merged"]) == (1, 11)  # a merged call is not a miss too
    assert main(["cache", "stats", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["hits"], data["misses"]) == (block["hits"], 1)  # the store's totals: misses = calls made


# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def test_max_size_holds_while_writing_even_for_tiny_entries(tmp_path: Path) -> None:
    """The store sweeps itself as it writes (no evict() here), counting each entry's row overhead: tiny
    entries (blobs of ~30 bytes) do not let it grow past its bound."""
    store = SqliteStore.at(tmp_path, max_size="64KB", compress=False)
    for i in range(3000):
        store.put(_key(i), {"i": i})
    used = store._used_bytes(store._conn())
    assert used <= 64 * 1024 + 4096 + 4096, used  # the bound, one sweep's worth of writes, one page
    assert store.get(_key(2999)) is not None  # the newest are kept
    store.close()


def test_a_write_that_finds_the_file_malformed_has_it_checked_at_the_next_open(tmp_path: Path) -> None:
    store = SqliteStore.at(tmp_path)
    store.put(_key(1), _value(1))

    class Malformed:
        def execute(self, *args: object) -> None:
            raise sqlite3.DatabaseError("database disk image is malformed")

    store._conn = lambda: Malformed()  # type: ignore[method-assign,assignment,return-value]
    with pytest.raises(sqlite3.DatabaseError):
        store.put(_key(2), _value(2))  # the response cache turns this into one warning and an uncached run
    assert (tmp_path / f"{DB_NAME}.check").exists()



def test_an_answer_is_good_for_max_age_and_no_longer(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore.at(tmp_path, max_age="30d")
    store.clock = clock
    store.put(_key(1), _value(1))
    clock.now += 30 * DAY - 1
    assert store.get(_key(1)) is not None  # a second short of 30 days: still good
    clock.now += 1
    assert store.get(_key(1)) is None  # 30 days old: expired, as the sweep deletes it
    assert store.evict() == 1


def test_the_counts_of_an_open_store_reach_the_file_every_few_seconds(tmp_path: Path, monkeypatch) -> None:
    # `cache stats` from another process sees a running store's hits and misses (they are added to the file
    # at most every _FLUSH_EVERY seconds, here at once), not only when it closes
    import oaipipe.cache_sqlite as cs

    monkeypatch.setattr(cs, "_FLUSH_EVERY", 0.0)
    store = SqliteStore.at(tmp_path)
    store.put(_key(1), _value(1))
    assert store.get(_key(1)) is not None and store.get(_key(2)) is None
    other = sqlite3.connect(tmp_path / DB_NAME)
    totals = dict(other.execute("SELECT name, value FROM meta WHERE name IN ('hits', 'misses')").fetchall())
    other.close()
    assert totals == {"hits": 1, "misses": 1}
    store.close()


def test_a_read_moves_an_entry_to_the_back_only_once_it_is_a_day_old(tmp_path: Path) -> None:
    # reads do not write: an entry read again moves to the back of the eviction order only a day (or more)
    # after it was stored or last moved
    clock = Clock()
    store = _bounded_store(tmp_path, clock)
    clock.now += DAY - 1
    assert store.get(_key(0)) is not None  # read a second short of a day later: stays where it was
    clock.now += 1
    assert store.get(_key(1)) is not None  # read a day later: to the back
    for i in range(300, 600):
        store.put(_key(i), _value(i, 1000))
    store.evict()
    assert store.get(_key(0)) is None, "read too soon to move: evicted with the oldest"
    assert store.get(_key(1)) is not None, "moved to the back: it outlived older ones"
    store.close()


def test_a_read_that_cannot_move_its_entry_still_answers(tmp_path: Path) -> None:
    # moving an entry to the back is only a hint: with the file locked by another writer the read answers
    clock = Clock()
    store = SqliteStore.at(tmp_path, busy_timeout=0.05)
    store.clock = clock
    store.put(_key(1), _value(1))
    clock.now += 2 * DAY  # old enough to be moved on this read
    writer = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        assert store.get(_key(1)) == _value(1) | {"pad": ""}
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    store.close()
