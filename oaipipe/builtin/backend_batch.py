"""Built-in backend ``batch``: the OpenAI Batch API as a transport (half price, answers within 24 h).

Each ``chat()`` call becomes one line of a JSONL batch file::

    {"custom_id": "<cache key of the request>", "method": "POST", "url": "/v1/responses", "body": {...}}

The ``url`` (and the batch's ``endpoint``) is ``/v1/responses`` or ``/v1/chat/completions``, chosen per
model like the other HTTP backends (``api: auto | responses | chat``, :func:`oaipipe.openai_wire.api_call`
shapes the body); a batch holds one endpoint, so requests of both APIs go out as separate batches.

and waits until its batch is done. How requests become batches (the **flush rule**):

* requests are collected while they keep coming; a batch is submitted when no new request arrived for
  ``flush_after`` seconds, or ``max_wait`` seconds after its first request, or when it reaches
  ``max_requests`` lines (API limit 50,000) or ``max_bytes`` (API limit 200 MB) — whichever comes first;
* the file is uploaded (``purpose="batch"``), the batch created (``completion_window: "24h"``) and
  followed every ``poll_interval`` seconds; lines of the output file are handed back to the waiting calls
  by ``custom_id``; lines of the error file (and requests a failed or expired batch never answered)
  fail their record with the reason — ``oaipipe run --retry-failed`` resubmits them.

Since a run only has ``backend.concurrency`` records in flight, a batch holds at most that many requests:
**set a large concurrency** (e.g. 1000, the maximum is 1024) so that batches are big.

**Resumable**: submitted batches are written to a state file (``state_file``, default
``$OAIPIPE_HOME/batches/<pipeline>-<hash of the pipeline path>.json``) with their ``custom_id`` list
*before* any result is awaited, **keyed by server** (``base_url``, OpenAI's URL when unset): another
server never sees them. A rerun (after Ctrl-C or a crash) finds each request's ``custom_id`` there and
follows the batch already submitted instead of submitting it again. Identical requests share one line.

The state holds only what a rerun may still need (**forget rule**): when the backend is closed (the
run ended, however), every ``custom_id`` whose result was handed to a waiting call is removed, and a
batch left without ids is dropped; collected answers are the response cache's job, so a later run
(``--no-cache`` included) submits its requests anew. Ids of a completed batch that no call of this run
asked for stay (a later run collects them). Batches that failed, expired or were cancelled, and those the
server answers 404 for (e.g. it was restarted), are forgotten so that their requests are submitted anew
(an unknown batch from an earlier run: at once, in this run). State files of older versions (not keyed by
server) are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from .. import hookimpl
from ..base import Backend
from ..errors import BackendError, ServerError, mask_secrets
from ..fsutil import write_text_atomic
from ..home import home_dir
from ..keys import endpoint_url
from ..kit.http import HTTPBackendMixin, HTTPBackendOptions, http_error, not_the_api
from ..kit.openai import OpenAISDKMixin, translate_sdk_error
from ..lazy import lazy_module
from ..openai_wire import parse_reply
from ..types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    import openai
else:  # imported on first use
    openai = lazy_module("openai")

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_REQUESTS", "BatchBackend", "BatchOptions"]

#: limits of the OpenAI Batch API per input file
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 200 * 1024 * 1024
#: the Batch API endpoint of each API (the batch's ``endpoint`` and every line's ``url``)
ENDPOINTS = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}
TERMINAL = ("completed", "failed", "expired", "cancelled")
_RAISE = object()  # _api(not_found=...) default: a 404 is an error


class BatchOptions(HTTPBackendOptions):
    """Options of the ``batch`` backend (on top of the HTTP backends' options)."""

    poll_interval: float = Field(30.0, gt=0, description="Seconds between batch status checks")
    flush_after: float = Field(2.0, gt=0, description="Submit when no new request arrived for this many seconds")
    max_wait: float = Field(60.0, gt=0, description="Submit at most this many seconds after a batch's first request")
    max_requests: int = Field(MAX_BATCH_REQUESTS, ge=1, le=MAX_BATCH_REQUESTS, description="Lines per batch file")
    max_bytes: int = Field(MAX_BATCH_BYTES, ge=1024, le=MAX_BATCH_BYTES, description="Bytes per batch file")
    completion_window: str = Field("24h", description="The Batch API's completion window")
    state_file: str | None = Field(None, description="Where submitted batch ids are kept (for resuming)")


class _Pending:
    __slots__ = ("api", "future", "line", "request")

    def __init__(self, request: ChatRequest, line: bytes, future: asyncio.Future[ChatResponse],
                 api: str = "chat") -> None:
        self.request = request
        self.line = line
        self.future = future
        self.api = api


class BatchBackend(OpenAISDKMixin, HTTPBackendMixin, Backend):
    """The OpenAI Batch API: requests collected into JSONL batches, uploaded, followed, mapped back (files
    and batches through the SDK's clients, :class:`oaipipe.kit.openai.OpenAISDKMixin`)."""

    Options = BatchOptions
    needs_api_key = True
    summary = "OpenAI Batch API (50% cheaper, slower): requests collected into batch files; resumable"
    batched = True  # batch prices; no client-side rate limits (the Batch API queues)
    #: the Batch API is its one tier; the online tiers are served by the `openai` backend (tier planner)
    tiers = ("batch",)
    tier_backends = {"standard": "openai", "flex": "openai", "priority": "openai"}  # noqa: RUF012

    def use_tier(self, tier: str) -> None:
        """Nothing to set: every call goes through the Batch API."""

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._queue: dict[str, _Pending] = {}
        self._queue_bytes = 0
        self._first_at = 0.0
        self._last_at = 0.0
        self._waiting: dict[str, list[_Pending]] = {}  # custom_id -> calls awaiting a submitted batch
        self._flusher: asyncio.Task[None] | None = None
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._wake: asyncio.Event | None = None
        self._state: dict[str, Any] | None = None
        self._handed: dict[str, set[str]] = {}  # batch id -> custom_ids whose result a waiting call got
        self.submitted: list[str] = []  # batch ids submitted by this process

    # --- state file -----------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        if self.options.state_file:
            return self.context.path(self.options.state_file)
        settings = getattr(self.context, "settings", {}) or {}
        origin = str(settings.get("pipeline_file") or self.context.base_dir)
        digest = hashlib.sha256(origin.encode("utf-8")).hexdigest()[:10]
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.context.pipeline_name) or "pipeline"
        return home_dir() / "batches" / f"{name}-{digest}.json"

    def _load_state(self) -> dict[str, Any]:
        if self._state is None:
            try:
                self._state = json.loads(self.state_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._state = {}
            if not isinstance(self._state, dict) or not isinstance(self._state.get("servers"), dict):
                self._state = {"servers": {}}  # missing, damaged or of an older version (not keyed by server)
        return self._state

    def _batches(self) -> dict[str, Any]:
        """This server's saved batches: batch id -> {custom_ids, input_file_id, submitted_at, requests}."""
        servers = self._load_state()["servers"]
        # keyed by the URL as it may be written: a token in its query string (${env:...}) is masked
        return servers.setdefault(mask_secrets(self.base_url), {}).setdefault("batches", {})

    def _save_state(self) -> None:
        state = self._load_state()
        state["servers"] = {url: s for url, s in state["servers"].items() if s.get("batches")}
        write_text_atomic(self.state_path, json.dumps(state), newline=None)

    def _known_batch(self, custom_id: str) -> str | None:
        for batch_id, entry in self._batches().items():
            if custom_id in entry.get("custom_ids", ()):
                return batch_id
        return None

    def _forget(self, batch_id: str) -> None:
        self._batches().pop(batch_id, None)
        self._save_state()

    def _forget_collected(self) -> None:
        """The forget rule: ids handed to waiting calls leave the state; batches left empty are dropped."""
        if not self._handed:
            return
        batches = self._batches()
        for batch_id, handed in self._handed.items():
            entry = batches.get(batch_id)
            if entry is None:
                continue
            entry["custom_ids"] = [c for c in entry.get("custom_ids", ()) if c not in handed]
            if not entry["custom_ids"]:
                del batches[batch_id]
        self._handed.clear()
        self._save_state()

    # --- the contract ---------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self._check_key()
        custom_id = request.cache_key()
        loop = asyncio.get_running_loop()
        for waiting in (self._waiting.get(custom_id), self._queue.get(custom_id)):
            if waiting:
                first = waiting[0] if isinstance(waiting, list) else waiting
                return await asyncio.shield(first.future)
        future: asyncio.Future[ChatResponse] = loop.create_future()
        api = self.api_of(request.model)
        _, body = self._chat_call(request)
        line = json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINTS[api], "body": body},
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        pending = _Pending(request, line, future, api)
        if len(line) > self.options.max_bytes:
            raise BackendError(f"one request is {len(line)} bytes, more than a batch file may hold "
                               f"({self.options.max_bytes})", hint="send smaller images or prompts")
        batch_id = self._known_batch(custom_id)
        if batch_id is not None:  # submitted by an earlier run: follow it, do not resubmit
            self._waiting.setdefault(custom_id, []).append(pending)
            self._follow(batch_id)
            return await asyncio.shield(future)
        self._enqueue(custom_id, pending)
        return await asyncio.shield(future)

    def _enqueue(self, custom_id: str, pending: _Pending) -> None:
        now = time.monotonic()
        if (len(self._queue) + 1 > self.options.max_requests
                or self._queue_bytes + len(pending.line) > self.options.max_bytes):
            self._submit_soon()
        if not self._queue:
            self._first_at = now
        self._queue[custom_id] = pending
        self._queue_bytes += len(pending.line)
        self._last_at = now
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_loop())

    def _take_queue(self) -> dict[str, _Pending]:
        queue, self._queue, self._queue_bytes = self._queue, {}, 0
        return queue

    def _submit_soon(self) -> None:
        queue = self._take_queue()
        if queue:
            asyncio.ensure_future(self._submit(queue))

    async def _flush_loop(self) -> None:
        """Submit the queue when requests stop arriving (``flush_after``) or it is old (``max_wait``)."""
        opts = self.options
        while self._queue:
            now = time.monotonic()
            due = min(self._last_at + opts.flush_after, self._first_at + opts.max_wait)
            if now >= due:
                await self._submit(self._take_queue())
                continue
            assert self._wake is not None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), due - now)

    async def _api(self, what: str, fn: Any, *, not_found: Any = _RAISE) -> Any:
        """One API call through the retry policy; ``not_found`` (when given) is returned for a 404."""
        url = endpoint_url(self.base_url, what)

        async def attempt() -> Any:
            try:
                result = await fn()
            except openai.NotFoundError as exc:
                if not_found is _RAISE:
                    raise translate_sdk_error(exc, url=url, timeout=self.options.timeout) from exc
                return not_found
            except openai.OpenAIError as exc:
                raise translate_sdk_error(exc, url=url, timeout=self.options.timeout) from exc
            if isinstance(result, str):  # the SDK hands back the text of a non-JSON answer (an HTML page)
                raise not_the_api(url, None, result)
            return result

        return await self.policy.arun(lambda: self._agated(attempt))

    async def _submit(self, queue: dict[str, _Pending]) -> None:
        """Submit the queue: one batch per endpoint (a batch file holds lines of one endpoint only)."""
        by_api: dict[str, dict[str, _Pending]] = {}
        for custom_id, p in queue.items():
            by_api.setdefault(p.api, {})[custom_id] = p
        for api, part in by_api.items():
            await self._submit_one(part, ENDPOINTS[api])

    async def _submit_one(self, queue: dict[str, _Pending], endpoint: str) -> None:
        if not queue:
            return
        client = self.aclient
        data = b"".join(p.line for p in queue.values())
        try:
            uploaded = await self._api("files", lambda: client.files.create(
                file=("oaipipe-batch.jsonl", data, "application/jsonl"), purpose="batch"))
            batch = await self._api("batches", lambda: client.batches.create(
                input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                completion_window=self.options.completion_window,
                metadata={"source": "oaipipe", "pipeline": self.context.pipeline_name[:500]}))
        except Exception as exc:  # noqa: BLE001 - every waiting call gets the reason
            for p in queue.values():
                _fail(p, exc if isinstance(exc, BackendError) else ServerError(f"batch submission failed: {exc}"))
            return
        self._batches()[batch.id] = {"custom_ids": list(queue), "input_file_id": uploaded.id,
                                     "submitted_at": int(time.time()), "requests": len(queue)}
        self._save_state()
        self.submitted.append(batch.id)
        for custom_id, p in queue.items():
            self._waiting.setdefault(custom_id, []).append(p)
        self._follow(batch.id)

    def _follow(self, batch_id: str) -> None:
        task = self._followers.get(batch_id)
        if task is None or task.done():
            self._followers[batch_id] = asyncio.ensure_future(self._follow_batch(batch_id))

    async def _follow_batch(self, batch_id: str) -> None:
        client = self.aclient
        try:
            while True:
                batch = await self._api("batches", lambda: client.batches.retrieve(batch_id), not_found=None)
                if batch is None:  # the server does not know it (restarted, or another server's id)
                    self._unknown_batch(batch_id)
                    return
                if batch.status in TERMINAL:
                    break
                await asyncio.sleep(self.options.poll_interval)
            answered: set[str] = set()
            unanswerable: set[str] = set()  # custom_ids answered with an error line (of this batch only)
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    content = await self._api("files", lambda fid=file_id: client.files.content(fid))
                    seen, failed = self._deliver(content.read(), batch_id)
                    answered |= seen
                    unanswerable |= failed
            if unanswerable:  # error lines: forget them so that a retry submits them again
                entry = self._batches().get(batch_id)
                if entry is not None:
                    entry["custom_ids"] = [c for c in entry["custom_ids"] if c not in unanswerable]
                    self._save_state()
            custom_ids = self._batches().get(batch_id, {}).get("custom_ids", [])
            missing = [c for c in custom_ids if c not in answered and c in self._waiting]
            if batch.status != "completed" or missing:
                reason = _batch_error(batch)
                self._handed.setdefault(batch_id, set()).update(missing)
                for custom_id in missing:
                    for p in self._waiting.pop(custom_id, []):
                        _fail(p, ServerError(
                            f"batch {batch_id} ended {batch.status} without an answer for this request{reason}",
                            hint="rerun with --retry-failed to submit the failed records again"))
            if batch.status != "completed":
                self._forget(batch_id)
        except Exception as exc:  # noqa: BLE001 - the calls waiting on this batch fail with the reason
            err = exc if isinstance(exc, BackendError) else ServerError(f"following batch {batch_id}: {exc}")
            for custom_id in self._batches().get(batch_id, {}).get("custom_ids", []):
                for p in self._waiting.pop(custom_id, []):
                    _fail(p, err)

    def _unknown_batch(self, batch_id: str) -> None:
        """A saved batch the server answers 404 for: forget it; an earlier run's requests are submitted
        anew, those of a batch this process submitted fail (no resubmission loop on a forgetful server)."""
        custom_ids = self._batches().get(batch_id, {}).get("custom_ids", [])
        self._forget(batch_id)
        for custom_id in custom_ids:
            waiting = self._waiting.pop(custom_id, None)
            if not waiting:
                continue
            if batch_id in self.submitted:
                for p in waiting:
                    _fail(p, ServerError(f"the server no longer knows batch {batch_id} (was it restarted?)",
                                         hint="rerun with --retry-failed to submit the failed records again"))
                continue
            first, *others = waiting
            for p in others:
                first.future.add_done_callback(functools.partial(_copy_outcome, pending=p))
            self._enqueue(custom_id, first)

    def _deliver(self, data: bytes, batch_id: str) -> tuple[set[str], set[str]]:
        """Hand the lines of an output/error file to the waiting calls: (custom_ids seen, those with an error)."""
        seen: set[str] = set()
        failed: set[str] = set()
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            custom_id = row.get("custom_id")
            waiting = self._waiting.pop(custom_id, None)
            seen.add(custom_id)
            if waiting:
                self._handed.setdefault(batch_id, set()).add(custom_id)
            response = row.get("response") or {}
            status = int(response.get("status_code") or 0)
            body = response.get("body") or {}
            if row.get("error") or status != 200:
                failed.add(custom_id)
            if not waiting:
                continue
            for p in waiting:
                if p.future.done():
                    continue
                try:
                    if row.get("error") or status != 200:
                        err = row.get("error") or {}
                        raise http_error(status or 500, body, str(err.get("message") or err or ""),
                                         request_id=response.get("request_id"), url=f"batch {batch_id}",
                                         model=p.request.model)
                    reply = parse_reply(p.api, body, p.request, backend=self.name or "batch",
                                        request_id=response.get("request_id"), latency=0.0)
                except Exception as exc:  # noqa: BLE001 - delivered to the waiting call
                    _fail(p, exc)
                else:
                    p.future.set_result(reply)
        return seen, failed

    async def aclose(self) -> None:
        tasks = [t for t in (self._flusher, *self._followers.values()) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()
        self._flusher = None
        try:
            self._forget_collected()
        finally:
            await super().aclose()


def _copy_outcome(source: asyncio.Future[ChatResponse], pending: _Pending) -> None:
    if pending.future.done():
        return
    if source.cancelled():
        pending.future.cancel()
    elif source.exception() is not None:
        pending.future.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        pending.future.set_result(source.result())


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)


def _batch_error(batch: Any) -> str:
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) or []
    if data:
        first = data[0]
        return f": {getattr(first, 'message', first)}"
    return ""


@hookimpl
def register_backends(register: Any) -> None:
    register("batch", BatchBackend)
