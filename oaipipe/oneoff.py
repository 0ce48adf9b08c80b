"""One-off calls outside a run (``oaipipe models``, ``ask``, ``describe``): which backend, and the request.

The backend comes from ``backend``/``base_url``, or from a pipeline file's ``backend:`` block. Without
either, the ``openai`` backend is used when ``OPENAI_API_KEY`` is set, a ``base_url`` server when given,
and otherwise the embedded offline engine, with a note saying so.

Keys follow :mod:`oaipipe.keys`: ``OPENAI_API_KEY`` only ever goes to https://api.openai.com; a
``base_url`` server gets a key only from ``api_key``. A pipeline's ``api_key`` was named for that
pipeline's server: it does not follow ``base_url`` to another one.

A pipeline file is read exactly as :func:`oaipipe.pipeline.load_pipeline` reads it (same plugin loading,
same context), its other blocks are not built.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .base import Backend, Context
from .errors import AuthenticationError, BackendConnectionError

if TYPE_CHECKING:
    from .assistants import AssistantPreset
    from .types import ChatRequest, ModelInfo

__all__ = ["OneOff", "call", "chat_request", "list_models_report", "load_backend", "preset_for", "where"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: backend keys kept when another backend type is asked for than the pipeline's
_PORTABLE_KEYS = ("model", "base_url", "api_key", "timeout", "concurrency")


@dataclass
class OneOff:
    """The backend of a one-off call, what it is built with, and what the user should be told."""

    backend: Backend
    context: Context
    #: one line saying the backend fell back to the local engine, and why (or None)
    note: str | None = None
    #: the pipeline file's warnings (unset ``${env:VAR}``, values too short to mask)
    warnings: list[str] = field(default_factory=list)


def load_backend(
    pipeline: str | Path | None = None,
    backend: str | None = None,
    base_url: str | None = None,
    *,
    api_key: str | None = None,
    quick: bool = False,
) -> OneOff:
    """The backend for a one-off call: a pipeline file's ``backend:`` block (or ``openai``), with another
    ``backend`` type, ``base_url`` and ``api_key`` laid over it. ``quick``: one retry at most (listings)."""
    from .pipeline import build_backend

    block, context, offline_fallback, warnings = _starting_point(pipeline)
    if backend:
        if backend != block.get("type"):
            block = {k: v for k, v in block.items() if k in _PORTABLE_KEYS}
        block["type"] = backend
    if base_url:
        if base_url != block.get("base_url"):  # the pipeline's key was named for its own server
            block.pop("api_key", None)
            context.settings.pop("unset_env", None)
        block["base_url"] = base_url
    if api_key:
        block["api_key"] = api_key
    assert context.host is not None
    if quick and not _offline(context.host, block):  # a quick answer from a server: one retry at most
        block.setdefault("max_retries", 1)
    log.debug("backend block: type %s, base_url %s, model %s; keys given: %s", block.get("type"),
              block.get("base_url"), block.get("model"), ", ".join(sorted(block)))
    assert context.host is not None
    built, note = build_backend(block, host=context.host, context=context, offline_fallback=offline_fallback)
    log.info("backend %s, model %s, calls go to %s%s", built.name, getattr(built.options, "model", None),
             where(built), f" (backend block of {pipeline})" if pipeline else "")
    return OneOff(built, context, note, warnings)


def _starting_point(pipeline: str | Path | None) -> tuple[dict[str, Any], Context, bool, list[str]]:
    """(backend block, context, offline fallback, warnings) of a pipeline file, or of no file."""
    if not pipeline:
        from .plugins import PluginHost

        host = PluginHost(base_dir=Path.cwd())
        return {"type": "openai"}, Context(base_dir=Path.cwd(), host=host, settings={"assistants": None}), True, []
    from .config import load_config
    from .pipeline import pipeline_context, plugin_host

    loaded = load_config(pipeline)
    context = pipeline_context(loaded, plugin_host(loaded, file=str(pipeline)))
    block = dict(loaded.data.get("backend") or {"type": "local"})
    return block, context, loaded.config.run.offline_fallback, list(loaded.warnings)


def call(backend: Backend, coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine of ``backend`` to the end, then close the backend."""

    async def main() -> T:
        try:
            return await coro_fn()
        finally:
            await backend.aclose()

    return asyncio.run(main())


def where(backend: Backend) -> str:
    """Where the backend's calls go, for messages."""
    return getattr(backend, "base_url", None) or getattr(backend.options, "base_url", None) or "the local engine"


def preset_for(name: str | None, context: Context) -> AssistantPreset | None:
    """The assistant preset called ``name`` (from ``--file``/the pipeline's ``assistants:``/the usual places)."""
    if not name:
        return None
    from .assistants import get_preset

    return get_preset(name, pipeline_setting=context.settings.get("assistants"), base_dir=context.base_dir)


def chat_request(content: Any, *, system: str | None, model: str | None, preset: AssistantPreset | None,
                 backend: Backend, response_format: dict[str, Any] | None = None,
                 temperature: float | None = None, max_tokens: int | None = None,
                 step: str = "cli") -> ChatRequest:
    """One user message (text or content parts); what is not given comes from the preset, then the backend."""
    from .types import ChatRequest

    if system is None and preset is not None:
        system = preset.instructions
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    opts = backend.options

    def pick(value: Any, name: str) -> Any:
        if value is None and preset is not None:
            value = getattr(preset, name)
        return value if value is not None else getattr(opts, name, None)

    if response_format is None and preset is not None:
        response_format = preset.effective_response_format()
    return ChatRequest(messages=messages, model=pick(model, "model"), temperature=pick(temperature, "temperature"),
                       max_tokens=pick(max_tokens, "max_tokens"), response_format=response_format, step=step)


def list_models_report(backend: Backend, note: str | None, context: Context) -> dict[str, Any]:
    """What ``oaipipe models`` shows: the backend's models, the local engine's, and what went wrong."""
    report: dict[str, Any] = {"backend": backend.name, "base_url": getattr(backend.options, "base_url", None),
                              "note": note, "models": [], "local_models": [], "problem": None}
    models: list[ModelInfo] = []
    try:
        models = call(backend, backend.list_models)
    except AuthenticationError as exc:
        if exc.status is None:
            report["problem"] = ("no API key: set OPENAI_API_KEY (or `api_key: ${env:VAR}` in the backend block) "
                                 "to list OpenAI's models")
        else:
            report["problem"] = f"the key was refused (HTTP {exc.status}) by {where(backend)}: {exc}"
        report["problem_kind"] = "auth"
    except BackendConnectionError as exc:
        report["problem"] = (f"cannot connect to {where(backend)}: is `oaipipe serve` running (or the server "
                             f"at that address)? ({exc.message})")
        report["problem_kind"] = "connection"
    report["models"] = [m.__dict__ for m in models]
    report["lifecycle"] = _lifecycle(models)
    if note and backend.offline:
        report["problem"] = report["problem"] or ("no API key: set OPENAI_API_KEY to list OpenAI's models; "
                                                  "showing the local engine's")
        report["problem_kind"] = "no-key"
    if not backend.offline:
        report["local_models"] = [m.__dict__ for m in _local_models(context)]
    if report["problem"] is None and not models:
        report["problem"] = f"{where(backend)} answered with an empty model list"
        report["problem_kind"] = "empty"
    return report


def _lifecycle(models: list[ModelInfo]) -> list[dict[str, str]]:
    """The listed models past or within 60 days of the ``shutdown_date`` the server gave them."""
    from .lifecycle import shutdown_problem
    from .models_table import model_info

    out = []
    for m in models:
        info = model_info(m.id)
        found = shutdown_problem(m.id, m.shutdown_date, info.substitute if info else None)
        if found is not None:
            out.append({"model": m.id, "level": found[0], "shutdown_date": str(m.shutdown_date),
                        "message": found[1]})
    return out


def _offline(host: Any, block: dict[str, Any]) -> bool:
    """Whether the backend ``block`` names is :attr:`~oaipipe.base.Backend.offline` (makes no network call)."""
    registered = host.registry.get("backend", {}).get(str(block.get("type", "local")))
    return registered is not None and issubclass(registered.cls, Backend) and registered.cls.offline


def _local_models(context: Context) -> list[ModelInfo]:
    from .plugins import PluginHost

    host = context.host or PluginHost()
    local = host.build("backend", {"type": "local"}, context)
    assert isinstance(local, Backend)
    return call(local, local.list_models)
