"""Where keys go (oaipipe.keys): OPENAI_API_KEY only to OpenAI's own API URL, proven over real HTTP.

Every transport (openai SDK, requests, batch) and the CLI (`ask`, `models --base-url`) is pointed at a
recording server in front of `oaipipe serve`, through URLs that merely *mention* OpenAI's host. Names
that need DNS (a look-alike of OpenAI's host, OpenAI's host itself over http) resolve to loopback here.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from oaipipe.base import Backend, Context
from oaipipe.cli import main
from oaipipe.errors import BackendConnectionError, BackendError
from oaipipe.jobs import JobRegistry
from oaipipe.keys import OPENAI_HOST, is_openai_url, resolve_api_key
from oaipipe.plugins import PluginHost
from oaipipe.testing import running_server
from oaipipe.types import ChatRequest

#: OpenAI's API host, named through the library's constant (no test spells out the public API's host)
H = OPENAI_HOST

ENV_KEY = "sk-env-openai-key-must-stay-home-0123456789"
LOOPBACK_NAMES = {f"{H}.evil.test", f"{H}"}


# --- the rule, as a table ------------------------------------------------------------------------

OPENAI_URLS = [
    None,
    "",
    f"https://{H}/v1",
    f"https://{H}/v1/",
    f"https://{H}:443/v1",
    f"https://{H}",
    "HTTPS://API.OPENAI.COM/v1",  # host names are not case-sensitive: the same host
]
OTHER_URLS = [
    f"http://{H}/v1",  # http: the key would travel in clear
    f"http://127.0.0.1:9/{H}/v1",  # the name in the path
    f"http://127.0.0.1:9/v1?h={H}",  # in the query
    f"http://127.0.0.1:9/v1#{H}",  # in the fragment
    f"http://{H}.evil.test/v1",  # a look-alike host
    f"https://{H}.evil.test/v1",
    f"https://evil{H}/v1",
    f"https://{H}.",  # trailing dot
    f"https://{H}./v1",
    f"http://{H}@127.0.0.1:9/v1",  # user info: the host is 127.0.0.1
    f"https://{H}@evil.test/v1",
    f"https://user:pw@{H}/v1",  # user info at all
    f"https://{H}:8443/v1",  # another port
    f"https://{H}:0443/v1",
    f"https://{H}:notaport/v1",
    f"https://evil.test\\@{H}/v1",  # urllib says the OpenAI host, browsers and httpx say evil.test
    f"https://evil.test\\.{H}/v1",
    f"https://{H}\t.evil.test/v1",
    f"https://{H} /v1",
    f" https://{H}/v1",
    f"//{H}/v1",
    f"{H}/v1",
    f"wss://{H}/v1",
]


@pytest.mark.parametrize("url", OPENAI_URLS)
def test_openai_itself_is_recognised(url: str | None) -> None:
    assert is_openai_url(url)


@pytest.mark.parametrize("url", OTHER_URLS)
def test_anything_else_is_not_openai(url: str) -> None:
    assert not is_openai_url(url)


class _Opts:
    def __init__(self, base_url: str | None, api_key: str | None = None) -> None:
        self.base_url = base_url
        self.api_key = api_key


def test_openai_gets_the_env_key_and_nothing_else_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    for url in OPENAI_URLS:
        assert resolve_api_key(_Opts(url)) == ENV_KEY, url
    for url in OTHER_URLS:
        assert resolve_api_key(_Opts(url)) is None, url
        assert resolve_api_key(_Opts(url, "named-for-this-server")) == "named-for-this-server", url


def make(host: PluginHost, kind: str, **options: Any) -> Backend:
    backend = host.build("backend", {"type": kind, **options}, Context(host=host))
    assert isinstance(backend, Backend)
    return backend


@pytest.mark.parametrize("kind", ["openai", "batch"])
def test_sdk_clients_follow_the_sdk_environment_under_the_key_rule(
        host: PluginHost, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/elsewhere/v1")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-from-env")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-from-env")
    # OPENAI_BASE_URL / OPENAI_ORG_ID / OPENAI_PROJECT_ID are honoured like the SDK does (issue 11 item 6),
    # but the key rule holds: that URL is not OpenAI, so OPENAI_API_KEY is not sent there
    backend = make(host, kind)
    client = backend.client  # type: ignore[attr-defined]
    assert str(client.base_url).rstrip("/") == "http://127.0.0.1:9/elsewhere/v1"
    assert client.api_key != ENV_KEY
    assert client.organization == "org-from-env" and client.project == "proj-from-env"
    asyncio.run(backend.aclose())
    # OPENAI_BASE_URL naming OpenAI itself: the env key goes there
    monkeypatch.setenv("OPENAI_BASE_URL", f"https://{H}/v1")
    backend = make(host, kind)
    client = backend.client  # type: ignore[attr-defined]
    assert client.api_key == ENV_KEY
    assert str(client.base_url).rstrip("/") == f"https://{H}/v1"
    # another server: not the env key (a placeholder the SDK insists on), that server's URL
    other = make(host, kind, base_url=f"http://127.0.0.1:9/{H}/v1")
    assert other.client.api_key != ENV_KEY  # type: ignore[attr-defined]
    assert str(other.client.base_url).rstrip("/") == f"http://127.0.0.1:9/{H}/v1"  # type: ignore[attr-defined]
    for b in (backend, other):
        asyncio.run(b.aclose())


def test_the_trainer_never_follows_openai_base_url(host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> None:
    from oaipipe.base import Trainer

    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/elsewhere/v1")
    trainer = host.build("trainer", {"type": "openai"}, Context(host=host))
    assert isinstance(trainer, Trainer)
    client = trainer.client()  # type: ignore[attr-defined]
    assert str(client.base_url).rstrip("/") == f"https://{H}/v1" and client.api_key == ENV_KEY
    other = host.build("trainer", {"type": "openai", "base_url": f"http://{H}.evil.test/v1"},
                       Context(host=host))
    assert other.client().api_key != ENV_KEY  # type: ignore[attr-defined]


# --- over real HTTP --------------------------------------------------------------------------------


class Recorder:
    """A recording HTTP server that forwards everything from ``/v1`` on to ``oaipipe serve``."""

    def __init__(self, upstream_port: int, missing: tuple[str, ...] = ()) -> None:
        self.headers: list[tuple[str, str, str]] = []  # (method, path, raw header block)
        #: path prefixes answered 404 the way vLLM does (an API this server does not offer)
        self.missing = missing
        self.upstream_port = upstream_port
        #: set: a request under /hop is answered 307 to this origin ("" for this server) + the rest of its path
        self.redirect_to: str | None = None
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.headers.append((self.command, self.path, str(self.headers)))
                if recorder.redirect_to is not None and self.path.startswith("/hop/"):
                    self.send_response(307)
                    self.send_header("Location", recorder.redirect_to + self.path.removeprefix("/hop"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = self.path.split("?", 1)[0].split("#", 1)[0]
                at = path.find("/v1/") if "/v1/" in path else path.find("/v1")
                if any(path[max(at, 0):].startswith(prefix) for prefix in recorder.missing):
                    data = b'{"detail":"Not Found"}'
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
                try:
                    conn.request(self.command, path[at:] if at >= 0 else path, body=body or None,
                                 headers={"Content-Type": self.headers.get("Content-Type") or "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                    status, ctype = resp.status, resp.getheader("Content-Type") or "application/json"
                finally:
                    conn.close()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def assert_no_env_key(self) -> None:
        assert self.headers, "no request reached the server: the test proves nothing"
        for method, path, raw in self.headers:
            assert ENV_KEY not in raw, (method, path, raw)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """oaipipe serve behind a recorder; OPENAI_API_KEY set; look-alike names resolve to loopback."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        return real("127.0.0.1" if name in LOOPBACK_NAMES else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with running_server() as srv:
        rec = Recorder(srv.port)
        try:
            yield rec
        finally:
            rec.close()


HOSTILE = {
    "path": f"http://127.0.0.1:{{port}}/{H}/v1",
    "query": f"http://127.0.0.1:{{port}}/v1?h={H}",
    "lookalike-host": f"http://{H}.evil.test:{{port}}/v1",
    "userinfo": f"http://{H}@127.0.0.1:{{port}}/v1",
    "http-scheme": f"http://{H}:{{port}}/v1",
}


def _ask(backend: Backend, *, may_fail: bool = False) -> Any:
    async def go() -> Any:
        try:
            reply = await backend.chat(ChatRequest(messages=[{"role": "user", "content": "hello"}],
                                                   model="gpt-4o-mini"))
            models = await backend.list_models()
            return reply, models
        except BackendError:
            if not may_fail:
                raise
            return None
        finally:
            await backend.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("form", list(HOSTILE))
@pytest.mark.parametrize("kind", ["openai", "requests"])
def test_transports_send_no_env_key_to_urls_that_only_mention_openai(
        host: PluginHost, recorder: Recorder, kind: str, form: str) -> None:
    url = HOSTILE[form].format(port=recorder.port)
    assert _ask(make(host, kind, base_url=url, max_retries=0)) is not None
    recorder.assert_no_env_key()


def _chat_once(backend: Any) -> Any:
    """One chat call through ``backend`` (closed after), its answer."""

    async def go() -> Any:
        try:
            return await backend.chat(ChatRequest(messages=[{"role": "user", "content": "hello"}],
                                                  model="gpt-4o-mini"))
        finally:
            await backend.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("form", ["path", "query", "lookalike-host", "userinfo"])
def test_batch_sends_no_env_key_to_urls_that_only_mention_openai(
        host: PluginHost, recorder: Recorder, tmp_path: Path, form: str) -> None:
    url = HOSTILE[form].format(port=recorder.port)
    backend = make(host, "batch", base_url=url, max_retries=0, poll_interval=0.02, flush_after=0.05,
                   state_file=str(tmp_path / "batches.json"))

    assert _chat_once(backend).text
    paths = {path.split("?")[0].rsplit("/v1", 1)[-1] for _, path, _ in recorder.headers}
    assert {"/files", "/batches"} <= paths  # it really uploaded and submitted there
    recorder.assert_no_env_key()


@pytest.mark.parametrize("form", list(HOSTILE))
def test_cli_ask_and_models_send_no_env_key_to_urls_that_only_mention_openai(
        recorder: Recorder, capsys: pytest.CaptureFixture[str], form: str) -> None:
    url = HOSTILE[form].format(port=recorder.port)
    for argv in (["ask", "hello", "--base-url", url], ["models", "--base-url", url],
                 ["ask", "hello", "--backend", "requests", "--base-url", url]):
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, (argv, out.err)
        assert ENV_KEY not in out.out + out.err
    recorder.assert_no_env_key()


def test_a_pipelines_key_does_not_follow_cli_base_url(recorder: Recorder, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`ask --pipeline P --base-url X`: P's api_key was named for P's server, not for X."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("backend: {type: openai, api_key: '${env:OPENAI_API_KEY}'}\n"
                        "source: {type: jsonl, path: in.jsonl}\n", encoding="utf-8")
    url = HOSTILE["path"].format(port=recorder.port)
    assert main(["ask", "hello", "--pipeline", str(pipeline), "--base-url", url]) == 0, capsys.readouterr().err
    recorder.assert_no_env_key()


def test_a_named_key_does_reach_its_server(host: PluginHost, recorder: Recorder) -> None:
    """The other half of the rule: a key the pipeline names for a server is sent to it."""
    url = HOSTILE["path"].format(port=recorder.port)
    _ask(make(host, "requests", base_url=url, api_key="sk-named-for-this-server-123"))
    assert all("Bearer sk-named-for-this-server-123" in raw for _, _, raw in recorder.headers)
    recorder.assert_no_env_key()


# --- redirects: within the origin only ---------------------------------------------------------

CUSTOM = "x-custom-secret-header-value-42"
TRANSPORTS = [("openai", {}), ("openai", {"transport": "sdk"}), ("requests", {})]


@pytest.fixture
def redirector(recorder: Recorder) -> Iterator[Recorder]:
    """A second server, on another port (another origin), in front of the same `oaipipe serve`."""
    hop = Recorder(recorder.upstream_port)
    try:
        yield hop
    finally:
        hop.close()


@pytest.mark.parametrize("kind, options", TRANSPORTS)
def test_a_redirect_to_another_server_is_refused_and_nothing_goes_there(
        host: PluginHost, recorder: Recorder, redirector: Recorder, kind: str, options: dict[str, Any]) -> None:
    """HTTP clients drop only Authorization on a redirect to another host: the pipeline's `headers:`, the
    organization and the prompts would follow. Every transport refuses such a redirect instead."""
    redirector.redirect_to = f"http://127.0.0.1:{recorder.port}"
    backend = make(host, kind, base_url=f"http://127.0.0.1:{redirector.port}/hop/v1", max_retries=0,
                   headers={"X-Custom": CUSTOM}, organization="org-custom-0123", **options)
    with pytest.raises(BackendError) as err:
        _ask(backend)
    assert "redirecting to another server" in str(err.value) and f"127.0.0.1:{recorder.port}" in str(err.value)
    assert "point base_url at it directly" in str(err.value)
    assert redirector.headers and all(CUSTOM in raw for _, _, raw in redirector.headers)  # it was asked
    assert recorder.headers == []  # and nothing reached the other server


@pytest.mark.parametrize("kind, options", TRANSPORTS)
def test_a_redirect_within_the_server_is_followed(host: PluginHost, redirector: Recorder, kind: str,
                                                  options: dict[str, Any]) -> None:
    redirector.redirect_to = ""  # the same origin
    backend = make(host, kind, base_url=f"http://127.0.0.1:{redirector.port}/hop/v1", max_retries=0,
                   headers={"X-Custom": CUSTOM}, **options)
    reply, _ = _ask(backend)
    assert reply.text
    paths = [path for _, path, _ in redirector.headers]
    assert "/hop/v1/chat/completions" in paths and "/v1/chat/completions" in paths
    assert all(CUSTOM in raw for _, _, raw in redirector.headers)


@pytest.mark.parametrize("kind, options", TRANSPORTS)
def test_a_redirect_loop_is_one_clear_error_not_retried_as_a_connection_failure(
        host: PluginHost, redirector: Recorder, kind: str, options: dict[str, Any]) -> None:
    """A server whose redirects loop answered: it is not "cannot connect ... is the server running", and a
    retry only walks the loop again (each hop a request): one chain, then a BackendError saying so."""
    redirector.redirect_to = "/hop"  # /hop/v1/x -> /hop/v1/x -> ...
    backend = make(host, kind, base_url=f"http://127.0.0.1:{redirector.port}/hop/v1", max_retries=2, **options)
    with pytest.raises(BackendError) as err:
        _ask(backend)
    assert not isinstance(err.value, BackendConnectionError) and err.value.retryable is False, err.value
    assert "keeps redirecting" in str(err.value) and "check backend.base_url" in (err.value.hint or "")
    assert 2 <= len(redirector.headers) <= 31  # one client's chain (aiohttp 10, httpx 20, requests 30 hops)


# --- a base_url with a query string (Azure-style ?api-version=) ----------------------------------

QUERY = "api-version=2024-10-21"


def _calls_with(recorder: Recorder, query: str) -> list[str]:
    """The recorded requests' paths; each must be an endpoint below /v1 that carries ``query``."""
    paths = [path for _, path, _ in recorder.headers]
    assert paths, "no request reached the server: the test proves nothing"
    for path in paths:
        where, _, sent = path.partition("?")
        assert where.startswith("/v1/") and query in sent.split("&"), path
    return paths


@pytest.mark.parametrize("kind, options", [("openai", {}), ("openai", {"transport": "sdk"}), ("requests", {}),
                                           ("batch", {"poll_interval": 0.02, "flush_after": 0.05})])
def test_a_base_url_query_goes_with_every_call_and_the_key_rule_holds(
        host: PluginHost, recorder: Recorder, tmp_path: Path, kind: str, options: dict[str, Any]) -> None:
    """The endpoint joins the URL's path, the query is kept: every call answers, with ?api-version=...
    (the batch backend's uploads, batches and downloads too); OPENAI_API_KEY still stays home."""
    url = f"http://127.0.0.1:{recorder.port}/v1/?{QUERY}"
    if kind == "batch":
        options = {**options, "state_file": str(tmp_path / "batches.json")}
    backend = make(host, kind, base_url=url, max_retries=0, **options)
    if kind == "batch":
        assert _chat_once(backend).text
        assert {"/v1/files", "/v1/batches"} <= {p.split("?")[0] for p in _calls_with(recorder, QUERY)}
    else:
        reply, models = _ask(backend)
        assert reply.text and models
        assert {"/v1/models"} < {p.split("?")[0] for p in _calls_with(recorder, QUERY)}
    recorder.assert_no_env_key()


def test_a_base_url_query_goes_with_fine_tuning_calls(host: PluginHost, recorder: Recorder, tmp_path: Path) -> None:
    from oaipipe.training import build_dataset, launch_job, write_dataset

    qa = Path(__file__).resolve().parent.parent / "examples" / "data" / "qa.csv"
    files = write_dataset(build_dataset(qa, method="supervised", system="Be kind."), tmp_path / "train.jsonl")
    url = f"http://127.0.0.1:{recorder.port}/v1?{QUERY}"
    trainer = host.build("trainer", {"type": "openai", "base_url": url, "max_retries": 0}, Context(host=host),
                         key="train")
    launched = launch_job(trainer, files, base_model="gpt-4o-mini", base_url=url,
                     registry=JobRegistry(tmp_path / "jobs.json"))
    assert launched.job.id and not launched.reused
    assert {"/v1/files", "/v1/fine_tuning/jobs"} <= {p.split("?")[0] for p in _calls_with(recorder, QUERY)}
    recorder.assert_no_env_key()


@pytest.mark.parametrize("where", ["file", "env"])
def test_a_base_url_with_a_fragment_is_refused_at_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], where: str) -> None:
    (tmp_path / "in.csv").write_text("id,text\n1,hi\n", encoding="utf-8")
    line = "  base_url: http://127.0.0.1:9/v1#part\n" if where == "file" else ""
    (tmp_path / "p.yaml").write_text(
        "name: frag\nbackend:\n  type: openai\n" + line + "source: {type: csv, path: in.csv}\n"
        "steps: [{type: sentiment, input: text, output: s}]\nsinks: [{type: jsonl, path: out.jsonl}]\n",
        encoding="utf-8")
    if where == "env":
        monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1#part")
    assert main(["validate", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "fragment" in err and "remove it: 'http://127.0.0.1:9/v1'" in err
    assert ("p.yaml:4:" in err) if where == "file" else ("OPENAI_BASE_URL" in err and "p.yaml:2:" in err)


# --- messages that used to mislead (issue 9, item 12) ----------------------------------------------


def _project(tmp_path: Path, backend: str, rows: int = 3) -> Path:
    (tmp_path / "r.csv").write_text("id,text\n" + "".join(f"{i},text {i}\n" for i in range(rows)),
                                    encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text("name: k\n"
                    f"backend: {backend}\n"
                    "source: {type: csv, path: r.csv, id_column: id}\n"
                    "steps:\n  - {type: ask, prompt: 'Reply to: {text}', output: reply}\n"
                    "run: {cache: false}\n", encoding="utf-8")
    return path


def test_an_unset_key_variable_is_named_at_validate_run_start_and_in_the_401_hint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_SERVER_KEY", raising=False)
    with running_server(api_key="sk-right-key-0123456789") as srv:
        path = _project(tmp_path, f"{{type: requests, base_url: '{srv.base_url}', api_key: '${{env:MY_SERVER_KEY}}'}}")
        assert main(["validate", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"warning: {path}:2: backend.api_key is ${{env:MY_SERVER_KEY}}, and MY_SERVER_KEY is not set" in out
        assert "export MY_SERVER_KEY=... or remove the line" in out
        assert main(["run", str(path)]) == 5
        err = capsys.readouterr().err
    start, _, rest = err.partition("error:")
    assert "MY_SERVER_KEY is not set" in start  # said before anything ran
    assert "401" in rest and "MY_SERVER_KEY is not set" in rest and "export MY_SERVER_KEY" in rest
    assert "give it its own key with `api_key:" not in rest  # the line is there already


@pytest.mark.parametrize("missing, api", [(("/v1/files", "/v1/batches"), "Files"), (("/v1/batches",), "Batch")])
def test_batch_against_a_server_without_the_api_says_so(host: PluginHost, tmp_path: Path, missing: tuple[str, ...],
                                                       api: str) -> None:
    from oaipipe.errors import BadRequestError

    with running_server() as srv:
        rec = Recorder(srv.port, missing=missing)
        try:
            backend = make(host, "batch", base_url=f"http://127.0.0.1:{rec.port}/v1", max_retries=0,
                           flush_after=0.05, state_file=str(tmp_path / "b.json"))

            async def go() -> Any:
                try:
                    return await backend.chat(ChatRequest(messages=[{"role": "user", "content": "hi"}],
                                                          model="gpt-4o-mini"))
                finally:
                    await backend.aclose()

            with pytest.raises(BadRequestError) as err:
                asyncio.run(go())
        finally:
            rec.close()
    text = str(err.value)
    assert f"does not offer the {api} API" in text and "model name" not in text


@pytest.mark.parametrize("missing, api", [(("/v1/files",), "Files"), (("/v1/fine_tuning",), "fine-tuning")])
def test_fine_tuning_against_a_server_without_the_api_says_so(host: PluginHost, tmp_path: Path,
                                                             missing: tuple[str, ...], api: str) -> None:
    from oaipipe.errors import BadRequestError
    from oaipipe.training import build_dataset, launch_job, write_dataset

    qa = Path(__file__).resolve().parent.parent / "examples" / "data" / "qa.csv"
    files = write_dataset(build_dataset(qa, method="supervised", system="Be kind."), tmp_path / "train.jsonl")
    with running_server() as srv:
        rec = Recorder(srv.port, missing=missing)
        url = f"http://127.0.0.1:{rec.port}/v1"
        try:
            trainer = host.build("trainer", {"type": "openai", "base_url": url, "max_retries": 0},
                                 Context(host=host), key="train")
            with pytest.raises(BadRequestError) as err:
                launch_job(trainer, files, base_model="gpt-4o-mini", base_url=url)
        finally:
            rec.close()
    text = str(err.value)
    assert f"does not offer the {api} API" in text and "model name" not in text


@pytest.mark.parametrize("kind", ["openai", "requests"])
def test_the_first_401_closes_the_gate_for_every_worker(tmp_path: Path, kind: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Concurrency 8 against a server that answers 401 slowly: one request, not one per worker."""
    with running_server(error_rates={401: 1.0}, latency=0.3) as srv:
        path = _project(tmp_path, f"{{type: {kind}, base_url: '{srv.base_url}', api_key: sk-wrong-0123456789, "
                                  "concurrency: 8}", rows=20)
        assert main(["run", str(path)]) == 5
        stats = srv.stats()
    assert stats["requests"] == 1, stats
    assert "refused" in capsys.readouterr().err


def test_key_gate_probe_then_open_then_closed() -> None:
    """The gate's rules, without a server: one probe at a time until an answer, all at once after it,
    nothing after a 401, and a failed connection lets the next caller probe."""
    from oaipipe.errors import AuthenticationError, BackendConnectionError, ServerError
    from oaipipe.keys import KeyGate

    async def scenario() -> tuple[list[str], int]:
        gate = KeyGate()
        log: list[str] = []
        running = 0
        peak = 0

        def attempt(name: str, outcome: BaseException | None, delay: float = 0.01) -> Any:
            async def go() -> str:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                log.append(name)
                await asyncio.sleep(delay)
                running -= 1
                if outcome is not None:
                    raise outcome
                return name
            return go

        # no answer: the next caller probes; a 500 is an answer, so the gate opens
        first = [gate.acall(attempt("refused-connection", BackendConnectionError("down"))),
                 gate.acall(attempt("five-hundred", ServerError("x", status=500)))]
        await asyncio.gather(*first, return_exceptions=True)
        assert log == ["refused-connection", "five-hundred"] and peak == 1
        await asyncio.gather(*(gate.acall(attempt(f"open-{i}", None)) for i in range(4)))
        assert peak > 1  # open: they ran together
        await asyncio.gather(gate.acall(attempt("401", AuthenticationError("no", status=401))),
                             return_exceptions=True)
        sent = len(log)
        results = await asyncio.gather(*(gate.acall(attempt(f"after-{i}", None)) for i in range(4)),
                                       return_exceptions=True)
        assert all(isinstance(r, AuthenticationError) for r in results)
        return log, sent

    log, sent = asyncio.run(scenario())
    assert len(log) == sent  # nothing was attempted after the 401


def test_key_gate_one_probe_across_threads() -> None:
    """Blocking callers (the requests transport's worker threads): a slow 401 probe, then nobody."""
    from concurrent.futures import ThreadPoolExecutor

    from oaipipe.errors import AuthenticationError
    from oaipipe.keys import KeyGate

    gate = KeyGate()
    started: list[int] = []
    lock = threading.Lock()
    release = threading.Event()

    def attempt(i: int) -> Any:
        def go() -> None:
            with lock:
                started.append(i)
            release.wait(5)
            raise AuthenticationError("no", status=401)
        return go

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(gate.call, attempt(i)) for i in range(8)]
        deadline = time.monotonic() + 5
        while not started and time.monotonic() < deadline:  # wait for the probe to be on its way
            time.sleep(0.005)
        release.set()
        errors = [f.exception() for f in futures]
    assert len(started) == 1
    assert all(isinstance(e, AuthenticationError) for e in errors)


# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def test_key_gate_a_blocking_probe_without_an_answer_lets_the_next_caller_probe() -> None:
    """A refused connection is no answer about the key: the next blocking caller goes (it must not wait
    for a probe that is over), and after its answer the gate is open."""
    from oaipipe.errors import BackendConnectionError
    from oaipipe.keys import KeyGate

    gate = KeyGate()

    def refused() -> None:
        raise BackendConnectionError("down")

    with pytest.raises(BackendConnectionError):
        gate.call(refused)
    results: list[str] = []
    caller = threading.Thread(target=lambda: results.append(gate.call(lambda: "answered")), daemon=True)
    caller.start()
    caller.join(10)  # a caller left waiting for the finished probe would block here for good
    assert results == ["answered"]
    assert gate.call(lambda: "open") == "open"


def test_key_gate_every_later_call_fails_with_the_servers_own_refusal() -> None:
    """After the 401, callers get the server's answer itself (message, status, request id, hint), not a
    paraphrase: the user sees what the server said and what to do."""
    from oaipipe.errors import AuthenticationError
    from oaipipe.keys import KeyGate

    gate = KeyGate()
    refusal = AuthenticationError("Incorrect API key provided", status=401, request_id="req_42", hint="set another")

    def refused() -> None:
        raise refusal

    with pytest.raises(AuthenticationError):
        gate.call(refused)
    for _ in range(2):
        with pytest.raises(AuthenticationError) as later:
            gate.call(lambda: pytest.fail("nothing is sent after a 401"))
        err = later.value
        assert (err.message, err.status, err.request_id, err.hint) == \
            ("Incorrect API key provided", 401, "req_42", "set another")


def _peaks_after(first: BaseException | None, n: int = 3) -> tuple[int, BaseException | str]:
    """A fresh gate's probe ends with ``first`` (None: an answer); then ``n`` calls at once. Returns how many
    of those ran together at most, and what the probe's caller got."""
    from oaipipe.keys import KeyGate

    async def scenario() -> tuple[int, BaseException | str]:
        gate = KeyGate()
        running = peak = 0

        async def go() -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            return "answer"

        async def probe() -> str:
            if first is not None:
                raise first
            return "answer"

        got = (await asyncio.gather(gate.acall(probe), return_exceptions=True))[0]
        await asyncio.gather(*(gate.acall(go) for _ in range(n)))
        return peak, got

    return asyncio.run(scenario())


def test_key_gate_opens_on_any_answer_and_stays_shut_on_none() -> None:
    from oaipipe.errors import BackendConnectionError, ServerError

    assert _peaks_after(None) == (3, "answer")  # an answer (a 200): everyone at once
    peak, got = _peaks_after(ServerError("busy", status=500))  # an HTTP answer that is not a 401: open too
    assert peak == 3 and isinstance(got, ServerError)
    # no answer about the key: the next caller probes alone, then the gate opens (2 together, never 3)
    peak, got = _peaks_after(BackendConnectionError("refused"))
    assert peak == 2 and isinstance(got, BackendConnectionError)
    peak, got = _peaks_after(ValueError("a bug in a transport"))  # not an HTTP answer at all
    assert peak == 2 and type(got) is ValueError  # the caller gets its own error, not one of the gate's


def test_key_gate_a_waiter_whose_event_loop_closed_does_not_break_the_gate() -> None:
    # an async caller waits behind a blocking probe, then its loop ends (asyncio.run returns): the probe's
    # answer must still come back, and the gate must go on working
    from oaipipe.keys import KeyGate

    gate = KeyGate()
    entered, release = threading.Event(), threading.Event()

    def slow_probe() -> str:
        entered.set()
        release.wait(10)
        return "probe answered"

    results: list[str] = []
    prober = threading.Thread(target=lambda: results.append(gate.call(slow_probe)), daemon=True)
    prober.start()
    assert entered.wait(10)

    async def wait_then_leave() -> None:
        waiter = asyncio.ensure_future(gate.acall(lambda: asyncio.sleep(0)))
        await asyncio.sleep(0)  # it runs to its first await: waiting behind the probe
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(wait_then_leave())  # closes that loop
    release.set()
    prober.join(10)
    assert results == ["probe answered"]
    assert gate.call(lambda: "open") == "open"


def test_resolve_api_key_reads_what_the_options_have_and_registers_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from oaipipe.errors import mask_secrets

    named = "sk-named-in-the-block-0123456789abcdef"
    assert resolve_api_key(SimpleNamespace(api_key=named, base_url="http://127.0.0.1:1/v1")) == named
    assert named not in mask_secrets(f"sent {named}")  # a named key is masked wherever it is printed
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert resolve_api_key(SimpleNamespace(api_key=None, base_url=None)) is None  # OpenAI, no key anywhere
    # a plugin's options need neither field: no base_url means OpenAI's API
    assert resolve_api_key(SimpleNamespace()) is None
    monkeypatch.setenv("OPENAI_API_KEY", " sk-from-the-environment-0123456789 ")
    assert resolve_api_key(SimpleNamespace()) == "sk-from-the-environment-0123456789"
    assert "environment" not in mask_secrets("sent sk-from-the-environment-0123456789")  # masked too
