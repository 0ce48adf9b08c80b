"""Retry policy shared by the HTTP backends (and the batch backend): what to retry, and how long to wait.

* Retried: HTTP 408, 409, 429 and every 5xx; timeouts; refused or dropped connections.
* Never retried: 400, 401, 403, 404, 422 (and any other 4xx): the request itself is wrong.
* Waiting: exponential backoff with full jitter, ``uniform(0, min(max_delay, base * 2**attempt))``, on
  top of the server's ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date; capped at
  ``max_retry_after``) when it sent one: at least what the server asked, never the same instant for
  every caller, longer with each attempt.
* A 429 that is a rate limit (not ``insufficient_quota``) is retried past ``max_retries``, for up to
  ``rate_limit_patience`` seconds: a record is not given up while the server is merely pacing us.
* After the last attempt the error is raised as the fitting :mod:`oaipipe.errors` class
  (:class:`RateLimitError`, :class:`ServerError`, :class:`BackendConnectionError`, ...), its message saying
  how many attempts were made and what to do.
* Listeners (:class:`RetryListener`) hear every attempt, retry and HTTP answer; this is how the shared
  rate limiter (:mod:`oaipipe.ratelimit`) learns limits and paces retries. Retries are counted in
  :attr:`RetryPolicy.stats` and logged on the ``oaipipe.retry`` logger.

``RetryPolicy.sleep`` / ``asleep`` / ``clock`` are attributes so tests can inject a recorder instead of waiting.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BadRequestError,
    RateLimitError,
    ServerError,
    redact,
)
from .stats import RetryStats

__all__ = [
    "RetryEvent",
    "RetryListener",
    "RetryPolicy",
    "connection_error",
    "error_for_status",
    "is_rate_limited",
    "is_retryable_status",
    "parse_retry_after",
    "retry_cause",
]

T = TypeVar("T")

NEVER_RETRY = frozenset({400, 401, 403, 404, 422})

_log = logging.getLogger("oaipipe.retry")


def is_retryable_status(status: int) -> bool:
    """True for 408, 409, 429 and 5xx."""
    return status in (408, 409, 429) or 500 <= status <= 599


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms`` first, then ``Retry-After`` (seconds or HTTP date).

    Returns ``None`` when neither header is present or parseable. Negative values become 0.
    """
    if not headers:
        return None
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, parsed.timestamp() - now)


def _key_hint(url: str = "") -> str:
    from .keys import refusal_hint  # the key rule lives in oaipipe.keys

    return refusal_hint(url)


#: endpoints of the APIs many OpenAI-compatible servers do not offer: (path, API name, object, what to do)
_OPTIONAL_APIS = (
    ("/fine_tuning/jobs", "fine-tuning", "fine-tuning job",
     "fine-tune with `--trainer local` (or `train: {type: local}`), or point the trainer's base_url at a "
     "server that fine-tunes (OpenAI, `oaipipe serve`)"),
    ("/batches", "Batch", "batch",
     "use backend type `openai` or `requests` for this server (the `batch` backend needs the Batch and "
     "Files APIs)"),
    ("/files", "Files", "file",
     "the `batch` backend and fine-tuning upload files first; use backend type `openai`/`requests` and "
     "`--trainer local` with this server"),
)


def _not_found_hint(url: str, model: str) -> str:
    """A 404's hint: a missing Files/Batches/fine-tuning API, an unknown object, or a wrong model/URL."""
    from urllib.parse import urlsplit

    try:
        path = urlsplit(url).path.rstrip("/")
    except ValueError:
        path = ""
    for marker, api, thing, advice in _OPTIONAL_APIS:
        at = path.rfind(marker)
        if at < 0:
            continue
        rest = path[at + len(marker):]
        if rest and not rest.startswith("/"):
            continue
        if not rest:  # the collection itself (POST /files, POST /batches, /fine_tuning/jobs) is missing
            return f"this server does not offer the {api} API ({marker} is not found there); {advice}"
        return (f"the server does not know this {thing} (deleted, expired, or the server was restarted), "
                f"or it does not offer the {api} API at all; {advice}")
    if path.endswith("/models"):
        return "base_url must point at the API root, which usually ends in /v1"
    return (f"check the model name{f' ({model!r})' if model else ''} with `oaipipe models`, and that "
            "base_url ends in /v1")


def error_for_status(
    status: int,
    detail: str,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    url: str = "",
    model: str = "",
) -> BackendError:
    """The :mod:`oaipipe.errors` exception for an HTTP error answer (before retries are considered)."""
    at = f" from {url}" if url else ""
    rid = f" (request id {request_id})" if request_id else ""
    detail = (detail or "").strip()
    said = f": {detail}" if detail else ""
    kwargs: dict[str, Any] = {"status": status, "request_id": request_id, "retry_after": retry_after}
    err: BackendError
    if status == 401:
        err = AuthenticationError(f"the API key was refused (HTTP 401){at}{rid}{said}", hint=_key_hint(url), **kwargs)
    elif status == 403:
        err = AuthenticationError(
            f"access denied (HTTP 403){at}{rid}{said}",
            hint="the key is valid but lacks permission for this model or project; check the key's project, "
            "`organization:`/`project:` in the backend block, or " + _key_hint(url),
            **kwargs,
        )
    elif status == 404:
        err = BadRequestError(f"not found (HTTP 404){at}{rid}{said}", hint=_not_found_hint(url, model), **kwargs)
    elif status == 429:
        err = RateLimitError(
            f"rate limited (HTTP 429){at}{rid}{said}",
            hint="lower backend.concurrency, set backend.rpm/tpm, raise backend.max_retries, or check your quota",
            **kwargs,
        )
    elif status == 408:
        err = BackendConnectionError(f"request timed out on the server (HTTP 408){at}{rid}{said}",
                                     hint="raise backend.timeout or backend.max_retries", **kwargs)
    elif status >= 500 or status == 409:
        err = ServerError(f"server error (HTTP {status}){at}{rid}{said}",
                          hint="the server is failing; retry later or raise backend.max_retries", **kwargs)
    else:
        err = BadRequestError(
            f"the request was rejected (HTTP {status}){at}{rid}{said}",
            hint="the request itself is wrong (model, parameters, schema or image); retrying will not help",
            **kwargs,
        )
    err.retryable = is_retryable_status(status)  # type: ignore[misc]
    return err


def connection_error(what: str, *, url: str = "", timeout: float | None = None) -> BackendConnectionError:
    """A retryable :class:`BackendConnectionError` for a timeout or a refused/dropped connection."""
    at = f" to {url}" if url else ""
    if timeout is not None:
        return BackendConnectionError(
            f"no answer within {timeout:g}s{at}: {what}",
            hint="raise backend.timeout, or check that the server is up and not overloaded",
        )
    return BackendConnectionError(
        f"cannot connect{at}: {what}",
        hint="check backend.base_url and that the server is running (`oaipipe serve` for the local one)",
    )


class RetryEvent:
    """One retry about to happen, as :class:`RetryListener.retrying` sees it.

    ``delay`` is the wait the policy chose; a listener may raise it (never lower it), e.g. to the time a
    shared rate limiter has a slot for this call.
    """

    __slots__ = ("attempt", "delay", "elapsed", "error", "started")

    def __init__(self, attempt: int, error: BackendError, delay: float, started: float, elapsed: float) -> None:
        self.attempt = attempt  #: the attempt that failed, counted from 0
        self.error = error
        self.delay = delay
        self.started = started  #: when the failed attempt was sent (the policy's clock)
        self.elapsed = elapsed  #: seconds since the call's first attempt was sent

    @property
    def cause(self) -> str:
        """``"429"``, ``"503"``..., ``"timeout"`` or ``"connection"``."""
        return retry_cause(self.error)


class RetryListener:
    """Callbacks of a :class:`RetryPolicy` (:attr:`RetryPolicy.listeners`). Every method is optional and
    may be called from any thread (the ``requests`` backend retries in worker threads)."""

    def attempt_started(self) -> None:
        """An attempt is about to be sent."""

    def attempt_finished(self, error: BaseException | None) -> None:
        """An attempt ended: answered (``None``) or failed with ``error``."""

    def response_headers(self, headers: Mapping[str, str]) -> None:
        """The headers of an HTTP answer (any status), passed on by the backend via :meth:`RetryPolicy.observe`."""

    def retrying(self, event: RetryEvent) -> None:
        """A failed attempt will be retried after ``event.delay`` seconds (which this may raise)."""

    def gave_up(self, error: BackendError, attempts: int) -> None:
        """The call failed for good after ``attempts`` attempts."""


def retry_cause(error: BaseException) -> str:
    """The cause of a retry as counted in summaries: the HTTP status, ``timeout`` or ``connection``."""
    status = getattr(error, "status", None)
    if status is not None:
        return str(status)
    if isinstance(error, BackendConnectionError):
        return "timeout" if error.message.startswith("no answer within") else "connection"
    return "other"


def is_rate_limited(error: BaseException) -> bool:
    """A 429 that waiting cures: rate limited, not out of quota (``insufficient_quota`` is also a 429)."""
    return getattr(error, "status", None) == 429 and "quota" not in str(getattr(error, "message", "")).lower()


@dataclass
class RetryPolicy:
    """When and how long to retry. ``delay(attempt, retry_after)``: ``attempt`` counts from 0.

    * Backoff is exponential with full jitter (``uniform(0, min(max_delay, base * 2**attempt))``), and is
      added on top of a server's ``Retry-After``: calls refused together do not come back together, and
      the waits grow with each attempt instead of repeating the server's constant interval.
    * A call that is merely rate limited (429, not ``insufficient_quota``) is not given up after
      ``max_retries``: it keeps retrying until ``rate_limit_patience`` seconds have passed since its first
      attempt (unless ``max_retries`` is 0, which means no retries at all).
    * :attr:`listeners` (:class:`RetryListener`) hear about every attempt, retry and HTTP answer: the
      shared rate limiter paces and cools down through them. :attr:`stats` counts attempts and retries.
    * Each retry is logged on the ``oaipipe.retry`` logger (INFO), keys masked.
    """

    max_retries: int = 5
    base: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    rate_limit_patience: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    asleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    listeners: list[RetryListener] = field(default_factory=list)
    stats: RetryStats = field(default_factory=RetryStats)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1``: the server's ``Retry-After`` (capped at
        ``max_retry_after``, 0 when it sent none) plus full-jitter exponential backoff."""
        ceiling = min(self.max_delay, self.base * (2 ** max(0, attempt)))
        jitter = self.rng.uniform(0.0, ceiling)
        if retry_after is None:
            return jitter
        return min(max(0.0, retry_after), self.max_retry_after) + jitter

    @staticmethod
    def should_retry(error: BaseException) -> bool:
        """The classifier: retry errors marked retryable (429, 5xx, 408, 409, timeouts, connections)."""
        if not isinstance(error, BackendError):
            return False
        if error.status is not None and error.status in NEVER_RETRY:
            return False
        return bool(getattr(error, "retryable", False))

    def observe(self, headers: Mapping[str, str]) -> None:
        """Hand the headers of an HTTP answer to the listeners (backends call this for every answer)."""
        for listener in self.listeners:
            listener.response_headers(headers)

    def _give_up(self, error: BackendError, attempts: int) -> BackendError:
        self.stats.failed()
        for listener in self.listeners:
            listener.gave_up(error, attempts)
        if attempts > 1:
            error.message = f"{error.message} (gave up after {attempts} attempts)"
            error.args = (str(error),)
        return error

    def _started(self) -> float:
        self.stats.attempt()
        for listener in self.listeners:
            listener.attempt_started()
        return self.clock()

    def _finished(self, error: BaseException | None) -> None:
        for listener in self.listeners:
            listener.attempt_finished(error)

    def _retry(self, error: BackendError, attempt: int, started: float, first: float) -> RetryEvent | None:
        """The retry after a failed attempt, or None when the call is given up."""
        if not self.should_retry(error):
            return None
        elapsed = self.clock() - first
        if attempt >= self.max_retries and not (
                self.max_retries > 0 and is_rate_limited(error) and elapsed < self.rate_limit_patience):
            return None
        event = RetryEvent(attempt, error, self.delay(attempt, error.retry_after), started, elapsed)
        for listener in self.listeners:
            listener.retrying(event)
        self.stats.retried(event.cause, event.delay)
        if _log.isEnabledFor(logging.INFO):
            limit = f"/{self.max_retries}" if attempt < self.max_retries else " (rate limited: patient)"
            _log.info("retry %d%s in %.2fs after %s", attempt + 1, limit, event.delay,
                      redact(error.message.splitlines()[0] if error.message else type(error).__name__))
        return event

    def run(self, attempt_fn: Callable[[], T]) -> T:
        """Call ``attempt_fn`` until it succeeds or the policy gives up (blocking sleeps)."""
        attempt = 0
        first = self.clock()
        while True:
            started = self._started()
            try:
                result = attempt_fn()
            except BackendError as err:
                self._finished(err)
                event = self._retry(err, attempt, started, first)
                if event is None:
                    raise self._give_up(err, attempt + 1) from err.__cause__
                self.sleep(event.delay)
                attempt += 1
                continue
            except BaseException as exc:
                self._finished(exc)
                raise
            self._finished(None)
            return result

    async def arun(self, attempt_fn: Callable[[], Awaitable[T]]) -> T:
        """Async :meth:`run`."""
        attempt = 0
        first = self.clock()
        while True:
            started = self._started()
            try:
                result = await attempt_fn()
            except BackendError as err:
                self._finished(err)
                event = self._retry(err, attempt, started, first)
                if event is None:
                    raise self._give_up(err, attempt + 1) from err.__cause__
                await self.asleep(event.delay)
                attempt += 1
                continue
            except BaseException as exc:
                self._finished(exc)
                raise
            self._finished(None)
            return result
