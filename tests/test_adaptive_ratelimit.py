"""Adaptive rate limits: with no rpm/tpm configured, a run learns the server's limits from its
x-ratelimit-* headers and 429s, and completes every record (issue 9, item 5)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from _scale_util import read_jsonl, write_pipeline

from oaipipe.errors import RateLimitError
from oaipipe.ratelimit import (
    AdaptiveConcurrency,
    LearnedBucket,
    RateLimiter,
    RateLimitHeaders,
    parse_duration,
    parse_rate_limit_headers,
)
from oaipipe.retry import RetryPolicy, error_for_status
from oaipipe.runner import run_pipeline_file
from oaipipe.server.errors import ApiError
from oaipipe.server.ratelimits import RateLimits, estimate_tokens, format_reset
from oaipipe.testing import running_server
from oaipipe.types import ChatRequest


@pytest.mark.parametrize("transport", ["openai", "requests"])
def test_no_limits_configured_every_record_completes_against_a_rate_limited_server(tmp_path: Path,
                                                                                   transport: str) -> None:
    n = 60
    # 1200 RPM enforced per second (OpenAI's quantized enforcement): 20 calls at once, then 20 per second.
    # Before adaptive limits, 6 to 25 of these 60 records failed (workers retried together, gave up)
    with running_server(rpm=1200, rate_burst=1.0) as srv:
        path = write_pipeline(tmp_path, f"{{type: {transport}, base_url: '{srv.base_url}', concurrency: 24}}",
                              n=n, steps="- {type: ask, prompt: 'Reply to: {text}', output: reply}\n",
                              sinks="- {type: jsonl, path: out/records.jsonl}\n")
        summary = run_pipeline_file(path)
        stats = srv.stats()
    assert summary["records"]["done"] == n and summary["records"]["failed"] == 0
    assert summary["rate_limit"]["learned"]["requests_per_minute"] == 1200  # from x-ratelimit-limit-requests
    assert summary["rate_limit"]["waited_s"] > 0 or stats["by_status"].get("429")  # the limit did bite
    assert summary["attempts"] == stats["requests"]
    assert sorted(int(r["_id"]) for r in read_jsonl(tmp_path / "out/records.jsonl")) == list(range(1, n + 1))


def test_tokens_per_minute_learnt_from_headers_every_record_completes(tmp_path: Path) -> None:
    n = 40
    # ~40 tokens a call; 60,000 TPM enforced per second: 1,000 tokens at once, then 1,000 a second
    with running_server(tpm=60000, rate_burst=1.0) as srv:
        path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}', concurrency: 16}}",
                              n=n, steps="- {type: ask, prompt: 'Reply to: {text}', output: reply}\n",
                              sinks="- {type: jsonl, path: out/records.jsonl}\n")
        summary = run_pipeline_file(path)
        stats = srv.stats()
    assert summary["records"]["done"] == n and summary["records"]["failed"] == 0
    assert summary["rate_limit"]["learned"] == {"tokens_per_minute": 60000}
    assert summary["attempts"] == stats["requests"]


# --- the server's mode: oaipipe serve --rpm/--tpm ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (0.02, "20ms"), (0.0004, "1ms"), (1, "1s"),
                                               (1.5, "1.5s"), (17.28, "17.28s"), (360, "6m0s"),
                                               (3723, "1h2m3s")])
def test_server_writes_reset_times_in_openais_format(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds if seconds >= 0.001 or seconds == 0 else 0.001)


def test_server_enforces_rpm_with_429_retry_after_and_headers() -> None:
    clock = Clock()
    limits = RateLimits(rpm=120, burst=1.0, clock=clock)  # 2 per second, holds 2
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    assert limits.admit(body) == 0 and limits.admit(body) == 0
    with pytest.raises(ApiError) as info:
        limits.admit(body)
    err = info.value
    assert err.status == 429 and err.code == "rate_limit_exceeded"
    assert err.headers["Retry-After"] == "1" and err.headers["retry-after-ms"] == "500"
    assert err.headers["x-ratelimit-limit-requests"] == "120"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == "1s"
    assert "Limit 120" in err.message and "Please try again in 500ms" in err.message
    clock.now += 0.5
    limits.admit(body)  # one refilled
    assert limits.refused == 1


def test_server_counts_tokens_estimate_then_usage() -> None:
    clock = Clock()
    limits = RateLimits(tpm=6000, clock=clock)  # 100 tokens/s, holds the minute: 6000
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}
    assert estimate_tokens(body) == 150  # 400 characters / 4 + max_tokens
    taken = limits.admit(json.dumps(body).encode())
    headers = limits.settle(taken, {"usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}})
    assert headers["x-ratelimit-remaining-tokens"] == str(6000 - 120)  # the unused reservation came back
    assert headers["x-ratelimit-reset-tokens"] == "1.2s"
    assert "x-ratelimit-limit-requests" not in headers


def test_server_config_validates_limits() -> None:
    from oaipipe.server.config import ServerConfig

    with pytest.raises(ValueError, match="rpm"):
        ServerConfig(rpm=0)
    with pytest.raises(ValueError, match="rate_burst"):
        ServerConfig(rpm=10, rate_burst=0)
    assert ServerConfig.from_kwargs(rpm=300, tpm=1000, rate_burst=2).rpm == 300


def test_server_headers_on_every_answer_over_http(server) -> None:
    import requests

    with running_server(rpm=300, tpm=100000) as srv:
        reply = requests.post(srv.base_url + "/chat/completions", timeout=10,
                              json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200
        info = parse_rate_limit_headers(reply.headers)
        assert info is not None and info.limit_requests == 300 and info.remaining_requests == 299
        assert info.limit_tokens == 100000 and 0 < info.reset_tokens < 1
    plain = requests.post(server.base_url + "/chat/completions", timeout=10,
                          json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert parse_rate_limit_headers(plain.headers) is None  # without --rpm/--tpm: no headers, no limits


def test_oaipipe_serve_rpm_flag(tmp_path: Path) -> None:
    import subprocess
    import sys

    import requests

    proc = subprocess.Popen([sys.executable, "-m", "oaipipe.cli", "serve", "--port", "0", "--rpm", "60",
                             "--rate-burst", "1", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        base_url = line.split("listening on ")[1].split()[0]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        first = requests.post(base_url + "/chat/completions", json=body, timeout=10)
        second = requests.post(base_url + "/chat/completions", json=body, timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "60"
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"  # 1 per second, holds 1


# --- the client: reading the headers ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("20ms", 0.02), ("1s", 1.0), ("6m0s", 360.0), ("1.5s", 1.5),
                                               ("2h0m0s", 7200.0), ("250us", 0.00025), ("0s", 0.0), ("3", 3.0),
                                               ("0.5", 0.5)])
def test_reset_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "s", "1s garbage", "-1s", "-2", "nan", "1m-5s"])
def test_bad_reset_durations_are_none(text: str | None) -> None:
    assert parse_duration(text) is None


def test_rate_limit_headers_parse_in_any_case() -> None:
    info = parse_rate_limit_headers({"X-RateLimit-Limit-Requests": "5000", "x-ratelimit-remaining-requests": "4999",
                                     "x-ratelimit-reset-requests": "12ms", "x-ratelimit-limit-tokens": "160000",
                                     "x-ratelimit-remaining-tokens": "159976", "x-ratelimit-reset-tokens": "9ms",
                                     "content-type": "application/json"})
    assert info == RateLimitHeaders(5000, 4999, 0.012, 160000, 159976, 0.009)
    only_tokens = parse_rate_limit_headers({"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "10"})
    assert only_tokens is not None and only_tokens.limit_requests is None and only_tokens.remaining_tokens == 10
    assert parse_rate_limit_headers({"content-type": "application/json"}) is None
    assert parse_rate_limit_headers({"x-ratelimit-limit-requests": "lots"}) is None
    assert parse_rate_limit_headers(None) is None


def test_a_learnt_bucket_refills_per_minute_and_never_holds_more_than_remains() -> None:
    clock = Clock()
    bucket = LearnedBucket(600, 3, 0.1, clock=clock)  # 600 per minute: 10 a second; 3 left now
    assert bucket.rate == pytest.approx(10.0) and bucket.capacity == 600
    assert bucket.wait_time(1) == 0 and bucket.level == 3
    bucket.take(3)
    assert bucket.wait_time(1) == pytest.approx(0.1)
    clock.now += 10
    bucket.observe(600, 5, 0.3)  # refilled to 100 in our model, but the server says 5 remain
    assert bucket.level == 5
    # a limit whose usage refills far slower than per minute (a daily limit): the observed rate is used
    daily = LearnedBucket(200, 100, 43200.0, clock=clock)
    assert daily.rate == pytest.approx(100 / 43200)


def test_the_limiter_paces_calls_to_what_the_headers_say() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}], model="gpt-4o-mini")

    async def go(k: int) -> None:
        for _ in range(k):
            await limiter.acquire(request)

    asyncio.run(go(3))  # nothing learnt yet: no waiting
    assert limiter.waited == 0
    limiter.response_headers({"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "0",
                              "x-ratelimit-reset-requests": "30s"})
    start = clock.now
    asyncio.run(go(4))  # 2 per second from an empty bucket: one every 0.5 s
    assert clock.now - start == pytest.approx(2.0)
    assert limiter.to_dict()["learned"] == {"requests_per_minute": 120}


def test_a_retry_takes_its_turn_after_the_calls_already_waiting() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep, concurrency=4)
    limiter.response_headers({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                              "x-ratelimit-reset-requests": "60s"})
    slept: list[float] = []
    policy = RetryPolicy(max_retries=5, sleep=slept.append, clock=clock, listeners=[limiter],
                         rng=random.Random(0))
    errors = [error_for_status(429, "slow"), error_for_status(429, "slow")]

    def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    assert policy.run(attempt) == "ok"
    # 1 request per second and nothing left: the first retry waits for a second, the second for two
    # (its turn comes after the first's), however short the backoff drawn
    assert slept[0] == pytest.approx(1.0) and slept[1] == pytest.approx(2.0)
    assert limiter.refusals == 2
    # the two 429s: the first cut concurrency in half; the second was sent after that cut and cut again
    assert limiter.concurrency is not None and limiter.concurrency.allowed == 1


def test_patient_retries_for_rate_limits_but_not_for_quota() -> None:
    clock = Clock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    policy = RetryPolicy(max_retries=2, base=1.0, max_delay=8.0, sleep=sleep, clock=clock,
                         rate_limit_patience=60.0, rng=random.Random(1))
    always = iter(lambda: error_for_status(429, "Rate limit reached for requests (rate_limit_exceeded)",
                                           retry_after=1.0), None)

    def attempt() -> str:
        raise next(always)

    with pytest.raises(RateLimitError, match="gave up after"):
        policy.run(attempt)
    assert len(slept) > 2  # past max_retries: it was only being rate limited
    assert sum(slept[:-1]) < 60.0 <= sum(slept)  # ... for rate_limit_patience seconds, then gave up
    # growing, never constant: at least the server's Retry-After, spread by a jitter whose ceiling doubles
    assert all(s >= 1.0 for s in slept) and len({round(s, 6) for s in slept}) == len(slept)
    assert max(slept[4:]) > max(slept[:2])

    quota = RetryPolicy(max_retries=2, sleep=lambda s: None, clock=clock)
    calls = {"n": 0}

    def out_of_quota() -> str:
        calls["n"] += 1
        raise error_for_status(429, "You exceeded your current quota (insufficient_quota)")

    with pytest.raises(RateLimitError):
        quota.run(out_of_quota)
    assert calls["n"] == 3  # max_retries + 1: waiting does not cure a quota

    none = RetryPolicy(max_retries=0, sleep=lambda s: None)
    with pytest.raises(RateLimitError):
        none.run(attempt)  # max_retries 0 means no retry at all, not even patient ones


# --- AIMD concurrency ---------------------------------------------------------------------------------


def test_aimd_halves_on_429_once_per_round_and_grows_back_by_one_per_round() -> None:
    clock = Clock()
    gate = AdaptiveConcurrency(16, clock=clock)
    assert gate.allowed == 16
    sent_before = clock.now
    clock.now += 1
    assert gate.decrease(sent_before) is True and gate.allowed == 8
    assert gate.decrease(sent_before) is False and gate.allowed == 8  # same congestion: one cut
    clock.now += 1
    assert gate.decrease(clock.now) is True and gate.allowed == 4
    for _ in range(10):
        gate.decrease()
    assert gate.allowed == 1 and gate.lowest == 1  # never below one
    for _ in range(1 + 2 + 3):  # additive increase: about one more per round of `limit` answers
        gate.increase()
    assert gate.allowed == 3
    for _ in range(2000):
        gate.increase()
    assert gate.allowed == 16  # never above the configured concurrency
    assert gate.to_dict() == {"max": 16, "now": 16, "lowest": 1, "cuts": 12}


def test_aimd_gate_holds_calls_beyond_the_limit_fifo() -> None:
    gate = AdaptiveConcurrency(4)
    gate.decrease()
    gate.decrease()  # 1 in flight at a time
    order: list[int] = []
    peak = {"now": 0, "max": 0}

    async def call(i: int) -> None:
        await gate.acquire()
        peak["now"] += 1
        peak["max"] = max(peak["max"], peak["now"])
        order.append(i)
        await asyncio.sleep(0.001)
        peak["now"] -= 1
        gate.release(success=False)

    async def go() -> None:
        await asyncio.gather(*(call(i) for i in range(6)))

    asyncio.run(go())
    assert peak["max"] == 1 and order == list(range(6)) and gate.active == 0


def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    gate = AdaptiveConcurrency(1)

    async def go() -> None:
        await gate.acquire()
        waiter = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.release(success=True)
        await asyncio.wait_for(gate.acquire(), 1)  # the slot is free again

    asyncio.run(go())
    assert gate.active == 1


# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def test_a_learnt_bucket_without_a_usable_reset_keeps_the_per_minute_rate() -> None:
    clock = Clock()
    # no reset header, or a reset of 0 (the window is over): nothing to learn a slower rate from, no crash
    for reset in (None, 0.0):
        bucket = LearnedBucket(600, 100, reset, clock=clock)
        assert bucket.rate == pytest.approx(10.0) and bucket.level == 100
    # a limit of 1 per minute is 1 per minute (0 and negative limits count as 1)
    one = LearnedBucket(1, 1, None, clock=clock)
    assert one.rate == pytest.approx(1 / 60) and one.capacity == 1.0
    assert LearnedBucket(0, 0, None, clock=clock).capacity == 1.0


def test_a_learnt_bucket_takes_the_observed_rate_only_when_it_is_under_half() -> None:
    clock = Clock()
    assert LearnedBucket(600, 600, 30.0, clock=clock).rate == pytest.approx(10.0)  # nothing used: nothing learnt
    assert LearnedBucket(600, 300, 60.0, clock=clock).rate == pytest.approx(10.0)  # exactly half: per minute
    assert LearnedBucket(600, 301, 60.0, clock=clock).rate == pytest.approx(299 / 60)  # under half: observed
    assert LearnedBucket(600, 599, 0.5, clock=clock).rate == pytest.approx(2.0)  # a reset under a second too
