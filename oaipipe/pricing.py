"""Prices in USD per 1M tokens, and the arithmetic of cost.

The table holds list prices as published by OpenAI (standard tier) at the time of writing; they change.
Override any entry from a pipeline (``prices: {model: {input: 0.15, output: 0.6}}``) or with a JSON/YAML
file named by ``OAIPIPE_PRICES``. Models are matched by exact id, then by the longest known prefix
(``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``; ``ft:gpt-4o-mini:org::id`` → the fine-tuned price of
``gpt-4o-mini``). The local engine and unknown models cost 0 and are reported as unpriced, unless an
override names that exact model id (``prices: {"local:gpt-4o-mini": {input: 1000, output: 4000}}``):
an explicit override for an exact id always wins, which lets ``--max-cost`` be tried offline.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable", "price_table"]

#: model -> {"input", "cached_input", "output", "training", "ft_input", "ft_output"} in USD per 1M tokens
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o": {"input": 2.50, "cached_input": 1.25, "output": 10.00, "training": 25.00,
               "ft_input": 3.75, "ft_output": 15.00},
    "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60, "training": 3.00,
                    "ft_input": 0.30, "ft_output": 1.20},
    "gpt-4.1": {"input": 2.00, "cached_input": 0.50, "output": 8.00, "training": 25.00,
                "ft_input": 3.00, "ft_output": 12.00},
    "gpt-4.1-mini": {"input": 0.40, "cached_input": 0.10, "output": 1.60, "training": 5.00,
                     "ft_input": 0.80, "ft_output": 3.20},
    "gpt-4.1-nano": {"input": 0.10, "cached_input": 0.025, "output": 0.40, "training": 1.50,
                     "ft_input": 0.20, "ft_output": 0.80},
    "gpt-3.5-turbo": {"input": 0.50, "output": 1.50, "training": 8.00, "ft_input": 3.00, "ft_output": 6.00},
    "o4-mini": {"input": 1.10, "cached_input": 0.275, "output": 4.40},
    "gpt-5": {"input": 1.25, "cached_input": 0.125, "output": 10.00},
    "gpt-5-mini": {"input": 0.25, "cached_input": 0.025, "output": 2.00},
    "gpt-5-nano": {"input": 0.05, "cached_input": 0.005, "output": 0.40},
}

#: the Batch API bills half of the standard price
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class Price:
    model: str
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    training: float | None = None
    known: bool = True

    def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        usd = (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000
        return usd * BATCH_DISCOUNT if batch else usd

    def training_cost(self, trained_tokens: int) -> float | None:
        if self.training is None:
            return None
        return trained_tokens * self.training / 1_000_000


class PriceTable:
    """Looks up a :class:`Price` for a model id, with overrides on top of the defaults."""

    def __init__(self, overrides: dict[str, dict[str, float]] | None = None) -> None:
        self.prices: dict[str, dict[str, float]] = {k: dict(v) for k, v in DEFAULT_PRICES.items()}
        #: model ids given explicitly by the user (pipeline ``prices:`` or ``OAIPIPE_PRICES``)
        self.overridden: set[str] = set()
        env_file = os.environ.get("OAIPIPE_PRICES")
        if env_file:
            self.update(_env_table(Path(env_file)))
        if overrides:
            self.update(overrides)

    def update(self, table: dict[str, dict[str, float]]) -> None:
        for model, entry in table.items():
            self.prices.setdefault(model, {}).update({k: float(v) for k, v in entry.items()})
            self.overridden.add(model)

    def lookup(self, model: str) -> Price:
        if model and model in self.overridden:
            # an explicit price for this exact id wins, also for local models (try --max-cost offline)
            entry = self.prices[model]
            return Price(model=model, input=entry.get("input", 0.0), output=entry.get("output", 0.0),
                         cached_input=entry.get("cached_input"), training=entry.get("training"))
        if not model or model.startswith("local"):
            return Price(model=model, known=False)
        fine_tuned = model.startswith("ft:")
        base = model.split(":")[1] if fine_tuned and ":" in model else model
        if fine_tuned and ":local:" in model:
            return Price(model=model, known=False)
        entry = self.prices.get(model) or self.prices.get(base)
        if entry is None:
            matches = [k for k in self.prices if base.startswith(k)]
            entry = self.prices[max(matches, key=len)] if matches else None
        if entry is None:
            return Price(model=model, known=False)
        if fine_tuned:
            return Price(model=model, input=entry.get("ft_input", entry.get("input", 0.0)),
                         output=entry.get("ft_output", entry.get("output", 0.0)),
                         training=entry.get("training"))
        return Price(model=model, input=entry.get("input", 0.0), output=entry.get("output", 0.0),
                     cached_input=entry.get("cached_input"), training=entry.get("training"))


def _env_table(path: Path) -> dict[str, Any]:
    """The price table of the ``OAIPIPE_PRICES`` file; a :class:`ConfigError` saying what to fix."""
    import yaml

    from .errors import ConfigError

    try:
        table = _read_table(path)
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise ValueError("expected a mapping of model id to {input: USD_PER_1M, output: USD_PER_1M}")
        return {model: {k: float(v) for k, v in entry.items()} for model, entry in table.items()}
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"OAIPIPE_PRICES points at {path}, which cannot be used: {exc}",
                          hint="fix the file (JSON or YAML: {MODEL: {input: USD_PER_1M, output: USD_PER_1M}}) "
                               "or unset OAIPIPE_PRICES") from None


def _read_table(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def price_table(overrides: dict[str, dict[str, float]] | None = None) -> PriceTable:
    return PriceTable(overrides)
