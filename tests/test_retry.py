"""The retry policy: classification, Retry-After parsing, backoff bounds, give-up errors."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time

import pytest

from oaipipe.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BadRequestError,
    RateLimitError,
    ServerError,
)
from oaipipe.retry import (
    RetryPolicy,
    connection_error,
    error_for_status,
    is_rate_limited,
    is_retryable_status,
    parse_retry_after,
)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)
    assert RetryPolicy.should_retry(error_for_status(status, "x"))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 418])
def test_never_retried_statuses(status: int) -> None:
    assert not is_retryable_status(status)
    assert not RetryPolicy.should_retry(error_for_status(status, "x"))


@pytest.mark.parametrize(
    ("status", "cls"),
    [(401, AuthenticationError), (403, AuthenticationError), (400, BadRequestError), (404, BadRequestError),
     (422, BadRequestError), (429, RateLimitError), (500, ServerError), (503, ServerError),
     (408, BackendConnectionError), (409, ServerError)],
)
def test_error_classes(status: int, cls: type[BackendError]) -> None:
    err = error_for_status(status, "detail text", request_id="req_1", url="http://h/v1/chat/completions")
    assert isinstance(err, cls)
    assert err.status == status and err.request_id == "req_1"
    assert "detail text" in str(err) and "req_1" in str(err)
    assert err.hint  # every message says what to do


def test_401_message_says_how_to_set_another_key() -> None:
    text = str(error_for_status(401, "Incorrect API key provided"))
    assert "refused" in text and "OPENAI_API_KEY" in text and "api_key" in text


def test_connection_errors_are_retryable() -> None:
    assert RetryPolicy.should_retry(connection_error("refused", url="http://x"))
    assert RetryPolicy.should_retry(connection_error("slow", url="http://x", timeout=1.0))
    assert not RetryPolicy.should_retry(ValueError("not ours"))


def test_retry_after_seconds() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25


def test_retry_after_ms_wins_over_seconds() -> None:
    assert parse_retry_after({"Retry-After": "3", "retry-after-ms": "150"}) == pytest.approx(0.15)


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(12, abs=1)
    past = email.utils.formatdate(now - 100, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=now) == 0.0


def test_retry_after_absent_or_garbage() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"retry-after-ms": "x", "Retry-After": "2"}) == 2.0


def test_delay_honours_retry_after_with_a_cap_plus_growing_jitter() -> None:
    policy = RetryPolicy(max_retry_after=10, base=0.5, max_delay=4.0)
    assert 2.5 <= policy.delay(0, 2.5) <= 3.0  # at least what the server asked, never exactly that for all
    assert 10 <= policy.delay(3, 120) <= 14
    assert 0 <= policy.delay(0, -1) <= 0.5


def test_full_jitter_bounds() -> None:
    policy = RetryPolicy(base=0.5, max_delay=4.0, rng=random.Random(1))
    for attempt in range(8):
        ceiling = min(4.0, 0.5 * 2**attempt)
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter spreads over the whole range
        assert min(delays) < ceiling * 0.2


def _flaky(errors: list[BaseException]):
    calls = {"n": 0}

    def attempt() -> str:
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return "ok"

    return attempt, calls


def test_run_retries_then_succeeds_and_sleeps_as_told() -> None:
    slept: list[float] = []
    policy = RetryPolicy(max_retries=5, sleep=slept.append, rng=random.Random(0))
    attempt, calls = _flaky([error_for_status(429, "slow", retry_after=1.5), error_for_status(503, "busy")])
    assert policy.run(attempt) == "ok"
    assert calls["n"] == 3
    assert 1.5 <= slept[0] <= 2.0  # Retry-After honoured, plus jitter of attempt 0 (up to base 0.5)
    assert 0 <= slept[1] <= 1.0  # backoff for attempt 1: base 0.5 * 2


def test_run_never_retries_a_401() -> None:
    slept: list[float] = []
    policy = RetryPolicy(max_retries=5, sleep=slept.append)
    attempt, calls = _flaky([error_for_status(401, "bad key")])
    with pytest.raises(AuthenticationError):
        policy.run(attempt)
    assert calls["n"] == 1 and slept == []


def test_run_gives_up_after_max_retries_with_count_in_message() -> None:
    policy = RetryPolicy(max_retries=2, sleep=lambda s: None)
    attempt, calls = _flaky([error_for_status(500, "boom") for _ in range(10)])
    with pytest.raises(ServerError) as info:
        policy.run(attempt)
    assert calls["n"] == 3
    assert "gave up after 3 attempts" in str(info.value)


def test_arun_uses_the_async_sleep() -> None:
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    policy = RetryPolicy(max_retries=3, asleep=fake_sleep)
    errors = [connection_error("reset", url="http://x"), error_for_status(429, "x", retry_after=0.2)]

    async def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "done"

    assert asyncio.run(policy.arun(attempt)) == "done"
    assert len(slept) == 2 and 0.2 <= slept[1] <= 0.2 + 1.0


# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def test_only_a_429_that_is_not_out_of_quota_is_a_rate_limit() -> None:
    assert is_rate_limited(error_for_status(429, "Rate limit reached for requests"))
    assert not is_rate_limited(error_for_status(429, "You exceeded your current Quota, check your plan"))
    assert not is_rate_limited(error_for_status(503, "Rate limit reached for requests"))
    assert not is_rate_limited(RuntimeError("429 Rate limit reached"))  # no status: not an HTTP answer


def test_a_rate_limited_call_outlasts_max_retries_an_out_of_quota_one_does_not() -> None:
    def failing(message: str, times: int):
        calls = []

        def attempt() -> str:
            calls.append(1)
            if len(calls) <= times:
                raise error_for_status(429, message)
            return "ok"

        return attempt, calls

    waits: list[float] = []
    policy = RetryPolicy(max_retries=1, rate_limit_patience=100.0, sleep=waits.append, clock=lambda: 0.0,
                         rng=random.Random(1))
    attempt, calls = failing("Rate limit reached for requests", 4)
    assert policy.run(attempt) == "ok" and len(calls) == 5 and len(waits) == 4
    attempt, calls = failing("You exceeded your current quota", 4)
    with pytest.raises(RateLimitError, match="gave up after 2 attempts"):
        policy.run(attempt)
    assert len(calls) == 2


def test_the_5xx_range_ends_at_599() -> None:
    assert is_retryable_status(599) and is_retryable_status(500)
    assert not is_retryable_status(600) and not is_retryable_status(499)


def test_a_client_error_is_never_retried_even_when_its_class_is_retryable() -> None:
    # a plugin's backend may raise a retryable class with a 4xx status: the request is wrong, do not resend it
    assert not RetryPolicy.should_retry(ServerError("not found", status=404))
    assert not RetryPolicy.should_retry(RateLimitError("bad request", status=400))
    assert RetryPolicy.should_retry(ServerError("bad gateway", status=502))
    assert RetryPolicy.should_retry(ServerError("no status"))


def test_an_http_date_retry_after_is_counted_from_now() -> None:
    in_an_hour = email.utils.formatdate(time.time() + 3600, usegmt=True)
    wait = parse_retry_after({"Retry-After": in_an_hour})
    assert wait is not None and 3500 < wait <= 3600
