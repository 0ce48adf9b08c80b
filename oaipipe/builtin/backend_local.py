"""Built-in backend ``local``: the embedded offline engine (no network, no key, deterministic).

Every reply is labelled: the model is reported as ``local:<model>`` (``ft:`` ids as they are).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from pydantic import Field

from ..base import Backend, BackendOptions
from ..engine import chat as engine_chat
from ..engine.errors import EngineError, InvalidImage, ModelNotFound
from ..engine.models import list_models as engine_models
from ..errors import BadRequestError, ImageError
from ..hookspecs import hookimpl
from ..types import ChatRequest, ChatResponse, ModelInfo

__all__ = ["LocalBackend"]


def _has_images(messages: list[dict[str, Any]]) -> bool:
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in ("image_url", "input_image")
                                             for p in content):
            return True
    return False


class LocalBackend(Backend):
    """The embedded offline engine: deterministic replies, real image measurements, local ft: models."""

    summary = "Embedded offline engine: deterministic chat, Pillow-measured vision, local fine-tunes"
    offline = True
    offline_note = "embedded offline engine: deterministic replies, not GPT"
    priced = False  # free: only a `prices:` entry for its exact model label gives its calls a cost
    cacheable = False  # free and deterministic: caching it would only cost disk

    def model_label(self, model: str) -> str:
        return engine_chat.engine_model_name(model)

    class Options(BackendOptions):
        latency: float = Field(0.0, ge=0, description="Seconds to wait per call (demos, benchmarks)")

    def _complete(self, request: ChatRequest) -> engine_chat.EngineReply:
        try:
            return engine_chat.complete(request.messages, request.model, response_format=request.response_format,
                                        temperature=request.temperature, max_tokens=request.max_tokens)
        except InvalidImage as exc:
            raise ImageError(exc.message) from exc
        except ModelNotFound as exc:
            raise BadRequestError(exc.message, status=404,
                                  hint="`oaipipe models` lists the models the local engine knows") from exc
        except EngineError as exc:
            raise BadRequestError(exc.message, status=400) from exc

    async def chat(self, request: ChatRequest) -> ChatResponse:
        started = time.perf_counter()
        delay = float(getattr(self.options, "latency", 0.0) or 0.0)
        if delay:
            await asyncio.sleep(delay)
        if _has_images(request.messages):
            reply = await asyncio.to_thread(self._complete, request)
        else:
            reply = self._complete(request)
        digest = hashlib.sha256(json.dumps([request.model, request.messages, request.response_format],
                                           sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]
        return ChatResponse(text=reply.text, model=reply.model, backend="local", usage=reply.usage,
                            request_id=f"local-{digest}", latency=time.perf_counter() - started,
                            parsed=reply.parsed, finish_reason=reply.finish_reason)

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m.id, owned_by=m.owned_by, created=m.created) for m in engine_models()]


@hookimpl
def register_backends(register: Any) -> None:
    register("local", LocalBackend)
