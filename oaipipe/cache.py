"""The response cache: identical calls are answered from a store instead of being paid twice.

Two layers:

* :class:`ResponseCache`, the front the runner uses: it keys a request by
  :meth:`oaipipe.types.ChatRequest.cache_key` (model, messages, every parameter including ``extra``, and
  the step's label), hashed together with the *namespace* (the server that answers, so answers of one
  server never serve another), turns a :class:`~oaipipe.types.ChatResponse` into a JSON-able entry and
  back, counts hits and misses, and turns a failing store into misses with one warning: the cache never
  fails a run.
* a :class:`CacheStore`, where entries live: ``get(key) -> dict | None``, ``put(key, value)``, ``stats()``,
  ``clear(older_than)``, ``evict()``, ``close()``. The default is ``sqlite`` (one SQLite file,
  :mod:`oaipipe.cache_sqlite`); ``files`` is the one-JSON-file-per-entry layout of earlier versions
  (:class:`FileStore`). A plugin registers another store with the ``register_cache_stores`` hook and a
  pipeline names it as ``run.cache: {type: NAME, ...options}``.

:func:`cache_wrapper` makes the front the outermost layer of the call chain (a hit never waits for the
rate limit) and merges identical calls that are in flight at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Component, Context, PluginOptions
from .errors import redact_data
from .fsutil import write_text_atomic
from .types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from .pipeline import BuiltPipeline

__all__ = [
    "DEFAULT_CACHE_DIR",
    "CacheStats",
    "CacheStore",
    "FileStore",
    "ResponseCache",
    "cache_dir_for",
    "cache_spec",
    "cache_stats",
    "cache_wrapper",
    "check_cache",
    "clear_cache",
    "compact_entry",
    "format_duration",
    "open_response_cache",
    "parse_duration",
    "parse_size",
    "store_for",
]

#: where the cache lives unless ``run.cache_dir`` says otherwise (relative to the pipeline file)
DEFAULT_CACHE_DIR = ".oaipipe/cache"
#: the version of an entry (the dict a store keeps); entries of another version are misses
_FORMAT = 1
_NOT_STORED = frozenset({"cached", "latency"})


# --- sizes and durations ------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*$", re.I)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(value: int | float | str) -> int:
    """Bytes from ``500MB``, ``2GiB``, ``1.5G``, ``1048576`` (``KB``/``MB``/``GB`` are powers of 1000,
    ``KiB``/``MiB``/``GiB`` of 1024). Raises ``ValueError`` with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a text such as 500MB or 2GiB")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size: write bytes (1048576) or a number with a unit "
                             f"(500KB, 200MB, 2GB, 1GiB)")
        number, unit = float(m.group(1)), (m.group(2) or "").lower().rstrip("b")
    size = int(number * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError("a size must be more than 0 bytes")
    return size


def parse_duration(value: int | float | str) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a plain number of seconds. Raises
    ``ValueError`` with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a text such as 30d or 12h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration: write a number with a unit (45s, 90m, 12h, 30d, 2w) "
                             f"or seconds")
        seconds = float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "").lower()]
    if seconds <= 0:
        raise ValueError("a duration must be more than 0 seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """``30d``, ``12h``, ``90m``: the largest unit that divides ``seconds`` (else seconds)."""
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def compact_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """What a hit needs of an entry: its format and the answer without ``cached`` and ``latency`` (a hit has
    neither) nor fields left at ``None`` (entries of earlier versions also kept the model and step)."""
    response = entry.get("response")
    if not isinstance(response, dict):
        return entry
    return {"format": entry.get("format"),
            "response": {k: v for k, v in response.items() if v is not None and k not in _NOT_STORED}}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="seconds")


# --- the store contract -------------------------------------------------------------------------


class CacheStore(Component):
    """Where the response cache keeps its entries: JSON-able dicts under string keys.

    Subclass it, give it an ``Options`` model (``run.cache: {type: NAME, ...}`` is validated against it),
    and register it with the ``register_cache_stores`` hook. The contract, for a plugin author:

    * ``get(key)`` returns a dict equal to the one ``put(key, value)`` stored, or ``None`` (missing,
      expired, unreadable). ``put`` replaces an existing entry. Keys are 64 lowercase hex characters.
    * Both are called from the event loop's thread for every call of a run: keep them fast (no network
      round trip you can avoid, never ``time.sleep``) and safe to call from several threads and processes
      at once (two runs may share one cache).
    * A store that cannot work (unreachable, locked, corrupt) raises any exception: the run warns once,
      stops using the store and goes on uncached. Never raise for a missing key.
    * The constructor does no I/O: ``oaipipe validate`` builds the store only to check its options. Open
      connections lazily, on the first call, and release them in :meth:`close`.
    * ``context.settings["cache_dir"]`` is the pipeline's cache folder (``run.cache_dir`` resolved, or
      ``.oaipipe/cache`` next to the pipeline file), for stores that keep files.
    * Bounds (a maximum size, a maximum age) are the store's own options: an entry past its age is a miss
      in ``get``; :meth:`evict` applies the bounds now; a store may also apply them as it writes.
    """

    #: called with a one-line warning (set by :class:`ResponseCache` to reach the run's output)
    on_warning: Callable[[str], None] | None = None
    #: called with a one-line note about slow work in progress (an import); ``None``: not shown
    on_note: Callable[[str], None] | None = None

    def get(self, key: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def put(self, key: str, value: dict[str, Any]) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """What ``oaipipe cache stats`` shows. Keys, all optional except ``entries``: ``store`` (the
        registered name), ``path`` (or any location), ``entries``, ``size_bytes``, ``oldest`` and
        ``newest`` (ISO 8601 times the entries were stored), ``hits``, ``misses``."""
        raise NotImplementedError

    def clear(self, older_than: float | None = None) -> int:
        """Remove every entry, or those stored more than ``older_than`` seconds ago; return how many."""
        raise NotImplementedError

    def evict(self) -> int:
        """Apply the store's bounds (size, age) now; return how many entries were removed."""
        return 0

    def close(self) -> None:
        """Release connections and flush what is pending. The store may be used again afterwards."""

    @property
    def where(self) -> str:
        """Where the entries are, for messages (a path, a URL without its password)."""
        return self.name or type(self).__name__

    def warn(self, text: str) -> None:
        """Report a problem the store worked around (a corrupt file moved aside, say)."""
        if self.on_warning is not None:
            self.on_warning(text)
        else:
            print(f"oaipipe: warning: {text}", file=sys.stderr)

    def note(self, text: str) -> None:
        """Say what takes a while (importing an old cache, say), where the run's notes go."""
        if self.on_note is not None:
            self.on_note(text)

    def __len__(self) -> int:
        return int(self.stats().get("entries") or 0)


# --- the one-file-per-entry store (the layout before the SQLite store) ---------------------------


def _shards(root: Path) -> list[Path]:
    """The two-hex-digit shard folders of a directory cache under ``root``."""
    try:
        children = list(os.scandir(root))
    except OSError:
        return []
    return sorted(Path(e.path) for e in children
                  if len(e.name) == 2 and all(c in "0123456789abcdef" for c in e.name) and e.is_dir())


def read_file_entry(path: Path) -> tuple[str, dict[str, Any]]:
    """``(key, value)`` of one JSON file of a directory cache; ``ValueError``/``OSError`` if unusable."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("key") != path.stem:
        raise ValueError("not a cache entry of this version")
    key = data.pop("key")
    return key, data


class FileStore(CacheStore):
    """One JSON file per entry under ``<cache dir>/ab/<key>.json`` (the layout of earlier versions).

    Writes go to a temp file moved into place with ``os.replace`` (atomic), so it needs no locking and
    works where SQLite's locking does not (some network file systems); but a million entries are a
    million files, and it has no size bound. ``run.cache: {type: files}`` selects it.
    """

    class Options(PluginOptions):
        pass

    def __init__(self, options: PluginOptions | None = None, context: Context | None = None) -> None:
        super().__init__(options, context)
        self.root = Path(self.context.settings.get("cache_dir") or self.context.path(DEFAULT_CACHE_DIR))

    @classmethod
    def at(cls, root: str | Path) -> FileStore:
        return cls(cls.Options(), Context(settings={"cache_dir": str(root)}))

    @property
    def where(self) -> str:
        return str(self.root)

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path_for(key)
        try:
            found, value = read_file_entry(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        return value if found == key else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        blob = json.dumps({**value, "key": key}, ensure_ascii=False, default=str)
        write_text_atomic(self.path_for(key), blob, fsync=False, newline=None, prefix=f".{key[:12]}.")

    def _files(self) -> list[Path]:
        return [p for shard in _shards(self.root) for p in shard.glob("*.json")]

    def stats(self) -> dict[str, Any]:
        size = 0
        times: list[float] = []
        files = self._files()
        for p in files:
            with contextlib.suppress(OSError):
                st = p.stat()
                size += st.st_size
                times.append(st.st_mtime)
        return {"store": self.name or "files", "path": str(self.root), "entries": len(files), "size_bytes": size,
                "oldest": _iso(min(times)) if times else None, "newest": _iso(max(times)) if times else None}

    def clear(self, older_than: float | None = None) -> int:
        cutoff = None if older_than is None else time.time() - older_than
        removed = 0
        for p in self._files():
            with contextlib.suppress(OSError):
                if cutoff is None or p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
        return removed

    def __len__(self) -> int:
        return len(self._files())


# --- the front ----------------------------------------------------------------------------------


@dataclass
class CacheStats:
    """What one :class:`ResponseCache` did in this process (the run summary's ``cache`` block)."""

    #: answers found in the store
    hits: int = 0
    #: lookups that found nothing (a call was made)
    misses: int = 0
    #: calls answered by an identical call in flight at the same time (no lookup, no call of their own)
    merged: int = 0
    writes: int = 0
    errors: int = 0
    #: problems worked around (a store that failed, a corrupt file moved aside), one line each
    warnings: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hits": self.hits, "misses": self.misses, "merged": self.merged,
                               "writes": self.writes, "errors": self.errors}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


class ResponseCache:
    """Cached :class:`ChatResponse` entries keyed by request content, kept in a :class:`CacheStore`.

    ``ResponseCache(folder)`` uses the default SQLite store in that folder; ``store=`` gives another.
    ``notify`` receives each warning line (else it is printed to stderr); warnings are also listed in
    ``stats.warnings``.
    """

    def __init__(self, root: str | Path | None = None, *, store: CacheStore | None = None, read: bool = True,
                 write: bool = True, namespace: str = "", notify: Callable[[str], None] | None = None) -> None:
        if store is None:
            if root is None:
                raise TypeError("ResponseCache needs a folder or a store")
            from .cache_sqlite import SqliteStore

            store = SqliteStore.at(root)
        self.store = store
        self.root = Path(root) if root is not None else Path(getattr(store, "root", store.where))
        self.read = read
        self.write = write
        #: where the answers come from (backend type and server): answers of one server never serve another
        self.namespace = namespace
        self.notify = notify
        self.stats = CacheStats()
        #: set once the store failed: the rest of the run goes uncached
        self.broken: str | None = None
        front = weakref.ref(self)  # no cycle: the store and its connections go with the front

        def warn(text: str) -> None:
            cache = front()
            if cache is not None:
                cache._warn(text)
            else:
                print(f"oaipipe: warning: {text}", file=sys.stderr)

        def note(text: str) -> None:
            cache = front()
            if cache is not None and cache.notify is not None:
                cache.notify(text)

        store.on_warning = warn
        store.on_note = note

    def _warn(self, text: str) -> None:
        with self.stats._lock:
            if text in self.stats.warnings:
                return
            self.stats.warnings.append(text)
        if self.notify is not None:
            self.notify(f"warning: {text}")
        else:
            print(f"oaipipe: warning: {text}", file=sys.stderr)

    def _failed(self, doing: str, exc: BaseException) -> None:
        self.stats.bump("errors")
        if self.broken is None:
            self.broken = f"{type(exc).__name__}: {exc}"
            self._warn(f"the response cache ({self.store.where}) failed while it {doing}: {self.broken}; "
                       f"this run goes on without it (its calls are made and not stored)")

    def key_for(self, request: ChatRequest) -> str:
        key = request.cache_key()
        if not self.namespace:
            return key
        return hashlib.sha256(f"{self.namespace}\n{key}".encode()).hexdigest()

    def get(self, request: ChatRequest, key: str | None = None) -> ChatResponse | None:
        """The cached answer to ``request`` (marked ``cached=True``), or ``None``. ``key``: its
        :meth:`key_for`, when the caller has it already."""
        if not self.read:
            return None
        if self.broken is not None:
            self.stats.bump("misses")
            return None
        key = key or self.key_for(request)
        try:
            value = self.store.get(key)
        except Exception as exc:  # noqa: BLE001 - any store failure is a miss, never a failed run
            self._failed("read", exc)
            self.stats.bump("misses")
            return None
        if value is None:
            self.stats.bump("misses")
            return None
        try:
            if value.get("format") != _FORMAT:
                raise ValueError("not a cache entry of this version")
            response = ChatResponse.from_dict({**value["response"], "cached": True, "latency": 0.0})
        except (ValueError, KeyError, TypeError, AttributeError):
            self.stats.bump("errors")
            self.stats.bump("misses")
            return None
        self.stats.bump("hits")
        return response

    def put(self, request: ChatRequest, response: ChatResponse, key: str | None = None) -> None:
        """Store a successful answer, every known secret in it masked (:func:`~oaipipe.errors.redact_data`:
        the keys oaipipe resolved, ``${env:...}`` values of the pipeline file), as in the run directory."""
        if not self.write or response.cached or self.broken is not None:
            return
        key = key or self.key_for(request)
        # stored with the secrets masked, as the run directory is (an answer may echo a key or a ${env:} value)
        entry = redact_data(compact_entry({"format": _FORMAT, "response": response.to_dict()}))
        try:
            self.store.put(key, entry)
        except Exception as exc:  # noqa: BLE001 - a failed write costs a call next time, never the run
            self._failed("wrote", exc)
            return
        self.stats.bump("writes")

    def __len__(self) -> int:
        return len(self.store)

    def clear(self, older_than: float | None = None) -> int:
        """Delete every entry (or those stored more than ``older_than`` seconds ago); returns how many."""
        return self.store.clear(older_than)

    def close(self) -> None:
        self.store.close()


Call = Callable[[ChatRequest], Awaitable[ChatResponse]]


def cache_wrapper(cache: ResponseCache) -> Callable[[Call], Call]:
    """A runner call wrapper: answer from ``cache`` when possible, store new successful answers.

    Store reads and writes are small and run inline (a thread hop per call costs more than the read)."""

    def wrap(call: Call) -> Call:
        # identical calls in flight at the same time are made once: the others wait for its answer
        in_flight: dict[str, asyncio.Future[ChatResponse]] = {}

        async def cached_call(request: ChatRequest) -> ChatResponse:
            key = cache.key_for(request)  # hashes every message (images too): once per call
            # an identical call in flight first: its answer is not in the store yet, and a store lookup would
            # count a miss for a call that is never made (`cache stats` misses = calls made)
            while (waiting := in_flight.get(key)) is not None:
                try:
                    response = await asyncio.shield(waiting)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not waiting.cancelled() or (task is not None and task.cancelling()):
                        raise  # this call itself was cancelled
                    continue  # the call it waited for was cancelled (its record timed out): call anew
                cache.stats.bump("merged")
                return replace(response, cached=True, latency=0.0)
            hit = cache.get(request, key)
            if hit is not None:
                return hit
            future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
            in_flight[key] = future
            try:
                response = await call(request)
            except asyncio.CancelledError:
                future.cancel()  # the waiters make the call themselves
                raise
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # mark retrieved: no "never retrieved" warning when nobody waits
                raise
            finally:
                in_flight.pop(key, None)
            future.set_result(response)
            cache.put(request, response, key)
            return response

        return cached_call

    return wrap


# --- from the pipeline file ---------------------------------------------------------------------


def cache_dir_for(pipeline: BuiltPipeline) -> Path:
    """``run.cache_dir`` (relative to the pipeline file) or ``.oaipipe/cache`` next to the pipeline file."""
    run = pipeline.loaded.config.run
    return pipeline.context.path(run.cache_dir or DEFAULT_CACHE_DIR)


def cache_spec(pipeline: BuiltPipeline) -> dict[str, Any] | None:
    """The store block of ``run.cache``: ``None`` when it is ``false``; ``true`` means ``{type: sqlite}``."""
    value = pipeline.loaded.config.run.cache
    if value is False:
        return None
    block = dict(value) if isinstance(value, dict) else {}
    block.setdefault("type", "sqlite")
    return block


def store_for(pipeline: BuiltPipeline, *, enabled_only: bool = True) -> CacheStore | None:
    """Build the store ``run.cache`` names (its options validated, errors naming the file and line); nothing
    is opened yet. ``None`` when ``run.cache: false`` (unless ``enabled_only=False``: then the default
    store in the cache folder, for ``oaipipe cache stats|clear``)."""
    block = cache_spec(pipeline)
    if block is None:
        if enabled_only:
            return None
        block = {"type": "sqlite"}
    loaded = pipeline.loaded
    context = dataclasses.replace(pipeline.context,
                                  settings={**pipeline.context.settings, "cache_dir": str(cache_dir_for(pipeline))})
    store = pipeline.host.build("cache_store", block, context, key="run.cache", file=pipeline.file,
                                lines=loaded.where)
    assert isinstance(store, CacheStore)
    return store


def check_cache(pipeline: BuiltPipeline) -> None:
    """Validate ``run.cache`` while the pipeline is built (an unknown store type or a bad option is a
    :class:`~oaipipe.errors.ConfigError` naming the file and line, before anything runs)."""
    store_for(pipeline)


def open_response_cache(pipeline: BuiltPipeline, *, namespace: str = "",
                        notify: Callable[[str], None] | None = None) -> ResponseCache | None:
    """The response cache of a run of ``pipeline`` (``None`` when ``run.cache: false``)."""
    store = store_for(pipeline)
    if store is None:
        return None
    return ResponseCache(cache_dir_for(pipeline), store=store, namespace=namespace, notify=notify)


# --- what `oaipipe cache stats|clear` call --------------------------------------------------------


def _pipeline_store(path: str | Path, overrides: list[str] | None, disabled: list[str] | None
                    ) -> tuple[BuiltPipeline, CacheStore]:
    from .pipeline import load_pipeline

    pipeline = load_pipeline(path, overrides, disabled=disabled)
    store = store_for(pipeline, enabled_only=False)
    assert store is not None
    return pipeline, store


def _store_error(store: CacheStore, doing: str, exc: Exception) -> Exception:
    from .errors import StorageError

    return StorageError(f"cannot {doing} the response cache {store.where}: {type(exc).__name__}: {exc}",
                        path=store.where, hint="check the path and its permissions; a damaged cache file is moved "
                                               "aside by the next run")


def cache_stats(path: str | Path, overrides: list[str] | None = None, *,
                disabled: list[str] | None = None) -> dict[str, Any]:
    """The statistics of the response cache of the pipeline file ``path`` (see :meth:`CacheStore.stats`),
    plus ``pipeline``, ``enabled`` (``run.cache`` is not ``false``) and ``dir`` (the cache folder)."""
    pipeline, store = _pipeline_store(path, overrides, disabled)
    try:
        stats = store.stats()
    except Exception as exc:  # noqa: BLE001 - any store failure, reported with where it is
        raise _store_error(store, "read", exc) from exc
    finally:
        store.close()
    return {"pipeline": pipeline.name, "enabled": cache_spec(pipeline) is not None,
            "dir": str(cache_dir_for(pipeline)), **stats}


def clear_cache(path: str | Path, older_than: float | None = None, overrides: list[str] | None = None, *,
                disabled: list[str] | None = None) -> dict[str, Any]:
    """Remove every entry of the pipeline's response cache (or those stored more than ``older_than``
    seconds ago): ``{"removed": n, "path": ..., "older_than": ...}``."""
    pipeline, store = _pipeline_store(path, overrides, disabled)
    try:
        removed = store.clear(older_than)
    except Exception as exc:  # noqa: BLE001
        raise _store_error(store, "clear", exc) from exc
    finally:
        store.close()
    return {"pipeline": pipeline.name, "store": store.name, "path": store.where, "removed": removed,
            "older_than": format_duration(older_than) if older_than else None}
