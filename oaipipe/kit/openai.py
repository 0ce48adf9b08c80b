"""The official ``openai`` SDK as a backend's transport: its clients, and its errors as oaipipe's.

What the ``openai`` backend (``transport: sdk``), the ``batch`` backend (files and batches) and the
``openai`` trainer (fine-tuning jobs) share, public for a plugin that needs an SDK endpoint oaipipe does not
wrap::

    from oaipipe.kit import HTTPBackendMixin, OpenAISDKMixin, translate_sdk_error

    class MyBackend(OpenAISDKMixin, HTTPBackendMixin, Backend[MyOptions]):  # MyOptions(HTTPBackendOptions)
        async def chat(self, request):
            try:
                result = await self.aclient.chat.completions.create(...)
            except openai.OpenAIError as exc:
                raise translate_sdk_error(exc, url=self.base_url, timeout=self.options.timeout) from exc

The SDK's own retries are switched off (``max_retries=0``) so that oaipipe's policy (:mod:`oaipipe.retry`)
applies the same way to every transport; its connection pool is sized to ``concurrency``; every answer's
headers go to ``policy.observe`` (the x-ratelimit-* learning). Clients are made by
:func:`oaipipe.keys.sdk_client`, which passes the key and the URL explicitly: the SDK's own environment
lookups never apply. The SDK is imported on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, ServerError
from ..keys import endpoint_url, sdk_client, too_many_redirects
from ..lazy import lazy_module
from ..openai_wire import parse_models
from ..retry import connection_error
from ..types import ModelInfo
from .http import http_error, not_the_api

if TYPE_CHECKING:
    import httpx2
    import openai
else:  # imported on first use: `oaipipe --help`, `validate` and lean runs never load the SDK
    httpx2 = lazy_module("httpx2")
    openai = lazy_module("openai")

__all__ = ["OpenAISDKMixin", "translate_sdk_error"]


def _request_url(exc: Exception, fallback: str) -> str:
    """The URL the failed request went to (the SDK knows it; the caller may only know the base URL)."""
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None)
    if url is None:
        return fallback
    text = str(url)
    return text.split("?", 1)[0] or fallback


def translate_sdk_error(exc: Exception, *, url: str, timeout: float, model: str = "") -> BackendError:
    """An ``openai`` SDK exception as the :mod:`oaipipe.errors` class our retry policy classifies: an HTTP
    error answer as :func:`~oaipipe.kit.http.http_error` makes it, a timeout or a connection failure as
    :func:`oaipipe.retry.connection_error`, anything else as a :class:`~oaipipe.errors.ServerError`."""
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
        if isinstance(cause, httpx2.TooManyRedirects):
            return too_many_redirects(url, cause)
        return connection_error(f"{type(cause).__name__}: {cause}", url=url)
    return ServerError(f"unexpected answer from {url}: {type(exc).__name__}: {exc}",
                       hint="base_url must point at an OpenAI-compatible API (it usually ends in /v1)")


class OpenAISDKMixin:
    """The SDK's clients for a backend built on :class:`~oaipipe.kit.http.HTTPBackendMixin` (list it
    first): :attr:`aclient` (``AsyncOpenAI``, one per event loop), :attr:`client` (``OpenAI``, blocking),
    :meth:`list_models_sync` and :meth:`list_models` through them, and :meth:`aclose` closing both."""

    options: Any
    policy: Any
    api_key: str | None
    base_url: str
    _lock: Any

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)  # type: ignore[call-arg]
        self._aclient: openai.AsyncOpenAI | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._client: openai.OpenAI | None = None

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,  # None: sdk_client sends a placeholder, never OPENAI_API_KEY
            "base_url": self.base_url,
            "organization": self.options.organization,
            "project": self.options.project,
            "timeout": self.options.timeout,
            "max_retries": 0,
            "default_headers": self._extra_headers() or None,  # type: ignore[attr-defined]
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

    def list_models_sync(self) -> list[ModelInfo]:
        """The server's models, via the blocking client."""
        self._check_key()  # type: ignore[attr-defined]
        url = endpoint_url(self.base_url, "/models")

        def attempt() -> Any:
            try:
                raw = self.client.models.with_raw_response.list()
            except openai.OpenAIError as exc:
                raise translate_sdk_error(exc, url=url, timeout=self.options.timeout) from exc
            if "json" not in (raw.headers.get("content-type") or ""):  # the SDK cannot parse an HTML page
                raise not_the_api(url, raw.status_code, raw.http_response.text, request_id=raw.request_id)
            return {"data": [m.model_dump(mode="json") for m in raw.parse().data]}

        return parse_models(self.policy.run(lambda: self._gated(attempt)))  # type: ignore[attr-defined]

    async def list_models(self) -> list[ModelInfo]:
        return await asyncio.to_thread(self.list_models_sync)

    async def aclose(self) -> None:
        """Close both clients (a subclass that overrides this calls ``await super().aclose()``)."""
        if self._aclient is not None:
            with contextlib.suppress(RuntimeError):  # created in a loop that is gone
                await self._aclient.close()
            self._aclient = None
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
