"""The HTTP layer: a ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive, routing, auth, faults, stats.

Every response carries ``Content-Length`` and ``x-request-id``. Errors have OpenAI's shape. Faults
(latency, injected statuses, dropped connections, slow answers) apply to the inference endpoints only.

Protection against clients without the key (see docs/serve.md, "Limits"): with an API key every path
needs it, and it is checked from the headers before a byte of the body is read; a body over
``max_body_size`` is refused with 413 unread; a client gets ``client_timeout`` seconds for a request's
headers (an idle keep-alive connection too), again for its body, and for taking the reply; at most
``max_connections`` connections are served at once (a thread each), one more is answered 503 and closed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import random
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..engine.chat import warm_up
from ..engine.models import find_model, list_models
from . import inference, responses
from .config import Faults, ServerConfig, is_loopback_address
from .errors import ApiError
from .options import CallContext
from .promptcache import PromptCache
from .ratelimits import RateLimits
from .streaming import EventStream, StreamPlan, chat_events, response_events

__all__ = ["OaipipeServer", "Reply", "make_server"]

#: message and code of each injectable status (429 is built separately: it carries Retry-After)
_INJECTED: dict[int, tuple[str, str]] = {
    400: ("The request was rejected as invalid.", "invalid_request"),
    401: ("Incorrect API key provided.", "invalid_api_key"),
    403: ("You are not allowed to use this endpoint.", "forbidden"),
    404: ("The requested resource does not exist.", "not_found"),
    408: ("The request timed out.", "timeout"),
    409: ("The request conflicts with another request; retry it.", "conflict"),
    422: ("The request could not be processed.", "unprocessable_entity"),
    500: ("The server had an error while processing your request. Retry your request.", "server_error"),
    502: ("Bad gateway.", "bad_gateway"),
    503: ("The engine is currently overloaded. Please try again later.", "service_unavailable"),
    504: ("Gateway timeout.", "gateway_timeout"),
}
#: paths whose calls get injected faults
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/responses"})
#: the prefix of the server's own control paths (stats, faults, health)
CONTROL_PREFIX = "/_oaipipe/"
#: the one stats key for every path no route knows (the counters must not grow with what clients invent)
UNKNOWN_PATH = "(unknown path)"
#: a body this small that the server will not use is read and dropped, so that the connection stays open
_DISCARD_LIMIT = 64 * 1024
#: how long a connection closed with its request body unread keeps draining what the client still sends
#: (so that the client reads the error instead of a connection reset)
_LINGER_SECONDS = 2.0
_READ_CHUNK = 1024 * 1024



class Reply:
    """What a route returns: a status, a JSON-able body or raw bytes, and extra headers; or ``stream``, events
    written one by one with chunked transfer encoding (see :mod:`oaipipe.server.streaming`)."""

    def __init__(self, body: Any = None, *, status: int = 200, raw: bytes | None = None,
                 content_type: str = "application/json", headers: dict[str, str] | None = None,
                 stream: EventStream | None = None) -> None:
        self.status = status
        self.body = body
        self.raw = raw
        self.content_type = content_type
        self.headers = headers or {}
        self.stream = stream

    def payload(self) -> bytes:
        if self.stream is not None:
            return b""
        if self.raw is not None:
            return self.raw
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8")


class Request:
    """A parsed request as routes see it."""

    def __init__(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes,
                 params: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.params = params

    def json(self) -> Any:
        if not self.body:
            raise ApiError(400, "The request body is empty; send a JSON object.", code="invalid_json")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"The request body is not valid JSON ({exc}).", code="invalid_json") from exc

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def int_arg(self, name: str, default: int, *, low: int = 1, high: int = 10_000) -> int:
        raw = self.arg(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, f"Invalid '{name}': expected an integer, got {raw!r}.", param=name,
                           code="invalid_value") from None
        if not low <= value <= high:
            raise ApiError(400, f"Invalid '{name}': must be between {low} and {high}.", param=name,
                           code="invalid_value")
        return value


Route = tuple[str, re.Pattern[str], str, Callable[[Request], Reply]]


class OaipipeServer(ThreadingHTTPServer):
    """The server plus its state: config, faults, stats, files, fine-tuning jobs and batches."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._faults = config.faults
        self._rng = random.Random(config.seed)
        self._stats_by_path: Counter[str] = Counter()
        self._stats_by_status: Counter[str] = Counter()
        self._stats_injected: Counter[str] = Counter()
        self._stats_total = 0
        self._connections_open = 0
        self._connections_refused = 0
        self._stats_streams: Counter[str] = Counter()
        self.prompt_cache = PromptCache(config.prompt_cache_size)
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._own_data_dir = config.data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="oaipipe-serve-")) if config.data_dir is None \
            else Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()
        self.ratelimits = (RateLimits(config.rpm, config.tpm, burst=config.rate_burst)
                           if config.rpm or config.tpm else None)  # --rpm/--tpm (server/ratelimits.py)
        warm_up()  # the first call must not pay for loading the lexicon (tests use short client timeouts)
        self.routes: list[Route] = []
        self._add_core_routes()
        for extend in _EXTENSIONS:
            extend(self)
        super().__init__((config.host, config.port), Handler)

    # --- routes -----------------------------------------------------------------------------
    def route(self, method: str, template: str, func: Callable[[Request], Reply]) -> None:
        """Add a route; ``{name}`` in the template captures one path segment into ``request.params``."""
        pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")
        self.routes.append((method, pattern, template, func))

    def match(self, method: str, path: str) -> tuple[str, Callable[[Request], Reply] | None, dict[str, str], bool]:
        """(template, handler, params, path_exists). The template names the path in the stats: a route's
        template when one matches the path (also for a method it does not allow), else :data:`UNKNOWN_PATH`."""
        known: str | None = None
        for m, pattern, template, func in self.routes:
            found = pattern.match(path)
            if found:
                known = known or template
                if m == method:
                    return template, func, {k: unquote(v) for k, v in found.groupdict().items()}, True
        return known or UNKNOWN_PATH, None, {}, known is not None

    def _add_core_routes(self) -> None:
        self.route("GET", "/v1/models", self._models)
        self.route("GET", "/v1/models/{model}", self._model)
        self.route("POST", "/v1/chat/completions", self._chat)
        self.route("POST", "/v1/responses", self._responses)
        self.route("GET", "/_oaipipe/stats", lambda req: Reply(self.stats()))
        self.route("POST", "/_oaipipe/stats/reset", lambda req: self._reset_stats())
        self.route("GET", "/_oaipipe/faults", lambda req: Reply(self.faults.to_dict()))
        self.route("POST", "/_oaipipe/faults", self._set_faults_route)
        self.route("GET", "/_oaipipe/health", lambda req: Reply({"status": "ok"}))

    # --- models: the engine's, with the shutdown dates the server was told (a test switch) ----------
    def _model_object(self, model: dict[str, Any]) -> dict[str, Any] | None:
        """The model as listed (``shutdown_date``: the declared date or null), None once past that date."""
        day = self.config.model_shutdowns.get(str(model["id"]))
        if day is not None and day <= time.strftime("%Y-%m-%d"):
            return None
        return {**model, "shutdown_date": day}

    def _models(self, req: Request) -> Reply:
        listed = [m.to_openai() for m in list_models()]
        known = {str(m["id"]) for m in listed}
        listed += [{"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "oaipipe-local"}
                   for model in self.config.model_shutdowns if model not in known]
        return Reply({"object": "list", "data": [m for m in map(self._model_object, listed) if m is not None]})

    def _model(self, req: Request) -> Reply:
        model_id = req.params["model"]
        found = find_model(model_id)
        obj = None
        if found is not None:
            obj = self._model_object(found.to_openai())
        elif model_id in self.config.model_shutdowns:
            obj = self._model_object({"id": model_id, "object": "model", "created": 1_700_000_000,
                                      "owned_by": "oaipipe-local"})
        if obj is None:
            raise ApiError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return Reply(obj)

    # --- inference ------------------------------------------------------------------------------
    def call_context(self, headers: Any = None, *, faults: bool = True) -> CallContext:
        """What an inference call needs from the server: the prompt cache (namespaced by a digest of the
        caller's bearer token, never the token), model shutdowns, and the flex fault (``faults=False``:
        none, as in batches)."""
        header = (headers.get("Authorization") if headers is not None else None) or ""
        key_id = hashlib.sha256(header.strip().encode("utf-8")).hexdigest()[:16] if header.strip() else ""
        current = self.faults
        return CallContext(key_id=key_id, prompt_cache=self.prompt_cache, shutdowns=self.config.model_shutdowns,
                           flex_unavailable_rate=current.flex_unavailable_rate if faults else 0.0,
                           draw=self.random if faults else None, count_injected=self.count_injected)

    def _chat(self, req: Request) -> Reply:
        body = req.json()
        completion = inference.chat_completion(body, self.call_context(req.headers))
        if body.get("stream") is True:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return _event_stream(chat_events(completion, include_usage=include_usage))
        return Reply(completion)

    def _responses(self, req: Request) -> Reply:
        body = req.json()
        response = responses.create_response(body, self.call_context(req.headers))
        if body.get("stream") is True:
            return _event_stream(response_events(response))
        return Reply(response)

    def _set_faults_route(self, req: Request) -> Reply:
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "Send a JSON object of fault settings, e.g. {\"error_rates\": {\"429\": 0.2}}.")
        if "faults" in body:
            raise ApiError(400, "Send the fault settings themselves, not wrapped in \"faults\": e.g. "
                           "{\"drop_rate\": 0.1, \"error_rates\": {\"429\": 0.2}}.", code="invalid_value")
        try:
            self.set_faults(**body)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"Invalid fault settings: {exc}", code="invalid_value") from exc
        return Reply(self.faults.to_dict())

    # --- faults and stats -------------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Replace the faults (``faults=Faults(...)``) or change some settings (``error_rates={429: 0.5}``)."""
        with self._lock:
            base = faults if faults is not None else self._faults
            self._faults = base.updated(**changes) if changes else base
            return self._faults

    def random(self) -> float:
        with self._lock:
            return self._rng.random()

    def count(self, path: str, status: int | str) -> None:
        with self._lock:
            self._stats_total += 1
            self._stats_by_path[path] += 1
            self._stats_by_status[str(status)] += 1

    def count_injected(self, what: str) -> None:
        with self._lock:
            self._stats_injected[what] += 1

    def count_stream(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._stats_streams[what] += n

    def stats(self) -> dict[str, Any]:
        """Counters since start (or the last reset): requests by path template and by status, injected faults,
        connections (``open`` now, ``refused`` at the ``max_connections`` cap), and streamed calls
        (``started``, ``completed``, ``dropped`` by a fault, ``client_closed``, and ``events`` written)."""
        with self._lock:
            streams = {k: self._stats_streams[k] for k in ("started", "completed", "dropped", "client_closed",
                                                             "events")}
            return {"requests": self._stats_total, "by_path": dict(self._stats_by_path),
                    "by_status": dict(self._stats_by_status), "injected": dict(self._stats_injected),
                    "connections": {"open": self._connections_open, "refused": self._connections_refused},
                    "streams": streams}

    def _reset_stats(self) -> Reply:
        self.reset_stats()
        return Reply(self.stats())

    def reset_stats(self) -> None:
        with self._lock:
            self._stats_total = 0
            self._stats_by_path.clear()
            self._stats_by_status.clear()
            self._stats_injected.clear()
            self._stats_streams.clear()
            self._connections_refused = 0

    # --- connections: at most max_connections threads ---------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own, or answer 503 and close it when the cap is reached
        (in this, the accepting thread, without blocking: no thread is started for it)."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._lock:
            self._connections_open += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release_slot()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        with self._lock:
            self._connections_open -= 1
        self._slots.release()

    def _refuse(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections_refused += 1
        error = ApiError(503, f"oaipipe serve is serving its maximum of {self.config.max_connections} connections "
                         "(--max-connections); retry shortly.", code="too_many_connections")
        payload = json.dumps(error.body()).encode("utf-8")
        head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.send(head.encode("latin-1") + payload)  # fits an empty send buffer: never blocks
                for _ in range(16):  # drop what already arrived, so that closing sends FIN rather than RST
                    if not sock.recv(65536):
                        break
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        finally:
            sock.close()

    # --- lifecycle --------------------------------------------------------------------------
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (timeout, drop) is normal here; anything else is reported."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError) or self.stopping.is_set():
            return
        super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        name = f"[{name}]" if ":" in name else name
        return f"http://{name}:{port}/v1"

    def server_close(self) -> None:
        self.stopping.set()
        super().server_close()
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class _DeadlineReader(io.RawIOBase):
    """A connection's input with a deadline: once ``deadline`` (``time.monotonic()``) has passed, reading
    raises ``TimeoutError``. Per-read socket timeouts alone let a client that sends a byte a second hold a
    connection forever; this bounds the whole request."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the client took too long to send its request")
            self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


def _event_stream(stream: EventStream) -> Reply:
    return Reply(stream=stream, content_type="text/event-stream; charset=utf-8",
                 headers={"Cache-Control": "no-cache"})


#: functions that add routes/state to a new server (files, fine-tuning, batches register here)
_EXTENSIONS: list[Callable[[OaipipeServer], None]] = []


def extension(func: Callable[[OaipipeServer], None]) -> Callable[[OaipipeServer], None]:
    _EXTENSIONS.append(func)
    return func


class Handler(BaseHTTPRequestHandler):
    _headers_buffer: list[bytes]  # BaseHTTPRequestHandler's own (send_header), not in typeshed
    protocol_version = "HTTP/1.1"
    server_version = "oaipipe-serve/0.1"
    server: OaipipeServer

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self._expect_continue = False
        self._body_unread = False
        self._request_body = b""
        self._stream_plan = StreamPlan()

    def handle_one_request(self) -> None:
        """One request; its headers must arrive within ``client_timeout`` (an idle connection is closed then)."""
        self._reader.deadline = time.monotonic() + self.server.config.client_timeout
        self._expect_continue = False
        self._body_unread = False
        self._request_body = b""
        self._stream_plan = StreamPlan()
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue`` is answered only once the key and the size are checked (see _read_body)."""
        self._expect_continue = True
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors of the HTTP layer itself (a malformed request line, headers too long, an unknown method)
        in OpenAI's shape too; the connection is closed after them."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":  # an unparsable request line
            self.request_version = self.protocol_version  # answer with a status line and headers all the same
        text = message or self.responses.get(code, ("Error",))[0]
        error = ApiError(code, text if text.endswith(".") else text + ".", code="invalid_request")
        with contextlib.suppress(OSError):
            self._send(Reply(error.body(), status=code), "req_" + secrets.token_hex(12))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        return

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _too_large(self) -> ApiError:
        cap = self.server.config.max_body_size
        return ApiError(413, f"The request body is too large: this server accepts at most {cap} bytes "
                        "(oaipipe serve --max-body-size).", code="request_too_large")

    def _declared_length(self) -> int | None:
        """The body's Content-Length (0 without one), or None for a chunked body; 400 for a malformed one."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return None
        raw = (self.headers.get("Content-Length") or "0").strip()
        if not raw.isdigit():
            self.close_connection = True
            raise ApiError(400, f"Invalid Content-Length header: {raw[:40]!r}.", code="invalid_request")
        return int(raw)

    def _read_exactly(self, size: int) -> bytes:
        """``size`` bytes in pieces (memory grows with what arrives, not with what is announced)."""
        chunks: list[bytes] = []
        left = size
        while left > 0:
            piece = self.rfile.read(min(left, _READ_CHUNK))
            if not piece:
                raise ConnectionError("the client closed the connection in the middle of its request body")
            chunks.append(piece)
            left -= len(piece)
        return b"".join(chunks)

    def _read_body(self) -> bytes:
        """The body, read within ``client_timeout`` and refused (413, unread) over ``max_body_size``.
        Call only after the key is checked: nothing is read from a client without it."""
        self._request_body = self._receive_body()
        return self._request_body

    def _wants_stream(self) -> bool:
        """Whether the request body asks for ``stream: true`` (the faults treat a stream differently)."""
        if b'"stream"' not in self._request_body:
            return False
        try:
            body = json.loads(self._request_body)
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(body, dict) and body.get("stream") is True

    def _receive_body(self) -> bytes:
        cap = self.server.config.max_body_size
        length = self._declared_length()
        if length is not None and length > cap:
            raise self._too_large()
        if self._expect_continue:
            self._expect_continue = False
            self.send_response_only(100)
            self.end_headers()
        self._reader.deadline = time.monotonic() + self.server.config.client_timeout
        if length is not None:
            exact = self._read_exactly(length)
            self._body_unread = False
            return exact
        body = bytearray()  # not a list of pieces: a million one-byte chunks must cost a megabyte, not 50
        while True:
            line = self.rfile.readline(1026)
            size_text = line.split(b";")[0].strip()
            try:
                size = int(size_text, 16)
                if size < 0 or size_text[:1] in (b"-", b"+") or len(line) > 1024:
                    raise ValueError
            except ValueError:
                raise ApiError(400, "Malformed chunked request body.", code="invalid_request") from None
            if size == 0:
                for _ in range(100):  # trailers, up to the blank line
                    if self.rfile.readline(65537) in (b"\r\n", b"\n", b""):
                        break
                break
            if len(body) + size > cap:
                raise self._too_large()
            body += self._read_exactly(size)
            self.rfile.readline(3)
        self._body_unread = False
        return bytes(body)

    def _skip_body(self) -> None:
        """Before answering without the body: read and drop a small one (the connection stays usable),
        else close the connection once the answer is sent (see _linger)."""
        if not self._body_unread:
            return
        keep_open = not self.close_connection
        self.close_connection = True
        try:
            length = self._declared_length()
        except ApiError:
            return
        # with Expect: 100-continue the client sends its body only when told to: there is nothing to drop
        if length is not None and length <= _DISCARD_LIMIT and not self._expect_continue:
            self._reader.deadline = time.monotonic() + self.server.config.client_timeout
            try:
                self._read_exactly(length)
            except (OSError, ValueError):
                return
            self._body_unread = False
            self.close_connection = not keep_open

    def _linger(self) -> None:
        """After an answer sent with the request body unread: stop sending, drain what the client still sends
        for a moment (discarded), so that it reads the answer rather than a connection reset, then close."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + min(_LINGER_SECONDS, self.server.config.client_timeout)
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(_READ_CHUNK):
                    break

    def _send(self, reply: Reply, request_id: str) -> None:
        payload = reply.payload()
        # a client that does not take its reply cannot hold the thread: the whole send has client_timeout
        self.connection.settimeout(self.server.config.client_timeout)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if reply.stream is None:
            self.send_header("Content-Length", str(len(payload)))
        elif self.request_version == "HTTP/1.0":  # no chunks in HTTP/1.0: the end of the stream closes it
            self.close_connection = True
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", request_id)
        self.send_header("openai-version", "2020-10-01")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        # headers and body in one write: two small writes meet Nagle + delayed ACK (40 ms per call)
        self._headers_buffer.append(b"\r\n")
        if reply.stream is not None:
            self._write_stream(reply.stream)
            return
        if self.command != "HEAD":
            self._headers_buffer.append(payload)
        self.flush_headers()

    def _write_stream(self, stream: EventStream) -> None:
        """Write the events as HTTP chunks, each when it is due (see :meth:`EventStream.schedule`); the
        headers go out with the first one. An injected drop closes the connection mid-stream."""
        server = self.server
        plan = self._stream_plan
        chunked = self.request_version != "HTTP/1.0"
        server.count_stream("started")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        try:
            for wait, event in stream.schedule(plan.delay, plan.drop):
                if wait > 0 and server.stopping.wait(wait):
                    self.close_connection = True  # the server is stopping: end the stream now
                    return
                if event is None:
                    server.count_injected("drop")
                    server.count_stream("dropped")
                    self.wfile.write(head)
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if event:
                    server.count_stream("events")  # counted before it is sent: a client that has it sees it
                    self.wfile.write(head + (b"%x\r\n%b\r\n" % (len(event), event) if chunked else event))
                    head = b""
            server.count_stream("completed")
            self.wfile.write(head + (b"0\r\n\r\n" if chunked else b""))
        except OSError:  # the client went away in the middle: nobody to tell
            server.count_stream("client_closed")
            self.close_connection = True

    def _check_access(self, path: str) -> None:
        """Who may call ``path``: with an API key every path needs it (the control paths too); without one,
        the control paths answer loopback clients only. Uses the headers alone: run it before the body."""
        if self.server.config.api_key:
            self._check_auth()
        elif path.startswith(CONTROL_PREFIX) or path == CONTROL_PREFIX.rstrip("/"):
            peer = str(self.client_address[0]) if self.client_address else ""
            if not is_loopback_address(peer):
                raise ApiError(403, "The control paths /_oaipipe/* answer only loopback clients when the server "
                               "has no API key; start it with --api-key to reach them from other hosts.",
                               code="forbidden")

    def _check_auth(self) -> None:
        key = self.server.config.api_key
        if not key:
            return
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (the key "
                           "this server was started with: --api-key or OAIPIPE_SERVE_API_KEY).",
                           code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "Incorrect API key provided. Use the key this server was started with "
                           "(--api-key or OAIPIPE_SERVE_API_KEY).", code="invalid_api_key")

    def _inject_faults(self, template: str) -> bool:
        """Apply latency and injected faults; returns False when the connection was dropped. A streamed call
        (``stream: true``) gets its latency and a drop in :attr:`_stream_plan` instead: spread over its
        events, and cut in the middle of the stream (see :meth:`_write_stream`)."""
        faults = self.server.faults
        delay = faults.latency + (faults.jitter * self.server.random() if faults.jitter else 0.0)
        stream = self._wants_stream()
        if delay > 0 and not stream:
            self.server.stopping.wait(delay)
        draw = self.server.random()
        edge = 0.0
        for status in sorted(faults.error_rates):
            edge += faults.error_rates[status]
            if draw < edge:
                self.server.count_injected(str(status))
                if stream and delay > 0:  # an error comes before the first byte, after the latency
                    self.server.stopping.wait(delay)
                headers = {}
                if status == 429:
                    ra = faults.retry_after
                    headers = {"Retry-After": str(int(ra)) if float(ra).is_integer() else f"{ra:g}",
                               "retry-after-ms": str(int(round(ra * 1000)))}
                    raise ApiError(429, "Rate limit reached for requests (injected by oaipipe serve). Please "
                                   "retry after the time in the Retry-After header.", code="rate_limit_exceeded",
                                   headers=headers)
                text, code = _INJECTED.get(status, (f"Injected error {status}.", "injected_error"))
                raise ApiError(status, text + " (injected by oaipipe serve --error-rate)", code=code,
                               headers=headers)
        edge_drop = edge + faults.drop_rate
        if draw < edge_drop:
            if stream:  # counted when the stream is cut (a request refused with an error is not)
                self._stream_plan = StreamPlan(delay=delay, drop=True)
                return True
            self.server.count_injected("drop")
            return False
        if draw < edge_drop + faults.timeout_rate:
            self.server.count_injected("timeout")
            self.server.stopping.wait(faults.timeout_seconds)
        if stream:
            self._stream_plan = StreamPlan(delay=delay)
        return True

    def _dispatch(self, method: str) -> None:
        request_id = "req_" + secrets.token_hex(12)
        started = time.perf_counter()
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        template, func, params, path_exists = self.server.match(method, path)
        self._body_unread = True
        try:
            # everything up to the body uses the headers alone: a refused client never gets a byte read
            self._check_access(path)
            if func is None:
                if path_exists:
                    raise ApiError(405, f"Method {method} is not allowed on {path}.", code="method_not_allowed")
                raise ApiError(404, f"Invalid URL ({method} {path}): no such endpoint on oaipipe serve.",
                               code="unknown_url")
            try:
                body = self._read_body()
            except (OSError, ValueError):  # the client went away or was too slow: nobody to answer
                self.close_connection = True
                return
            if template in INFERENCE_PATHS and not self._inject_faults(template):
                self.server.count(template, "dropped")
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            request = Request(method, path, parse_qs(parts.query), self.headers, body, params)
            limits = self.server.ratelimits if template in INFERENCE_PATHS else None
            taken = limits.admit(body) if limits is not None else 0  # 429 + x-ratelimit-* when over --rpm/--tpm
            reply = func(request)
            if limits is not None:
                reply.headers.update(limits.settle(taken, reply.body))
        except ApiError as exc:
            reply = Reply(exc.body(), status=exc.status, headers=exc.headers)
        except Exception as exc:  # noqa: BLE001 - a bug must still produce an OpenAI-shaped 500
            if os.environ.get("OAIPIPE_DEBUG"):
                traceback.print_exc()
            reply = Reply(ApiError(500, f"The local server failed: {type(exc).__name__}: {exc}",
                                   code="server_error").body(), status=500)
        self._skip_body()
        self.server.count(template, reply.status)  # before sending: a client that reads stats next sees it
        self._send(reply, request_id)
        if self._body_unread:
            self._linger()
        if self.server.config.log_requests:
            elapsed = (time.perf_counter() - started) * 1000
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {method} {path} {reply.status} {elapsed:.0f} ms "
                             f"{request_id}\n")

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()


def make_server(config: ServerConfig | None = None, **kwargs: Any) -> OaipipeServer:
    """Create (bind, not yet serve) a server; ``kwargs`` are flat :class:`ServerConfig`/:class:`Faults` settings."""
    if config is None:
        config = ServerConfig.from_kwargs(**kwargs)
    elif kwargs:
        raise TypeError("pass either a ServerConfig or keyword settings, not both")
    return OaipipeServer(config)
