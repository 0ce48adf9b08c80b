"""The lean async transport: the OpenAI HTTP API over raw HTTP with ``aiohttp`` and ``orjson``.

No SDK objects on the hot path: the body comes from :mod:`oaipipe.openai_wire` (chat or Responses, per
``options.api``), is encoded with ``orjson``, sent on one pooled ``aiohttp`` session per event loop
(``concurrency`` connections), and the answer's bytes are decoded with ``orjson`` and handed straight to
the shared reply parsers. Everything else is the contract of :class:`~oaipipe.kit.http.HTTPBackendMixin`:
the retry policy (every answer's headers go to ``policy.observe`` for the x-ratelimit-* learning), the key
rule (no ``Authorization`` header when no key applies) and the :class:`~oaipipe.keys.KeyGate`, and HTTP
error answers classified by :func:`oaipipe.retry.error_for_status`. Chosen by measurement: docs/transports.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from ..keys import check_redirect, endpoint_url, too_many_redirects
from ..lazy import lazy_module
from ..openai_wire import parse_models
from ..retry import connection_error
from ..types import ChatRequest, ChatResponse, ModelInfo
from .http import http_error, not_the_api

if TYPE_CHECKING:
    import aiohttp
    import orjson
else:  # imported on first use: `oaipipe --help` and `validate` never load them
    aiohttp = lazy_module("aiohttp")
    orjson = lazy_module("orjson")

__all__ = ["AiohttpTransportMixin"]


async def _refuse_cross_origin(session: Any, context: Any, params: Any) -> None:
    """Before aiohttp follows a redirect: only within the origin (:func:`oaipipe.keys.check_redirect`);
    aiohttp drops only ``Authorization`` on its way to another host, not ``headers:`` nor the body."""
    response = params.response
    location = response.headers.get("Location") or response.headers.get("URI")
    if location:
        try:
            check_redirect(str(params.url), location, response.status)
        except BaseException:
            response.close()
            raise


class AiohttpTransportMixin:
    """Async chat and model listing over ``aiohttp``; mixed in next to :class:`HTTPBackendMixin`."""

    options: Any
    policy: Any
    api_key: str | None
    base_url: str

    _session: aiohttp.ClientSession | None = None
    _session_loop: asyncio.AbstractEventLoop | None = None

    def _lean_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "oaipipe-aiohttp"}
        headers.update(self._extra_headers())  # type: ignore[attr-defined]
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _lean_session(self) -> aiohttp.ClientSession:
        """The session of the running event loop (a new loop gets a new session)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop or self._session.closed:
            size = max(1, int(self.options.concurrency))
            connector = aiohttp.TCPConnector(limit=size, limit_per_host=size, ttl_dns_cache=300)
            tracing = aiohttp.TraceConfig()
            tracing.on_request_redirect.append(_refuse_cross_origin)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._lean_headers(), trace_configs=[tracing],
                timeout=aiohttp.ClientTimeout(total=self.options.timeout),
                auto_decompress=True, raise_for_status=False,
            )
            self._session_loop = loop
        return self._session

    async def _lean_once(self, method: str, path: str, body: dict[str, Any] | None,
                         model: str = "") -> tuple[Any, str | None]:
        """One HTTP attempt: the decoded JSON and the request id, or a classified BackendError."""
        session = self._lean_session()
        url = endpoint_url(self.base_url, path)
        data = None if body is None else orjson.dumps(body)
        try:
            async with session.request(method, url, data=data) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
                reason = resp.reason or ""
        except TimeoutError as exc:
            raise connection_error("timed out", url=url, timeout=self.options.timeout) from exc
        except aiohttp.TooManyRedirects as exc:
            raise too_many_redirects(url, exc) from exc
        except aiohttp.ClientError as exc:
            raise connection_error(f"{type(exc).__name__}: {exc}", url=url) from exc
        self.policy.observe(headers)
        request_id = headers.get("x-request-id")
        if status >= 400:
            raise http_error(status, raw.decode("utf-8", "replace"), reason, request_id=request_id,
                             headers=headers, url=url, model=model)
        try:
            return orjson.loads(raw), request_id
        except orjson.JSONDecodeError:
            raise not_the_api(url, status, raw.decode("utf-8", "replace"), request_id=request_id) from None

    async def _lean_call(self, method: str, path: str, body: dict[str, Any] | None,
                         model: str = "") -> tuple[Any, str | None]:
        """:meth:`_lean_once` through the key gate, inside the retry policy."""
        return await self.policy.arun(
            lambda: self._agated(lambda: self._lean_once(method, path, body, model)))  # type: ignore[attr-defined]

    async def _lean_chat(self, request: ChatRequest, *, default_name: str) -> ChatResponse:
        self._check_key()  # type: ignore[attr-defined]
        path, body = self._chat_call(request)  # type: ignore[attr-defined]
        start = time.perf_counter()
        # a flex call that meets "Resource Unavailable" is sent once more at the standard tier
        data, request_id = await self._aflex_fallback(  # type: ignore[attr-defined]
            body, lambda b: self._lean_call("POST", path, b, request.model))
        latency = time.perf_counter() - start
        return self._parse_reply(data, request, default_name=default_name,  # type: ignore[attr-defined]
                                 request_id=request_id, latency=latency)

    async def _lean_models(self) -> list[ModelInfo]:
        self._check_key()  # type: ignore[attr-defined]
        data, _ = await self._lean_call("GET", "/models", None)
        return parse_models(data)

    async def _lean_close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            with contextlib.suppress(RuntimeError):  # created in a loop that is gone
                await session.close()
