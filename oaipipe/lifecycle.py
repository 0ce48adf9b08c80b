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
import os
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .models_table import ModelInfo, model_info

if TYPE_CHECKING:
    from .pipeline import BuiltPipeline

__all__ = ["WARN_DAYS", "check_models", "shutdown_problem", "today"]

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
                     on: _dt.date | None = None) -> tuple[str, str] | None:
    """``("error"|"warning", message)`` when ``model`` is past or within :data:`WARN_DAYS` of ``shutdown``."""
    if not shutdown:
        return None
    try:
        date = _dt.date.fromisoformat(shutdown)
    except ValueError:
        return None
    now = on or today()
    instead = f"; use {substitute} instead" if substitute else ""
    if now >= date:
        return "error", f"model {model} was shut down on {shutdown} (OpenAI no longer serves it){instead}"
    days = (date - now).days
    if days <= WARN_DAYS:
        return "warning", f"model {model} shuts down on {shutdown}, in {days} days{instead}"
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
    problems = Problems(pipeline.file)
    warned: set[str] = set()
    for block, model, temperature, temp_block in _calls(pipeline):
        info = model_info(model, models, table=openai)
        if info is None:
            continue
        _check_shutdown(pipeline, problems, f"{block}.model", model, info, warned)
        if openai:
            _check_reasoning(pipeline, problems, model, info, temperature, temp_block)
    problems.raise_if_any()


def _check_shutdown(pipeline: BuiltPipeline, problems: Any, model_key: str, model: str, info: ModelInfo,
                    warned: set[str]) -> None:
    found = shutdown_problem(model, info.shutdown, info.substitute)
    if found is None:
        return
    kind, message = found
    line, col = pipeline.loaded.where(model_key)
    if kind == "error":
        problems.add(ConfigError(message, file=pipeline.file, line=line, column=col, key=model_key,
                                 hint=f"set `model: {info.substitute or 'A_CURRENT_MODEL'}` "
                                 "(see `oaipipe models` and docs/platform.md)"))
    elif model not in warned:
        warned.add(model)
        pipeline.warnings.append(f"{pipeline.file}:{line or '?'}: {message}")


def _check_reasoning(pipeline: BuiltPipeline, problems: Any, model: str, info: ModelInfo, temperature: Any,
                     temp_block: str) -> None:
    backend, where = pipeline.backend, pipeline.loaded.where
    if info.reasoning and temperature is not None:
        key = f"{temp_block}.temperature"
        line, col = where(key)
        problems.add(ConfigError(
            f"temperature is not supported by the reasoning model {model}: OpenAI refuses the call",
            file=pipeline.file, line=line, column=col, key=key,
            hint="remove `temperature` (steer a reasoning model with `reasoning_effort`), or pick a "
            "non-reasoning model such as gpt-4.1"))
    api_of = getattr(backend, "api_of", None)
    if (info.reasoning and api_of is not None and api_of(model) == "chat"
            and getattr(backend.options, "max_tokens_param", None) == "max_tokens"):
        line, col = where("backend.max_tokens_param")
        problems.add(ConfigError(
            f"the reasoning model {model} refuses `max_tokens` on Chat Completions",
            file=pipeline.file, line=line, column=col, key="backend.max_tokens_param",
            hint="remove `max_tokens_param: max_tokens` (auto sends max_completion_tokens to OpenAI), "
            "or use `api: responses`"))
