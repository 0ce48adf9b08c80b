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


def _state(tmp_path: Path) -> dict:
    files = list((tmp_path / "home" / "batches").glob("*.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text())


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
    state = _state(tmp_path)
    (entry,) = state["batches"].values()
    assert entry["requests"] == 8 and len(entry["custom_ids"]) == 8
    # responses are cached: a fresh run submits nothing
    again = run_pipeline_file(path, fresh=True)
    assert again["cached"] == 8 and _posts(server, "/v1/batches") == 1


def test_batches_are_split_at_max_requests(tmp_path: Path, server, home: Path) -> None:
    path = write_pipeline(tmp_path, _batch_backend(server.base_url, max_requests="3"), n=10)
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 10
    sizes = sorted(e["requests"] for e in _state(tmp_path)["batches"].values())
    assert sum(sizes) == 10 and max(sizes) <= 3 and len(sizes) >= 4
    assert _posts(server, "/v1/batches") == len(sizes)


def test_limits_cannot_exceed_the_api(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "{type: batch, base_url: 'http://127.0.0.1:9/v1', max_requests: 50001}", n=1)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert "max_requests" in str(info.value)


def test_a_rerun_follows_batches_already_submitted(tmp_path: Path, server, home: Path) -> None:
    path = write_pipeline(tmp_path, _batch_backend(server.base_url), n=3)
    requests = [ChatRequest(messages=[{"role": "user", "content": f"question {i}"}], model="gpt-4o-mini",
                            step="ask:reply") for i in range(3)]

    async def crash_after_submit() -> list[str]:
        backend = load_pipeline(path).backend
        assert isinstance(backend, BatchBackend)
        tasks = [asyncio.ensure_future(backend.chat(r)) for r in requests]
        while not backend.submitted:
            await asyncio.sleep(0.01)
        for t in tasks:  # the process "dies" before any answer arrives
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await backend.aclose()
        return backend.submitted

    async def rerun() -> list[ChatResponse]:
        backend = load_pipeline(path).backend
        try:
            return await asyncio.gather(*(backend.chat(r) for r in requests))
        finally:
            await backend.aclose()

    submitted = asyncio.run(crash_after_submit())
    assert len(submitted) == 1 and _posts(server, "/v1/batches") == 1
    answers = asyncio.run(rerun())
    assert _posts(server, "/v1/batches") == 1, "the rerun must not submit the batch again"
    assert all(a.text and a.backend == "batch" for a in answers)
    assert list(_state(tmp_path)["batches"]) == submitted


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
    assert all(not e["custom_ids"] for e in _state(tmp_path)["batches"].values())  # error lines forgotten
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
    (entry,) = _state(tmp_path)["batches"].values()
    line = json.loads(_input_file(server, entry["input_file_id"]))
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
