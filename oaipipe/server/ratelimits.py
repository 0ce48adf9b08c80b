"""Rate limits enforced by ``oaipipe serve --rpm N --tpm N``, answered the way OpenAI answers them.

Each limit is per minute and enforced continuously: a token bucket refilled at ``limit / 60`` per
second that holds at most ``burst`` seconds of refill. With the default ``burst`` of 60 s the bucket
holds the whole minute, as OpenAI's headers describe it ("the time until the rate limit resets to its
initial state"); a shorter burst models OpenAI's *quantized* enforcement ("60,000 requests/minute may
be enforced as 1,000 requests/second"), and is how tests make a limit bite within a second.

* Requests: each inference call takes 1.
* Tokens: a call takes its estimate when it arrives (a quarter of the characters of its messages or
  input, plus ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``); when the answer is
  built, the bucket is corrected with the answer's real ``usage``. A call larger than the bucket is let
  through once the bucket is full, and leaves it in debt (OpenAI would refuse it outright; a test
  server that never lets a call through would only hang the client).
* A call that does not fit is answered ``429`` with OpenAI's error shape (``code:
  rate_limit_exceeded``), ``Retry-After`` (whole seconds, rounded up), ``retry-after-ms`` and the
  ``x-ratelimit-*`` headers. Refused calls take nothing from the buckets.
* Every answer of an inference endpoint carries ``x-ratelimit-limit-requests``,
  ``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` and the ``-tokens`` variants
  (only those of the limits that are set). Reset times use OpenAI's format: ``20ms``, ``1s``,
  ``1.5s``, ``6m0s``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import ApiError

__all__ = ["RateLimits", "estimate_tokens", "format_reset"]

#: keys whose string values are not text the model reads (roles, part types, image data, URLs)
_NOT_TEXT = frozenset({"role", "type", "image_url", "url", "file_data", "file_id", "detail"})


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*`` (Go's duration format, whole ms):
    ``0s``, ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _text_chars(value: Any, key: str = "") -> int:
    if key in _NOT_TEXT:
        return 0
    if isinstance(value, str):
        return 0 if value.startswith("data:") else len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v, str(k)) for k, v in value.items())
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


def estimate_tokens(body: Any) -> int:
    """Tokens a request counts against the TPM limit when it arrives: ~4 characters per token of its
    text, plus the completion limit it asks for (0 when it sets none)."""
    if not isinstance(body, dict):
        return 1
    chars = _text_chars(body.get("messages")) + _text_chars(body.get("input")) + _text_chars(body.get("instructions"))
    limit = 0
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            limit = max(limit, value)
    return max(1, math.ceil(chars / 4)) + limit


def _usage_total(body: Any) -> int | None:
    """Total tokens of an answer (chat completions or responses shape), if it says."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    numbers = [p for p in parts if isinstance(p, int)]
    return sum(numbers) if numbers else None


class _Bucket:
    def __init__(self, limit: int, burst: float, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = max(1.0, self.rate * burst)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` (or a full bucket, for more than it holds) is there; 0 when it is."""
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level))),
            f"x-ratelimit-reset-{kind}": format_reset((self.capacity - self.level) / self.rate),
        }


class RateLimits:
    """The requests and tokens buckets of one server (thread-safe)."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, *, burst: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst <= 0:
            raise ValueError(f"the rate-limit burst must be > 0 seconds, got {burst}")
        self.clock = clock
        now = clock()
        self.requests = _Bucket(rpm, burst, now) if rpm else None
        self.tokens = _Bucket(tpm, burst, now) if tpm else None
        self.refused = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def _refill(self) -> None:
        now = self.clock()
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)

    def _headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.requests is not None:
            out.update(self.requests.headers("requests"))
        if self.tokens is not None:
            out.update(self.tokens.headers("tokens"))
        return out

    def admit(self, raw: bytes | Any) -> int:
        """Let one call in (its JSON body, raw or decoded) and return the tokens it took, or raise the
        429 :class:`ApiError`."""
        body = raw
        if isinstance(raw, bytes | bytearray):
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"input": raw.decode("utf-8", "replace")}
        model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else ""
        need = estimate_tokens(body) if self.tokens is not None else 0
        with self._lock:
            self._refill()
            waits: list[tuple[float, str, _Bucket, float]] = []
            if self.requests is not None:
                waits.append((self.requests.wait_for(1), "requests per min (RPM)", self.requests, 1))
            if self.tokens is not None:
                waits.append((self.tokens.wait_for(need), "tokens per min (TPM)", self.tokens, need))
            blocked = [w for w in waits if w[0] > 0]
            if not blocked:
                if self.requests is not None:
                    self.requests.level -= 1
                if self.tokens is not None:
                    self.tokens.level -= need
                return need
            self.refused += 1
            wait, what, bucket, amount = max(blocked, key=lambda w: w[0])
            headers = self._headers()
        held = f" ({bucket.capacity:g} at once)" if bucket.capacity < bucket.limit else ""
        named = f" for {model}" if model else ""
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        raise ApiError(
            429,
            f"Rate limit reached{named} on {what}: Limit {bucket.limit}{held}, Remaining "
            f"{max(0, math.floor(bucket.level))}, Requested {amount:g}. "
            f"Please try again in {format_reset(wait)}. (enforced by oaipipe serve --rpm/--tpm)",
            code="rate_limit_exceeded", type="requests" if bucket is self.requests else "tokens",
            headers=headers,
        )

    def settle(self, taken: int, answer: Any) -> dict[str, str]:
        """Correct the tokens bucket with the answer's real usage; the ``x-ratelimit-*`` headers to send."""
        with self._lock:
            self._refill()
            if self.tokens is not None:
                actual = _usage_total(answer)
                if actual is not None:
                    self.tokens.level = min(self.tokens.capacity, self.tokens.level + taken - actual)
            return self._headers()

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            self._refill()
            out: dict[str, Any] = {"refused": self.refused}
            for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
                if bucket is not None:
                    out[kind] = {"limit_per_minute": bucket.limit, "capacity": bucket.capacity,
                                 "remaining": max(0, math.floor(bucket.level))}
            return out
