"""Prompt-prefix scheduling: records whose prompts share a long prefix are sent one after another.

A server's prompt cache (OpenAI's: prefixes of 1,024 tokens or more, routed by the prefix and
``prompt_cache_key``; docs/platform.md) serves a prompt from the cache when a prompt with the same prefix
went to the same place shortly before. Records that alternate between a few long system prompts, sent in
input order, keep pushing each other's prefix out; sent grouped, each group pays for its prefix once.

The runner's records wait for one of ``concurrency`` slots (:class:`PrefixGate`) in input order, in a
bounded window (the runner's reorder window: at most that many records are started and not yet written).
When a slot frees, the gate gives it to the waiting record whose **prefix key** is that of the record sent
last, and otherwise to the one that has waited longest, so a group is sent together and no record waits
longer than the window. What is written, and in what order (input order), the journal and exactly-once
are the runner's and do not change: only which waiting record is sent next does.

The prefix key of a record is the first chat step's ``prompt_cache_key``, system message and prompt rendered
over the record (:meth:`oaipipe.kit.chat.ChatStepMixin.prompt_prefix`), cut to :data:`PREFIX_CHARS`
characters; a prompt shorter than that (too short to be cached) has no key and keeps its place. The gate is
plain first-come-first-served (a no-op) when it cannot help: an offline backend (no prompt cache), no chat
step, ``run.prefix_scheduling: false``, or an input whose first :data:`PROBE_RECORDS` records do not have
at least two long prefixes, one of them repeated (no prompt is rendered for scheduling after them).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import BuiltPipeline
    from .types import Record

__all__ = ["PREFIX_CHARS", "PROBE_RECORDS", "PrefixGate", "dispatch_gate", "prefix_key"]

#: characters of the rendered prompt that make the key: a cacheable prefix (1,024 tokens or more) is at
#: least about this long, so no two records that could share a cached prefix are told apart
PREFIX_CHARS = 1024

#: records looked at before scheduling gives up on an input with no two long prefixes, one repeated (then a no-op)
PROBE_RECORDS = 256

KeyOf = Callable[["Record"], Hashable | None]


def prefix_key(pipeline: BuiltPipeline) -> KeyOf | None:
    """The prefix key of a record (None: it keeps its place), or None when scheduling cannot help the
    pipeline (see the module's docstring)."""
    if not pipeline.loaded.config.run.prefix_scheduling or getattr(pipeline.backend, "offline", False):
        return None
    step = next((s for s in pipeline.steps if callable(getattr(s, "prompt_prefix", None))), None)
    if step is None:
        return None
    prefix_of: Callable[[dict[str, Any]], tuple[str, str] | None] = step.prompt_prefix  # type: ignore[attr-defined]
    seen: set[Hashable] = set()
    state = {"looked": 0, "repeated": False, "on": True}

    def key(record: Record) -> Hashable | None:
        if record.error or not state["on"]:
            return None
        try:
            found = prefix_of(record.data)
        except Exception:  # noqa: BLE001 - a field an earlier step adds, a bad template: the step reports it
            found = None
        value = (found[0], found[1][:PREFIX_CHARS]) if found and len(found[1]) >= PREFIX_CHARS else None
        if state["looked"] < PROBE_RECORDS:  # deciding: is there more than one prefix, and one repeated?
            state["looked"] += 1
            state["repeated"] = state["repeated"] or value in seen
            if value is not None:
                seen.add(value)
            if state["looked"] == PROBE_RECORDS:
                state["on"] = bool(state["repeated"] and len(seen) > 1)
                seen.clear()
        return value

    return key


class PrefixGate:
    """At most ``slots`` records in flight; a freed slot goes to the waiter with the key of the record sent
    last, else to the longest waiting one (first come, first served when ``key_of`` is None)."""

    def __init__(self, slots: int, key_of: KeyOf | None = None) -> None:
        self._free = max(1, slots)
        self._key_of = key_of
        self._waiters: collections.deque[tuple[Hashable | None, asyncio.Future[None]]] = collections.deque()
        self._last: Hashable | None = None

    @asynccontextmanager
    async def slot(self, record: Record) -> AsyncIterator[None]:
        """Hold one slot while inside (waits for it first)."""
        await self._acquire(self._key_of(record) if self._key_of is not None else None)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, key: Hashable | None) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._granted(key)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (key, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted, then cancelled before it could use the slot: pass it on
            else:
                self._waiters.remove(entry)
            raise

    def _granted(self, key: Hashable | None) -> None:
        self._last = key

    def _release(self) -> None:
        while self._waiters:
            entry = self._next()
            self._waiters.remove(entry)
            key, future = entry
            if not future.done():
                self._granted(key)
                future.set_result(None)
                return
        self._free += 1

    def _next(self) -> tuple[Hashable | None, asyncio.Future[None]]:
        """The waiter of the last record's group, else the longest waiting one."""
        if self._last is not None:
            for entry in self._waiters:
                if entry[0] == self._last:
                    return entry
        return self._waiters[0]


def dispatch_gate(pipeline: BuiltPipeline, slots: int) -> PrefixGate:
    """The runner's gate for ``slots`` records at once, scheduling by prefix where it can help."""
    return PrefixGate(slots, prefix_key(pipeline))
