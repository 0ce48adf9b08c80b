"""Built-in backend ``openai``: the official ``openai`` SDK (``AsyncOpenAI`` for calls, ``OpenAI`` for listings).

The SDK's own retries are switched off (``max_retries=0``) so that oaipipe's policy
(:mod:`oaipipe.retry`) applies the same way to every transport. One client per backend instance, with a
connection pool sized to ``concurrency``; :meth:`aclose` closes it. ``base_url`` selects any
OpenAI-compatible server; when it is unset the backend talks to ``https://api.openai.com/v1``. Clients are
made by :func:`oaipipe.keys.sdk_client`, which passes the key and the URL explicitly: the SDK's own
environment lookups never apply. ``OPENAI_BASE_URL`` / ``OPENAI_ORG_ID`` / ``OPENAI_PROJECT_ID`` are read
by the options instead (:class:`~oaipipe.kit.http.HTTPBackendOptions`), under the key rule of
:mod:`oaipipe.keys` (``OPENAI_API_KEY`` only to ``https://api.openai.com``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from .. import hookimpl
from ..base import Backend
from ..errors import BackendError, ServerError
from ..keys import endpoint_url, sdk_client
from ..kit.aiohttp import AiohttpTransportMixin
from ..kit.http import HTTPBackendMixin, HTTPBackendOptions, http_error, not_the_api
from ..lazy import lazy_module
from ..openai_wire import (
    parse_models,
)
from ..retry import connection_error
from ..types import ChatRequest, ChatResponse, ModelInfo

if TYPE_CHECKING:
    import httpx2
    import openai
else:  # imported on first use: `oaipipe --help` and `validate` never load the SDK
    httpx2 = lazy_module("httpx2")
    openai = lazy_module("openai")

__all__ = ["OpenAIBackend", "OpenAIOptions", "translate_sdk_error"]

_CHAT_KWARGS = ("model", "messages", "temperature", "max_tokens", "max_completion_tokens", "response_format",
                "reasoning_effort", "service_tier", "prompt_cache_key")
_RESPONSES_KWARGS = ("model", "input", "instructions", "temperature", "max_output_tokens", "text", "reasoning",
                     "service_tier", "prompt_cache_key")


def _request_url(exc: Exception, fallback: str) -> str:
    """The URL the failed request went to (the SDK knows it; the caller may only know the base URL)."""
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None)
    if url is None:
        return fallback
    text = str(url)
    return text.split("?", 1)[0] or fallback


def translate_sdk_error(exc: Exception, *, url: str, timeout: float, model: str = "") -> BackendError:
    """An ``openai`` SDK exception as the :mod:`oaipipe.errors` class our retry policy classifies."""
    if isinstance(exc, openai.APIStatusError):
        url = _request_url(exc, url)
        body = exc.body if exc.body is not None else exc.response.text
        return http_error(exc.status_code, body, exc.message, request_id=exc.request_id,
                          headers=exc.response.headers, url=url, model=model)
    if isinstance(exc, openai.APITimeoutError):
        return connection_error("timed out", url=url, timeout=timeout)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        if isinstance(cause, BackendError):  # raised on the way (a redirect to another server: oaipipe.keys)
            return cause
        return connection_error(f"{type(cause).__name__}: {cause}", url=url)
    return ServerError(f"unexpected answer from {url}: {type(exc).__name__}: {exc}",
                       hint="base_url must point at an OpenAI-compatible API (it usually ends in /v1)")


def _split(body: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


class OpenAIOptions(HTTPBackendOptions):
    """Options of the ``openai`` backend: the HTTP backends' options and the transport."""

    transport: Literal["auto", "sdk", "aiohttp"] = Field(
        "auto",
        description="How pipeline calls travel. auto: the lean aiohttp transport (raw HTTP, orjson; "
        "docs/transports.md); sdk: the official openai SDK (AsyncOpenAI); aiohttp: the lean one, always",
    )


class OpenAIBackend(AiohttpTransportMixin, HTTPBackendMixin, Backend):
    """OpenAI (or any compatible server): chat or Responses API over the lean aiohttp transport, or through
    the official SDK with ``transport: sdk``."""

    Options = OpenAIOptions

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._aclient: openai.AsyncOpenAI | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._client: openai.OpenAI | None = None

    # --- clients --------------------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,  # None: sdk_client sends a placeholder, never OPENAI_API_KEY
            "base_url": self.base_url,
            "organization": self.options.organization,
            "project": self.options.project,
            "timeout": self.options.timeout,
            "max_retries": 0,
            "default_headers": self._extra_headers() or None,
        }

    def _limits(self) -> httpx2.Limits:
        size = max(1, self.options.concurrency)
        return httpx2.Limits(max_connections=size, max_keepalive_connections=size)

    @property
    def aclient(self) -> openai.AsyncOpenAI:
        """The async client of the running event loop (a new loop gets a new client)."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient_loop is not loop:
            async def seen(response: httpx2.Response) -> None:  # every answer's headers (x-ratelimit-*)
                self.policy.observe(response.headers)

            http = openai.DefaultAsyncHttpx2Client(limits=self._limits(), timeout=self.options.timeout,
                                                   event_hooks={"response": [seen]})
            self._aclient = sdk_client(openai.AsyncOpenAI, http_client=http, **self._client_kwargs())
            self._aclient_loop = loop
        return self._aclient

    @property
    def client(self) -> openai.OpenAI:
        """The blocking client (model listings, the CLI)."""
        with self._lock:
            if self._client is None:
                http = openai.DefaultHttpx2Client(limits=self._limits(), timeout=self.options.timeout,
                                                  event_hooks={"response": [lambda r: self.policy.observe(r.headers)]})
                self._client = sdk_client(openai.OpenAI, http_client=http, **self._client_kwargs())
            return self._client

    # --- the contract ---------------------------------------------------------------------------

    @property
    def lean(self) -> bool:
        """True when pipeline calls take the lean aiohttp transport (``transport: auto`` or ``aiohttp``).

        Nothing of the chat and Responses calls needs the SDK: the bodies and the parsing are
        :mod:`oaipipe.openai_wire`'s for both. The SDK stays for ``transport: sdk``, the blocking calls
        (:meth:`list_models_sync`: ``oaipipe models``) and the subclasses that use its other endpoints
        (the ``batch`` backend's files and batches, whose options have no ``transport``).
        """
        return getattr(self.options, "transport", "sdk") in ("auto", "aiohttp")

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if self.lean:
            return await self._lean_chat(request, default_name="openai")
        return await self._sdk_chat(request)

    async def _sdk_chat(self, request: ChatRequest) -> ChatResponse:
        self._check_key()
        responses = self.api_of(request.model) == "responses"
        client = self.aclient
        path, body = self._chat_call(request)
        url = endpoint_url(self.base_url, path)

        async def attempt(body: dict[str, Any]) -> Any:
            kwargs = _split(body, _RESPONSES_KWARGS if responses else _CHAT_KWARGS)
            try:
                if responses:
                    result = await client.responses.create(**kwargs)
                else:
                    result = await client.chat.completions.create(**kwargs)
            except openai.OpenAIError as exc:
                raise translate_sdk_error(exc, url=url, timeout=self.options.timeout, model=request.model) from exc
            if isinstance(result, str):  # the SDK hands back the text of a non-JSON answer (an HTML page)
                raise not_the_api(url, None, result)
            return result

        start = time.perf_counter()
        result = await self._aflex_fallback(
            body, lambda b: self.policy.arun(lambda: self._agated(lambda: attempt(b))))
        latency = time.perf_counter() - start
        request_id = getattr(result, "_request_id", None)
        data = result.model_dump(mode="json", exclude_unset=False)
        return self._parse_reply(data, request, default_name="openai", request_id=request_id, latency=latency)

    def list_models_sync(self) -> list[ModelInfo]:
        """The server's models, via the blocking client."""
        self._check_key()
        url = endpoint_url(self.base_url, "/models")

        def attempt() -> Any:
            try:
                raw = self.client.models.with_raw_response.list()
            except openai.OpenAIError as exc:
                raise translate_sdk_error(exc, url=url, timeout=self.options.timeout) from exc
            if "json" not in (raw.headers.get("content-type") or ""):  # the SDK cannot parse an HTML page
                raise not_the_api(url, raw.status_code, raw.http_response.text, request_id=raw.request_id)
            return {"data": [m.model_dump(mode="json") for m in raw.parse().data]}

        return parse_models(self.policy.run(lambda: self._gated(attempt)))

    async def list_models(self) -> list[ModelInfo]:
        if self.lean:
            return await self._lean_models()
        return await asyncio.to_thread(self.list_models_sync)

    async def aclose(self) -> None:
        await self._lean_close()
        if self._aclient is not None:
            with contextlib.suppress(RuntimeError):  # created in a loop that is gone
                await self._aclient.close()
            self._aclient = None
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


@hookimpl
def register_backends(register: Any) -> None:
    register("openai", OpenAIBackend)
