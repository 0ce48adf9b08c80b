"""What the ``openai`` and ``requests`` backends share: options, the retry policy, key and URL handling,
the chat endpoint and body, reply parsing, and HTTP error answers as classified errors."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ..base import BackendOptions, PluginOptions
from ..errors import AuthenticationError, BackendError, RateLimitError, ServerError
from ..keys import OPENAI_BASE_URL, KeyGate, check_base_url, is_openai_url, refusal_hint, resolve_api_key
from ..models_table import api_for
from ..openai_wire import api_call, error_detail, parse_reply
from ..retry import RetryPolicy, error_for_status, parse_retry_after
from ..types import ChatRequest, ChatResponse

__all__ = ["OPENAI_BASE_URL", "HTTPBackendMixin", "HTTPBackendOptions", "http_error", "not_the_api"]

T = TypeVar("T")


#: option of the HTTP backends -> the environment variable the official SDK reads for it
SDK_ENVIRONMENT = {"base_url": "OPENAI_BASE_URL", "organization": "OPENAI_ORG_ID", "project": "OPENAI_PROJECT_ID"}


class HTTPBackendOptions(BackendOptions):
    """Options of the HTTP backends (``openai``, ``requests``), on top of every backend's options."""

    api: Literal["auto", "chat", "responses"] = Field(
        "auto", description="auto: per model from oaipipe/models_table.py (gpt-5-class and o-series: Responses, "
        "gpt-4o-class and unknown models: chat), overridden by api_models; chat: POST /chat/completions; "
        "responses: POST /responses"
    )
    api_models: dict[str, Literal["chat", "responses"]] = Field(
        default_factory=dict,
        description="Which API `api: auto` uses for a model id or prefix, over the built-in table "
        "(e.g. {my-proxy-model: responses})",
    )
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = Field(
        None, description="Reasoning models: sent as reasoning.effort (Responses) or reasoning_effort (chat)"
    )
    service_tier: Literal["auto", "default", "flex", "priority"] | None = Field(
        None, description="Processing tier sent with every call (flex: cheaper, slower, may answer 429 "
        "resource unavailable; priority: faster, dearer)"
    )
    organization: str | None = Field(None, description="Sent as OpenAI-Organization")
    project: str | None = Field(None, description="Sent as OpenAI-Project")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers on every request")
    max_tokens_param: Literal["auto", "max_tokens", "max_completion_tokens"] = Field(
        "auto",
        description="How chat calls send the length limit; auto: max_completion_tokens for api.openai.com, "
        "max_tokens for other servers",
    )
    retry_base: float = Field(0.5, ge=0, description="Backoff base in seconds: wait up to base * 2**attempt")
    retry_max_delay: float = Field(20.0, ge=0, description="Longest backoff wait in seconds")
    max_retry_after: float = Field(60.0, ge=0, description="Longest wait honoured from Retry-After / retry-after-ms")
    rate_limit_patience: float = Field(
        300.0, ge=0, description="Seconds a rate-limited call (429, not out of quota) keeps retrying past max_retries"
    )
    #: the options filled from the SDK's environment variables (option name -> variable)
    _from_env: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("service_tier")
    @classmethod
    def _one_tier_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        """``tier:`` (oaipipe's choice, incl. the planner) and ``service_tier:`` (sent as written) would
        contradict each other."""
        tier = info.data.get("tier")
        if tier is not None and value is not None:
            raise ValueError(f"tier: {tier} and service_tier: {value} are both set: keep `tier:` "
                             "(standard | flex | priority | batch | auto) and remove service_tier")
        return value

    @model_validator(mode="after")
    def _sdk_environment(self) -> HTTPBackendOptions:
        """What the official SDK reads from the environment when an argument is left out:
        ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID`` fill ``base_url``, ``organization``,
        ``project`` when the pipeline does not set them. The key rule is unchanged (oaipipe.keys):
        ``OPENAI_API_KEY`` goes only to ``https://api.openai.com``, wherever the URL came from."""
        for name, var in SDK_ENVIRONMENT.items():
            value = os.environ.get(var)
            if getattr(self, name) is None and value:
                if name == "base_url":
                    check_base_url(value, name=var)
                setattr(self, name, value)
                self._from_env[name] = var
        return self

    def origin_of(self, name: str) -> str | None:
        """The environment variable an option was taken from, or None (the pipeline set it, or nobody)."""
        return self._from_env.get(name)


def http_error(status: int, body: Any, fallback: str, *, url: str, request_id: str | None = None,
               headers: Mapping[str, str] | None = None, model: str = "") -> BackendError:
    """An HTTP error answer (status, OpenAI-shaped error ``body``) as the error class the retry policy
    classifies; ``fallback`` is the message when the body has none, ``headers`` may carry Retry-After."""
    return error_for_status(
        status,
        error_detail(body, fallback),
        request_id=request_id,
        retry_after=parse_retry_after(headers),
        url=url,
        model=model,
    )


def not_the_api(url: str, status: int | None, text: str, *, request_id: str | None = None) -> BackendError:
    """A successful answer that is not the API's JSON (an HTML page, a proxy's banner): not retried, since
    the same address gives the same page again."""
    err = ServerError(
        f"HTTP {status or '?'} from {url} is not JSON: {text[:200]!r}",
        status=status, request_id=request_id,
        hint="base_url must point at an OpenAI-compatible API (it usually ends in /v1)",
    )
    err.retryable = False  # type: ignore[misc]
    return err


class HTTPBackendMixin:
    """Key, URL, headers, retry policy, chat endpoint and reply parsing derived from
    :class:`HTTPBackendOptions`; mixed in before :class:`~oaipipe.base.Backend`."""

    Options: ClassVar[type[PluginOptions]] = HTTPBackendOptions
    needs_api_key: ClassVar[bool] = True
    options: Any
    name: str

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)  # type: ignore[call-arg]
        self._init_http()
        self._lock = threading.Lock()

    def _init_http(self) -> None:
        opts = self.options
        #: the key this backend sends, or None (oaipipe.keys decides: OPENAI_API_KEY only goes to OpenAI)
        self.api_key: str | None = resolve_api_key(opts)
        self.base_url: str = (opts.base_url or OPENAI_BASE_URL).rstrip("/")
        self.policy = RetryPolicy(
            max_retries=opts.max_retries,
            base=opts.retry_base,
            max_delay=opts.retry_max_delay,
            max_retry_after=opts.max_retry_after,
            rate_limit_patience=opts.rate_limit_patience,
        )
        #: every HTTP attempt goes through it: the first one alone, none after a 401 (oaipipe.keys.KeyGate)
        self._gate = KeyGate()
        if opts.tier in self.tiers:  # a fixed `tier:` this backend serves itself (auto: the run's planner)
            self.use_tier(opts.tier)

    @property
    def max_tokens_param(self) -> str:
        choice = self.options.max_tokens_param
        if choice != "auto":
            return str(choice)
        return "max_completion_tokens" if is_openai_url(self.options.base_url) else "max_tokens"

    def api_of(self, model: str) -> str:
        """``"responses"`` or ``"chat"``: the API a call of ``model`` goes to (``api``, ``api_models``)."""
        choice = self.options.api
        if choice != "auto":
            return str(choice)
        context = getattr(self, "context", None)
        models = context.settings.get("models") if context is not None else None
        return api_for(model, self.options.api_models, models)  # api_models, the pipeline's models:, the table

    def _chat_call(self, request: ChatRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint path (below ``base_url``) and JSON body of a chat request (:func:`api_call`)."""
        return api_call(request, self.api_of(request.model), max_tokens_param=self.max_tokens_param,
                        reasoning_effort=self.options.reasoning_effort, service_tier=self.options.service_tier)

    def _parse_reply(self, data: Any, request: ChatRequest, *, default_name: str, request_id: str | None,
                     latency: float) -> ChatResponse:
        """The decoded reply of :meth:`_chat_call`'s endpoint as a :class:`ChatResponse`."""
        return parse_reply(self.api_of(request.model), data, request, backend=self.name or default_name,
                           request_id=request_id, latency=latency)

    #: calls that met flex's 429 "Resource Unavailable" and were sent again at the standard tier
    flex_fallbacks: int = 0
    #: the OpenAI ``service_tier`` each tier is sent as (``tier:`` / the tier planner: :meth:`use_tier`)
    tiers: ClassVar[tuple[str, ...]] = ("standard", "flex", "priority")
    SERVICE_TIER: ClassVar[dict[str, str]] = {"standard": "default", "flex": "flex", "priority": "priority"}

    def use_tier(self, tier: str) -> None:
        """Send every call with the ``service_tier`` of ``tier`` (flex keeps its fallback to standard)."""
        self.options.service_tier = self.SERVICE_TIER[tier]

    @staticmethod
    def flex_unavailable(error: BaseException) -> bool:
        """A 429 "Resource Unavailable" of flex processing (not a rate limit: waiting does not help)."""
        if not isinstance(error, RateLimitError):
            return False
        text = str(error).lower()
        return "resource unavailable" in text or "resource_unavailable" in text

    def _flex_fallback(self, body: dict[str, Any], send: Callable[[dict[str, Any]], T]) -> T:
        """``send(body)``; when a flex call meets "Resource Unavailable", send it once more at the
        standard tier (``service_tier: default``) instead of retrying flex."""
        try:
            return send(body)
        except BackendError as exc:
            if body.get("service_tier") != "flex" or not self.flex_unavailable(exc):
                raise
        self.flex_fallbacks += 1
        return send({**body, "service_tier": "default"})

    async def _aflex_fallback(self, body: dict[str, Any], send: Callable[[dict[str, Any]], Awaitable[T]]) -> T:
        """:meth:`_flex_fallback` for an async ``send``."""
        try:
            return await send(body)
        except BackendError as exc:
            if body.get("service_tier") != "flex" or not self.flex_unavailable(exc):
                raise
        self.flex_fallbacks += 1
        return await send({**body, "service_tier": "default"})

    def _unset_key_var(self) -> str | None:
        """The variable of ``api_key: ${env:VAR}`` when VAR was not set (the pipeline file named a key)."""
        settings = getattr(getattr(self, "context", None), "settings", None) or {}
        unset = settings.get("unset_env") or {}
        return unset.get("backend.api_key") if isinstance(unset, dict) else None

    def _explain_refusal(self, error: BaseException) -> None:
        """A 401's hint, fitted to this backend: was a key sent at all, and where should it come from."""
        if isinstance(error, AuthenticationError) and error.status == 401:
            error.hint = refusal_hint(self.base_url, key_sent=self.api_key is not None,
                                      unset_var=None if self.api_key is not None else self._unset_key_var())

    def _attempt_failed(self, exc: AuthenticationError | RateLimitError) -> None:
        """What a failed attempt tells before it goes on up: a 401 gets the hint that fits this backend's
        key; flex's "Resource Unavailable" is not retried (waiting does not help: see _flex_fallback)."""
        if isinstance(exc, AuthenticationError):
            self._explain_refusal(exc)
        elif self.flex_unavailable(exc):
            exc.retryable = False  # type: ignore[misc]

    def _gated(self, attempt: Callable[[], T]) -> T:
        """One blocking HTTP attempt through the key gate (run it inside the retry policy)."""
        def run() -> T:
            try:
                return attempt()
            except (AuthenticationError, RateLimitError) as exc:
                self._attempt_failed(exc)
                raise
        return self._gate.call(run)

    async def _agated(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """One async HTTP attempt through the key gate (run it inside the retry policy)."""
        async def run() -> T:
            try:
                return await attempt()
            except (AuthenticationError, RateLimitError) as exc:
                self._attempt_failed(exc)
                raise
        return await self._gate.acall(run)

    def _check_key(self) -> None:
        """No key for api.openai.com, or a key the server already refused: fail before any request."""
        self._gate.check()
        if self.api_key is None and is_openai_url(self.options.base_url):
            raise AuthenticationError(
                f"no API key for backend '{self.name}' ({self.base_url})",
                hint="set OPENAI_API_KEY (export OPENAI_API_KEY=...) or `api_key: ${env:MY_KEY}` in the backend "
                "block; or point backend.base_url at another server; or use `type: local` to run offline",
            )

    def _extra_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.options.organization:
            headers["OpenAI-Organization"] = self.options.organization
        if self.options.project:
            headers["OpenAI-Project"] = self.options.project
        headers.update(self.options.headers or {})
        return headers
