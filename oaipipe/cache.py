"""The response cache: identical calls are answered from disk instead of being paid twice.

Entries are content-addressed by :meth:`oaipipe.types.ChatRequest.cache_key` (model, messages, parameters
and the step's label) and stored one JSON file per entry in a sharded folder::

    <cache dir>/ab/cdef0123....json      # ab = first two hex digits of the key

Writes go to a temporary file in the same folder and are moved into place with :func:`os.replace`,
which is atomic: concurrent writers (threads or processes) never leave a torn entry, and the last
writer of the same key wins with an identical answer. A file that cannot be read or parsed is treated
as a miss. Only successful responses are stored; a hit comes back with ``cached=True`` (counted at $0).

The default folder is ``.oaipipe/cache`` next to the pipeline file; ``run.cache_dir`` overrides it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .fsutil import write_text_atomic
from .types import ChatRequest, ChatResponse

__all__ = ["CacheStats", "ResponseCache", "cache_wrapper"]

_FORMAT = 1


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def to_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes, "errors": self.errors}


class ResponseCache:
    """A folder of cached :class:`ChatResponse` entries keyed by request content."""

    def __init__(self, root: str | Path, *, read: bool = True, write: bool = True, namespace: str = "") -> None:
        self.root = Path(root)
        self.read = read
        self.write = write
        #: where the answers come from (backend type and server): answers of one server never serve another
        self.namespace = namespace
        self.stats = CacheStats()

    def key_for(self, request: ChatRequest) -> str:
        key = request.cache_key()
        if not self.namespace:
            return key
        return hashlib.sha256(f"{self.namespace}\n{key}".encode()).hexdigest()

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, request: ChatRequest, key: str | None = None) -> ChatResponse | None:
        """The cached answer to ``request`` (marked ``cached=True``), or ``None``. ``key``: its
        :meth:`key_for`, when the caller has it already."""
        if not self.read:
            return None
        key = key or self.key_for(request)
        try:
            data = json.loads(self.path_for(key).read_text(encoding="utf-8"))
            if data.get("format") != _FORMAT or data.get("key") != key:
                raise ValueError("not a cache entry of this version")
            response = ChatResponse.from_dict(data["response"])
        except FileNotFoundError:
            self.stats.bump("misses")
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.stats.bump("errors")
            self.stats.bump("misses")
            return None
        self.stats.bump("hits")
        return replace(response, cached=True, latency=0.0)

    def put(self, request: ChatRequest, response: ChatResponse, key: str | None = None) -> None:
        """Store a successful answer atomically (temp file + ``os.replace``)."""
        if not self.write or response.cached:
            return
        key = key or self.key_for(request)
        path = self.path_for(key)
        entry: dict[str, Any] = {"format": _FORMAT, "key": key, "model": request.model, "step": request.step,
                                 "response": replace(response, cached=False).to_dict()}
        blob = json.dumps(entry, ensure_ascii=False, default=str)
        try:
            write_text_atomic(path, blob, fsync=False, newline=None, prefix=f".{key[:12]}.")
        except OSError:
            self.stats.bump("errors")
            return
        self.stats.bump("writes")

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json")) if self.root.is_dir() else 0

    def clear(self) -> int:
        """Delete every entry; returns how many were removed."""
        removed = 0
        for p in self.root.glob("??/*.json") if self.root.is_dir() else ():
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
        return removed


Call = Callable[[ChatRequest], Awaitable[ChatResponse]]


def cache_wrapper(cache: ResponseCache) -> Callable[[Call], Call]:
    """A runner call wrapper: answer from ``cache`` when possible, store new successful answers.

    Disk reads and writes are small and run inline (a thread hop per call costs more than the read)."""

    def wrap(call: Call) -> Call:
        # identical calls in flight at the same time are made once: the others wait for its answer
        in_flight: dict[str, asyncio.Future[ChatResponse]] = {}

        async def cached_call(request: ChatRequest) -> ChatResponse:
            key = cache.key_for(request)  # hashes every message (images too): once per call
            hit = cache.get(request, key)
            if hit is not None:
                return hit
            while (waiting := in_flight.get(key)) is not None:
                try:
                    response = await asyncio.shield(waiting)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not waiting.cancelled() or (task is not None and task.cancelling()):
                        raise  # this call itself was cancelled
                    continue  # the call it waited for was cancelled (its record timed out): call anew
                cache.stats.bump("hits")
                return replace(response, cached=True, latency=0.0)
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

