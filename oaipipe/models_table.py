"""What oaipipe knows about OpenAI model families: which API to call, reasoning, lifecycle.

One table, matched like the price table (exact id, then the longest known prefix; ``ft:BASE:...`` is
looked up as ``BASE``). Prices live in :mod:`oaipipe.pricing` (``DEFAULT_PRICES``, with ``cached_input``).
Sources and the date of each entry are in docs/platform.md; the table is as of :data:`AS_OF`.

A pipeline overrides entries with its ``models:`` block (:class:`ModelEntry`: prices, context window, API,
shutdown date, fine-tunable; matched the same way, and laid over the table's entry field by field), and
the backend option ``api_models: {PREFIX: responses|chat}`` (which API ``api: auto`` picks) wins over both.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AS_OF", "DEFAULT_FINE_TUNE_MODEL", "DEFAULT_MODEL", "FINE_TUNE_DEFAULT_WHY", "MODELS", "ModelEntry", "ModelInfo", "api_for", "model_info"]

#: the date the table was last checked against its sources (docs/platform.md)
AS_OF = "2026-11-30"


@dataclass(frozen=True)
class ModelInfo:
    #: the API OpenAI recommends for this model: "responses" or "chat"
    api: str = "chat"
    #: a reasoning model: no ``temperature``, and ``max_completion_tokens`` instead of ``max_tokens`` on chat
    reasoning: bool = False
    #: context window in tokens, when known
    context: int | None = None
    #: YYYY-MM-DD the model leaves the API, when announced
    shutdown: str | None = None
    #: what OpenAI names as the replacement
    substitute: str | None = None
    #: new fine-tuning jobs are accepted for it
    fine_tunable: bool = False


_GPT4O = "2027-01-14"
MODELS: dict[str, ModelInfo] = {
    "gpt-3.5-turbo": ModelInfo("chat", context=16_385, shutdown="2026-10-23", substitute="gpt-4.1-mini"),
    "gpt-4o": ModelInfo("chat", context=128_000, shutdown=_GPT4O, substitute="gpt-6-luna", fine_tunable=True),
    "gpt-4o-mini": ModelInfo("chat", context=128_000, shutdown=_GPT4O, substitute="gpt-6-luna",
                             fine_tunable=True),
    "gpt-4.1": ModelInfo("chat", context=1_047_576, shutdown=_GPT4O, substitute="gpt-6-luna", fine_tunable=True),
    "gpt-4.1-mini": ModelInfo("chat", context=1_047_576, shutdown=_GPT4O, substitute="gpt-6-luna",
                              fine_tunable=True),
    "gpt-4.1-nano": ModelInfo("chat", context=1_047_576, shutdown="2026-10-23", substitute="gpt-5.4-nano"),
    "o1": ModelInfo("responses", reasoning=True, context=200_000, shutdown="2026-10-23"),
    "o3": ModelInfo("responses", reasoning=True, context=200_000, shutdown="2026-12-11"),
    "o3-mini": ModelInfo("responses", reasoning=True, context=200_000, shutdown="2026-10-23"),
    "o4-mini": ModelInfo("responses", reasoning=True, context=200_000, shutdown="2026-10-23"),
    "gpt-5": ModelInfo("responses", reasoning=True, context=400_000, shutdown="2026-12-11",
                       substitute="gpt-6.1-sol"),
    "gpt-5-mini": ModelInfo("responses", reasoning=True, context=400_000, shutdown="2026-12-11",
                            substitute="gpt-6.1-terra"),
    "gpt-5-nano": ModelInfo("responses", reasoning=True, context=400_000, shutdown="2026-12-11"),
    "gpt-6-luna": ModelInfo("responses", reasoning=True),  # reasons by default, not fine-tunable
    # newer gpt-5.x and gpt-6 families: Responses, reasoning; no shutdown announced in the sources
    "gpt-5.": ModelInfo("responses", reasoning=True),
    "gpt-6": ModelInfo("responses", reasoning=True),
    "o": ModelInfo("responses", reasoning=True),  # any other o-series id (o5-mini...) matched by prefix
}

_UNKNOWN = ModelInfo("chat")

#: the model a pipeline without ``model:`` calls (``BackendOptions.model``, the ``llm`` analyzer, token
#: counts): the table's substitute for gpt-4o-mini, with no shutdown announced (tests/test_default_model.py)
DEFAULT_MODEL = "gpt-6-luna"
#: the base model ``oaipipe train``/``dataset`` fine-tune by default: gpt-6-luna takes no fine-tuning; every
#: fine-tunable model of the table shuts down on 2027-01-14 (new self-serve jobs stop on 2027-01-06), and
#: gpt-4o-mini is the cheapest of them (docs/platform.md, "Fine-tuning after January 2027")
DEFAULT_FINE_TUNE_MODEL = "gpt-4o-mini"
#: why, as the ``--model`` help of ``oaipipe train``/``dataset`` says it
FINE_TUNE_DEFAULT_WHY = (f"default {DEFAULT_FINE_TUNE_MODEL}: fine-tunable, unlike the chat default {DEFAULT_MODEL}; "
                         "every fine-tunable model shuts down on 2027-01-14 and new jobs stop on 2027-01-06 "
                         "(docs/platform.md)")

class ModelEntry(BaseModel):
    """One entry of a pipeline's ``models:`` block: what it says about a model id (or id prefix) wins over
    the built-in table (:data:`MODELS`) and the price table; fields left out keep the table's value."""

    model_config = ConfigDict(extra="forbid")

    # strict: `input: true` or `input: "0.1"` is a mistake, not $1.00 or $0.10 (an int is still a price)
    input: float | None = Field(None, ge=0, allow_inf_nan=False, strict=True, description="USD per 1M input tokens")
    cached_input: float | None = Field(None, ge=0, allow_inf_nan=False, strict=True,
                                       description="USD per 1M cached input tokens (prompt cache hits)")
    output: float | None = Field(None, ge=0, allow_inf_nan=False, strict=True,
                                 description="USD per 1M output tokens")
    context: int | None = Field(None, ge=1, description="Context window in tokens")
    api: Literal["responses", "chat"] | None = Field(
        None, description="The API `api: auto` calls for this model (the backend's api_models still wins)")
    shutdown: _dt.date | None = Field(
        None, description="YYYY-MM-DD the model leaves the API: validate and run warn within 60 days, refuse "
        "from that day")
    substitute: str | None = Field(None, description="The model to name in the shutdown message")
    reasoning: bool | None = Field(None, description="A reasoning model (no temperature; see docs/platform.md)")
    fine_tunable: bool | None = Field(None, description="New fine-tuning jobs are accepted for it")

    @model_validator(mode="after")
    def _cached_not_above_input(self) -> ModelEntry:
        if self.input is not None and self.cached_input is not None and self.cached_input > self.input:
            raise ValueError(f"cached_input ({self.cached_input}) is above input ({self.input}): a prompt-cache hit "
                             "is billed at most the input price; check the two figures")
        return self

    def prices(self) -> dict[str, float]:
        """The price fields it sets (USD per 1M tokens), as the price table takes them."""
        return {k: v for k in ("input", "cached_input", "output") if (v := getattr(self, k)) is not None}

    def over(self, info: ModelInfo) -> ModelInfo:
        """``info`` with the fields this entry sets replaced."""
        changes: dict[str, Any] = {k: v for k in ("api", "context", "substitute", "reasoning", "fine_tunable")
                                   if (v := getattr(self, k)) is not None}
        if self.shutdown is not None:
            changes["shutdown"] = self.shutdown.isoformat()
        return replace(info, **changes)


#: a pipeline's ``models:`` block: model id or prefix -> its entry (raw mappings are checked on use)
Models = Mapping[str, "ModelEntry | Mapping[str, Any]"]


def _entries(models: Models | None) -> dict[str, ModelEntry]:
    if not models:
        return {}
    return {k: v if isinstance(v, ModelEntry) else ModelEntry.model_validate(v) for k, v in models.items()}


def _base(model: str) -> str:
    if model.startswith("ft:") and ":" in model[3:]:
        return model.split(":")[1]
    return model


def _lookup(model: str, table: dict[str, object]) -> str | None:
    base = _base(model)
    if base in table:
        return base
    matches = [k for k in table if base.startswith(k) and (k == "o" and base[1:2].isdigit() or k != "o")]
    return max(matches, key=len) if matches else None


def model_info(model: str, models: Models | None = None, *, table: bool = True) -> ModelInfo | None:
    """What is known of ``model``: the table's entry (exact id, then the longest prefix) with the pipeline's
    ``models:`` entry for it (matched the same way) laid over it; None when neither knows it.
    ``table=False``: the pipeline's entry alone (a server other than OpenAI's, which the table is not about)."""
    key = _lookup(model, MODELS) if table else None  # type: ignore[arg-type]
    info = MODELS[key] if key is not None else None
    entries = _entries(models)
    own = _lookup(model, entries)  # type: ignore[arg-type]
    if own is not None:
        info = entries[own].over(info or _UNKNOWN)
    return info


def api_for(model: str, overrides: dict[str, str] | None = None, models: Models | None = None) -> str:
    """``"responses"`` or ``"chat"``: what ``api: auto`` calls for ``model``; ``overrides`` (the backend's
    ``api_models``, prefix -> api) win over the pipeline's ``models:`` block, which wins over the table.
    Unknown models go to chat (every compatible server has it)."""
    if overrides:
        key = _lookup(model, overrides)  # type: ignore[arg-type]
        if key is not None:
            return overrides[key]
    return (model_info(model, models) or _UNKNOWN).api
