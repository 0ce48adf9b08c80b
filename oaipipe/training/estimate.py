"""Epochs, billed tokens and price of a fine-tuning job, by OpenAI's published rules.

The default number of epochs follows OpenAI's data-preparation cookbook: 3, unless that makes fewer than
100 or more than 25,000 example passes, in which case it is scaled into that range (between 1 and 25).
Billed tokens are the (truncated) tokens of every training example times the epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..pricing import PriceTable

__all__ = [
    "DEFAULT_TOKEN_LIMIT",
    "TOKEN_LIMITS",
    "TrainingEstimate",
    "default_epochs",
    "estimate_training",
    "token_limit_for",
]

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

#: maximum tokens of one training example, by base model (longest prefix wins); override with
#: ``--max-tokens-per-example`` / ``max_tokens_per_example:``
TOKEN_LIMITS: dict[str, int] = {
    "gpt-4o-mini": 65_536,
    "gpt-4o": 65_536,
    "gpt-4.1": 65_536,
    "gpt-4.1-mini": 65_536,
    "gpt-4.1-nano": 65_536,
    "gpt-3.5-turbo": 16_385,
    "o4-mini": 65_536,
}
DEFAULT_TOKEN_LIMIT = 65_536


def token_limit_for(model: str) -> int:
    """The per-example token limit of ``model`` (``ft:`` ids use their base model)."""
    name = model.split(":")[1] if model.startswith("ft:") and ":" in model else model
    name = name.removeprefix("local:")
    if name in TOKEN_LIMITS:
        return TOKEN_LIMITS[name]
    matches = [k for k in TOKEN_LIMITS if name.startswith(k)]
    return TOKEN_LIMITS[max(matches, key=len)] if matches else DEFAULT_TOKEN_LIMIT


def default_epochs(n_examples: int) -> int:
    """OpenAI's default ``n_epochs`` for a dataset of ``n_examples`` training examples."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


@dataclass
class TrainingEstimate:
    n_epochs: int
    epochs_source: str  # "default rule" or "hyperparameters"
    billing_tokens_per_epoch: int
    billed_tokens: int
    price_per_1m: float | None
    estimated_cost_usd: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def estimate_training(example_tokens: list[int], *, model: str, token_limit: int,
                      n_epochs: int | str | None = None, prices: PriceTable | None = None) -> TrainingEstimate:
    """Epochs, billed tokens and USD for training ``model`` on examples of these token lengths."""
    if isinstance(n_epochs, int) and n_epochs > 0:
        epochs, source = n_epochs, "hyperparameters"
    else:
        epochs, source = default_epochs(len(example_tokens)), "default rule"
    per_epoch = sum(min(token_limit, n) for n in example_tokens)
    billed = per_epoch * epochs
    price = (prices or PriceTable()).lookup(model)
    cost = price.training_cost(billed) if price.known else None
    return TrainingEstimate(
        n_epochs=epochs,
        epochs_source=source,
        billing_tokens_per_epoch=per_epoch,
        billed_tokens=billed,
        price_per_1m=price.training if price.known else None,
        estimated_cost_usd=round(cost, 6) if cost is not None else None,
    )
