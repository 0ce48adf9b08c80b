"""Runs under injected faults: errors with Retry-After, --retry-failed, per-record timeout, order, --max-cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _scale_util import chat_requests, read_csv_ids, read_jsonl, write_pipeline

from oaipipe.cli import main
from oaipipe.pipeline import load_pipeline
from oaipipe.runner import RunOptions, run_pipeline, run_pipeline_file
from oaipipe.testing import running_server


def _ids(n: int) -> list[str]:
    return [str(i) for i in range(1, n + 1)]


def test_all_records_done_under_20_percent_injected_errors_and_retry_after_is_honoured(tmp_path: Path) -> None:
    import asyncio

    n = 40
    with running_server(error_rates={429: 0.1, 500: 0.05, 503: 0.05}, retry_after=0.05, seed=7) as srv:
        path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}', concurrency: 4, "
                                        f"max_retries: 10, retry_base: 0.01, retry_max_delay: 0.05}}", n=n)
        pipeline = load_pipeline(path)
        policy = pipeline.backend.policy
        waits: list[float] = []
        real_sleep = policy.asleep

        async def recording_sleep(seconds: float) -> None:
            waits.append(seconds)
            await real_sleep(seconds)

        policy.asleep = recording_sleep
        summary = asyncio.run(run_pipeline(pipeline, RunOptions()))
        injected = srv.stats()["injected"]
    assert summary["status"] == "finished"
    assert summary["records"]["done"] == n and summary["records"]["failed"] == 0
    assert injected.get("429", 0) >= 1 and injected.get("500", 0) + injected.get("503", 0) >= 1
    # every 429 made its call wait at least the server's Retry-After (0.05 s), and paused the others too
    assert summary["retries"]["by_status"]["429"] == injected["429"]
    assert sum(1 for w in waits if w >= 0.05) >= injected["429"]
    assert summary["rate_limit"]["cooldowns"] >= 1
    assert [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")] == _ids(n)


def test_retry_failed_reruns_only_the_failed_records(tmp_path: Path, capsys) -> None:
    n = 12
    with running_server(error_rates={500: 0.4}, seed=3) as srv:
        path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}', max_retries: 0, "
                                        f"concurrency: 3}}", n=n, extra="run: {max_failures: 100}\n")
        assert main(["run", str(path), "--json"]) == 1  # some records failed: exit code 1
        first = json.loads(capsys.readouterr().out)
        failed = first["records"]["failed"]
        assert 0 < failed < n
        errors = read_jsonl(Path(first["errors_file"]))
        assert len(errors) == failed and all("500" in e["error"] for e in errors)
        srv.clear_faults()
        srv.reset_stats()
        assert main(["run", str(path), "--retry-failed", "--json"]) == 0
        second = json.loads(capsys.readouterr().out)
        assert chat_requests(srv) == failed  # only the failed records were called again
        assert second["run_id"] == first["run_id"]
        assert second["records"]["done"] == failed and second["records"]["skipped"] == n - failed
    assert sorted(r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")) == sorted(_ids(n))
    assert sorted(read_csv_ids(tmp_path / "out/records.csv")) == sorted(_ids(n))
    assert sorted(d["record_id"] for d in read_jsonl(tmp_path / "out/dialogue.jsonl")) == sorted(_ids(n))


def test_record_timeout_fails_slow_records_only(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("id,text,sleep\n1,a,0\n2,b,0.5\n3,c,0\n4,d,0.5\n", encoding="utf-8")
    path = write_pipeline(
        tmp_path, "{type: priced, record_timeout: 0.2, timeout: 30, concurrency: 4}", plugin=True,
        steps="- {type: sleep, output: slept}\n- {type: ask, prompt: '{text}', output: reply}\n",
    )
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 2 and summary["records"]["failed"] == 2
    errors = read_jsonl(Path(summary["errors_file"]))
    assert sorted(e["id"] for e in errors) == ["2", "4"]
    assert all("record_timeout=0.2" in e["error"] and "step sleep:slept" in e["error"] for e in errors)


def test_sinks_and_journal_get_records_in_input_order_despite_jitter(tmp_path: Path) -> None:
    n = 40
    with running_server(latency=0.001, jitter=0.03, seed=5) as srv:
        path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}', concurrency: 8}}", n=n)
        summary = run_pipeline_file(path)
    assert summary["records"]["done"] == n
    journal = [e["id"] for e in read_jsonl(Path(summary["journal"]))]
    assert journal == _ids(n)
    assert [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")] == _ids(n)
    assert [d["record_id"] for d in read_jsonl(tmp_path / "out/dialogue.jsonl")] == _ids(n)
    assert read_csv_ids(tmp_path / "out/records.csv") == _ids(n)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_max_cost_stops_scheduling_and_the_rest_resumes(tmp_path: Path, capsys, concurrency: int) -> None:
    n = 20
    path = write_pipeline(tmp_path, f"{{type: priced, latency: 0.01, concurrency: {concurrency}}}", n=n,
                          plugin=True)
    # each call: 1000 in + 1000 out tokens of gpt-4o-mini = $0.00075; a $0.003 budget is reached at 4 calls
    assert main(["run", str(path), "--max-cost", "0.003", "--json"]) == 8  # stopped on purpose
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "budget-reached"
    done = summary["records"]["done"]
    assert 4 <= done <= 4 + concurrency - 1  # only records already in flight finish
    assert summary["cost_usd"] == pytest.approx(done * 0.00075)
    assert summary["by_step"][0]["model"] == "gpt-4o-mini" and summary["by_step"][0]["priced"] is True
    # the budget is per invocation: the same command goes on where it stopped
    summary = run_pipeline_file(path)
    assert summary["status"] == "finished"
    assert summary["records"]["done"] == n - done and summary["records"]["skipped"] == done
    assert [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")] == _ids(n)


def test_max_cost_from_the_pipeline_and_price_overrides(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "{type: priced, concurrency: 1}", n=10, plugin=True,
                          extra="run: {max_cost: 0.01}\nprices: {gpt-4o-mini: {input: 3.0, output: 2.0}}\n")
    summary = run_pipeline_file(path)
    # overridden price: 1000 * 3 / 1M + 1000 * 2 / 1M = $0.005 per call: two calls reach $0.01
    assert summary["status"] == "budget-reached"
    assert summary["records"]["done"] == 2
    assert summary["cost_usd"] == pytest.approx(0.01)


def test_journal_exchange_matches_the_exchange_dataclass() -> None:
    # the runner builds journal exchanges by hand (hot path): it must stay equal to Exchange.to_dict()
    from oaipipe.runner import _exchange_dict
    from oaipipe.types import Exchange, Record, RecordResult, Sentiment, Usage

    exchange = Exchange("1", "ask:reply", [{"role": "user", "content": "hi", "sentiment": None}], "m", "openai",
                        Usage(1, 2, 3), 0.5, "req_1", True)
    result = RecordResult(Record("1", {}), {}, sentiments={"hi": Sentiment("positive", 0.5, "vader")})
    expected = exchange.to_dict()
    expected["messages"][0]["sentiment"] = {"label": "positive", "score": 0.5, "analyzer": "vader"}
    assert _exchange_dict(exchange, result) == expected
    assert exchange.messages[0]["sentiment"] is None  # the record's own exchange is not modified
    priced = Exchange("1", "ask:reply", [], "local:gpt-6-luna", "openai", requested="gpt-6-luna", service_tier="flex")
    assert _exchange_dict(priced, result) == priced.to_dict()  # what its price depends on, both ways


SLOW_ANALYZER = '''
import threading, time
from oaipipe import hookimpl
from oaipipe.base import Analyzer
from oaipipe.types import Sentiment

STATE = {"active": 0, "max": 0}
LOCK = threading.Lock()


class SlowSync(Analyzer):
    def analyze(self, text):
        with LOCK:
            STATE["active"] += 1
            STATE["max"] = max(STATE["max"], STATE["active"])
        time.sleep(0.05)  # blocking on purpose
        with LOCK:
            STATE["active"] -= 1
        return Sentiment("neutral", STATE["max"] / 10, "slowsync")  # scores stay in [-1, 1]


@hookimpl
def register_analyzers(register):
    register("slowsync", SlowSync)
'''


def test_blocking_plugins_run_off_the_event_loop_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "slow_analyzer.py").write_text(SLOW_ANALYZER, encoding="utf-8")
    path = write_pipeline(tmp_path, "{type: local, concurrency: 4}", n=8,
                          steps="- {type: sentiment, analyzer: slowsync, input: '{text}', output: s}\n",
                          sinks="- {type: jsonl, path: out/records.jsonl}\n",
                          extra="plugins: [slow_analyzer.py]\n")
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 8
    # the analyzer saw several calls at once: a blocking plugin does not serialise the run
    scores = [r["s_score"] for r in read_jsonl(tmp_path / "out/records.jsonl")]
    assert max(scores) > 0.1


def test_retry_failed_leaves_each_record_once_in_a_sink_that_includes_failed_records(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("id,text,sleep\n1,a,0\n2,b,0.5\n3,c,0\n", encoding="utf-8")
    sinks = "- {type: jsonl, path: out/records.jsonl, include_failed: true}\n"
    steps = "- {type: sleep, output: slept}\n"
    path = write_pipeline(tmp_path, "{type: priced, record_timeout: 0.2}", plugin=True, steps=steps, sinks=sinks)
    first = run_pipeline_file(path)
    assert first["records"]["failed"] == 1
    path.write_text(path.read_text(encoding="utf-8").replace("record_timeout: 0.2", "record_timeout: 5"),
                    encoding="utf-8")
    second = run_pipeline_file(path, retry_failed=True)
    assert second["records"]["done"] == 1
    rows = read_jsonl(tmp_path / "out/records.jsonl")
    assert sorted(r["_id"] for r in rows) == ["1", "2", "3"]  # record 2's failed line gave way to its retry
    assert all("_error" not in r for r in rows)
