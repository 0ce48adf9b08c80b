"""OpenAI wire shapes shared by the ``openai`` and ``requests`` backends (and the steps).

Plain functions over dicts: build a Chat Completions or Responses request body from a
:class:`~oaipipe.types.ChatRequest`, and turn either reply into a :class:`~oaipipe.types.ChatResponse`.
Keeping this in one place is what makes the two transports answer identically.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import BadRequestError, ServerError
from .types import ChatRequest, ChatResponse, ModelInfo, Usage

__all__ = [
    "API_PATHS",
    "api_call",
    "chat_body",
    "error_detail",
    "parse_chat_reply",
    "parse_json_reply",
    "parse_models",
    "parse_reply",
    "parse_responses_reply",
    "responses_body",
]


def parse_json_reply(text: str, *, model: str = "", request_id: str | None = None) -> Any:
    """Decode a reply that was asked to follow a JSON schema; invalid JSON is a :class:`BadRequestError`."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        preview = (text or "")[:120].replace("\n", " ")
        raise BadRequestError(
            f"model {model or '?'} was asked for JSON following a schema but replied with text that is not "
            f"valid JSON ({exc}): {preview!r}",
            request_id=request_id,
            hint="use a model/server that supports response_format json_schema, or drop json_schema from the step",
        ) from None


def _wants_json(request: ChatRequest) -> bool:
    rf = request.response_format or {}
    return rf.get("type") in ("json_schema", "json_object")


# --- Chat Completions ---------------------------------------------------------------------------


def chat_body(request: ChatRequest, *, max_tokens_param: str = "max_tokens") -> dict[str, Any]:
    """The JSON body of ``POST /chat/completions`` (also the SDK's keyword arguments).

    ``max_tokens_param`` names the length limit: ``max_completion_tokens`` (what OpenAI wants now; its
    o-series and gpt-5 models refuse ``max_tokens``) or ``max_tokens`` (what most compatible servers know).
    """
    body: dict[str, Any] = {"model": request.model, "messages": request.messages}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body[max_tokens_param] = request.max_tokens
    if request.response_format is not None:
        body["response_format"] = request.response_format
    body.update(request.extra or {})
    return body


def _usage(data: dict[str, Any] | None, prompt: str, completion: str) -> Usage:
    """Usage of either API: ``prompt``/``completion`` name the counts (``prompt_tokens`` / ``input_tokens``),
    and the ``*_details`` blocks give the cached input and reasoning output tokens."""
    data = data or {}
    p = int(data.get(prompt) or 0)
    c = int(data.get(completion) or 0)
    stem_in, stem_out = prompt.removesuffix("_tokens"), completion.removesuffix("_tokens")
    in_details = data.get(f"{stem_in}_tokens_details") or {}
    out_details = data.get(f"{stem_out}_tokens_details") or {}
    cached = int((in_details.get("cached_tokens") if isinstance(in_details, dict) else 0) or 0)
    reasoning = int((out_details.get("reasoning_tokens") if isinstance(out_details, dict) else 0) or 0)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=int(data.get("total_tokens") or p + c),
                 cached_tokens=min(cached, p), reasoning_tokens=reasoning)


def _reply(data: dict[str, Any], request: ChatRequest, text: str, usage: Usage, finish_reason: Any, *,
           backend: str, request_id: str | None, latency: float) -> ChatResponse:
    """The :class:`ChatResponse` of either API's reply, with ``parsed`` set when JSON was asked for."""
    resp = ChatResponse(
        text=text,
        model=data.get("model") or request.model,
        backend=backend,
        usage=usage,
        request_id=request_id or data.get("id"),
        latency=latency,
        finish_reason=finish_reason,
        service_tier=data.get("service_tier") if isinstance(data.get("service_tier"), str) else None,
    )
    if _wants_json(request):
        resp.parsed = parse_json_reply(text, model=resp.model, request_id=resp.request_id)
    return resp


def parse_chat_reply(data: dict[str, Any], request: ChatRequest, *, backend: str, request_id: str | None,
                     latency: float) -> ChatResponse:
    """A Chat Completions reply (a dict) as a :class:`ChatResponse`."""
    choices = data.get("choices") or []
    if not choices:
        raise ServerError(
            f"the server answered without choices (request id {request_id}): {str(data)[:200]}",
            request_id=request_id,
            hint="the server is not OpenAI-compatible for this call, or failed; check base_url",
        )
    choice = choices[0] or {}
    message = choice.get("message") or {}
    text = message.get("content")
    if isinstance(text, list):  # some compatible servers return parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if text is None:
        text = message.get("refusal") or ""
    return _reply(data, request, text, _usage(data.get("usage"), "prompt_tokens", "completion_tokens"),
                  choice.get("finish_reason"), backend=backend, request_id=request_id, latency=latency)


# --- Responses ----------------------------------------------------------------------------------


def _responses_part(part: Any, role: str) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "output_text" if role == "assistant" else "input_text", "text": part}
    kind = part.get("type")
    if kind == "text":
        return {"type": "output_text" if role == "assistant" else "input_text", "text": part.get("text", "")}
    if kind == "image_url":
        image = part.get("image_url") or {}
        url = image if isinstance(image, str) else image.get("url", "")
        out: dict[str, Any] = {"type": "input_image", "image_url": url}
        detail = None if isinstance(image, str) else image.get("detail")
        out["detail"] = detail or "auto"
        return out
    return dict(part)  # already a Responses part (input_text, input_image, input_file)


def responses_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body of ``POST /responses``: system messages become ``instructions``, the rest ``input``."""
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for msg in request.messages:
        role = msg.get("role", "user")
        content = msg.get("content")
        if role in ("system", "developer"):
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            instructions.append(str(content or ""))
            continue
        if isinstance(content, str):
            items.append({"role": role, "content": content})
        else:
            items.append({"role": role, "content": [_responses_part(p, role) for p in content or []]})
    body: dict[str, Any] = {"model": request.model, "input": items}
    if instructions:
        body["instructions"] = "\n\n".join(instructions)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    rf = request.response_format
    if rf:
        if rf.get("type") == "json_schema":
            js = rf.get("json_schema") or {}
            fmt: dict[str, Any] = {"type": "json_schema", "name": js.get("name", "reply"), "schema": js.get("schema", {})}
            if "strict" in js:
                fmt["strict"] = js["strict"]
            body["text"] = {"format": fmt}
        else:
            body["text"] = {"format": {"type": rf.get("type", "text")}}
    body.update(request.extra or {})
    return body


def parse_responses_reply(data: dict[str, Any], request: ChatRequest, *, backend: str, request_id: str | None,
                          latency: float) -> ChatResponse:
    """A Responses API reply (a dict) as a :class:`ChatResponse` (text = all ``output_text`` parts)."""
    if data.get("error"):
        err = data["error"]
        msg = err.get("message") if isinstance(err, dict) else str(err)
        raise ServerError(f"the response failed (request id {request_id}): {msg}", request_id=request_id)
    texts: list[str] = []
    for item in data.get("output") or []:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "output_text":
                texts.append(part.get("text", ""))
            elif isinstance(part, dict) and part.get("type") == "refusal":
                texts.append(part.get("refusal", ""))
    if not texts and isinstance(data.get("output_text"), str):
        texts.append(data["output_text"])
    text = "".join(texts)
    status = data.get("status")
    finish = "stop" if status == "completed" else ("length" if status == "incomplete" else status)
    return _reply(data, request, text, _usage(data.get("usage"), "input_tokens", "output_tokens"), finish,
                  backend=backend, request_id=request_id, latency=latency)


# --- one call, either API ----------------------------------------------------------------------

#: the endpoint (below ``base_url``, which ends in /v1) of each API
API_PATHS: dict[str, str] = {"chat": "/chat/completions", "responses": "/responses"}


def api_call(request: ChatRequest, api: str, *, max_tokens_param: str = "max_tokens",
             reasoning_effort: str | None = None, service_tier: str | None = None) -> tuple[str, dict[str, Any]]:
    """The endpoint path and JSON body of ``request`` on ``api`` ("chat" or "responses"): the one place
    every transport (SDK, raw HTTP, batch lines) shapes a call.

    ``reasoning_effort`` becomes ``reasoning_effort`` on chat and ``reasoning.effort`` on Responses;
    ``service_tier`` is top-level on both (so is ``prompt_cache_key``, which a step puts in ``extra``). ``request.extra`` is applied last (it
    wins, e.g. a full ``reasoning`` block).
    """
    if api == "responses":
        body = responses_body(request)
    else:
        body = chat_body(request, max_tokens_param=max_tokens_param)
    extra = request.extra or {}
    if reasoning_effort is not None:
        if api == "responses":
            if "reasoning" not in extra:
                body["reasoning"] = {**(body.get("reasoning") or {}), "effort": reasoning_effort}
        elif "reasoning_effort" not in extra:
            body["reasoning_effort"] = reasoning_effort
    if service_tier is not None and "service_tier" not in extra:
        body["service_tier"] = service_tier
    return API_PATHS["responses" if api == "responses" else "chat"], body


def parse_reply(api: str, data: dict[str, Any], request: ChatRequest, *, backend: str, request_id: str | None,
                latency: float) -> ChatResponse:
    """The reply of :func:`api_call`'s endpoint as a :class:`ChatResponse` (same fields from either API)."""
    parse = parse_responses_reply if api == "responses" else parse_chat_reply
    return parse(data, request, backend=backend, request_id=request_id, latency=latency)


# --- models and errors --------------------------------------------------------------------------


def parse_models(data: dict[str, Any]) -> list[ModelInfo]:
    """``GET /models`` as :class:`ModelInfo` entries, sorted by id."""
    out = []
    for item in data.get("data") or []:
        if isinstance(item, dict) and item.get("id"):
            shutdown = item.get("shutdown_date")
            out.append(ModelInfo(id=str(item["id"]), owned_by=str(item.get("owned_by") or ""),
                                 created=item.get("created"), shutdown_date=str(shutdown) if shutdown else None))
    return sorted(out, key=lambda m: m.id)


def error_detail(body: Any, fallback: str = "") -> str:
    """The human part of an OpenAI-shaped error body (``{"error": {"message": ...}}``)."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return body.strip()[:300] or fallback
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or ""
            code = err.get("code") or err.get("type")
            return f"{msg} ({code})" if code and msg else (msg or str(code or fallback))
        if isinstance(err, str):
            return err
    return fallback
