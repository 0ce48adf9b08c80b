"""Client-side rate limits: requests per minute and tokens per minute, shared by all workers of a run.

Each limit is a token bucket refilled continuously at ``limit / 60`` per second. A bucket holds at most
``burst_seconds`` worth of refill (default 1 s, never less than one request): a run starts gently
instead of firing a whole minute's quota at once, which is what gets a 429 from OpenAI, whose limits
are also enforced continuously.

* ``rpm``: each call takes 1 from the request bucket.
* ``tpm``: before sending, a call takes its *estimated* tokens (prompt tokens counted with
  :mod:`oaipipe.tokens`, plus ``max_tokens`` or a default completion estimate); after the answer, the
  estimate is corrected with the real usage (refunded or charged). A call larger than the bucket waits
  for a full bucket and leaves it in debt, so a big request is slowed, never stuck.
* **Shared cool-down**: when the server asks one call to wait (429 / 503 with ``Retry-After``), the
  backend's retry policy waits for that call, and :func:`install_cooldown` makes every *other* call
  pause for the same time instead of hammering a server that is already refusing.

Waiting is FIFO: calls get their turn in the order they asked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .types import ChatRequest, ChatResponse

__all__ = ["DEFAULT_COMPLETION_ESTIMATE", "RateLimiter", "TokenBucket", "install_cooldown", "rate_limit_wrapper"]

#: completion tokens assumed for a request without ``max_tokens`` until replies show their real length
DEFAULT_COMPLETION_ESTIMATE = 256


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


class RateLimiter:
    """Requests-per-minute and tokens-per-minute buckets plus a shared cool-down, for one backend."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, *, burst_seconds: float = 1.0,
                 completion_estimate: int = DEFAULT_COMPLETION_ESTIMATE,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.clock = clock
        self.sleep = sleep
        self.completion_estimate = completion_estimate
        self._seen_completions = 0
        self._completion_tokens = 0
        self.requests = TokenBucket(rpm, burst_seconds=burst_seconds, clock=clock) if rpm else None
        self.tokens = (TokenBucket(tpm, burst_seconds=burst_seconds, minimum_capacity=0, clock=clock)
                       if tpm else None)
        self.pause_until = 0.0
        self.waited = 0.0
        self.cooldowns = 0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    def estimate(self, request: ChatRequest) -> int:
        """Tokens a request will count against the TPM limit: prompt + (max_tokens or the default)."""
        from .tokens import count_message_tokens

        prompt = count_message_tokens(request.messages, request.model, image_model=request.model)
        return prompt + (request.max_tokens or self.expected_completion())

    def expected_completion(self) -> int:
        """Completion tokens to reserve for a call without ``max_tokens``: the default until a few answers
        came back, then their mean plus a quarter (so short replies do not hold the TPM budget hostage)."""
        if self._seen_completions < 5:
            return self.completion_estimate
        mean = self._completion_tokens / self._seen_completions
        return max(16, min(self.completion_estimate, int(mean * 1.25) + 1))

    def cool_down(self, seconds: float) -> None:
        """Pause every call that has not started yet for ``seconds`` (the server said so)."""
        if seconds <= 0:
            return
        until = self.clock() + seconds
        if until > self.pause_until:
            self.pause_until = until
            self.cooldowns += 1

    async def acquire(self, request: ChatRequest) -> int:
        """Wait for a turn; returns the tokens taken from the TPM bucket (0 without a TPM limit)."""
        need = self.estimate(request) if self.tokens is not None else 0
        if need == 0 and self.requests is None and self.pause_until <= self.clock():
            return 0  # only the cool-down is active, and it is not: no lock, no wait
        async with self._get_lock():
            while True:
                wait = max(0.0, self.pause_until - self.clock())
                if self.requests is not None:
                    wait = max(wait, self.requests.wait_time(1))
                if self.tokens is not None:
                    wait = max(wait, self.tokens.wait_time(need))
                if wait <= 0:
                    break
                self.waited += wait
                await self.sleep(wait)
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None:
                self.tokens.take(need)
        return need

    def settle(self, estimated: int, response: ChatResponse | None, request: ChatRequest | None = None) -> None:
        """Correct the TPM bucket with the real usage of an answered call (and learn reply lengths)."""
        if self.tokens is None or response is None or response.cached:
            return
        if request is not None and request.max_tokens is None:
            self._seen_completions += 1
            self._completion_tokens += response.usage.completion_tokens
        actual = response.usage.total_tokens or (response.usage.prompt_tokens + response.usage.completion_tokens)
        self.tokens.give(estimated - actual)


Call = Callable[[ChatRequest], Awaitable[ChatResponse]]


def rate_limit_wrapper(limiter: RateLimiter) -> Callable[[Call], Call]:
    """A runner call wrapper that waits for the limiter before each call and settles the tokens after."""

    def wrap(call: Call) -> Call:
        async def limited(request: ChatRequest) -> ChatResponse:
            estimated = await limiter.acquire(request)
            response = await call(request)
            limiter.settle(estimated, response, request)
            return response

        return limited

    return wrap


def install_cooldown(backend: Any, limiter: RateLimiter) -> bool:
    """Make the backend's retry policy announce server-requested waits to ``limiter``.

    Works with any backend whose ``policy`` has a ``delay(attempt, retry_after)`` method
    (:class:`oaipipe.retry.RetryPolicy`). Returns False when the backend has no such policy.
    """
    policy = getattr(backend, "policy", None)
    original = getattr(policy, "delay", None)
    if policy is None or original is None or getattr(original, "_oaipipe_cooldown", False):
        return False

    def delay(attempt: int, retry_after: float | None = None) -> float:
        seconds = original(attempt, retry_after)
        if retry_after is not None:
            limiter.cool_down(seconds)
        return seconds

    delay._oaipipe_cooldown = True  # type: ignore[attr-defined]
    try:
        policy.delay = delay
    except (AttributeError, TypeError):
        return False
    return True
