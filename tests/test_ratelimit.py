"""Rate limits: request and token buckets (with a fake clock), settling, the shared cool-down, in a run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _scale_util import chat_requests, write_pipeline

from oaipipe.ratelimit import RateLimiter, TokenBucket, rate_limit_wrapper
from oaipipe.retry import RetryPolicy, error_for_status
from oaipipe.runner import run_pipeline_file
from oaipipe.tokens import count_message_tokens
from oaipipe.types import ChatRequest, ChatResponse, Usage


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _req(text: str = "hello there", max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], model="gpt-4o-mini", max_tokens=max_tokens)


def _limiter(clock: FakeClock, **kw) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, **kw)


def test_bucket_refills_continuously_and_caps_at_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock)  # 1 per second, holds 1
    assert bucket.capacity == 1
    assert bucket.wait_time(1) == 0
    bucket.take(1)
    assert bucket.wait_time(1) == pytest.approx(1.0)
    clock.now += 0.25
    assert bucket.wait_time(1) == pytest.approx(0.75)
    clock.now += 100
    assert bucket.wait_time(1) == 0 and bucket.level == 1  # never more than the capacity


def test_requests_per_minute_spaces_calls() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, rpm=120)  # 2 per second, burst of 2

    async def go() -> None:
        for _ in range(6):
            await limiter.acquire(_req())

    asyncio.run(go())
    # two go at once, the next four every 0.5 s
    assert sum(clock.sleeps) == pytest.approx(2.0)
    assert limiter.waited == pytest.approx(2.0)


def test_requests_are_shared_by_concurrent_workers_fifo() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, rpm=60)
    started: list[tuple[int, float]] = []

    async def worker(n: int) -> None:
        await limiter.acquire(_req())
        started.append((n, clock.now))

    async def go() -> None:
        await asyncio.gather(*(worker(n) for n in range(4)))

    asyncio.run(go())
    assert [n for n, _ in started] == [0, 1, 2, 3]
    times = [t - 100.0 for _, t in started]
    assert times == pytest.approx([0.0, 1.0, 2.0, 3.0])


def test_tokens_per_minute_uses_estimate_then_settles_with_usage() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, tpm=6000, completion_estimate=50)  # 100 tokens/s, holds 100
    request = _req(max_tokens=None)
    expected = count_message_tokens(request.messages, "gpt-4o-mini") + 50
    assert limiter.estimate(request) == expected
    assert limiter.estimate(_req(max_tokens=10)) == expected - 40

    async def go() -> int:
        return await limiter.acquire(request)

    taken = asyncio.run(go())
    assert taken == expected
    assert limiter.tokens is not None
    level = limiter.tokens.level
    assert level == pytest.approx(100 - expected)
    # the call really used 5 tokens: the rest is refunded
    limiter.settle(taken, ChatResponse(text="", model="m", backend="b", usage=Usage(3, 2, 5)))
    assert limiter.tokens.level == pytest.approx(min(100, level + expected - 5))
    # cached answers are not settled (they never took anything)
    before = limiter.tokens.level
    limiter.settle(taken, ChatResponse(text="", model="m", backend="b", usage=Usage(3, 2, 5), cached=True))
    assert limiter.tokens.level == before


def test_a_request_larger_than_the_bucket_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, tpm=600, completion_estimate=200)  # 10 tokens/s, holds 10

    async def go() -> None:
        await limiter.acquire(_req())  # ~210 tokens: full bucket, so it goes at once
        await limiter.acquire(_req())  # waits for the debt to be repaid and the bucket to be full again

    asyncio.run(go())
    assert len(clock.sleeps) == 1
    need = limiter.estimate(_req())
    assert clock.sleeps[0] == pytest.approx(need / 10.0)


def test_cool_down_pauses_everyone() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)  # no limits: only the cool-down

    async def go() -> None:
        await limiter.acquire(_req())
        limiter.cool_down(2.5)
        await limiter.acquire(_req())

    asyncio.run(go())
    assert clock.sleeps == [pytest.approx(2.5)]
    assert limiter.cooldowns == 1


def test_the_limiter_listens_to_the_retry_policy_for_cool_downs() -> None:
    # an explicit callback (RetryPolicy.listeners), not a monkeypatched delay
    clock = FakeClock()
    limiter = _limiter(clock)
    slept: list[float] = []
    policy = RetryPolicy(max_retries=3, sleep=slept.append, clock=clock, listeners=[limiter])
    errors = [error_for_status(503, "busy"), error_for_status(429, "slow", retry_after=1.5)]

    def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    assert policy.run(attempt) == "ok"
    assert slept[0] <= 0.5 + 1e-9  # plain backoff for the 503 without Retry-After: no cool-down for others
    assert limiter.cooldowns == 1  # the server asked once: everyone waits
    assert limiter.pause_until == pytest.approx(clock.now + 1.5)
    assert 1.5 <= slept[1] <= 1.5 + 1.0  # at least what the server asked, plus jitter


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_wrapper_settles_each_call() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, rpm=6000, tpm=60000)

    async def backend(request: ChatRequest) -> ChatResponse:
        return ChatResponse(text="x", model="m", backend="b", usage=Usage(10, 10, 20))

    async def go() -> None:
        call = rate_limit_wrapper(limiter)(backend)
        for _ in range(3):
            await call(_req())

    asyncio.run(go())
    assert limiter.tokens is not None and limiter.tokens.level == pytest.approx(1000 - 60)


def test_rpm_in_a_run_against_the_server(tmp_path: Path, server) -> None:
    # 1 call/s with a burst of 1, and concurrency above the record count: no record waits for another's answer
    # to be dispatched, so the server's speed does not matter; the 2nd and 3rd calls go without waiting
    # only if each reached the limiter a whole second after the one before (under load, records are
    # dispatched a few tenths of a second apart at worst)
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}', rpm: 60, tpm: 1000000, "
                                    f"concurrency: 8}}", n=3)
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 3 and chat_requests(server) == 3
    assert summary["rate_limit"]["rpm"] == 60 and summary["rate_limit"]["tpm"] == 1000000
    assert summary["rate_limit"]["waited_s"] > 0


def test_bad_limits_are_rejected_with_the_key(tmp_path: Path) -> None:
    from oaipipe.errors import ConfigError
    from oaipipe.pipeline import load_pipeline

    path = write_pipeline(tmp_path, "{type: openai, base_url: 'http://127.0.0.1:9/v1', rpm: 0}", n=1)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert "rpm" in str(info.value)


def test_reservation_for_replies_learns_their_real_length() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, tpm=60000)

    async def backend(request: ChatRequest) -> ChatResponse:
        return ChatResponse(text="x", model="m", backend="b", usage=Usage(10, 20, 30))

    async def go() -> None:
        call = rate_limit_wrapper(limiter)(backend)
        for _ in range(6):
            await call(_req())

    prompt = count_message_tokens(_req().messages, "gpt-4o-mini")
    assert limiter.estimate(_req()) == prompt + limiter.completion_estimate  # nothing learnt yet
    asyncio.run(go())
    assert limiter.estimate(_req()) == prompt + 26  # mean 20 replies plus a quarter
    assert limiter.estimate(_req(max_tokens=500)) == prompt + 500  # an explicit limit is always reserved


# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def test_a_bucket_takes_any_positive_rate_and_refuses_the_rest() -> None:
    assert TokenBucket(1).rate == pytest.approx(1 / 60)  # one a minute is a rate
    assert TokenBucket(0.5).rate == pytest.approx(0.5 / 60)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="^a rate limit must be positive$"):
            TokenBucket(bad)
