"""Built-in backend ``requests``: the OpenAI HTTP API over raw HTTP with a pooled ``requests.Session``.

Same contract as the ``openai`` backend (same request bodies, same parsing, same retry policy), without
the SDK: useful where the SDK cannot be installed, and a second, independent transport for parity tests.
It is a :class:`~oaipipe.base.SyncBackend`: calls run in worker threads; the connection pool is sized to
``concurrency``. No ``Authorization`` header is sent when no key applies (a custom ``base_url`` without
``api_key``).
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .. import hookimpl
from ..base import SyncBackend
from ..keys import check_redirect, endpoint_url, too_many_redirects
from ..kit.http import HTTPBackendMixin, http_error, not_the_api
from ..lazy import lazy_module
from ..openai_wire import (
    parse_models,
)
from ..retry import connection_error
from ..types import ChatRequest, ChatResponse, ModelInfo

if TYPE_CHECKING:
    import requests
    import requests.adapters
else:  # imported on first use
    requests = lazy_module("requests")

__all__ = ["RequestsBackend"]


def _same_origin_session_class() -> type:
    class SameOriginSession(requests.Session):
        """A session that follows redirects within the origin only (:func:`oaipipe.keys.check_redirect`):
        requests drops only ``Authorization`` on its way to another host, not ``headers:`` nor the body."""

        def get_redirect_target(self, resp: requests.Response) -> str | None:
            target = super().get_redirect_target(resp)
            if target:
                check_redirect(resp.url, target, resp.status_code)
            return target

    return SameOriginSession


def _new_session() -> requests.Session:
    """A :class:`SameOriginSession` (the class is made on first use: ``requests`` is imported lazily)."""
    if not _SESSION_CLASS:
        _SESSION_CLASS.append(_same_origin_session_class())
    session: requests.Session = _SESSION_CLASS[0]()
    return session


_SESSION_CLASS: list[type] = []


class RequestsBackend(HTTPBackendMixin, SyncBackend):
    """OpenAI-compatible HTTP API over raw HTTP (requests), no SDK."""

    #: the Batch API serves the same requests (the tier planner switches to it for `tier: batch`)
    tier_backends = {"batch": "batch"}  # noqa: RUF012 - a ClassVar of Backend

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._session: requests.Session | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- plumbing -------------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        with self._lock:
            if self._session is None:
                session = _new_session()
                size = max(1, self.options.concurrency)
                adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=size, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers.update({"Content-Type": "application/json", "Accept": "application/json",
                                        "User-Agent": "oaipipe-requests"})
                session.headers.update(self._extra_headers())
                session.hooks["response"].append(lambda resp, *a, **k: self.policy.observe(resp.headers))
                if self.api_key:
                    session.headers["Authorization"] = f"Bearer {self.api_key}"
                self._session = session
            return self._session

    def _once(self, method: str, path: str, body: dict[str, Any] | None, model: str = "") -> tuple[Any, str | None]:
        """One HTTP attempt through the key gate: the decoded JSON and the request id, or a classified
        BackendError."""
        return self._gated(lambda: self._request(method, path, body, model))

    def _request(self, method: str, path: str, body: dict[str, Any] | None, model: str) -> tuple[Any, str | None]:
        url = endpoint_url(self.base_url, path)
        timeout = self.options.timeout
        try:
            resp = self.session.request(method, url, json=body, timeout=timeout)
        except requests.Timeout as exc:
            raise connection_error(type(exc).__name__, url=url, timeout=timeout) from exc
        except requests.TooManyRedirects as exc:
            raise too_many_redirects(url, exc) from exc
        except requests.RequestException as exc:
            raise connection_error(f"{type(exc).__name__}: {exc}", url=url) from exc
        request_id = resp.headers.get("x-request-id")
        if resp.status_code >= 400:
            raise http_error(resp.status_code, resp.text, resp.reason or "", request_id=request_id,
                             headers=resp.headers, url=url, model=model)
        try:
            data = resp.json()
        except (ValueError, json.JSONDecodeError):
            raise not_the_api(url, resp.status_code, resp.text, request_id=request_id) from None
        return data, request_id

    # --- the contract ---------------------------------------------------------------------------

    def chat_sync(self, request: ChatRequest) -> ChatResponse:
        self._check_key()
        path, body = self._chat_call(request)
        start = time.perf_counter()
        data, request_id = self._flex_fallback(
            body, lambda b: self.policy.run(lambda: self._once("POST", path, b, request.model)))
        latency = time.perf_counter() - start
        return self._parse_reply(data, request, default_name="requests", request_id=request_id, latency=latency)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Run :meth:`chat_sync` on this backend's own threads (one per ``concurrency`` slot).

        asyncio's default pool has only ``cpu_count + 4`` threads, which would cap concurrency.
        """
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=max(1, self.options.concurrency),
                                                    thread_name_prefix="oaipipe-requests")
            executor = self._executor
        return await asyncio.get_running_loop().run_in_executor(executor, self.chat_sync, request)

    def list_models_sync(self) -> list[ModelInfo]:
        self._check_key()
        data, _ = self.policy.run(lambda: self._once("GET", "/models", None))
        return parse_models(data)

    async def aclose(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None


@hookimpl
def register_backends(register: Any) -> None:
    register("requests", RequestsBackend)
