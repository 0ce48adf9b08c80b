"""Counters of a run: records, calls, tokens and dollars, by step and model; attempts and retries."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .pricing import PriceTable, tier_of
from .types import ChatResponse

__all__ = ["RetryStats", "RunStats"]


@dataclass
class _Bucket:
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = True
    #: prompt tokens the provider served from its prompt cache (billed at the cached price)
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    #: USD the prompt cache saved (full input price minus cached price, on cached_tokens)
    saved_usd: float = 0.0
    #: what the same calls would have cost at the standard tier (the tier plan's savings are against it)
    standard_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "cached": self.cached, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens,
                "reasoning_tokens": self.reasoning_tokens, "cost_usd": round(self.cost_usd, 6),
                "saved_usd": round(self.saved_usd, 6), "priced": self.priced}


@dataclass
class RunStats:
    prices: PriceTable = field(default_factory=PriceTable)
    total: int | None = None
    done: int = 0
    failed: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    by_step: dict[tuple[str, str], _Bucket] = field(default_factory=dict)
    #: the attempts and retries of the run's backend calls (set by the runner when it has them)
    retries: RetryStats | None = None
    #: the backend's calls cost money (:attr:`oaipipe.base.Backend.priced`): a model without a price makes
    #: the cost unknown (``priced: false`` in the summary). A free backend's calls cost nothing unless
    #: ``prices:`` names the model id exactly.
    priced: bool = True
    #: answered calls (not from the response cache) by the tier they were billed at (:func:`tier_of`)
    tiers: Counter[str] = field(default_factory=Counter)

    def add_call(self, step: str, response: ChatResponse, *, batch: bool = False, requested: str | None = None) -> float:
        """Count one answered call; cached answers cost nothing. Returns its cost in USD, at the tier the
        call was served at: ``batch`` when it went through the Batch API (:attr:`oaipipe.base.Backend.batched`),
        else the ``service_tier`` the reply reports (flex at the Batch API's rates, priority at its own).
        ``requested``: the model the call asked for (priced as that when the table does not know the model
        the server reports: :meth:`oaipipe.pricing.PriceTable.lookup`)."""
        bucket = self.by_step.setdefault((step, response.model), _Bucket())
        bucket.calls += 1
        cost = 0.0
        if response.cached:
            bucket.cached += 1
        else:
            bucket.prompt_tokens += response.usage.prompt_tokens
            bucket.completion_tokens += response.usage.completion_tokens
            bucket.cached_tokens += response.usage.cached_tokens
            bucket.reasoning_tokens += response.usage.reasoning_tokens
            price = self.prices.lookup(response.model, priced=self.priced, requested=requested)
            tier = tier_of(response.service_tier, batch=batch)
            self.tiers[tier] += 1
            if price.known:
                usage = response.usage
                cost = price.cost(usage.prompt_tokens, usage.completion_tokens, tier=tier,
                                  cached_tokens=usage.cached_tokens)
                bucket.cost_usd += cost
                bucket.standard_usd += price.cost(usage.prompt_tokens, usage.completion_tokens,
                                                  cached_tokens=usage.cached_tokens)
                bucket.saved_usd += price.cache_saving(usage.cached_tokens, tier=tier)
            elif self.priced:
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
    def standard_usd(self) -> float:
        """What the answered calls would have cost at the standard tier."""
        return sum(b.standard_usd for b in self.by_step.values())

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens served from the provider's prompt cache."""
        return sum(b.cached_tokens for b in self.by_step.values())

    @property
    def saved_usd(self) -> float:
        """USD the provider's prompt cache saved."""
        return sum(b.saved_usd for b in self.by_step.values())

    @property
    def cache_hit_rate(self) -> float | None:
        """Cached prompt tokens / prompt tokens (None before any prompt token)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None

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
                       "total": self.prompt_tokens + self.completion_tokens,
                       "cached": self.cached_tokens,
                       "reasoning": sum(b.reasoning_tokens for b in self.by_step.values())},
            "cost_usd": round(self.cost_usd, 6),
            "tier": {"calls": dict(sorted(self.tiers.items())),
                     "standard_cost_usd": round(self.standard_usd, 6),
                     "saved_usd": round(self.standard_usd - self.cost_usd, 6)},
            "prompt_cache": {"hit_rate": None if self.cache_hit_rate is None else round(self.cache_hit_rate, 4),
                             "saved_usd": round(self.saved_usd, 6)},
            "elapsed_s": round(self.elapsed, 3),
            "records_per_s": round(self.rate(), 2),
            "by_step": [{"step": s, "model": m, **b.to_dict()} for (s, m), b in self.by_step.items()],
            **(self.retries.to_dict() if self.retries is not None else {}),
        }


class RetryStats:
    """What a backend's retry policy did: attempts sent, retries by cause, seconds waited (thread-safe).

    The cause of a retry is the HTTP status (``"429"``, ``"503"``...), ``"timeout"`` or ``"connection"``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attempts = 0
        self.by_status: Counter[str] = Counter()
        self.waited = 0.0
        self.gave_up = 0

    def attempt(self) -> None:
        with self._lock:
            self.attempts += 1

    def retried(self, cause: str, delay: float) -> None:
        with self._lock:
            self.by_status[cause] += 1
            self.waited += max(0.0, delay)

    def failed(self) -> None:
        """A call that failed for good after its retries."""
        with self._lock:
            self.gave_up += 1

    @property
    def retries(self) -> int:
        with self._lock:  # read by the progress line while worker threads count
            return sum(self.by_status.values())

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"attempts": self.attempts,
                    "retries": {"total": sum(self.by_status.values()),
                                "by_status": dict(sorted(self.by_status.items())),
                                "waited_s": round(self.waited, 3), "gave_up": self.gave_up}}
