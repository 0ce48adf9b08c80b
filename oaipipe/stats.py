"""Counters of a run: records, calls, tokens and dollars, by step and model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .pricing import PriceTable
from .types import ChatResponse

__all__ = ["RunStats"]


@dataclass
class _Bucket:
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "cached": self.cached, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6),
                "priced": self.priced}


@dataclass
class RunStats:
    prices: PriceTable = field(default_factory=PriceTable)
    total: int | None = None
    done: int = 0
    failed: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    by_step: dict[tuple[str, str], _Bucket] = field(default_factory=dict)

    def add_call(self, step: str, response: ChatResponse, *, batch: bool = False) -> float:
        """Count one answered call; cached answers cost nothing. Returns its cost in USD."""
        bucket = self.by_step.setdefault((step, response.model), _Bucket())
        bucket.calls += 1
        cost = 0.0
        if response.cached:
            bucket.cached += 1
        else:
            bucket.prompt_tokens += response.usage.prompt_tokens
            bucket.completion_tokens += response.usage.completion_tokens
            price = self.prices.lookup(response.model)
            if price.known:
                cost = price.cost(response.usage.prompt_tokens, response.usage.completion_tokens, batch=batch)
                bucket.cost_usd += cost
            elif response.backend != "local":
                bucket.priced = False
        return cost

    @property
    def calls(self) -> int:
        return sum(b.calls for b in self.by_step.values())

    @property
    def cached(self) -> int:
        return sum(b.cached for b in self.by_step.values())

    @property
    def prompt_tokens(self) -> int:
        return sum(b.prompt_tokens for b in self.by_step.values())

    @property
    def completion_tokens(self) -> int:
        return sum(b.completion_tokens for b in self.by_step.values())

    @property
    def cost_usd(self) -> float:
        return sum(b.cost_usd for b in self.by_step.values())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def processed(self) -> int:
        return self.done + self.failed

    def rate(self) -> float:
        e = self.elapsed
        return self.processed / e if e > 0 else 0.0

    def eta(self) -> float | None:
        if not self.total:
            return None
        remaining = self.total - self.processed - self.skipped
        r = self.rate()
        return remaining / r if r > 0 and remaining >= 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": {"total": self.total, "done": self.done, "failed": self.failed, "skipped": self.skipped},
            "calls": self.calls,
            "cached": self.cached,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                       "total": self.prompt_tokens + self.completion_tokens},
            "cost_usd": round(self.cost_usd, 6),
            "elapsed_s": round(self.elapsed, 3),
            "records_per_s": round(self.rate(), 2),
            "by_step": [{"step": s, "model": m, **b.to_dict()} for (s, m), b in self.by_step.items()],
        }
