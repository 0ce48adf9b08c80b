"""What oaipipe knows about OpenAI model families: which API to call, reasoning, lifecycle.

One table, matched like the price table (exact id, then the longest known prefix; ``ft:BASE:...`` is
looked up as ``BASE``). Prices live in :mod:`oaipipe.pricing` (``DEFAULT_PRICES``, with ``cached_input``).
Sources and the date of each entry are in docs/platform.md; the table is as of :data:`AS_OF`.

A pipeline overrides an entry with the backend option ``api_models: {PREFIX: responses|chat}`` (which API
``api: auto`` picks).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AS_OF", "MODELS", "ModelInfo", "api_for", "model_info"]

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


def model_info(model: str) -> ModelInfo | None:
    """The table's entry for ``model`` (exact id, then the longest prefix), or None when it is unknown."""
    key = _lookup(model, MODELS)  # type: ignore[arg-type]
    return MODELS[key] if key is not None else None


def api_for(model: str, overrides: dict[str, str] | None = None) -> str:
    """``"responses"`` or ``"chat"``: what ``api: auto`` calls for ``model``; ``overrides`` (the backend's
    ``api_models``, prefix -> api) win over the table. Unknown models go to chat (every compatible server
    has it)."""
    if overrides:
        key = _lookup(model, overrides)  # type: ignore[arg-type]
        if key is not None:
            return overrides[key]
    return (model_info(model) or _UNKNOWN).api
