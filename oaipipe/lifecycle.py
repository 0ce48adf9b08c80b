"""What ``validate`` (and every load of a pipeline) checks about the models a pipeline calls on OpenAI.

* **Shutdown** (:mod:`oaipipe.models_table`): a model past its shutdown date is refused with the file, line
  and the substitute; one within :data:`WARN_DAYS` days of it gives a warning.
* **Documented incompatibilities** of reasoning models (gpt-5-class, o-series): ``temperature`` is refused
  by the API, and so is ``max_tokens`` on Chat Completions (they take ``max_completion_tokens``; on
  Responses the limit is ``max_output_tokens``, which oaipipe sends for ``max_tokens``).

OpenAI's schedule and parameter rules apply to OpenAI: the checks run for backends whose ``base_url`` is
OpenAI's (unset or ``https://api.openai.com/...``), never for the embedded engine or another server. The
date of "today" is the machine's, or ``OAIPIPE_TODAY`` (YYYY-MM-DD) when set (tests, planning ahead).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .models_table import ModelInfo, model_info

if TYPE_CHECKING:
    from .pipeline import BuiltPipeline

__all__ = ["WARN_DAYS", "asks_server", "check_models", "check_server_models", "shutdown_problem", "today"]

_log = logging.getLogger("oaipipe.lifecycle")

#: a model this many days (or fewer) before its shutdown date gets a warning
WARN_DAYS = 60


def today() -> _dt.date:
    """Today, or the date of ``OAIPIPE_TODAY`` (YYYY-MM-DD)."""
    value = os.environ.get("OAIPIPE_TODAY")
    if value:
        try:
            return _dt.date.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"OAIPIPE_TODAY={value!r} is not a date",
                              hint="write it as YYYY-MM-DD, or unset OAIPIPE_TODAY") from None
    return _dt.date.today()


def shutdown_problem(model: str, shutdown: str | None, substitute: str | None = None, *,
                     on: _dt.date | None = None, source: str | None = None) -> tuple[str, str] | None:
    """``("error"|"warning", message)`` when ``model`` is past or within :data:`WARN_DAYS` of ``shutdown``
    (``source``: where the date comes from, said in the message)."""
    if not shutdown:
        return None
    try:
        date = _dt.date.fromisoformat(shutdown)
    except ValueError:
        return None
    now = on or today()
    instead = f"; use {substitute} instead" if substitute else ""
    said = f" ({source})" if source else ""
    if now >= date:
        return "error", (f"model {model} was shut down on {shutdown}{said or ' (OpenAI no longer serves it)'}"
                         f"{instead}")
    days = (date - now).days
    if days <= WARN_DAYS:
        return "warning", f"model {model} shuts down on {shutdown}{said}, in {days} days{instead}"
    return None


def _online(backend: Any) -> bool:
    """The backend calls a server (not the embedded engine) with an HTTP ``base_url``."""
    if backend is None or getattr(backend, "offline", False):
        return False
    options = getattr(backend, "options", None)
    return options is not None and hasattr(options, "base_url")


def _openai(backend: Any) -> bool:
    from .keys import is_openai_url

    return _online(backend) and is_openai_url(backend.options.base_url)


def _calls(pipeline: BuiltPipeline) -> list[tuple[str, str, Any, str]]:
    """``(block, model, temperature, block of the temperature)`` of the backend and of each step that sets
    its own model or temperature."""
    opts = pipeline.backend.options
    calls: list[tuple[str, str, Any, str]] = [("backend", opts.model, opts.temperature, "backend")]
    for i, step in enumerate(pipeline.steps):
        sopts = getattr(step, "options", None)
        model = getattr(sopts, "model", None)
        temperature = getattr(sopts, "temperature", None)
        if model is None and temperature is None:
            continue
        calls.append((f"steps.{i}", model or opts.model, temperature if temperature is not None
                      else opts.temperature, f"steps.{i}" if temperature is not None or model else "backend"))
    return calls


def check_models(pipeline: BuiltPipeline) -> None:
    """The models of the backend and of each step, against the table and the pipeline's ``models:`` block
    (see the module's docstring). For a server other than OpenAI's, only the ``models:`` block's shutdown
    dates apply (the table is OpenAI's schedule)."""
    from .config import Problems

    backend = pipeline.backend
    if not _online(backend):
        return
    openai = _openai(backend)
    models = pipeline.loaded.config.models
    if not openai and not models:
        return
    problems = Problems(pipeline.shown_file, pipeline.loaded.where, pipeline.loaded.origin)
    warned: set[str] = set()
    for block, model, temperature, temp_block in _calls(pipeline):
        info = model_info(model, models, table=openai)
        if info is None:
            continue
        _check_shutdown(pipeline, problems, f"{block}.model", model, info, warned, pipeline.warnings)
        if openai:
            _check_reasoning(pipeline, problems, model, info, temperature, temp_block)
    problems.raise_if_any()


def _check_shutdown(pipeline: BuiltPipeline, problems: Any, model_key: str, model: str, info: ModelInfo,
                    warned: set[str], warnings: list[str], source: str | None = None) -> None:
    found = shutdown_problem(model, info.shutdown, info.substitute, source=source)
    if found is None:
        return
    kind, message = found
    line, col = pipeline.loaded.where(model_key)
    if kind == "error":
        problems.add(ConfigError(message, file=pipeline.shown_file, line=line, column=col, key=model_key,
                                 hint=f"set `model: {info.substitute or 'A_CURRENT_MODEL'}` "
                                 "(see `oaipipe models` and docs/platform.md)"))
    elif model not in warned:
        warned.add(model)
        warnings.append(f"{_where(pipeline, model_key, line)}: {message}")


def _where(pipeline: BuiltPipeline, key: str, line: int | None) -> str:
    """``FILE:LINE`` of a warning, or ``FILE (--set KEY=VALUE)`` for a value given on the command line."""
    return f"{pipeline.shown_file}:{line}" if line else f"{pipeline.shown_file} ({pipeline.loaded.origin(key) or '--set'})"


def _check_reasoning(pipeline: BuiltPipeline, problems: Any, model: str, info: ModelInfo, temperature: Any,
                     temp_block: str) -> None:
    backend, where = pipeline.backend, pipeline.loaded.where
    if info.reasoning and temperature is not None:
        key = f"{temp_block}.temperature"
        line, col = where(key)
        problems.add(ConfigError(
            f"temperature is not supported by the reasoning model {model}: OpenAI refuses the call",
            file=pipeline.shown_file, line=line, column=col, key=key,
            hint="remove `temperature` (steer a reasoning model with `reasoning_effort`), or pick a "
            "non-reasoning model such as gpt-4.1"))
    api_of = getattr(backend, "api_of", None)
    if (info.reasoning and api_of is not None and api_of(model) == "chat"
            and getattr(backend.options, "max_tokens_param", None) == "max_tokens"):
        line, col = where("backend.max_tokens_param")
        problems.add(ConfigError(
            f"the reasoning model {model} refuses `max_tokens` on Chat Completions",
            file=pipeline.shown_file, line=line, column=col, key="backend.max_tokens_param",
            hint="remove `max_tokens_param: max_tokens` (auto sends max_completion_tokens to OpenAI), "
            "or use `api: responses`"))


# --- the server's own dates (GET /models) -----------------------------------------------------------


def asks_server(pipeline: BuiltPipeline, *, explicit: bool = False) -> bool:
    """Whether :func:`check_server_models` asks the backend's server: never for the embedded engine;
    ``explicit`` (``validate --online``): any server; else as ``run.shutdown_dates`` says (``auto``: OpenAI's
    API only)."""
    backend = pipeline.backend
    if not _online(backend):
        return False
    mode = pipeline.loaded.config.run.shutdown_dates
    if explicit:
        return True
    return mode == "always" or (mode == "auto" and _openai(backend))


async def check_server_models(pipeline: BuiltPipeline, *, explicit: bool = False) -> list[str]:
    """Ask the backend's server for its models (``GET /models``, one request) and hold each model the
    pipeline calls to the ``shutdown_date`` the server gives it, as :func:`check_models` holds them to the
    table: the warnings (within :data:`WARN_DAYS`) are returned, a model past its date raises a
    :class:`ConfigError` with the file, line and fix. A server that gives no list (404, an error, no key)
    is not an error: one line on the ``oaipipe.lifecycle`` logger (``-v``) says the dates were not checked.
    A date the table (or ``models:``) already gave the same is not reported twice. The backend is closed
    when a model is refused."""
    from dataclasses import replace

    from .config import Problems
    from .errors import OaipipeError, redact
    from .models_table import _base

    if not asks_server(pipeline, explicit=explicit):
        return []
    backend = pipeline.backend
    url = redact(str(getattr(backend, "base_url", None) or backend.options.base_url)).rstrip("/")
    try:
        listed = await backend.list_models()
    except OaipipeError as exc:
        _log.info("%s/models gave no model list (%s): the shutdown dates it may announce were not checked",
                  url, str(exc).splitlines()[0])
        return []
    dates = {m.id: m.shutdown_date for m in listed if m.shutdown_date}
    problems = Problems(pipeline.shown_file, pipeline.loaded.where, pipeline.loaded.origin)
    warnings: list[str] = []
    warned: set[str] = set()
    models, openai = pipeline.loaded.config.models, _openai(backend)
    ids = {m.id for m in listed}
    absent: set[str] = set()
    for block, model, _temperature, _temp_block in _calls(pipeline):
        if ids and model not in ids and model not in absent:  # a model past its date leaves the list
            absent.add(model)
            line, _col = pipeline.loaded.where(f"{block}.model")
            warnings.append(f"{_where(pipeline, f'{block}.model', line)}: model {model} is not among the {len(ids)} models GET "
                            f"{url}/models lists: it may be shut down, misspelt or not open to this key, and "
                            f"then every call to it fails (`oaipipe models` lists what the server offers)")
        date = dates.get(model) or dates.get(_base(model))
        known = model_info(model, models, table=openai)
        if not date or (known is not None and known.shutdown == date):
            continue
        info = replace(known or ModelInfo(), shutdown=str(date))
        _check_shutdown(pipeline, problems, f"{block}.model", model, info, warned, warnings,
                        source=f"GET {url}/models")
    if problems:
        await backend.aclose()  # nothing else will use it
    problems.raise_if_any()
    return warnings
