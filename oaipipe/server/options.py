"""The request options chat completions and Responses share, beyond the messages (sources: docs/serve.md).

* :func:`refuse_unsupported`: what the engine cannot honour (tools, stored conversations, logprobs, ...) is
  refused with a 400 in OpenAI's shape instead of being ignored.
* :func:`reasoning_for`: reasoning effort for reasoning-class models (gpt-5, gpt-6, o-series); a fixed stand-in
  count of reasoning tokens per effort (the engine does not reason); their refusals of ``max_tokens`` and
  of a ``temperature`` other than 1, and of reasoning options on other models.
* :func:`service_tier`: ``service_tier`` echoed as served (``auto`` → ``default``, ``fast`` → ``priority``),
  and the ``flex_unavailable_rate`` fault: a flex call answered 429 "Resource Unavailable".
* :func:`cached_tokens`: prompt caching (see :mod:`oaipipe.server.promptcache`).
* :func:`check_model_lifecycle`: a model past the shutdown date the server was told about answers 404.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from .errors import ApiError
from .promptcache import MINIMUM, PromptCache, prompt_token_sequence

__all__ = ["DEFAULT_EFFORT", "REASONING_EFFORTS", "REASONING_TOKENS", "SERVICE_TIERS", "CallContext", "Reasoning",
           "base_model", "cached_tokens", "check_model_lifecycle", "is_reasoning_model", "reasoning_for",
           "refuse_unsupported", "service_tier"]


@dataclass
class CallContext:
    """What a call needs from the server besides its body. ``draw`` is the server's seeded random draw; it
    is ``None`` where no fault is injected (batches)."""

    key_id: str = ""
    prompt_cache: PromptCache | None = None
    shutdowns: dict[str, str] = field(default_factory=dict)
    flex_unavailable_rate: float = 0.0
    draw: Callable[[], float] | None = None
    count_injected: Callable[[str], None] | None = None
    today: Callable[[], date] = date.today


# --- what the engine cannot honour ----------------------------------------------------------------

_NOT_IMPLEMENTED = "oaipipe serve (an offline test double) does not implement {what}"


def _refuse(param: str, what: str, hint: str) -> ApiError:
    return ApiError(400, f"{_NOT_IMPLEMENTED.format(what=what)}: '{param}' cannot be honoured, so the request is "
                    f"refused rather than answered without it. {hint}", param=param, code="unsupported_parameter")


def _given(value: Any) -> bool:
    return value is not None and value != [] and value != {}


def refuse_unsupported(body: dict[str, Any], api: str) -> None:
    """Raise a 400 ``unsupported_parameter`` for the first option of ``body`` the engine cannot honour
    (``api`` is ``"chat"`` or ``"responses"``). An option that asks for nothing (``tools: []``,
    ``tool_choice: "none"``, ``logprobs: false``) is accepted. ``stream`` must be a boolean."""
    if body.get("stream") is not None and not isinstance(body.get("stream"), bool):
        raise ApiError(400, f"Invalid type for 'stream': expected a boolean, but got {body.get('stream')!r}.",
                       param="stream", code="invalid_type")
    no_tools = "Leave it out (the engine answers in text only)."
    if _given(body.get("tools")):
        raise _refuse("tools", "tools or function calling", no_tools)
    if body.get("tool_choice") not in (None, "none") and not (api == "responses" and body.get("tool_choice") == "auto"):
        raise _refuse("tool_choice", "tools or function calling", no_tools)
    if api == "chat":
        if _given(body.get("functions")):
            raise _refuse("functions", "function calling", no_tools)
        if body.get("function_call") not in (None, "none"):
            raise _refuse("function_call", "function calling", no_tools)
        if body.get("logprobs"):
            raise _refuse("logprobs", "log probabilities", "Leave out logprobs and top_logprobs.")
        if _given(body.get("audio")) or "audio" in (body.get("modalities") or ()):
            raise _refuse("audio" if _given(body.get("audio")) else "modalities", "audio output",
                          "Ask for text output only.")
        if _given(body.get("web_search_options")):
            raise _refuse("web_search_options", "web search", "Leave it out.")
    else:
        stateless = "The server keeps no responses or conversations: send the whole conversation in 'input'."
        if _given(body.get("previous_response_id")):
            raise _refuse("previous_response_id", "stored responses", stateless)
        if _given(body.get("conversation")):
            raise _refuse("conversation", "conversations", stateless)
        if body.get("background"):
            raise _refuse("background", "background responses", "Leave out background (or send background: false).")
        if _given(body.get("prompt")):
            raise _refuse("prompt", "reusable prompts", "Send the instructions and input themselves.")
        include = body.get("include")
        if _given(include):
            raise _refuse("include", "extra output data (encrypted reasoning, logprobs, tool sources)",
                          "Leave out include.")
    if body.get("top_logprobs"):
        raise _refuse("top_logprobs", "log probabilities", "Leave out top_logprobs.")


# --- reasoning ----------------------------------------------------------------------------------

#: the effort values OpenAI documents for reasoning models (which ones a given model takes varies)
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
#: OpenAI's default effort for gpt-5-class models when none is given
DEFAULT_EFFORT = "medium"
#: stand-in reasoning tokens per effort: the engine does not reason; these fixed numbers are reported (and
#: counted in the output tokens, as OpenAI bills them) so that a client's accounting can be tested
REASONING_TOKENS = {"none": 0, "minimal": 8, "low": 32, "medium": 64, "high": 128, "xhigh": 256, "max": 512}
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5|gpt-6)(?!.*-chat)")


def base_model(model: str) -> str:
    """The model a name stands for: ``ft:gpt-4o-mini:org::id`` → ``gpt-4o-mini``, ``local:x`` → ``x``."""
    name = model.strip().lower().removeprefix("local:")
    if name.startswith("ft:"):
        parts = name.split(":")
        name = parts[1] if len(parts) > 1 else ""
    return name


def is_reasoning_model(model: str) -> bool:
    """gpt-5 and gpt-6 models (not the ``-chat`` ones) and the o-series, and models fine-tuned from them."""
    return bool(_REASONING_MODEL.match(base_model(model)))


@dataclass(frozen=True)
class Reasoning:
    """The reasoning of one call: ``effort`` is None for a model that does not reason."""

    effort: str | None = None
    summary: str | None = None

    @property
    def tokens(self) -> int:
        return REASONING_TOKENS.get(self.effort or "none", 0)

    def to_openai(self) -> dict[str, Any]:
        return {"effort": self.effort, "summary": self.summary}


def _unsupported_parameter(param: str, extra: str = "") -> ApiError:
    return ApiError(400, f"Unsupported parameter: '{param}' is not supported with this model.{extra}", param=param,
                    code="unsupported_parameter")


def reasoning_for(model: str, effort: Any, summary: Any = None, *, api: str) -> Reasoning:
    """Check the reasoning options for ``model`` (``effort``/``summary`` as sent; ``api`` names the params:
    ``chat`` → ``reasoning_effort``, ``responses`` → ``reasoning.effort``/``reasoning.summary``)."""
    effort_param = "reasoning_effort" if api == "chat" else "reasoning.effort"
    if not is_reasoning_model(model):
        if effort is not None:
            raise _unsupported_parameter(effort_param)
        if summary is not None:
            raise _unsupported_parameter("reasoning.summary")
        return Reasoning()
    if effort is not None and effort not in REASONING_EFFORTS:
        raise ApiError(400, f"Invalid value: {effort!r}. Supported values are: "
                       + ", ".join(repr(e) for e in REASONING_EFFORTS) + ".", param=effort_param, code="invalid_value")
    if summary is not None and summary not in ("auto", "concise", "detailed"):
        raise ApiError(400, f"Invalid value: {summary!r}. Supported values are: 'auto', 'concise' and 'detailed'.",
                       param="reasoning.summary", code="invalid_value")
    return Reasoning(effort=effort or DEFAULT_EFFORT, summary=summary)


def refuse_for_reasoning_models(model: str, body: dict[str, Any], *, api: str) -> None:
    """What OpenAI's reasoning models refuse: ``max_tokens`` on chat, a ``temperature`` other than 1."""
    if not is_reasoning_model(model):
        return
    if api == "chat" and body.get("max_tokens") is not None:
        raise _unsupported_parameter("max_tokens", " Use 'max_completion_tokens' instead.")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise ApiError(400, f"Unsupported value: 'temperature' does not support {temperature} with this model. Only "
                       "the default (1) value is supported.", param="temperature", code="unsupported_value")


# --- service tiers ------------------------------------------------------------------------------

#: the service_tier values served, and what the response reports (OpenAI: auto → the project's default,
#: fast → priority)
SERVICE_TIERS = {"auto": "default", "default": "default", "flex": "flex", "priority": "priority",
                 "fast": "priority"}


def service_tier(body: dict[str, Any], ctx: CallContext | None) -> str:
    """The tier the call is served with; a flex call may meet the ``flex_unavailable_rate`` fault."""
    value = body.get("service_tier")
    if value is None:
        return "default"
    if value not in SERVICE_TIERS:
        raise ApiError(400, f"Invalid value: {value!r}. Supported values (by oaipipe serve) are: "
                       + ", ".join(repr(t) for t in SERVICE_TIERS) + ".", param="service_tier", code="invalid_value")
    tier = SERVICE_TIERS[value]
    if tier == "flex" and ctx is not None and ctx.draw is not None and ctx.flex_unavailable_rate > 0 \
            and ctx.draw() < ctx.flex_unavailable_rate:
        if ctx.count_injected is not None:
            ctx.count_injected("flex_unavailable")
        raise ApiError(429, "Resource Unavailable: flex processing lacks the capacity to serve this request right "
                       "now; you are not charged for it. Retry later with backoff, or retry with service_tier "
                       "'auto' (or without service_tier) for standard processing. (injected by oaipipe serve "
                       "--flex-unavailable-rate)", code="resource_unavailable", type="resource_unavailable")
    return tier


# --- prompt caching -----------------------------------------------------------------------------


def prompt_cache_key(body: dict[str, Any]) -> str | None:
    value = body.get("prompt_cache_key")
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"Invalid type for 'prompt_cache_key': expected a string, but got {type(value).__name__}.",
                       param="prompt_cache_key", code="invalid_type")
    return value


def cached_tokens(ctx: CallContext | None, messages: list[dict[str, Any]], model: str, prompt_tokens: int,
                  cache_key: str | None) -> int:
    """The prompt's cached tokens (and remember its prefix); 0 below 1024 tokens or without a cache."""
    if ctx is None or ctx.prompt_cache is None or prompt_tokens < MINIMUM:
        return 0
    namespace = (ctx.key_id, base_model(model), cache_key or "")
    return ctx.prompt_cache.use(namespace, prompt_token_sequence(messages, model), prompt_tokens)


# --- model lifecycle ----------------------------------------------------------------------------


def check_model_lifecycle(model: str, ctx: CallContext | None) -> None:
    """A 404 ``model_not_found`` for a model past the shutdown date the server was given (OpenAI's answer
    for a model that was shut down)."""
    if ctx is None:
        return
    day = ctx.shutdowns.get(model)
    if day is not None and date.fromisoformat(day) <= ctx.today():
        raise ApiError(404, f"The model `{model}` has been deprecated, learn more here: "
                       f"https://platform.openai.com/docs/deprecations (shut down on {day}, as declared by "
                       "oaipipe serve --model-shutdown)", param=None, code="model_not_found")
