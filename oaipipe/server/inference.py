"""Chat completions as a plain function ``body → response dict`` (shared by HTTP, streaming and batches), and
the engine call that Responses uses too (:mod:`oaipipe.server.responses`)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from ..engine import chat as engine_chat
from ..engine.errors import EngineError, ImageURLNotSupported, InvalidImage, ModelNotFound
from ..types import Usage
from .errors import ApiError, require_object
from .options import (
    CallContext,
    cached_tokens,
    check_model_lifecycle,
    prompt_cache_key,
    reasoning_for,
    refuse_for_reasoning_models,
    refuse_unsupported,
    service_tier,
)

__all__ = ["chat_completion", "engine_call", "generate", "usage_chat"]


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
    return model


def _int_param(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"Invalid '{name}': expected an integer >= 1, got {value!r}.", param=name,
                       code="invalid_value")
    return value


def _refuse_local_paths(messages: Any) -> None:
    """Images must come as data URLs (or http(s) URLs, which the engine refuses for want of network), as
    on OpenAI. The engine also reads file paths for the in-process ``local`` backend; over HTTP that
    would let any client read the server's files (or hang it on ``/dev/zero``)."""
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict) or part.get("type") not in ("image_url", "input_image"):
                continue
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and url and not url.startswith(("data:", "http://", "https://")):
                raise ApiError(400, "Invalid image URL: the server takes images as data URLs "
                               "(data:image/png;base64,...), not file paths; encode the image and send it inline.",
                               param="messages", code="invalid_image_url")


def engine_call(messages: Any, model: str, *, response_format: Any, temperature: Any,
                max_tokens: int | None) -> engine_chat.EngineReply:
    """Call the engine and map its errors onto API errors."""
    _refuse_local_paths(messages)
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)
                                    or not 0 <= temperature <= 2):
        raise ApiError(400, f"Invalid 'temperature': expected a number between 0 and 2, got {temperature!r}.",
                       param="temperature", code="invalid_value")
    if response_format is not None and not isinstance(response_format, dict):
        raise ApiError(400, "Invalid 'response_format': expected an object.", param="response_format",
                       code="invalid_type")
    try:
        return engine_chat.complete(messages, model, response_format=response_format, temperature=temperature,
                                    max_tokens=max_tokens)
    except ModelNotFound as exc:
        raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       param="model", code="model_not_found") from exc
    except ImageURLNotSupported as exc:
        raise ApiError(400, exc.message, param="messages", code="invalid_image_url") from exc
    except InvalidImage as exc:
        raise ApiError(400, exc.message, param="messages", code="invalid_image") from exc
    except EngineError as exc:
        raise ApiError(400, exc.message, param=exc.param, code=exc.code) from exc


def generate(messages: Any, model: str, *, response_format: Any, temperature: Any, max_tokens: int | None,
             reasoning_tokens: int = 0) -> tuple[engine_chat.EngineReply, int]:
    """The engine's reply and the reasoning tokens it stands for. Reasoning tokens come out of the
    ``max_tokens`` budget first, as on OpenAI: when they use it all, the reply has no text and stops for
    ``length``."""
    if max_tokens is not None and reasoning_tokens >= max_tokens:
        reply = engine_call(messages, model, response_format=response_format, temperature=temperature,
                            max_tokens=None)  # the request is checked all the same
        prompt = reply.usage.prompt_tokens
        return engine_chat.EngineReply(text="", model=reply.model, usage=Usage(prompt, 0, prompt),
                                       finish_reason="length"), max_tokens
    reply = engine_call(messages, model, response_format=response_format, temperature=temperature,
                        max_tokens=None if max_tokens is None else max_tokens - reasoning_tokens)
    return reply, reasoning_tokens


def usage_chat(reply: engine_chat.EngineReply, *, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """Chat usage; ``reasoning`` tokens are part of ``completion_tokens`` (as OpenAI bills them)."""
    u = reply.usage
    completion = u.completion_tokens + reasoning
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": completion,
            "total_tokens": u.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "Invalid 'messages': expected a non-empty array of message objects.",
                       param="messages", code="invalid_value" if messages is not None else "missing_required_parameter")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, f"Invalid 'messages[{i}]': each message needs a role (system, developer, user, "
                           "assistant or tool) and content.", param=f"messages[{i}]", code="invalid_value")
    return messages


def chat_completion(body: Any, ctx: CallContext | None = None) -> dict[str, Any]:
    """``POST /v1/chat/completions``: the ``chat.completion`` object (streamed or not, see
    :func:`oaipipe.server.streaming.chat_events`). ``ctx`` brings the server's prompt cache, model
    lifecycle and flex fault (``None``: none of them)."""
    body = require_object(body)
    model = _require_model(body)
    check_model_lifecycle(model, ctx)
    messages = _messages(body)
    refuse_unsupported(body, "chat")
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, f"Invalid 'n': the local engine returns exactly one choice (got {n!r}); use n=1.",
                       param="n", code="invalid_value")
    refuse_for_reasoning_models(model, body, api="chat")
    reasoning = reasoning_for(model, body.get("reasoning_effort"), api="chat")
    cache_key = prompt_cache_key(body)
    if body.get("stream_options") is not None and not isinstance(body.get("stream_options"), dict):
        raise ApiError(400, "Invalid 'stream_options': expected an object.", param="stream_options",
                       code="invalid_type")
    max_tokens = _int_param(body, "max_completion_tokens") or _int_param(body, "max_tokens")
    tier = service_tier(body, ctx)
    reply, thinking = generate(messages, model, response_format=body.get("response_format"),
                               temperature=body.get("temperature"), max_tokens=max_tokens,
                               reasoning_tokens=reasoning.tokens)
    cached = cached_tokens(ctx, messages, model, reply.usage.prompt_tokens, cache_key)
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []},
            "finish_reason": reply.finish_reason,
            "logprobs": None,
        }],
        "usage": usage_chat(reply, cached=cached, reasoning=thinking),
        "service_tier": tier,
        "system_fingerprint": "fp_oaipipe_local",
    }
