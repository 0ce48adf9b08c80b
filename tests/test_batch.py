"""Backend ``batch``: the Batch API round trip against the embedded server (through the openai SDK)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from _scale_util import read_jsonl, write_pipeline

from oaipipe.builtin.backend_batch import BatchBackend
from oaipipe.errors import ConfigError
from oaipipe.pipeline import load_pipeline
from oaipipe.pricing import PriceTable
from oaipipe.runner import run_pipeline_file
from oaipipe.stats import RunStats
from oaipipe.types import ChatRequest, ChatResponse, Usage

FAST = "poll_interval: 0.02, flush_after: 0.05"


def _batch_backend(url: str, **extra: str) -> str:
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"{{type: batch, base_url: '{url}', concurrency: 64, {FAST}{more}}}"


def _posts(srv, path: str) -> int:
    return int(srv.stats()["by_path"].get(path, 0))


def _state_file(tmp_path: Path) -> Path:
    files = list((tmp_path / "home" / "batches").glob("*.json"))
    assert len(files) == 1
    return files[0]


def _state(tmp_path: Path, base_url: str) -> dict:
    """The saved batches of one server (the state file is keyed by server)."""
    servers = json.loads(_state_file(tmp_path).read_text())["servers"]
    return servers.get(base_url.rstrip("/"), {"batches": {}})


def _server_batches(srv) -> list[dict]:
    """Every batch the server holds (GET /v1/batches: call it after counting POSTs)."""
    import urllib.request

    with urllib.request.urlopen(f"{srv.base_url}/batches?limit=100") as resp:
        return json.loads(resp.read())["data"]


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"question {i}"}], model="gpt-4o-mini",
                        step="ask:reply") for i in range(n)]


async def _crash_after_submit(path: Path, requests: list[ChatRequest]) -> list[str]:
    """Submit the requests, then "die" (cancel every call) before any answer arrives."""
    backend = load_pipeline(path).backend
    assert isinstance(backend, BatchBackend)
    tasks = [asyncio.ensure_future(backend.chat(r)) for r in requests]
    while not backend.submitted:
        await asyncio.sleep(0.01)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await backend.aclose()
    return backend.submitted


async def _ask_all(path: Path, requests: list[ChatRequest]) -> list[ChatResponse]:
    backend = load_pipeline(path).backend
    try:
        return await asyncio.gather(*(backend.chat(r) for r in requests))
    finally:
        await backend.aclose()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OAIPIPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_round_trip_one_batch_for_the_whole_run(tmp_path: Path, server, home: Path) -> None:
    path = write_pipeline(tmp_path, _batch_backend(server.base_url), n=8)
    summary = run_pipeline_file(path)
    assert summary["status"] == "finished", summary.get("error")
    assert summary["backend"] == "batch" and summary["records"]["done"] == 8
    assert _posts(server, "/v1/batches") == 1 and _posts(server, "/v1/files") == 1
    assert _posts(server, "/v1/chat/completions") == 0
    dialogue = read_jsonl(tmp_path / "out/dialogue.jsonl")
    assert [d["record_id"] for d in dialogue] == [str(i) for i in range(1, 9)]
    assert all(d["backend"] == "batch" and d["messages"][-1]["content"] for d in dialogue)
    assert _state(tmp_path, server.base_url)["batches"] == {}, "a collected batch is forgotten at the run's end"
    # responses are cached: a fresh run submits nothing
    again = run_pipeline_file(path, fresh=True)
    assert again["cached"] == 8 and _posts(server, "/v1/batches") == 1
    (batch,) = _server_batches(server)
    assert batch["request_counts"]["total"] == 8


def test_batches_are_split_at_max_requests(tmp_path: Path, server, home: Path) -> None:
    path = write_pipeline(tmp_path, _batch_backend(server.base_url, max_requests="3"), n=10)
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 10
    posts = _posts(server, "/v1/batches")
    sizes = sorted(b["request_counts"]["total"] for b in _server_batches(server))
    assert sum(sizes) == 10 and max(sizes) <= 3 and len(sizes) >= 4
    assert posts == len(sizes)


def test_limits_cannot_exceed_the_api(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "{type: batch, base_url: 'http://127.0.0.1:9/v1', max_requests: 50001}", n=1)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert "max_requests" in str(info.value)


def test_a_rerun_follows_batches_already_submitted(tmp_path: Path, server, home: Path) -> None:
    path = write_pipeline(tmp_path, _batch_backend(server.base_url), n=3)
    requests = _requests(3)
    submitted = asyncio.run(_crash_after_submit(path, requests))
    assert len(submitted) == 1 and _posts(server, "/v1/batches") == 1
    assert list(_state(tmp_path, server.base_url)["batches"]) == submitted  # in flight: kept for the rerun
    answers = asyncio.run(_ask_all(path, requests))
    assert _posts(server, "/v1/batches") == 1, "the rerun must not submit the batch again"
    assert all(a.text and a.backend == "batch" for a in answers)
    assert _state(tmp_path, server.base_url)["batches"] == {}, "collected and handed over: forgotten"


def test_another_server_never_sees_the_first_ones_batches(tmp_path: Path, home: Path) -> None:
    from oaipipe.testing import running_server

    requests = _requests(3)
    with running_server() as first:
        path = write_pipeline(tmp_path, _batch_backend(first.base_url), n=3)
        (old,) = asyncio.run(_crash_after_submit(path, requests))
    with running_server() as second:  # a restarted server: another port, no batches
        path = write_pipeline(tmp_path, _batch_backend(second.base_url), n=3)
        answers = asyncio.run(_ask_all(path, requests))
        assert all(a.text for a in answers)
        assert _posts(second, "/v1/batches") == 1
        assert _posts(second, "/v1/batches/{batch_id}") >= 1 and old not in str(second.stats())
    assert list(_state(tmp_path, first.base_url)["batches"]) == [old]  # still the first server's, untouched
    assert _state(tmp_path, second.base_url)["batches"] == {}


def test_a_batch_the_server_does_not_know_is_forgotten_and_resubmitted(tmp_path: Path, server,
                                                                        home: Path) -> None:
    path = write_pipeline(tmp_path, _batch_backend(server.base_url), n=3)
    requests = _requests(3)
    (old,) = asyncio.run(_crash_after_submit(path, requests))
    state_file = _state_file(tmp_path)  # the server "restarted" on the same address and lost the batch
    state_file.write_text(state_file.read_text().replace(old, "batch_lost"))
    answers = asyncio.run(_ask_all(path, requests))
    assert all(a.text and a.backend == "batch" for a in answers)
    assert _posts(server, "/v1/batches") == 2  # submitted anew
    assert _state(tmp_path, server.base_url)["batches"] == {}


def test_a_finished_run_leaves_nothing_to_resume(tmp_path: Path, server, home: Path) -> None:
    path = write_pipeline(tmp_path, _batch_backend(server.base_url), n=3)
    assert run_pipeline_file(path)["records"]["done"] == 3
    again = run_pipeline_file(path, fresh=True, use_cache=False)
    assert again["status"] == "finished" and again["records"]["done"] == 3 and again["cached"] == 0
    assert _posts(server, "/v1/batches") == 2, "--no-cache submits anew instead of re-reading the old batch"


def test_results_nobody_asked_for_stay_for_a_later_run(tmp_path: Path, server, home: Path) -> None:
    path = write_pipeline(tmp_path, _batch_backend(server.base_url), n=3)
    requests = _requests(3)
    (old,) = asyncio.run(_crash_after_submit(path, requests))
    asyncio.run(_ask_all(path, requests[:1]))  # the batch completes; only one of its answers is collected
    (entry,) = _state(tmp_path, server.base_url)["batches"].values()
    assert entry["custom_ids"] == [r.cache_key() for r in requests[1:]]
    asyncio.run(_ask_all(path, requests[1:]))
    assert _posts(server, "/v1/batches") == 1 and _state(tmp_path, server.base_url)["batches"] == {}


def test_error_lines_fail_their_records_with_the_reason(tmp_path: Path, server, home: Path) -> None:
    steps = ('- {type: ask, prompt: "{text}", output: reply}\n'
             '- {type: ask, prompt: "{reply}", output: again, model: "ft:gpt-4o-mini:org::missing"}\n')
    path = write_pipeline(tmp_path, _batch_backend(server.base_url), steps=steps, n=3,
                          extra="run: {max_failures: 10}\n")
    summary = run_pipeline_file(path)
    assert summary["records"]["failed"] == 3  # the second step asks for a model that does not exist
    errors = read_jsonl(Path(summary["errors_file"]))
    assert all("HTTP 404" in e["error"] and "step ask:again" in e["error"] for e in errors), errors
    assert summary["by_step"][0]["calls"] == 3  # the first step's lines were answered


def test_batch_calls_are_priced_at_half() -> None:
    stats = RunStats(prices=PriceTable())
    reply = ChatResponse(text="x", model="gpt-4o-mini", backend="batch", usage=Usage(1_000_000, 0, 1_000_000))
    assert stats.add_call("s", reply, batch=True) == pytest.approx(0.075)
    assert stats.add_call("s", reply) == pytest.approx(0.15)


def test_retry_failed_resubmits_error_lines(tmp_path: Path, server, home: Path) -> None:
    steps = '- {type: ask, prompt: "{text}", output: reply, model: "ft:gpt-4o-mini:org::later"}\n'
    path = write_pipeline(tmp_path, _batch_backend(server.base_url), steps=steps, n=2,
                          extra="run: {max_failures: 10}\n")
    assert run_pipeline_file(path)["records"]["failed"] == 2
    assert _state(tmp_path, server.base_url)["batches"] == {}  # error lines forgotten
    again = run_pipeline_file(path, retry_failed=True)
    assert again["records"]["failed"] == 2  # the model still does not exist: submitted and answered again
    assert _posts(server, "/v1/batches") == 2


def test_batch_lines_name_the_length_limit_like_the_chat_backends(tmp_path: Path, server, home: Path) -> None:
    # OpenAI's o-series and gpt-5 refuse max_tokens: a batch line must use the backend's max_tokens_param
    path = write_pipeline(tmp_path, _batch_backend(server.base_url, max_tokens_param="max_completion_tokens"), n=1)
    request = ChatRequest(messages=[{"role": "user", "content": "hello"}], model="gpt-4o-mini", max_tokens=7,
                          step="ask:reply")

    async def ask() -> None:
        backend = load_pipeline(path).backend
        try:
            await backend.chat(request)
        finally:
            await backend.aclose()

    asyncio.run(ask())
    (batch,) = _server_batches(server)
    line = json.loads(_input_file(server, batch["input_file_id"]))
    assert line["body"].get("max_completion_tokens") == 7 and "max_tokens" not in line["body"]


def _input_file(server, file_id: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{server.base_url}/files/{file_id}/content") as resp:
        return resp.read().decode().splitlines()[0]


def test_a_page_that_is_not_the_api_fails_the_waiting_calls_clearly(tmp_path: Path, home: Path,
                                                                     html_site: Any) -> None:
    from oaipipe.errors import BackendError

    url, _ = html_site
    path = write_pipeline(tmp_path, _batch_backend(url), n=1)

    async def ask() -> None:
        backend = load_pipeline(path).backend
        try:
            await backend.chat(ChatRequest(messages=[{"role": "user", "content": "hi"}], model="gpt-4o-mini"))
        finally:
            await backend.aclose()

    with pytest.raises(BackendError, match="not JSON") as err:
        asyncio.run(ask())
    assert "/v1" in str(err.value)
