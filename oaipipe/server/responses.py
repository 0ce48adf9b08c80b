"""``POST /v1/responses`` as a plain function ``body → response object`` (shared by HTTP, streaming and batches).

Text and image input, ``instructions``, ``text.format`` (``json_schema`` strict or not, ``json_object``: the
same structured output as chat's ``response_format``), ``max_output_tokens``, ``reasoning`` for
reasoning-class models (a reasoning output item and stand-in ``reasoning_tokens``), ``service_tier``,
``prompt_cache_key`` and cached-token usage. What the engine cannot honour (tools, stored responses and
conversations, background mode) is refused with a 400 (:func:`oaipipe.server.options.refuse_unsupported`).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from .errors import ApiError, require_object
from .inference import _int_param, _require_model, generate
from .options import (
    CallContext,
    Reasoning,
    cached_tokens,
    check_model_lifecycle,
    prompt_cache_key,
    reasoning_for,
    refuse_for_reasoning_models,
    refuse_unsupported,
    service_tier,
)

__all__ = ["create_response", "response_messages"]


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _response_part(part: Any, where: str) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise ApiError(400, f"Invalid '{where}': expected a content part object.", param=where, code="invalid_type")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind in ("input_image", "image_url"):
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        if not isinstance(url, str) or not url:
            if part.get("file_id"):
                raise ApiError(400, "The local engine does not read images by file_id; pass image_url as a data "
                               "URL (data:image/png;base64,...).", param=where, code="invalid_value")
            raise ApiError(400, f"Invalid '{where}': an input_image needs image_url.", param=where,
                           code="invalid_value")
        return {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail", "auto")}}
    raise ApiError(400, f"Invalid '{where}.type': {kind!r} is not supported by the local engine (use input_text "
                   "or input_image).", param=where, code="invalid_value")


def response_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages a Responses request stands for (``instructions`` first, as a system message).
    Reasoning items sent back from an earlier output are skipped (they carry nothing for the engine)."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    data = body.get("input")
    if isinstance(data, str):
        messages.append({"role": "user", "content": data})
    elif isinstance(data, list) and data:
        for i, item in enumerate(data):
            if isinstance(item, dict) and item.get("type") == "reasoning":
                continue
            if not isinstance(item, dict) or item.get("type", "message") != "message" or "role" not in item:
                raise ApiError(400, f"Invalid 'input[{i}]': the local engine accepts message items "
                               "({role, content}) only.", param=f"input[{i}]", code="invalid_value")
            content = item.get("content")
            if isinstance(content, list):
                content = [_response_part(p, f"input[{i}].content[{j}]") for j, p in enumerate(content)]
            messages.append({"role": item["role"], "content": content})
    else:
        raise ApiError(400, "Invalid 'input': expected a string or a non-empty array of messages.", param="input",
                       code="invalid_value" if data is not None else "missing_required_parameter")
    if not messages:
        raise ApiError(400, "Invalid 'input': it holds no message for the model to answer.", param="input",
                       code="invalid_value")
    return messages


def _text_format(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(``text`` as echoed, the chat ``response_format`` it stands for)."""
    text_cfg = body.get("text")
    if text_cfg is None:
        text_cfg = {}
    if not isinstance(text_cfg, dict):
        raise ApiError(400, "Invalid 'text': expected an object.", param="text", code="invalid_type")
    fmt = text_cfg.get("format")
    if fmt is None:
        fmt = {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError(400, "Invalid 'text.format': expected an object whose type is 'text', 'json_object' or "
                       "'json_schema'.", param="text.format", code="invalid_value")
    echoed: dict[str, Any] = {"format": fmt}
    if "verbosity" in text_cfg:
        if text_cfg["verbosity"] not in (None, "low", "medium", "high"):
            raise ApiError(400, f"Invalid value: {text_cfg['verbosity']!r}. Supported values are: 'low', 'medium' "
                           "and 'high'.", param="text.verbosity", code="invalid_value")
        echoed["verbosity"] = text_cfg["verbosity"]
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("name"), str) or not fmt["name"]:
            raise ApiError(400, "Missing required parameter: 'text.format.name'.", param="text.format.name",
                           code="missing_required_parameter")
        if not isinstance(fmt.get("schema"), dict):
            raise ApiError(400, "Missing required parameter: 'text.format.schema' (a JSON schema object).",
                           param="text.format.schema", code="missing_required_parameter")
        return echoed, {"type": "json_schema", "json_schema": {"name": fmt["name"], "schema": fmt["schema"],
                                                               "strict": bool(fmt.get("strict", False))}}
    if fmt["type"] == "json_object":
        return echoed, {"type": "json_object"}
    return echoed, None


def create_response(body: Any, ctx: CallContext | None = None) -> dict[str, Any]:
    """``POST /v1/responses``: the ``response`` object (streamed or not, see
    :func:`oaipipe.server.streaming.response_events`). ``ctx`` brings the server's prompt cache, model
    lifecycle and flex fault (``None``: none of them)."""
    body = require_object(body)
    model = _require_model(body)
    check_model_lifecycle(model, ctx)
    refuse_unsupported(body, "responses")
    messages = response_messages(body)
    text_echo, response_format = _text_format(body)
    refuse_for_reasoning_models(model, body, api="responses")
    reasoning = _reasoning(model, body)
    cache_key = prompt_cache_key(body)
    max_tokens = _int_param(body, "max_output_tokens")
    tier = service_tier(body, ctx)
    reply, thinking = generate(messages, model, response_format=response_format,
                               temperature=body.get("temperature"), max_tokens=max_tokens,
                               reasoning_tokens=reasoning.tokens)
    cached = cached_tokens(ctx, messages, model, reply.usage.prompt_tokens, cache_key)
    complete = reply.finish_reason != "length"
    now = int(time.time())
    return {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": now,
        "status": "completed" if complete else "incomplete",
        "background": False,
        "completed_at": now if complete else None,
        "error": None,
        "incomplete_details": None if complete else {"reason": "max_output_tokens"},
        "instructions": body.get("instructions"),
        "max_output_tokens": max_tokens,
        "max_tool_calls": None,
        "model": reply.model,
        "output": _output_items(reply.text, complete, reasoning.effort is not None),
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": cache_key,
        "reasoning": reasoning.to_openai(),
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": tier,
        "store": False,  # nothing is kept: GET /v1/responses/{id} does not exist here
        "temperature": body.get("temperature"),
        "text": text_echo,
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
        "user": body.get("user"),
        "usage": _usage(reply.usage.prompt_tokens, reply.usage.completion_tokens, cached, thinking),
    }


def _reasoning(model: str, body: dict[str, Any]) -> Reasoning:
    """The request's ``reasoning`` block (an object, or absent) resolved for ``model``."""
    options = body.get("reasoning")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "Invalid 'reasoning': expected an object, e.g. {\"effort\": \"low\"}.", param="reasoning",
                       code="invalid_type")
    options = options or {}
    return reasoning_for(model, options.get("effort"), options.get("summary"), api="responses")


def _output_items(text: str, complete: bool, reasoned: bool) -> list[dict[str, Any]]:
    """The ``output`` list: a reasoning item for a reasoning model, then the assistant message (left out
    when the reply was cut before any text)."""
    output: list[dict[str, Any]] = []
    if reasoned:
        output.append({"type": "reasoning", "id": _new_id("rs_"), "summary": []})
    if text or complete:
        output.append({
            "type": "message",
            "id": _new_id("msg_"),
            "status": "completed" if complete else "incomplete",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        })
    return output


def _usage(prompt: int, completion: int, cached: int, thinking: int) -> dict[str, Any]:
    """The Responses API's ``usage`` object (reasoning tokens count as output tokens)."""
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion + thinking,
            "output_tokens_details": {"reasoning_tokens": thinking},
            "total_tokens": prompt + completion + thinking}
