"""The inference endpoints as plain functions ``body → response dict`` (shared by HTTP and batches)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from ..engine import chat as engine_chat
from ..engine.errors import EngineError, ImageURLNotSupported, InvalidImage, ModelNotFound
from .errors import ApiError, require_object

__all__ = ["chat_completion", "chat_stream_events", "create_response", "engine_call"]


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


def _usage_chat(reply: engine_chat.EngineReply) -> dict[str, Any]:
    u = reply.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _chat_reply(body: dict[str, Any]) -> engine_chat.EngineReply:
    body = require_object(body)
    model = _require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "Invalid 'messages': expected a non-empty array of message objects.",
                       param="messages", code="invalid_value" if messages is not None else "missing_required_parameter")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, f"Invalid 'messages[{i}]': each message needs a role (system, developer, user, "
                           "assistant or tool) and content.", param=f"messages[{i}]", code="invalid_value")
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, f"Invalid 'n': the local engine returns exactly one choice (got {n!r}); use n=1.",
                       param="n", code="invalid_value")
    max_tokens = _int_param(body, "max_completion_tokens") or _int_param(body, "max_tokens")
    return engine_call(messages, model, response_format=body.get("response_format"),
                       temperature=body.get("temperature"), max_tokens=max_tokens)


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/chat/completions`` (non-streaming)."""
    reply = _chat_reply(body)
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
        "usage": _usage_chat(reply),
        "service_tier": "default",
        "system_fingerprint": "fp_oaipipe_local",
    }


def chat_stream_events(body: dict[str, Any]) -> bytes:
    """``stream: true``: the whole server-sent-event stream (chunks, optional usage chunk, ``[DONE]``)."""
    reply = _chat_reply(body)
    ident, created = _new_id("chatcmpl-"), int(time.time())
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None, usage: Any = None, choices: bool = True) -> bytes:
        data: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created,
                                "model": reply.model, "system_fingerprint": "fp_oaipipe_local",
                                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}] if choices else []}
        if include_usage:
            data["usage"] = usage
        return b"data: " + json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n\n"

    out = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    words = reply.text.split(" ")
    for i in range(0, len(words), 4):
        piece = " ".join(words[i:i + 4]) + (" " if i + 4 < len(words) else "")
        out.append(chunk({"content": piece}, None))
    out.append(chunk({}, reply.finish_reason))
    if include_usage:
        out.append(chunk({}, None, usage=_usage_chat(reply), choices=False))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


# --- responses API ------------------------------------------------------------------------------


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


def _response_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    data = body.get("input")
    if isinstance(data, str):
        messages.append({"role": "user", "content": data})
    elif isinstance(data, list) and data:
        for i, item in enumerate(data):
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
    return messages


def create_response(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/responses`` for text/image input (no tools, no streaming)."""
    body = require_object(body)
    model = _require_model(body)
    if body.get("stream"):
        raise ApiError(400, "Streaming is not supported on /v1/responses by the local server; omit stream.",
                       param="stream", code="unsupported_value")
    messages = _response_messages(body)
    text_cfg = body.get("text") if isinstance(body.get("text"), dict) else {}
    fmt = text_cfg.get("format") if isinstance(text_cfg.get("format"), dict) else None
    response_format = None
    if fmt and fmt.get("type") == "json_schema":
        response_format = {"type": "json_schema", "json_schema": {"name": fmt.get("name", "output"),
                                                                  "schema": fmt.get("schema"),
                                                                  "strict": fmt.get("strict", False)}}
    elif fmt and fmt.get("type") == "json_object":
        response_format = {"type": "json_object"}
    max_tokens = _int_param(body, "max_output_tokens")
    reply = engine_call(messages, model, response_format=response_format, temperature=body.get("temperature"),
                        max_tokens=max_tokens)
    u = reply.usage
    complete = reply.finish_reason != "length"
    return {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if complete else "incomplete",
        "error": None,
        "incomplete_details": None if complete else {"reason": "max_output_tokens"},
        "instructions": body.get("instructions"),
        "max_output_tokens": max_tokens,
        "model": reply.model,
        "output": [{
            "type": "message",
            "id": _new_id("msg_"),
            "status": "completed" if complete else "incomplete",
            "role": "assistant",
            "content": [{"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}],
        }],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "temperature": body.get("temperature"),
        "text": {"format": fmt or {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
        "usage": {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": u.total_tokens},
    }
