"""Built-in backend ``openai``: OpenAI's chat and Responses APIs over the lean aiohttp transport
(:mod:`oaipipe.kit.aiohttp`, the default) or the official ``openai`` SDK (``transport: sdk``; its clients
and error translation are :mod:`oaipipe.kit.openai`'s, shared with the ``batch`` backend and the ``openai``
trainer).

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

import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from .. import hookimpl
from ..base import Backend
from ..keys import endpoint_url
from ..kit.aiohttp import AiohttpTransportMixin
from ..kit.http import HTTPBackendMixin, HTTPBackendOptions, not_the_api
from ..kit.openai import OpenAISDKMixin, translate_sdk_error
from ..lazy import lazy_module
from ..types import ChatRequest, ChatResponse, ModelInfo

if TYPE_CHECKING:
    import openai
else:  # imported on first use: `oaipipe --help`, `validate` and lean runs never load the SDK
    openai = lazy_module("openai")
#: the SDK's HTTP client (its clients are made in oaipipe.kit.openai), named here with the SDK so that the
#: plugin host leaves this plugin out, saying what to install, when either library is missing
httpx2 = lazy_module("httpx2")

__all__ = ["OpenAIBackend", "OpenAIOptions", "translate_sdk_error"]

_CHAT_KWARGS = ("model", "messages", "temperature", "max_tokens", "max_completion_tokens", "response_format",
                "reasoning_effort", "service_tier", "prompt_cache_key")
_RESPONSES_KWARGS = ("model", "input", "instructions", "temperature", "max_output_tokens", "text", "reasoning",
                     "service_tier", "prompt_cache_key")


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


class OpenAIBackend(AiohttpTransportMixin, OpenAISDKMixin, HTTPBackendMixin, Backend):
    """OpenAI (or any compatible server): chat or Responses API over the lean aiohttp transport, or through
    the official SDK with ``transport: sdk``."""

    Options = OpenAIOptions
    #: the Batch API serves the same requests (the tier planner switches to it for `tier: batch`)
    tier_backends = {"batch": "batch"}  # noqa: RUF012 - a ClassVar of Backend

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

    async def list_models(self) -> list[ModelInfo]:
        if self.lean:
            return await self._lean_models()
        return await super().list_models()

    async def aclose(self) -> None:
        await self._lean_close()
        await super().aclose()


@hookimpl
def register_backends(register: Any) -> None:
    register("openai", OpenAIBackend)
