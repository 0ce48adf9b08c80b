"""Client-side rate limits, shared by all workers of a run: configured, and learnt from the server.

**Configured** (``backend.rpm`` / ``backend.tpm``): each limit is a token bucket refilled continuously at
``limit / 60`` per second. A bucket holds at most ``burst_seconds`` worth of refill (default 1 s, never
less than one request): a run starts gently instead of firing a whole minute's quota at once, which is
what gets a 429 from OpenAI, whose limits are also enforced continuously.

* ``rpm``: each call takes 1 from the request bucket.
* ``tpm``: before sending, a call takes its *estimated* tokens (prompt tokens counted with
  :mod:`oaipipe.tokens`, plus ``max_tokens`` or the expected reply length); after the answer, the
  estimate is corrected with the real usage (refunded or charged). A call larger than the bucket waits
  for a full bucket and leaves it in debt, so a big request is slowed, never stuck.

**Learnt** (nothing to configure): every HTTP answer's ``x-ratelimit-limit-*``,
``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` headers (requests and tokens; OpenAI's format,
resets such as ``20ms``, ``1s``, ``6m0s``) describe the server's own buckets. The limiter keeps a model
of each: limit per minute, refilled at ``limit / 60`` per second (slower when the headers show a longer
window), never holding more than the server says remains. Calls wait for the model like for a
configured bucket, so the run paces itself just under the server's limit.

**When refused anyway** (429 / 503 with ``Retry-After``), through the backend's
:class:`~oaipipe.retry.RetryPolicy`, whose listener this limiter is:

* *shared cool-down*: every call that has not started waits out the server's ``Retry-After``;
* *paced retries*: a retry takes its turn from the buckets like a new call, so refused calls come back
  spread over the refill instead of all at once (the policy adds full jitter that grows per attempt);
* *AIMD concurrency*: a 429 halves the number of calls in flight (once per round of calls: the 429s of
  calls sent before the last cut do not cut again), each answered call raises it by ``1 / limit``
  (about one per round), up to ``backend.concurrency``.

Waiting is FIFO: calls get their turn in the order they asked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .retry import RetryEvent, RetryListener, is_rate_limited
from .types import ChatRequest, ChatResponse

__all__ = [
    "DEFAULT_COMPLETION_ESTIMATE",
    "AdaptiveConcurrency",
    "LearnedBucket",
    "RateLimitHeaders",
    "RateLimiter",
    "TokenBucket",
    "parse_duration",
    "parse_rate_limit_headers",
    "rate_limit_wrapper",
]

#: completion tokens assumed for a request without ``max_tokens`` until replies show their real length
DEFAULT_COMPLETION_ESTIMATE = 256

_log = logging.getLogger("oaipipe.ratelimit")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
#: seconds per unit, as (multiplier, divisor): 9ms is 9 / 1000 = 0.009 exactly, not 9 * 0.001
_UNIT = {"ns": (1, 1e9), "us": (1, 1e6), "µs": (1, 1e6), "μs": (1, 1e6), "ms": (1, 1e3), "s": (1, 1),
         "m": (60, 1), "h": (3600, 1)}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a reset value: Go's duration format as OpenAI sends it (``20ms``, ``1s``, ``1.5s``,
    ``6m0s``, ``1h2m3s``) or a plain number of seconds. ``None`` for anything else."""
    if text is None:
        return None
    text = str(text).strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        multiplier, divisor = _UNIT[match.group(2)]
        total += float(match.group(1)) * multiplier / divisor
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


@dataclass(frozen=True)
class RateLimitHeaders:
    """One answer's ``x-ratelimit-*`` headers (``None`` where absent or unreadable)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number >= 0 else None


def parse_rate_limit_headers(headers: Mapping[str, str] | None) -> RateLimitHeaders | None:
    """The ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers of an answer (names in any
    case), or ``None`` when it has no usable limit."""
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items() if str(k).lower().startswith("x-ratelimit-")}
    if not lowered:
        return None
    info = RateLimitHeaders(
        limit_requests=_count(lowered.get("x-ratelimit-limit-requests")),
        remaining_requests=_count(lowered.get("x-ratelimit-remaining-requests")),
        reset_requests=parse_duration(lowered.get("x-ratelimit-reset-requests")),
        limit_tokens=_count(lowered.get("x-ratelimit-limit-tokens")),
        remaining_tokens=_count(lowered.get("x-ratelimit-remaining-tokens")),
        reset_tokens=parse_duration(lowered.get("x-ratelimit-reset-tokens")),
    )
    usable = (info.limit_requests and info.remaining_requests is not None) or \
        (info.limit_tokens and info.remaining_tokens is not None)
    return info if usable else None


class TokenBucket:
    """``rate_per_minute`` units refilled continuously, holding at most ``capacity``; may go into debt."""

    def __init__(self, rate_per_minute: float, *, burst_seconds: float = 1.0, minimum_capacity: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = rate_per_minute / 60.0
        self.capacity = max(minimum_capacity, self.rate * burst_seconds)
        self.level = self.capacity
        self.clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` (or a full bucket, for a larger amount) is available."""
        self._refill()
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give(self, amount: float) -> None:
        """Refund (positive) or charge (negative) after the fact."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class LearnedBucket(TokenBucket):
    """A model of one of the server's buckets, as its ``x-ratelimit-*`` headers describe it.

    The limit is per minute (OpenAI's RPM/TPM): refilled at ``limit / 60`` per second, holding ``limit``.
    When the headers show a slower refill (what was used, ``limit - remaining``, over the reset time is
    under half of that), the limit counts over a longer window (a daily limit) and that rate is used.
    The level never exceeds what the server last said remains.
    """

    def __init__(self, limit: int, remaining: int, reset: float | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(max(1, limit), burst_seconds=60.0, clock=clock)
        self.limit = limit
        self.observe(limit, remaining, reset)

    def observe(self, limit: int, remaining: int, reset: float | None) -> None:
        limit = max(1, limit)
        self._refill()
        rate = limit / 60.0
        if reset is not None and reset > 0 and limit > remaining:
            observed = (limit - remaining) / reset
            if observed < rate / 2:
                rate = observed
        self.limit = limit
        self.rate = rate
        self.capacity = float(limit)
        self.level = min(self.level, float(remaining))


class AdaptiveConcurrency:
    """How many calls may be in flight: cut in half on a 429, raised by ``1 / limit`` per answered call
    (additive increase, multiplicative decrease), between 1 and ``maximum``.

    :meth:`acquire` (await) and :meth:`release` run on the event loop; waiters are served FIFO.
    :meth:`decrease` may be called from any thread (the ``requests`` backend retries in threads).
    """

    def __init__(self, maximum: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = max(1, int(maximum))
        self.limit = float(self.maximum)
        self.lowest = self.maximum
        self.decreases = 0
        self.active = 0
        self.clock = clock
        self._last_cut = -math.inf
        self._lock = threading.Lock()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def allowed(self) -> int:
        return max(1, int(self.limit))

    async def acquire(self) -> None:
        if self.active < self.allowed and not self._waiters:
            self.active += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future  # the slot is counted for us by _wake
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(success=False)  # woken and cancelled at once: pass the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
            raise

    def release(self, *, success: bool) -> None:
        """A call ended; an answered one (``success``) raises the limit a little."""
        self.active -= 1
        if success:
            self.increase()
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.allowed:
            future = self._waiters.popleft()
            if not future.done():
                self.active += 1
                future.set_result(None)

    def increase(self) -> None:
        with self._lock:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)

    def decrease(self, sent_at: float | None = None) -> bool:
        """Halve the limit, unless the refused call was sent before the last cut (that cut answered the
        same congestion). Returns True when the limit was cut."""
        with self._lock:
            if sent_at is not None and sent_at < self._last_cut:
                return False
            before = self.allowed
            self.limit = max(1.0, self.limit / 2)
            self._last_cut = self.clock()
            self.decreases += 1
            self.lowest = min(self.lowest, self.allowed)
            after = self.allowed
        if after != before:
            _log.info("rate limited: at most %d calls in flight now (was %d)", after, before)
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"max": self.maximum, "now": self.allowed, "lowest": self.lowest, "cuts": self.decreases}


class RateLimiter(RetryListener):
    """Configured and learnt request/token buckets, a shared cool-down and AIMD concurrency, for one backend.

    Attach it to the backend's :class:`~oaipipe.retry.RetryPolicy` (``policy.listeners.append(limiter)``)
    so that it hears every answer's headers and every retry; wrap the calls with :func:`rate_limit_wrapper`.
    """

    def __init__(self, rpm: int | None = None, tpm: int | None = None, *, burst_seconds: float = 1.0,
                 completion_estimate: int = DEFAULT_COMPLETION_ESTIMATE, concurrency: int | None = None,
                 learn: bool = True, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.clock = clock
        self.sleep = sleep
        self.learn = learn
        self.completion_estimate = completion_estimate
        self._seen_completions = 0
        self._completion_tokens = 0
        self._estimates = 0
        self._estimated_tokens = 0
        self.requests = TokenBucket(rpm, burst_seconds=burst_seconds, clock=clock) if rpm else None
        self.tokens = (TokenBucket(tpm, burst_seconds=burst_seconds, minimum_capacity=0, clock=clock)
                       if tpm else None)
        self.learned_requests: LearnedBucket | None = None
        self.learned_tokens: LearnedBucket | None = None
        self.concurrency = AdaptiveConcurrency(concurrency, clock=clock) if concurrency else None
        self.pause_until = 0.0
        self.waited = 0.0
        self.cooldowns = 0
        self.refusals = 0
        self._state = threading.Lock()  # buckets and counters: touched from worker threads too
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    @property
    def _counts_tokens(self) -> bool:
        return self.tokens is not None or self.learned_tokens is not None

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    # --- estimates ----------------------------------------------------------------------------------

    def estimate(self, request: ChatRequest) -> int:
        """Tokens a request will count against the TPM limit: prompt + (max_tokens or the expected reply)."""
        from .tokens import count_message_tokens

        prompt = count_message_tokens(request.messages, request.model, image_model=request.model)
        need = prompt + (request.max_tokens or self.expected_completion())
        self._estimates += 1
        self._estimated_tokens += need
        return need

    def expected_completion(self) -> int:
        """Completion tokens to reserve for a call without ``max_tokens``: the default until a few answers
        came back, then their mean plus a quarter (so short replies do not hold the TPM budget hostage)."""
        if self._seen_completions < 5:
            return self.completion_estimate
        mean = self._completion_tokens / self._seen_completions
        return max(16, min(self.completion_estimate, int(mean * 1.25) + 1))

    def _typical_tokens(self) -> int:
        """Tokens a retry is assumed to take (the retried request is not at hand): the mean estimate."""
        if self._estimates:
            return max(1, self._estimated_tokens // self._estimates)
        return self.completion_estimate

    # --- buckets (under self._state) ----------------------------------------------------------------

    def _buckets(self, tokens: float) -> list[tuple[TokenBucket, float]]:
        out: list[tuple[TokenBucket, float]] = []
        for bucket, amount in ((self.requests, 1.0), (self.learned_requests, 1.0),
                               (self.tokens, tokens), (self.learned_tokens, tokens)):
            if bucket is not None and amount > 0:
                out.append((bucket, amount))
        return out

    def _wait_locked(self, tokens: float) -> float:
        wait = max(0.0, self.pause_until - self.clock())
        for bucket, amount in self._buckets(tokens):
            wait = max(wait, bucket.wait_time(amount))
        return wait

    def _take_locked(self, tokens: float) -> None:
        for bucket, amount in self._buckets(tokens):
            bucket.take(amount)

    def _reserve(self, tokens: float, earliest: float) -> float:
        """Take a turn now for a call that will go no sooner than ``earliest`` seconds from now; returns
        the seconds until it may go (the turns asked for after it wait for its share)."""
        with self._state:
            wait = max(earliest, self.pause_until - self.clock())
            for bucket, amount in self._buckets(tokens):
                wait = max(wait, bucket.wait_time(amount))
                bucket.take(amount)
            return wait

    def cool_down(self, seconds: float) -> None:
        """Pause every call that has not started yet for ``seconds`` (the server said so)."""
        if seconds <= 0:
            return
        with self._state:
            until = self.clock() + seconds
            if until > self.pause_until:
                self.pause_until = until
                self.cooldowns += 1

    async def acquire(self, request: ChatRequest) -> int:
        """Wait for a turn; returns the tokens taken from the TPM buckets (0 when none counts tokens)."""
        need = self.estimate(request) if self._counts_tokens else 0
        if (need == 0 and self.requests is None and self.learned_requests is None
                and self.pause_until <= self.clock()):
            return 0  # nothing to wait for: no lock, no wait
        async with self._get_lock():
            while True:
                with self._state:
                    wait = self._wait_locked(need)
                    if wait <= 0:
                        self._take_locked(need)
                        break
                    self.waited += wait
                await self.sleep(wait)
        return need

    def settle(self, estimated: int, response: ChatResponse | None, request: ChatRequest | None = None) -> None:
        """Correct the TPM buckets with the real usage of an answered call (and learn reply lengths)."""
        if not self._counts_tokens or response is None or response.cached:
            return
        if request is not None and request.max_tokens is None:
            self._seen_completions += 1
            self._completion_tokens += response.usage.completion_tokens
        actual = response.usage.total_tokens or (response.usage.prompt_tokens + response.usage.completion_tokens)
        with self._state:
            for bucket in (self.tokens, self.learned_tokens):
                if bucket is not None and estimated:
                    bucket.give(estimated - actual)

    # --- what the retry policy tells us (any thread) ------------------------------------------------

    def response_headers(self, headers: Mapping[str, str]) -> None:
        if not self.learn:
            return
        info = parse_rate_limit_headers(headers)
        if info is None:
            return
        with self._state:
            if info.limit_requests and info.remaining_requests is not None:
                self.learned_requests = self._learn(self.learned_requests, "requests", info.limit_requests,
                                                    info.remaining_requests, info.reset_requests)
            if info.limit_tokens and info.remaining_tokens is not None:
                self.learned_tokens = self._learn(self.learned_tokens, "tokens", info.limit_tokens,
                                                  info.remaining_tokens, info.reset_tokens)

    def _learn(self, bucket: LearnedBucket | None, what: str, limit: int, remaining: int,
               reset: float | None) -> LearnedBucket:
        if bucket is None:
            _log.info("the server limits %s: %d per minute (x-ratelimit-limit-%s); pacing to it", what, limit, what)
            return LearnedBucket(limit, remaining, reset, clock=self.clock)
        if bucket.limit != limit:
            _log.info("the server's %s limit is now %d per minute", what, limit)
        bucket.observe(limit, remaining, reset)
        return bucket

    def retrying(self, event: RetryEvent) -> None:
        error = event.error
        if error.status == 429:
            with self._state:
                self.refusals += 1
            if self.concurrency is not None and is_rate_limited(error):
                self.concurrency.decrease(event.started)
        if error.retry_after is not None:
            self.cool_down(min(error.retry_after, event.delay))
        # the retry takes its turn like a new call: refused calls come back spread over the refill
        tokens = self._typical_tokens() if self._counts_tokens else 0
        event.delay = self._reserve(tokens, event.delay)

    # --- the summary --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rpm": self.rpm, "tpm": self.tpm, "waited_s": round(self.waited, 3),
                               "cooldowns": self.cooldowns, "refused": self.refusals}
        learned = {what: bucket.limit for what, bucket in (("requests_per_minute", self.learned_requests),
                                                            ("tokens_per_minute", self.learned_tokens))
                   if bucket is not None}
        if learned:
            out["learned"] = learned
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency.to_dict()
        return out


Call = Callable[[ChatRequest], Awaitable[ChatResponse]]


def rate_limit_wrapper(limiter: RateLimiter) -> Callable[[Call], Call]:
    """A runner call wrapper: takes a concurrency slot and a turn before each call, settles the tokens
    and gives the slot back after."""

    def wrap(call: Call) -> Call:
        async def limited(request: ChatRequest) -> ChatResponse:
            gate = limiter.concurrency
            if gate is None:
                estimated = await limiter.acquire(request)
                response = await call(request)
                limiter.settle(estimated, response, request)
                return response
            await gate.acquire()
            success = False
            try:
                estimated = await limiter.acquire(request)
                response = await call(request)
                success = True
            finally:
                gate.release(success=success)
            limiter.settle(estimated, response, request)
            return response

        return limited

    return wrap
