"""Backends ``openai`` (lean aiohttp transport by default, ``openai-sdk`` = ``transport: sdk``) and ``requests``
(raw HTTP) against the embedded server over real loopback HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oaipipe.base import Backend, Context
from oaipipe.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BadRequestError,
    RateLimitError,
    ServerError,
)
from oaipipe.images import load_image
from oaipipe.plugins import PluginHost
from oaipipe.testing import running_server
from oaipipe.types import ChatRequest, ChatResponse

TRANSPORTS = ["openai", "openai-sdk", "requests"]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "review",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"summary": {"type": "string"}, "stars": {"type": "integer"}},
            "required": ["summary", "stars"],
            "additionalProperties": False,
        },
    },
}


def make(host: PluginHost, kind: str, **options: Any) -> Backend:
    if kind == "openai-sdk":  # the openai backend through the official SDK instead of the lean transport
        kind = "openai"
        options.setdefault("transport", "sdk")
    backend = host.build("backend", {"type": kind, **options}, Context(host=host))
    assert isinstance(backend, Backend)
    return backend


def call(backend: Backend, request: ChatRequest) -> ChatResponse:
    async def go() -> ChatResponse:
        try:
            return await backend.chat(request)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def many(backend: Backend, requests: list[ChatRequest]) -> list[ChatResponse]:
    async def go() -> list[ChatResponse]:
        try:
            return list(await asyncio.gather(*(backend.chat(r) for r in requests)))
        finally:
            await backend.aclose()

    return asyncio.run(go())


def req(text: str = "Hello, my order arrived broken.", **kw: Any) -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "system", "content": "You are a support agent."}, {"role": "user", "content": text}],
        model="gpt-4o-mini",
        **kw,
    )


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_chat_round_trip_matches_local_engine(host: PluginHost, server: Any, kind: str) -> None:
    remote = call(make(host, kind, base_url=server.base_url), req())
    local = call(make(host, "local"), req())
    assert remote.text == local.text
    assert remote.text
    assert remote.backend == kind.removesuffix("-sdk")
    assert remote.usage.prompt_tokens > 0 and remote.usage.completion_tokens > 0
    assert remote.usage.total_tokens == remote.usage.prompt_tokens + remote.usage.completion_tokens
    assert remote.request_id and remote.request_id.startswith("req_")
    assert remote.finish_reason == "stop"
    assert server.stats()["by_status"].get("200") == 1


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_responses_api(host: PluginHost, server: Any, kind: str) -> None:
    resp = call(make(host, kind, base_url=server.base_url, api="responses"), req())
    local = call(make(host, "local"), req())
    assert resp.text == local.text
    assert resp.usage.total_tokens > 0
    assert resp.request_id
    paths = server.stats()["by_path"]
    assert any("responses" in p for p in paths), paths


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_image_parts(host: PluginHost, server: Any, tmp_path: Path, kind: str, api: str) -> None:
    path = tmp_path / "mug.png"
    Image.new("RGB", (64, 48), (210, 20, 30)).save(path)
    image = load_image(str(path), detail="low")
    request = ChatRequest(
        messages=[{"role": "user", "content": [{"type": "text", "text": "What's in this image?"}, image.part()]}],
        model="gpt-4o-mini",
    )
    remote = call(make(host, kind, base_url=server.base_url, api=api), request)
    local = call(make(host, "local"), request)
    assert remote.text == local.text
    assert "red" in remote.text.lower()
    assert "64" in remote.text and "48" in remote.text


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_json_schema_is_parsed(host: PluginHost, server: Any, kind: str, api: str) -> None:
    resp = call(make(host, kind, base_url=server.base_url, api=api), req(response_format=SCHEMA))
    assert isinstance(resp.parsed, dict)
    assert set(resp.parsed) == {"summary", "stars"}
    assert isinstance(resp.parsed["stars"], int)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_injected_errors_are_retried_until_every_call_completes(host: PluginHost, kind: str) -> None:
    with running_server(error_rates={429: 0.1, 500: 0.05, 503: 0.05}, retry_after=0.01, seed=7) as srv:
        backend = make(host, kind, base_url=srv.base_url, max_retries=12, retry_base=0.01, retry_max_delay=0.05,
                       concurrency=8)
        requests = [req(f"message number {i}") for i in range(40)]
        responses = many(backend, requests)
        stats = srv.stats()
    assert len(responses) == 40 and all(r.text for r in responses)
    assert sum(stats["injected"].values()) > 0, stats
    assert stats["injected"].get("429", 0) > 0, stats
    # every injected error cost exactly one extra request, nothing more
    assert stats["requests"] == 40 + sum(stats["injected"].values())


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_refused_key_fails_after_exactly_one_request(host: PluginHost, kind: str) -> None:
    wrong = "sk-wrong-key-0123456789abcdef"
    with running_server(api_key="sk-right-key-0123456789") as srv:
        backend = make(host, kind, base_url=srv.base_url, api_key=wrong, max_retries=5)
        with pytest.raises(AuthenticationError) as info:
            call(backend, req())
        assert srv.stats()["requests"] == 1
        # the backend remembers the refusal: further calls fail at once, without resending the key
        with pytest.raises(AuthenticationError) as again:
            many(backend, [req(f"call {i}") for i in range(5)])
        stats = srv.stats()
    assert stats["requests"] == 1, stats
    assert "refused" in str(again.value)
    message = str(info.value)
    assert wrong not in message
    assert "refused" in message and "401" in message
    assert "OPENAI_API_KEY" in message
    assert info.value.status == 401
    assert info.value.request_id


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_right_key_from_yaml_is_sent(host: PluginHost, kind: str) -> None:
    with running_server(api_key="sk-right-key-0123456789") as srv:
        resp = call(make(host, kind, base_url=srv.base_url, api_key="sk-right-key-0123456789"), req())
    assert resp.text


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_custom_base_url_never_gets_the_openai_key(host: PluginHost, kind: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-env-key-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with running_server(api_key=key) as srv, pytest.raises(AuthenticationError) as info:
        call(make(host, kind, base_url=srv.base_url), req())
    assert key not in str(info.value)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_unknown_model_is_a_bad_request_without_retries(host: PluginHost, server: Any, kind: str) -> None:
    backend = make(host, kind, base_url=server.base_url, max_retries=5)
    with pytest.raises(BadRequestError) as info:
        call(backend, ChatRequest(messages=[{"role": "user", "content": "hi"}], model="ft:gpt-4o-mini:acme::nosuchjob"))
    assert info.value.status == 404
    assert "ft:gpt-4o-mini:acme::nosuchjob" in str(info.value)
    assert "oaipipe models" in str(info.value)
    assert server.stats()["requests"] == 1


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_dropped_connections_are_retried(host: PluginHost, kind: str) -> None:
    with running_server(drop_rate=0.3, seed=3) as srv:
        backend = make(host, kind, base_url=srv.base_url, max_retries=10, retry_base=0.01, retry_max_delay=0.02)
        responses = many(backend, [req(f"drop test {i}") for i in range(10)])
        stats = srv.stats()
    assert all(r.text for r in responses)
    assert stats["injected"].get("drop", 0) > 0, stats


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_timeout_becomes_connection_error_after_retries(host: PluginHost, kind: str) -> None:
    with running_server(timeout_rate=1.0, timeout_seconds=3) as srv:
        backend = make(host, kind, base_url=srv.base_url, timeout=0.3, max_retries=1, retry_base=0.01)
        with pytest.raises(BackendConnectionError) as info:
            call(backend, req())
        stats = srv.stats()
    assert stats["injected"].get("timeout") == 2, stats
    assert "2 attempts" in str(info.value)
    assert "timeout" in str(info.value).lower()


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_persistent_503_gives_up_with_server_error(host: PluginHost, kind: str) -> None:
    with running_server(error_rates={503: 1.0}) as srv:
        backend = make(host, kind, base_url=srv.base_url, max_retries=2, retry_base=0.0)
        with pytest.raises(ServerError) as info:
            call(backend, req())
        assert srv.stats()["requests"] == 3
    assert info.value.status == 503
    assert "3 attempts" in str(info.value)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_persistent_429_gives_up_with_rate_limit_error(host: PluginHost, kind: str) -> None:
    with running_server(error_rates={429: 1.0}, retry_after=0.01) as srv:
        # a rate-limited call keeps trying past max_retries for rate_limit_patience seconds, then gives up
        backend = make(host, kind, base_url=srv.base_url, max_retries=1, rate_limit_patience=0.2)
        with pytest.raises(RateLimitError) as info:
            call(backend, req())
    assert info.value.status == 429
    assert info.value.retry_after == pytest.approx(0.01)
    assert "concurrency" in str(info.value)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_no_key_for_api_openai_com_fails_before_any_request(host: PluginHost, kind: str) -> None:
    backend = make(host, kind)  # base_url None = OpenAI's own API; conftest removed OPENAI_API_KEY
    with pytest.raises(AuthenticationError) as info:
        call(backend, req())
    assert "OPENAI_API_KEY" in str(info.value)
    assert info.value.status is None


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_unreachable_server_is_a_connection_error(host: PluginHost, kind: str) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    backend = make(host, kind, base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, retry_base=0.0)
    with pytest.raises(BackendConnectionError) as info:
        call(backend, req())
    assert f"127.0.0.1:{port}" in str(info.value)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_list_models(host: PluginHost, server: Any, kind: str) -> None:
    backend = make(host, kind, base_url=server.base_url)
    models = asyncio.run(backend.list_models())
    asyncio.run(backend.aclose())
    ids = [m.id for m in models]
    assert "gpt-4o-mini" in ids


def test_requests_backend_runs_as_many_threads_as_concurrency(host: PluginHost, server: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio's default pool (cpu + 4 threads) would cap concurrency: the backend brings its own."""
    import threading

    from oaipipe.builtin.backend_requests import RequestsBackend

    barrier = threading.Barrier(16, timeout=10)  # breaks unless 16 calls run at the same time
    original = RequestsBackend.chat_sync

    def gated(self: RequestsBackend, request: ChatRequest) -> ChatResponse:
        barrier.wait()
        return original(self, request)

    monkeypatch.setattr(RequestsBackend, "chat_sync", gated)
    backend = make(host, "requests", base_url=server.base_url, concurrency=16)
    responses = many(backend, [req(f"parallel {i}") for i in range(16)])
    assert len(responses) == 16 and not barrier.broken


def test_options_reject_unknown_api(host: PluginHost) -> None:
    from oaipipe.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        make(host, "openai", api="assistants")
    assert "api" in str(info.value)


# --- key resolution -------------------------------------------------------------------------------


def test_resolve_api_key_rules(host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> None:
    from oaipipe.errors import redact
    from oaipipe.keys import resolve_api_key
    from oaipipe.kit.http import OPENAI_BASE_URL

    def opts(**block: Any) -> Any:
        return make(host, "requests", **block).options

    assert resolve_api_key(opts()) is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-0123456789")
    assert resolve_api_key(opts()) == "sk-from-env-0123456789"
    assert resolve_api_key(opts(base_url=OPENAI_BASE_URL)) == "sk-from-env-0123456789"  # never called
    assert resolve_api_key(opts(base_url="http://127.0.0.1:9/v1")) is None  # never leaks to another server
    assert resolve_api_key(opts(base_url="http://127.0.0.1:9/v1", api_key="vllm-token-abc")) == "vllm-token-abc"
    assert resolve_api_key(opts(api_key="yaml-key-xyz-123")) == "yaml-key-xyz-123"  # the YAML wins
    assert resolve_api_key(opts(api_key="   ")) == "sk-from-env-0123456789"
    assert redact("token vllm-token-abc leaked") == "token *** leaked"  # registered for redaction


def test_requests_sends_no_authorization_to_a_keyless_server(host: PluginHost, server: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-0123456789")
    backend = make(host, "requests", base_url=server.base_url)
    assert "Authorization" not in backend.session.headers
    keyed = make(host, "requests", base_url=server.base_url, api_key="server-key-123456")
    assert keyed.session.headers["Authorization"] == "Bearer server-key-123456"
    sdk = make(host, "openai", base_url=server.base_url)
    assert sdk.client.api_key == "sk-no-key"
    lean = make(host, "openai", base_url=server.base_url)  # the lean transport: the same rule
    assert "Authorization" not in lean._lean_headers()
    lean_keyed = make(host, "openai", base_url=server.base_url, api_key="server-key-123456")
    assert lean_keyed._lean_headers()["Authorization"] == "Bearer server-key-123456"
    for b in (backend, keyed, sdk, lean, lean_keyed):
        asyncio.run(b.aclose())


def test_openai_pipelines_take_the_lean_transport_unless_told_sdk(host: PluginHost, server: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``transport: auto`` (the default) sends chat, Responses and model listings without the SDK;
    ``transport: sdk`` goes through it."""
    import oaipipe.kit.openai as kit_openai  # where the SDK's clients are made

    def no_sdk(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the openai SDK was used")

    monkeypatch.setattr(kit_openai, "sdk_client", no_sdk)
    default = make(host, "openai", base_url=server.base_url)
    assert default.options.transport == "auto"
    replies = many(default, [req(f"lean {i}") for i in range(4)])
    assert [r.text for r in replies] == [call(make(host, "local"), req(f"lean {i}")).text for i in range(4)]
    assert call(make(host, "openai", base_url=server.base_url, api="responses"), req()).text
    lean = make(host, "openai", base_url=server.base_url, transport="aiohttp")
    assert "gpt-4o-mini" in [m.id for m in asyncio.run(lean.list_models())]
    asyncio.run(lean.aclose())
    assert server.stats()["by_path"] == {"/v1/chat/completions": 4, "/v1/responses": 1, "/v1/models": 1}
    with pytest.raises(AssertionError, match="SDK was used"):
        call(make(host, "openai", base_url=server.base_url, transport="sdk"), req())


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_length_limit_reaches_the_server(host: PluginHost, server: Any, kind: str, param: str) -> None:
    backend = make(host, kind, base_url=server.base_url, max_tokens_param=param)
    resp = call(backend, req(max_tokens=3))
    assert resp.usage.completion_tokens <= 3
    assert resp.finish_reason == "length"


def test_length_limit_parameter_defaults(host: PluginHost) -> None:
    from oaipipe.openai_wire import chat_body

    assert make(host, "requests").max_tokens_param == "max_completion_tokens"  # OpenAI's own API
    assert make(host, "openai", base_url="http://127.0.0.1:9/v1").max_tokens_param == "max_tokens"
    body = chat_body(req(max_tokens=7), max_tokens_param="max_completion_tokens")
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_page_that_is_not_the_api_fails_at_once(host: PluginHost, html_site: Any, kind: str) -> None:
    url, hits = html_site
    backend = make(host, kind, base_url=url, max_retries=3, retry_base=0.01)
    with pytest.raises(BackendError) as err:
        call(backend, ChatRequest(messages=[{"role": "user", "content": "hi"}], model="gpt-4o-mini"))
    assert "base_url" in str(err.value)
    assert len(hits) == 1, "an HTML page will not turn into the API on a retry"


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_listing_models_from_a_page_that_is_not_the_api(host: PluginHost, html_site: Any, kind: str) -> None:
    url, hits = html_site
    backend = make(host, kind, base_url=url, max_retries=3, retry_base=0.01)
    with pytest.raises(BackendError, match="not JSON") as err:
        backend.list_models_sync()  # type: ignore[attr-defined]
    assert "base_url" in str(err.value) and len(hits) == 1
