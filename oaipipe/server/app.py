"""The HTTP layer: a ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive, routing, auth, faults, stats.

Every response carries ``Content-Length`` and ``x-request-id``. Errors have OpenAI's shape. Faults
(latency, injected statuses, dropped connections, slow answers) apply to the inference endpoints only.
"""

from __future__ import annotations

import contextlib
import hmac
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
from . import inference
from .config import Faults, ServerConfig
from .errors import ApiError
from .ratelimits import RateLimits

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
_MAX_BODY = 200 * 1024 * 1024


class Reply:
    """What a route returns: a status, a JSON-able body or raw bytes, and extra headers."""

    def __init__(self, body: Any = None, *, status: int = 200, raw: bytes | None = None,
                 content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.raw = raw
        self.content_type = content_type
        self.headers = headers or {}

    def payload(self) -> bytes:
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
        """(template, handler, params, path_exists)."""
        path_exists = False
        for m, pattern, template, func in self.routes:
            found = pattern.match(path)
            if found:
                path_exists = True
                if m == method:
                    return template, func, {k: unquote(v) for k, v in found.groupdict().items()}, True
        return path, None, {}, path_exists

    def _add_core_routes(self) -> None:
        self.route("GET", "/v1/models", self._models)
        self.route("GET", "/v1/models/{model}", self._model)
        self.route("POST", "/v1/chat/completions", self._chat)
        self.route("POST", "/v1/responses", self._responses)
        self.route("GET", "/_oaipipe/stats", lambda req: Reply(self.stats()))
        self.route("POST", "/_oaipipe/stats/reset", lambda req: Reply(self.reset_stats() or self.stats()))
        self.route("GET", "/_oaipipe/faults", lambda req: Reply(self.faults.to_dict()))
        self.route("POST", "/_oaipipe/faults", self._set_faults_route)
        self.route("GET", "/_oaipipe/health", lambda req: Reply({"status": "ok"}))

    def _models(self, req: Request) -> Reply:
        return Reply({"object": "list", "data": [m.to_openai() for m in list_models()]})

    def _model(self, req: Request) -> Reply:
        model_id = req.params["model"]
        found = find_model(model_id)
        if found is None:
            raise ApiError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return Reply(found.to_openai())

    def _chat(self, req: Request) -> Reply:
        body = req.json()
        if isinstance(body, dict) and body.get("stream"):
            return Reply(raw=inference.chat_stream_events(body), content_type="text/event-stream; charset=utf-8")
        return Reply(inference.chat_completion(body))

    def _responses(self, req: Request) -> Reply:
        return Reply(inference.create_response(req.json()))

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

    def stats(self) -> dict[str, Any]:
        """Counters since start (or the last reset): requests by path template and by status, injected faults."""
        with self._lock:
            return {"requests": self._stats_total, "by_path": dict(self._stats_by_path),
                    "by_status": dict(self._stats_by_status), "injected": dict(self._stats_injected)}

    def reset_stats(self) -> None:
        with self._lock:
            self._stats_total = 0
            self._stats_by_path.clear()
            self._stats_by_status.clear()
            self._stats_injected.clear()

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
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/v1"

    def server_close(self) -> None:
        self.stopping.set()
        super().server_close()
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


#: functions that add routes/state to a new server (files, fine-tuning, batches register here)
_EXTENSIONS: list[Callable[[OaipipeServer], None]] = []


def extension(func: Callable[[OaipipeServer], None]) -> Callable[[OaipipeServer], None]:
    _EXTENSIONS.append(func)
    return func


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "oaipipe-serve/0.1"
    server: OaipipeServer

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        return

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > _MAX_BODY:
                    raise ApiError(413, "The request body is too large (over 200 MB).")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise ApiError(413, "The request body is too large (over 200 MB).")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: Reply, request_id: str) -> None:
        payload = reply.payload()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-request-id", request_id)
        self.send_header("openai-version", "2020-10-01")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        # headers and body in one write: two small writes meet Nagle + delayed ACK (40 ms per call)
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(payload)
        self.flush_headers()

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
        """Apply latency and injected faults; returns False when the connection was dropped."""
        faults = self.server.faults
        delay = faults.latency + (faults.jitter * self.server.random() if faults.jitter else 0.0)
        if delay > 0:
            self.server.stopping.wait(delay)
        draw = self.server.random()
        edge = 0.0
        for status in sorted(faults.error_rates):
            edge += faults.error_rates[status]
            if draw < edge:
                self.server.count_injected(str(status))
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
            self.server.count_injected("drop")
            return False
        if draw < edge_drop + faults.timeout_rate:
            self.server.count_injected("timeout")
            self.server.stopping.wait(faults.timeout_seconds)
        return True

    def _dispatch(self, method: str) -> None:
        request_id = "req_" + secrets.token_hex(12)
        started = time.perf_counter()
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        template, func, params, path_exists = self.server.match(method, path)
        try:
            body = self._read_body()
        except ApiError as exc:
            self.close_connection = True
            self.server.count(template, exc.status)
            self._send(Reply(exc.body(), status=exc.status), request_id)
            return
        except (OSError, ValueError):
            self.close_connection = True
            return
        try:
            if path.startswith("/v1"):
                self._check_auth()
            if func is None:
                if path_exists:
                    raise ApiError(405, f"Method {method} is not allowed on {path}.", code="method_not_allowed")
                raise ApiError(404, f"Invalid URL ({method} {path}): no such endpoint on oaipipe serve.",
                               code="unknown_url")
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
        self.server.count(template, reply.status)  # before sending: a client that reads stats next sees it
        self._send(reply, request_id)
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
