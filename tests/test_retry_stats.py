"""Retries are visible: the summary counts attempts, retries by status and time waited, the way the server
saw them; ``oaipipe run -v`` logs each retry through ``logging`` (logger ``oaipipe.retry``) without a key
(issue 9, item 13)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from _scale_util import model_calls, write_pipeline

from oaipipe.cli import main
from oaipipe.errors import BackendConnectionError, register_secret
from oaipipe.progress import retries_text, verbose_logging
from oaipipe.retry import RetryListener, RetryPolicy, connection_error, error_for_status
from oaipipe.testing import running_server

KEY = "sk-serve-test-9f8e7d6c5b4a39281706"
STEPS = "- {type: ask, prompt: 'Reply to: {text}', output: reply}\n"
SINKS = "- {type: jsonl, path: out/records.jsonl}\n"


def _pipeline(tmp_path: Path, base_url: str, n: int, transport: str = "openai") -> Path:
    backend = (f"{{type: {transport}, base_url: '{base_url}', api_key: '${{env:SERVE_KEY}}', concurrency: 4, "
               f"max_retries: 8, retry_base: 0.01, retry_max_delay: 0.05}}")
    return write_pipeline(tmp_path, backend, n=n, steps=STEPS, sinks=SINKS, extra="run: {cache: false}\n")


@pytest.mark.parametrize("transport", ["openai", "requests"])
def test_summary_counts_every_attempt_and_retry_the_server_saw(tmp_path: Path, capsys, monkeypatch,
                                                              transport: str) -> None:
    monkeypatch.setenv("SERVE_KEY", KEY)
    n = 30
    with running_server(error_rates={429: 0.15, 503: 0.1}, retry_after=0.01, seed=11, api_key=KEY) as srv:
        path = _pipeline(tmp_path, srv.base_url, n, transport)
        assert main(["run", str(path), "-v", "--json"]) == 0
        server = srv.stats()
    out = capsys.readouterr()
    summary = json.loads(out.out)
    injected = server["injected"]
    assert injected.get("429") and injected.get("503")  # the faults did happen
    assert summary["records"]["done"] == n and summary["calls"] == n
    # what the server saw is what the summary says
    assert summary["attempts"] == server["requests"] == model_calls(server)
    assert summary["retries"]["by_status"] == {"429": injected["429"], "503": injected["503"]}
    assert summary["retries"]["total"] == summary["attempts"] - summary["calls"]
    assert summary["retries"]["waited_s"] > 0 and summary["retries"]["gave_up"] == 0
    # summary.json holds the same counts
    on_disk = json.loads((Path(summary["run_dir"]) / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["attempts"] == summary["attempts"] and on_disk["retries"] == summary["retries"]
    # -v: one log line per retry, through logging (logger oaipipe.retry), never with the key
    retry_lines = [line for line in out.err.splitlines() if line.startswith("oaipipe.retry: retry ")]
    assert len(retry_lines) == summary["retries"]["total"]
    assert sum("HTTP 429" in line for line in retry_lines) == injected["429"]
    assert sum("HTTP 503" in line for line in retry_lines) == injected["503"]
    assert KEY not in out.err and KEY not in out.out


def test_the_printed_summary_shows_attempts_and_retries(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SERVE_KEY", KEY)
    with running_server(error_rates={503: 0.3}, seed=4, api_key=KEY) as srv:
        path = _pipeline(tmp_path, srv.base_url, 12)
        assert main(["run", str(path)]) == 0
        server = srv.stats()
    out = capsys.readouterr()
    first = out.out.splitlines()[0]
    assert f"12 calls (0 cached), {server['requests']} attempts," in first
    assert f"{server['injected']['503']} retries (503 ×{server['injected']['503']})" in out.out
    assert "oaipipe.retry" not in out.err  # without -v, retries are counted, not logged


def test_without_retries_attempts_equal_calls_and_no_retry_line(tmp_path: Path, capsys, server) -> None:
    path = write_pipeline(tmp_path, f"{{type: requests, base_url: '{server.base_url}'}}", n=5, steps=STEPS,
                          sinks=SINKS, extra="run: {cache: false}\n")
    assert main(["run", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attempts"] == summary["calls"] == 5 == server.stats()["requests"]
    assert summary["retries"] == {"total": 0, "by_status": {}, "waited_s": 0.0, "gave_up": 0}
    assert retries_text(summary) == ""


def test_a_backend_without_retry_policy_counts_one_attempt_per_call(tmp_path: Path, capsys) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=4, steps=STEPS, sinks=SINKS)
    assert main(["run", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attempts"] == summary["calls"] == 4 and summary["retries"]["total"] == 0


# --- the policy's counters, listeners and log lines (no server) ----------------------------------------


def _flaky(errors: list[BaseException]):
    def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    return attempt


def test_policy_counts_attempts_retries_by_cause_and_waits() -> None:
    slept: list[float] = []
    policy = RetryPolicy(max_retries=5, sleep=slept.append, rng=random.Random(3))
    errors = [error_for_status(429, "slow", retry_after=0.2), error_for_status(503, "busy"),
              connection_error("refused", url="http://x"), connection_error("slow", url="http://x", timeout=1.0)]
    assert policy.run(_flaky(errors)) == "ok"
    stats = policy.stats.to_dict()
    assert stats["attempts"] == 5
    assert stats["retries"]["by_status"] == {"429": 1, "503": 1, "connection": 1, "timeout": 1}
    assert stats["retries"]["waited_s"] == pytest.approx(sum(slept), abs=1e-3)
    policy.max_retries = 1
    with pytest.raises(BackendConnectionError):
        policy.run(_flaky([connection_error("refused", url="http://x") for _ in range(3)]))
    assert policy.stats.gave_up == 1 and policy.stats.attempts == 7


def test_listeners_hear_attempts_retries_headers_and_give_ups() -> None:
    heard: list[str] = []

    class Ear(RetryListener):
        def attempt_started(self) -> None:
            heard.append("start")

        def attempt_finished(self, error: BaseException | None) -> None:
            heard.append("fail" if error else "ok")

        def response_headers(self, headers) -> None:
            heard.append("headers:" + headers["x"])

        def retrying(self, event) -> None:
            heard.append(f"retry:{event.cause}:{event.attempt}")
            event.delay = 7.0  # a listener may make the call wait longer

        def gave_up(self, error, attempts: int) -> None:
            heard.append(f"gave_up:{attempts}")

    slept: list[float] = []
    policy = RetryPolicy(max_retries=1, sleep=slept.append, listeners=[Ear()])
    policy.observe({"x": "1"})
    assert policy.run(_flaky([error_for_status(500, "boom")])) == "ok"
    assert slept == [7.0]
    with pytest.raises(Exception, match="gave up after 2 attempts"):
        policy.run(_flaky([error_for_status(502, "x"), error_for_status(502, "x")]))
    assert heard == ["headers:1", "start", "fail", "retry:500:0", "start", "ok",
                     "start", "fail", "retry:502:0", "start", "fail", "gave_up:2"]


def test_each_retry_is_logged_on_oaipipe_retry_with_keys_masked(caplog) -> None:
    secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    register_secret(secret)
    policy = RetryPolicy(max_retries=3, sleep=lambda s: None)
    with caplog.at_level(logging.INFO, logger="oaipipe"):
        policy.run(_flaky([error_for_status(503, f"busy, key {secret}")]))
    records = [r for r in caplog.records if r.name == "oaipipe.retry"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "HTTP 503" in records[0].getMessage() and secret not in records[0].getMessage()


def test_verbose_logging_routes_oaipipe_loggers_and_restores_them(capsys) -> None:
    from oaipipe.progress import SilentReporter

    logger = logging.getLogger("oaipipe")
    before = (logger.level, list(logger.handlers))
    with verbose_logging(SilentReporter()):
        logging.getLogger("oaipipe.retry").info("retry 1/5 in 0.10s after Bearer sk-live-0123456789abcdef")
        logging.getLogger("other").info("not ours")
    err = capsys.readouterr().err
    assert err.startswith("oaipipe.retry: retry 1/5") and "sk-live-0123456789abcdef" not in err
    assert "not ours" not in err
    assert (logger.level, list(logger.handlers)) == before
