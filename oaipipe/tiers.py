"""The tier planner: standard, flex, priority or the Batch API, whichever meets the deadline for less.

``backend.tier: auto`` with ``backend.deadline:`` (a duration such as ``30m``, ``2h``, ``1d``, ``1h30m``, or
an ISO 8601 time) asks oaipipe to choose. :func:`plan_tiers` is a pure function: given the work (calls
and tokens, from the dry-run estimator), what each tier would cost (:func:`tier_costs`), the tiers the
backend offers (:attr:`oaipipe.base.Backend.tiers` and :attr:`~oaipipe.base.Backend.tier_backends`), the
limits it runs under (concurrency, ``rpm``, ``tpm``) and a latency per call for each tier, it estimates
the time of each tier and picks the **cheapest that finishes by the deadline** (between equal prices, the
quicker). When none does, it picks the quickest and says the deadline will be missed.

The time of an online tier (standard, flex, priority) is the longest of three bounds: ``calls x latency /
concurrency`` (the calls in flight at once), ``calls / rpm`` and ``tokens / tpm`` (the configured limits;
limits learnt from a server's headers are not known before a run). The Batch API's time is its
completion window (24 h: the only one OpenAI offers), the latest a batch may finish: batches often finish
sooner, but only the window is promised.

The latency per call is ``FIRST_TOKEN_S + completion tokens / speed`` at :data:`TOKENS_PER_S` of the tier.
These are assumptions, written down in docs/platform.md with their sources; ``backend.tier_latency:
{flex: 20}`` replaces the estimate of a tier with seconds per call of your own measure.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .pricing import TIERS, PriceTable

if TYPE_CHECKING:
    from .base import Backend
    from .pipeline import BuiltPipeline

__all__ = ["BATCH_WINDOW_S", "FIRST_TOKEN_S", "TOKENS_PER_S", "TierEstimate", "TierPlan", "Workload",
           "call_latency", "deadline_seconds", "format_duration", "parse_deadline", "plan_tiers", "tier_costs"]

#: output tokens per second of one call, per tier (assumptions: docs/platform.md). Standard: oaipipe's
#: working figure; priority: the floor of OpenAI's priority latency SLA (50-100 tokens/s by model, 80 for
#: the mini models); flex: half of standard (OpenAI says only "slower", and advises a 15-minute timeout)
TOKENS_PER_S: dict[str, float] = {"standard": 50.0, "priority": 80.0, "flex": 25.0}
#: seconds before the first token of a call, per tier (same sources as :data:`TOKENS_PER_S`)
FIRST_TOKEN_S: dict[str, float] = {"standard": 0.5, "priority": 0.5, "flex": 1.0}
#: the Batch API's completion window: the latest a batch finishes (``completion_window: 24h``)
BATCH_WINDOW_S = 24 * 3600.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
DEADLINE_HINT = ("write a duration such as `deadline: 30m`, `2h`, `1d` or `1h30m` (s, m, h, d, w), or an ISO "
                 "time such as `deadline: 2026-12-01T18:00:00Z`")


@dataclass(frozen=True)
class Deadline:
    """A deadline as written: a duration from the start of the run, or a fixed time (UTC)."""

    text: str
    seconds: float | None = None
    at: _dt.datetime | None = None

    def remaining(self, now: _dt.datetime | None = None) -> float:
        """Seconds left from ``now`` (the machine's time when None)."""
        if self.seconds is not None:
            return self.seconds
        assert self.at is not None
        return (self.at - (now or _dt.datetime.now(_dt.UTC))).total_seconds()


def parse_deadline(value: Any) -> Deadline:
    """``value`` (``30m``, ``2h``, ``1d``, ``1h30m``, seconds as a number, or an ISO 8601 time) as a
    :class:`Deadline`, or a ``ValueError`` saying how to write it. A time without a zone is UTC."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"a deadline is a duration or a time, not {value!r}: {DEADLINE_HINT}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"a deadline must be longer than 0 seconds, not {value!r}: {DEADLINE_HINT}")
        return Deadline(text=f"{value:g}s", seconds=float(value))
    if isinstance(value, _dt.datetime):
        at = value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
        return Deadline(text=at.isoformat(), at=at.astimezone(_dt.UTC))
    text = str(value).strip().lower()
    if text and _DURATION.sub("", text).strip() == "":
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))
        if seconds <= 0:
            raise ValueError(f"a deadline must be longer than 0 seconds, not {value!r}: {DEADLINE_HINT}")
        return Deadline(text=text.replace(" ", ""), seconds=seconds)
    try:
        at = _dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither a duration nor an ISO time: {DEADLINE_HINT}") from None
    at = at if at.tzinfo else at.replace(tzinfo=_dt.UTC)
    return Deadline(text=str(value).strip(), at=at.astimezone(_dt.UTC))


def deadline_seconds(value: Any, now: _dt.datetime | None = None) -> float:
    """Seconds from ``now`` to the deadline ``value`` (:func:`parse_deadline`); negative when it passed."""
    return parse_deadline(value).remaining(now)


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest fitting units: ``45s``, ``12m``, ``2h30m``, ``1d2h``."""
    if not math.isfinite(seconds):
        return "never"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f"{s % 60}s" if s % 60 and s < 600 else "")
    if s < 86400:
        return f"{s // 3600}h" + (f"{s % 3600 // 60}m" if s % 3600 // 60 else "")
    return f"{s // 86400}d" + (f"{s % 86400 // 3600}h" if s % 86400 // 3600 else "")


@dataclass(frozen=True)
class Workload:
    """What a run has to do, and the limits it runs under."""

    calls: int
    prompt_tokens: int
    completion_tokens: int
    concurrency: int = 8
    rpm: int | None = None
    tpm: int | None = None

    @property
    def completion_per_call(self) -> float:
        return self.completion_tokens / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class TierEstimate:
    tier: str
    #: USD of the work at this tier (None: no price known for it)
    cost_usd: float | None
    #: estimated seconds to finish (the Batch API: its completion window)
    seconds: float
    #: finishes by the deadline
    meets: bool
    #: why it was not chosen, or what bounds its time
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
                "seconds": round(self.seconds, 1), "time": format_duration(self.seconds), "meets_deadline": self.meets,
                "note": self.note}


@dataclass(frozen=True)
class TierPlan:
    """The planner's choice and its reasons."""

    #: the tier chosen (one of :data:`~oaipipe.pricing.TIERS`)
    chosen: str
    #: seconds to the deadline when planned
    deadline_s: float
    #: one estimate per tier the backend offers, in :data:`~oaipipe.pricing.TIERS` order
    estimates: list[TierEstimate] = field(default_factory=list)
    #: the chosen tier meets the deadline
    meets: bool = True
    #: in words: what was chosen and why
    reason: str = ""

    def estimate(self, tier: str) -> TierEstimate | None:
        return next((e for e in self.estimates if e.tier == tier), None)

    @property
    def standard_cost_usd(self) -> float | None:
        standard = self.estimate("standard")
        return standard.cost_usd if standard is not None else None

    @property
    def saving_usd(self) -> float | None:
        """USD the chosen tier saves against the standard tier (None when either price is unknown)."""
        chosen, standard = self.estimate(self.chosen), self.standard_cost_usd
        if chosen is None or chosen.cost_usd is None or standard is None:
            return None
        return standard - chosen.cost_usd

    def to_dict(self) -> dict[str, Any]:
        saving = self.saving_usd
        return {"chosen": self.chosen, "deadline_s": round(self.deadline_s, 1),
                "deadline": format_duration(self.deadline_s), "meets_deadline": self.meets,
                "standard_cost_usd": None if self.standard_cost_usd is None else round(self.standard_cost_usd, 6),
                "saving_usd": None if saving is None else round(saving, 6), "reason": self.reason,
                "tiers": [e.to_dict() for e in self.estimates]}


def tier_costs(rows: Iterable[Mapping[str, Any]], prices: PriceTable, tiers: Sequence[str] = TIERS,
               ) -> dict[str, float | None]:
    """USD of the estimated calls (``rows``: ``model``, ``prompt_tokens``, ``completion_tokens``, as in a dry
    run's ``by_step``) at each tier; None for a tier without a known price for some model."""
    rows = list(rows)
    out: dict[str, float | None] = {}
    for tier in tiers:
        total: float | None = 0.0
        for row in rows:
            price = prices.lookup(str(row["model"]))
            if not price.tier_known(tier):
                total = None
                break
            assert total is not None
            total += price.cost(int(row["prompt_tokens"]), int(row["completion_tokens"]), tier=tier)
        out[tier] = total
    return out


def call_latency(tier: str, completion_per_call: float, overrides: Mapping[str, float] | None = None) -> float:
    """Seconds one call takes at an online ``tier``: ``overrides[tier]`` when given, else
    :data:`FIRST_TOKEN_S` + completion tokens / :data:`TOKENS_PER_S`."""
    if overrides and tier in overrides:
        return float(overrides[tier])
    return FIRST_TOKEN_S[tier] + completion_per_call / TOKENS_PER_S[tier]


def _online_time(work: Workload, tier: str, latency: Mapping[str, float] | None) -> tuple[float, str]:
    """Seconds of ``work`` at an online tier, and which bound decides it."""
    per_call = call_latency(tier, work.completion_per_call, latency)
    bounds = {f"{work.concurrency} calls at once x {per_call:.1f}s a call":
              work.calls * per_call / max(1, work.concurrency)}
    if work.rpm:
        bounds[f"rpm {work.rpm}"] = work.calls / work.rpm * 60
    if work.tpm:
        bounds[f"tpm {work.tpm}"] = (work.prompt_tokens + work.completion_tokens) / work.tpm * 60
    bound = max(bounds, key=lambda k: bounds[k])
    return bounds[bound], bound


def plan_tiers(work: Workload, costs: Mapping[str, float | None], offered: Sequence[str], deadline_s: float, *,
               latency: Mapping[str, float] | None = None, batch_window_s: float = BATCH_WINDOW_S) -> TierPlan:
    """The cheapest tier of ``offered`` whose estimated time is within ``deadline_s`` (see the module
    docstring). ``costs``: USD per tier (:func:`tier_costs`); ``latency``: seconds per call per tier, over
    the built-in estimate. A tier without a known price is never chosen while another is."""
    estimates: dict[str, tuple[float | None, float, str]] = {}
    for tier in (t for t in TIERS if t in offered):
        if tier == "batch":
            seconds, bound = batch_window_s, "the Batch API's completion window (often sooner)"
        else:
            seconds, bound = _online_time(work, tier, latency)
        estimates[tier] = (costs.get(tier), seconds, bound)
    if not estimates:
        raise ValueError("no tier offered to plan with")

    def order(tier: str) -> tuple[float, float]:
        cost, seconds, _ = estimates[tier]
        return (math.inf if cost is None else round(cost, 9), seconds)

    meeting = [t for t, (_, seconds, _) in estimates.items() if seconds <= deadline_s]
    if meeting:
        chosen = min(meeting, key=order)
        meets = True
    else:
        chosen = min(estimates, key=lambda t: (estimates[t][1], order(t)))
        meets = False
    rows = [TierEstimate(tier, cost, seconds, seconds <= deadline_s,
                         _why(tier, chosen, estimates, deadline_s, bound))
            for tier, (cost, seconds, bound) in estimates.items()]
    plan = TierPlan(chosen=chosen, deadline_s=deadline_s, estimates=rows, meets=meets)
    return TierPlan(chosen=chosen, deadline_s=deadline_s, estimates=rows, meets=meets, reason=_reason(plan))


def _why(tier: str, chosen: str, estimates: Mapping[str, tuple[float | None, float, str]], deadline_s: float,
         bound: str) -> str:
    cost, seconds, _ = estimates[tier]
    if tier == chosen:
        return f"chosen (time bound by {bound})"
    if seconds > deadline_s:
        return f"misses the deadline (time bound by {bound})"
    if cost is None:
        return "no price known for this tier"
    chosen_cost = estimates[chosen][0]
    if chosen_cost is not None and round(cost, 9) == round(chosen_cost, 9):
        return f"same price, slower (time bound by {bound})"
    return "dearer"


def _reason(plan: TierPlan) -> str:
    chosen = plan.estimate(plan.chosen)
    assert chosen is not None
    head = (f"tier {plan.chosen}: est. {format_duration(chosen.seconds)} against a deadline of "
            f"{format_duration(plan.deadline_s)}")
    if not plan.meets:
        return head + "; no offered tier meets the deadline, so the quickest was chosen"
    saving = plan.saving_usd
    if saving is not None and plan.chosen != "standard":
        standard = plan.standard_cost_usd or 0.0
        share = f" ({100 * saving / standard:.0f}%)" if standard > 0 else ""
        return head + f"; saves ${saving:.4f}{share} against standard"
    return head + "; the cheapest tier that meets it"


# --- the plan of a pipeline, and its backend switched to the chosen tier --------------------------------


def offered_tiers(backend: Backend) -> list[str]:
    """The tiers ``backend`` serves (:attr:`~oaipipe.base.Backend.tiers`) or can hand to another backend type
    (:attr:`~oaipipe.base.Backend.tier_backends`), in :data:`~oaipipe.pricing.TIERS` order."""
    own = set(backend.tiers) | set(backend.tier_backends)
    return [t for t in TIERS if t in own]


def configured_tier(backend: Backend) -> str:
    """The tier a backend's calls are priced at before any plan: ``batch`` for a batched backend, else a
    fixed ``tier:``, else the ``service_tier:`` it sends (``standard`` when none)."""
    from .pricing import tier_of

    if backend.batched:
        return "batch"
    tier = getattr(backend.options, "tier", None)
    if tier in TIERS:
        return str(tier)
    return tier_of(getattr(backend.options, "service_tier", None))


def workload(estimate: Mapping[str, Any], options: Any) -> Workload:
    """The :class:`Workload` of a dry run's ``estimate`` under the backend ``options``' limits."""
    return Workload(calls=int(estimate.get("calls") or 0), prompt_tokens=int(estimate.get("prompt_tokens") or 0),
                    completion_tokens=int(estimate.get("completion_tokens") or 0),
                    concurrency=int(getattr(options, "concurrency", 8) or 8),
                    rpm=getattr(options, "rpm", None), tpm=getattr(options, "tpm", None))


def plan_for(backend: Backend, estimate: Mapping[str, Any], prices: PriceTable,
             now: _dt.datetime | None = None) -> TierPlan | None:
    """The plan of a backend with ``tier: auto`` for the work of a dry run's ``estimate``; None when the
    backend has no ``tier: auto`` or offers no tiers."""
    options = backend.options
    offered = offered_tiers(backend)
    if getattr(options, "tier", None) != "auto" or not offered or not getattr(options, "deadline", None):
        return None
    costs = tier_costs(estimate.get("by_step") or [], prices, offered)
    window = getattr(options, "completion_window", None)  # a batch backend's own (the API has only 24h)
    return plan_tiers(workload(estimate, options), costs, offered, deadline_seconds(options.deadline, now),
                      latency=getattr(options, "tier_latency", None) or None,
                      batch_window_s=_window(window) if window else BATCH_WINDOW_S)


def _window(text: str) -> float:
    """A batch backend's ``completion_window`` (``24h``) in seconds (:data:`BATCH_WINDOW_S` if unreadable)."""
    try:
        return parse_deadline(str(text)).remaining()
    except ValueError:
        return BATCH_WINDOW_S


def switch_backend(pipeline: BuiltPipeline, tier: str) -> Backend | None:
    """Make ``pipeline`` serve its calls at ``tier``: the backend's own (:meth:`~oaipipe.base.Backend.use_tier`),
    or a backend of the type :attr:`~oaipipe.base.Backend.tier_backends` names for it, built from the same
    options (those its ``Options`` know). Returns the backend replaced (to be closed), or None."""
    backend = pipeline.backend
    if tier in backend.tiers:
        backend.use_tier(tier)
        return None
    kind = backend.tier_backends.get(tier)
    if kind is None:
        raise ValueError(f"backend {backend.name} offers no tier {tier}")
    from .pipeline import build_backend

    registration = pipeline.host.registry["backend"][kind]
    fields = registration.cls.Options.model_fields
    block = {k: v for k, v in (pipeline.loaded.data.get("backend") or {}).items() if k in fields}
    block.update(type=kind, tier=None)
    block.pop("service_tier", None)  # the tier is set by use_tier below
    new, _ = build_backend(block, host=pipeline.host, context=pipeline.context, file=pipeline.file or None,
                           offline_fallback=False)
    new.use_tier(tier)
    pipeline.backend = new
    return backend


@dataclass
class TierChoice:
    """What the run start decided: the tier, the plan behind it (``tier: auto``), a note for the headline."""

    tier: str
    plan: TierPlan | None = None
    note: str | None = None
    #: the backend replaced by the one serving the tier (close it)
    replaced: Backend | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chosen": self.tier}
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        return out


def choose_tier(pipeline: BuiltPipeline, limit: int | None = None,
                shard: tuple[int, int] | None = None) -> TierChoice | None:
    """Before a run: the tier ``backend.tier`` asks for (``auto``: planned over a dry run of the input),
    with the pipeline's backend switched to serve it. None when no ``tier:`` is set."""
    backend = pipeline.backend
    wanted = getattr(backend.options, "tier", None)
    if wanted is None:
        return None
    offered = offered_tiers(backend)
    if not offered:
        return TierChoice(tier=configured_tier(backend),
                          note=f"tier: {wanted} ignored: backend {backend.name} has no service tiers")
    plan = None
    if wanted == "auto":
        from .dryrun import estimate

        summary = estimate(pipeline, limit, shard=shard)
        plan = plan_for(backend, summary["estimate"], PriceTable(pipeline.loaded.config.prices))
        assert plan is not None
        tier, note = plan.chosen, f"tier plan: {plan.reason}"
    else:
        if wanted not in offered:
            raise ValueError(f"backend {backend.name} offers no tier {wanted} (it offers {', '.join(offered)})")
        tier, note = str(wanted), None
    replaced = switch_backend(pipeline, tier)
    if replaced is not None:
        note = (note + "; " if note else "") + f"calls go through backend {pipeline.backend.name}"
    return TierChoice(tier=tier, plan=plan, note=note, replaced=replaced)
