"""The response cache: content addressing, atomic writes under concurrency, hits at $0, --no-cache."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
from _scale_util import chat_requests, write_pipeline

from oaipipe.cache import ResponseCache, cache_wrapper
from oaipipe.cli import main
from oaipipe.errors import ServerError
from oaipipe.kit.http import OPENAI_BASE_URL
from oaipipe.runner import run_pipeline_file
from oaipipe.types import ChatRequest, ChatResponse, Usage


def _req(text: str = "hi", **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], model=kw.pop("model", "gpt-4o-mini"), **kw)


def _resp(text: str = "hello") -> ChatResponse:
    return ChatResponse(text=text, model="gpt-4o-mini", backend="openai", usage=Usage(3, 4, 7), latency=0.5)


def test_round_trip_marks_hits_cached(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    assert cache.get(_req()) is None
    cache.put(_req(), _resp())
    hit = cache.get(_req())
    assert hit is not None and hit.cached is True
    assert hit.text == "hello" and hit.usage.total_tokens == 7 and hit.latency == 0.0
    assert (tmp_path / "c" / "cache.sqlite3").is_file()  # one file, not one per entry
    assert not [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert cache.stats.to_dict() == {"hits": 1, "misses": 1, "merged": 0, "writes": 1, "errors": 0}
    assert len(cache) == 1


@pytest.mark.parametrize("other", [
    _req("hi", model="gpt-4o"), _req("hello"), _req("hi", temperature=0.5), _req("hi", step="ask:other"),
    _req("hi", max_tokens=5), _req("hi", response_format={"type": "json_object"}),
])
def test_key_covers_model_messages_params_and_step(tmp_path: Path, other: ChatRequest) -> None:
    cache = ResponseCache(tmp_path)
    cache.put(_req(), _resp())
    assert cache.get(other) is None


def test_corrupt_or_foreign_entry_is_a_miss(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    cache.put(_req(), _resp())
    db = sqlite3.connect(tmp_path / "cache.sqlite3")
    db.execute("UPDATE entries SET value = '{not json'")
    db.commit()
    assert cache.get(_req()) is None  # unreadable: a miss
    db.execute("UPDATE entries SET value = ?", (json.dumps({"format": 99, "response": {}}),))
    db.commit()
    assert cache.get(_req()) is None  # another version: a miss
    db.execute("UPDATE entries SET value = ?", (json.dumps({"format": 1, "response": {"nope": 1}}),))
    db.commit()
    db.close()
    assert cache.get(_req()) is None
    assert cache.stats.errors == 2 and cache.stats.misses == 3


def test_only_successful_calls_are_stored(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)

    async def failing(request: ChatRequest) -> ChatResponse:
        raise ServerError("boom")

    with pytest.raises(ServerError):
        asyncio.run(cache_wrapper(cache)(failing)(_req()))
    assert len(cache) == 0


def test_wrapper_calls_once_then_hits(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    calls = []

    async def backend(request: ChatRequest) -> ChatResponse:
        calls.append(request)
        return _resp()

    call = cache_wrapper(cache)(backend)
    first = asyncio.run(call(_req()))
    second = asyncio.run(call(_req()))
    assert len(calls) == 1
    assert first.cached is False and second.cached is True


def test_read_and_write_switches(tmp_path: Path) -> None:
    ResponseCache(tmp_path, write=False).put(_req(), _resp())
    assert len(ResponseCache(tmp_path)) == 0
    ResponseCache(tmp_path).put(_req(), _resp())
    assert ResponseCache(tmp_path, read=False).get(_req()) is None


def test_concurrent_thread_writers_never_tear_an_entry(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(40):
                cache.put(_req(f"q{i % 10}"), _resp(f"a{i % 10}"))
                hit = cache.get(_req(f"q{(i + n) % 10}"))
                assert hit is None or hit.text == f"a{(i + n) % 10}"
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cache) == 10
    for i in range(10):
        assert cache.get(_req(f"q{i}")).text == f"a{i}"


def _process_writer(root: str, n: int) -> None:
    cache = ResponseCache(root)
    for i in range(60):
        cache.put(_req(f"q{i % 15}"), _resp(f"a{i % 15}"))


def test_concurrent_process_writers(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_writer, args=(str(tmp_path), n)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    cache = ResponseCache(tmp_path)
    assert len(cache) == 15
    assert all(cache.get(_req(f"q{i}")).text == f"a{i}" for i in range(15))


def test_fresh_run_reuses_cache_with_zero_requests_and_no_cost(tmp_path: Path, server) -> None:
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}', concurrency: 4}}", n=5)
    first = run_pipeline_file(path)
    assert first["status"] == "finished" and first["cached"] == 0
    assert chat_requests(server) == 5
    assert (tmp_path / ".oaipipe" / "cache").is_dir()
    second = run_pipeline_file(path, fresh=True)
    assert second["run_id"] != first["run_id"]
    assert second["records"]["done"] == 5
    assert second["calls"] == 5 and second["cached"] == 5
    assert second["tokens"]["total"] == 0 and second["cost_usd"] == 0
    assert chat_requests(server) == 5, "a fresh run must reuse cached responses"
    assert second["cache"]["hits"] == 5


def test_cli_no_cache_calls_again(tmp_path: Path, server, capsys) -> None:
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}'}}", n=3)
    assert main(["run", str(path), "-q"]) == 0
    assert main(["run", str(path), "-q", "--fresh", "--no-cache"]) == 0
    assert chat_requests(server) == 6
    out = capsys.readouterr().out
    assert "(0 cached)" in out


def test_cache_off_in_pipeline_and_cache_dir_override(tmp_path: Path, server) -> None:
    url = server.base_url
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{url}'}}", n=2, extra="run: {cache: false}\n")
    run_pipeline_file(path)
    run_pipeline_file(path, fresh=True)
    assert chat_requests(server) == 4
    assert not (tmp_path / ".oaipipe").exists()
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{url}'}}", n=2, name="t2",
                          extra="run: {cache_dir: mycache}\n")
    summary = run_pipeline_file(path)
    assert summary["cache"]["dir"] == str(tmp_path / "mycache")
    assert len(ResponseCache(tmp_path / "mycache")) == 2


def test_local_backend_is_not_cached(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=2)
    summary = run_pipeline_file(path)
    assert "cache" not in summary
    assert not (tmp_path / ".oaipipe").exists()


def test_answers_of_one_server_never_serve_another(tmp_path: Path) -> None:
    serve = ResponseCache(tmp_path / "c", namespace="http://127.0.0.1:8080/v1")
    openai = ResponseCache(tmp_path / "c", namespace=OPENAI_BASE_URL)  # only a label: nothing is called
    serve.put(_req(), _resp("from the local server"))
    assert serve.get(_req()) is not None
    assert openai.get(_req()) is None


def test_identical_calls_in_flight_are_made_once(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    calls = []

    async def slow(request: ChatRequest) -> ChatResponse:
        calls.append(request)
        await asyncio.sleep(0.05)
        return _resp()

    async def main_() -> list[ChatResponse]:
        wrapped = cache_wrapper(cache)(slow)
        return await asyncio.gather(*(wrapped(_req()) for _ in range(5)), wrapped(_req("other")))

    answers = asyncio.run(main_())
    assert len(calls) == 2  # one per distinct request
    assert sum(1 for a in answers if a.cached) == 4
    assert (cache.stats.merged, cache.stats.hits, cache.stats.misses) == (4, 0, 2)  # lookups: the 2 calls made
    assert {a.text for a in answers} == {"hello"}


def test_switching_servers_does_not_reuse_answers(tmp_path: Path, server) -> None:
    from oaipipe.testing import running_server

    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}'}}", n=3)
    run_pipeline_file(path)
    with running_server() as other:
        second = run_pipeline_file(path, ["backend.base_url=" + other.base_url], fresh=True)
        assert second["cached"] == 0
        assert chat_requests(other) == 3


async def _leader_and_follower(cache: ResponseCache, release: asyncio.Event,
                               calls: list[ChatRequest]) -> tuple[asyncio.Task[ChatResponse], asyncio.Task[ChatResponse]]:
    """Two identical calls through the cache: the leader's call is in flight (blocked on ``release``), the
    follower waits for its answer. Waits on those conditions, not on time: under any load, neither has an
    answer when this returns."""

    async def held(request: ChatRequest) -> ChatResponse:
        calls.append(request)
        await release.wait()
        return _resp()

    wrapped = cache_wrapper(cache)(held)
    leader = asyncio.create_task(wrapped(_req()))
    while not calls:  # the leader's call has started
        await asyncio.sleep(0)
    follower = asyncio.create_task(wrapped(_req()))
    await asyncio.sleep(0)  # the follower runs up to its first await: waiting for the leader's answer
    assert len(calls) == 1 and not leader.done() and not follower.done()
    return leader, follower


def test_a_cancelled_call_does_not_cancel_the_identical_calls_waiting_for_it(tmp_path: Path) -> None:
    # the first record's call times out (record_timeout cancels it); a second record waiting for the same
    # answer must make the call itself, not be cancelled too (which would stop the whole run)
    cache = ResponseCache(tmp_path / "c")
    calls: list[ChatRequest] = []

    async def main_() -> ChatResponse:
        release = asyncio.Event()
        leader, follower = await _leader_and_follower(cache, release, calls)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        while len(calls) < 2:  # the follower makes the call itself
            await asyncio.sleep(0)
        release.set()
        return await follower

    answer = asyncio.run(main_())
    assert answer.text == "hello" and not answer.cached and len(calls) == 2


def test_a_waiting_call_that_is_cancelled_itself_is_cancelled(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    calls: list[ChatRequest] = []

    async def main_() -> ChatResponse:
        release = asyncio.Event()
        leader, follower = await _leader_and_follower(cache, release, calls)
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        assert not leader.done()  # the leader's call goes on
        release.set()
        return await leader

    assert asyncio.run(main_()).text == "hello"
    assert len(calls) == 1


def test_a_call_hashes_its_request_once(tmp_path: Path, monkeypatch) -> None:
    # the key covers every message (base64 images included): hashing it once per call, not three times
    cache = ResponseCache(tmp_path / "c")
    hashed = []
    real = ChatRequest.cache_key
    monkeypatch.setattr(ChatRequest, "cache_key", lambda self: hashed.append(1) or real(self))

    async def backend(request: ChatRequest) -> ChatResponse:
        return _resp()

    call = cache_wrapper(cache)(backend)
    asyncio.run(call(_req()))  # a miss, then stored
    assert len(hashed) == 1
    asyncio.run(call(_req()))  # a hit
    assert len(hashed) == 2


class _EchoServer:
    """A loopback chat server that echoes back the key it was sent (a careless proxy's debug answer)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                text = f"you sent {self.headers.get('Authorization')} for {body['messages'][-1]['content']}"
                data = json.dumps({
                    "id": "chatcmpl-echo", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("kind", ["openai", "requests"])
def test_a_secret_the_server_echoes_is_not_stored_in_the_cache(tmp_path: Path, monkeypatch, kind: str) -> None:
    secret = "sk-echoed-by-the-server-0123456789abcdef"
    monkeypatch.setenv("ECHO_KEY", secret)
    echo = _EchoServer()
    try:
        path = write_pipeline(tmp_path, f"{{type: {kind}, base_url: '{echo.base_url}', "
                                        "api: chat, api_key: '${env:ECHO_KEY}'}", n=2)
        first = run_pipeline_file(path)
        second = run_pipeline_file(path, fresh=True)  # answered from the cache
    finally:
        echo.close()
    assert first["status"] == second["status"] == "finished" and second["cached"] == 2
    stored = b"".join(p.read_bytes() for p in (tmp_path / ".oaipipe" / "cache").rglob("*") if p.is_file())
    assert b"you sent Bearer ***" in stored  # the answers are there, masked
    assert secret.encode() not in stored
    assert secret not in (tmp_path / "out" / "records.jsonl").read_text(encoding="utf-8")

# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def test_an_answer_from_the_cache_is_not_stored_again(tmp_path: Path) -> None:
    import dataclasses

    cache = ResponseCache(tmp_path)
    cache.put(_req("a"), dataclasses.replace(_resp("from the cache"), cached=True))
    assert len(cache) == 0 and cache.stats.to_dict().get("writes", 0) == 0
    cache.put(_req("a"), _resp("from the server"))
    assert len(cache) == 1 and cache.stats.to_dict()["writes"] == 1


def test_a_store_that_fails_to_write_is_dropped_with_one_warning(tmp_path: Path) -> None:
    notes: list[str] = []
    cache = ResponseCache(tmp_path, notify=notes.append)

    def full(key: str, value: dict) -> None:
        raise OSError(28, "No space left on device")

    cache.store.put = full  # type: ignore[method-assign]
    cache.put(_req("a"), _resp())  # the run goes on
    cache.put(_req("b"), _resp())
    assert cache.broken == "OSError: [Errno 28] No space left on device"
    assert notes == [f"warning: the response cache ({cache.store.where}) failed while it wrote: {cache.broken}; "
                     "this run goes on without it (its calls are made and not stored)"]
    stats = cache.stats.to_dict()
    assert stats["errors"] == 1 and stats.get("writes", 0) == 0
    assert cache.get(_req("a")) is None  # a broken cache is not read either


def test_a_store_that_fails_to_read_is_a_miss_and_is_dropped_with_one_warning(tmp_path: Path) -> None:
    notes: list[str] = []
    cache = ResponseCache(tmp_path, notify=notes.append)
    cache.put(_req("a"), _resp())
    reads: list[str] = []

    def gone(key: str) -> dict:
        reads.append(key)
        raise OSError(5, "Input/output error")

    cache.store.get = gone  # type: ignore[method-assign]
    assert cache.get(_req("a")) is None  # a miss: the call is made, the run goes on
    assert cache.get(_req("a")) is None and len(reads) == 1  # a broken store is not read again
    assert cache.broken == "OSError: [Errno 5] Input/output error"
    assert notes == [f"warning: the response cache ({cache.store.where}) failed while it read: {cache.broken}; "
                     "this run goes on without it (its calls are made and not stored)"]
    stats = cache.stats.to_dict()
    assert (stats["errors"], stats["misses"], stats["hits"]) == (1, 2, 0)
