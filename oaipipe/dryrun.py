"""``oaipipe run --dry-run``: count records, tokens and dollars without calling anything.

Every record goes through the real steps, so templates are rendered and images prepared exactly as in
a run, but the backend is replaced by a stand-in that only *measures* each request:

* prompt tokens: :func:`oaipipe.tokens.count_message_tokens` (images by the request model's rule:
  :func:`oaipipe.tokens.image_tokens` with ``model=``, e.g. 2833 + 5667 per tile on gpt-4o-mini);
* completion tokens: the request's ``max_tokens`` if set, else ``completion_tokens`` per call
  (default :data:`DEFAULT_COMPLETION_TOKENS`), an assumption the summary states; a reasoning model
  (:func:`oaipipe.models_table.model_info`) also spends reasoning tokens, billed as output, which no
  offline count can know: without ``max_tokens`` (which caps reasoning and reply together) the summary
  names such models (``reasoning_not_counted``) instead of guessing;
* a call asking for more than its model's context window (prompt and ``max_tokens``; the window from the
  model table or ``models:``) is refused as the API refuses it: its record counts as one that would fail,
  and its tokens are not counted (offline backends have no window);
* cost: :class:`oaipipe.pricing.PriceTable` with the pipeline's ``prices:``, at the backend's tier
  (:func:`oaipipe.tiers.configured_tier`): half price for a :attr:`~oaipipe.base.Backend.batched` backend and
  for ``tier: flex``; with ``tier: auto`` the tier planner's choice, and its plan (``tier_plan``: each tier's
  cost and time against the deadline) in the summary; for a free one (not :attr:`~oaipipe.base.Backend.priced`)
  nothing, unless ``prices:`` names the model id it answers with (its :meth:`~oaipipe.base.Backend.model_label`),
  and what the calls would cost on OpenAI besides.

The stand-in replies with an empty text (``{}`` for JSON-schema steps), so a later step that reads a
reply sees an empty field. No HTTP request is made and no file outside memory is written.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .base import StepContext
from .errors import BadRequestError
from .models_table import DEFAULT_MODEL, ModelInfo, Models, model_info
from .pricing import PriceTable
from .tiers import configured_tier, plan_for, tier_costs
from .tokens import count_message_tokens, tokenizer_name
from .types import ChatRequest, ChatResponse, Usage

if TYPE_CHECKING:
    from .base import Backend
    from .pipeline import BuiltPipeline

__all__ = ["DEFAULT_COMPLETION_TOKENS", "estimate"]

#: completion tokens assumed per call when the request sets no max_tokens
DEFAULT_COMPLETION_TOKENS = 150


class _Counter:
    def __init__(self, prices: PriceTable, completion_tokens: int, backend: Backend,
                 models: Models | None = None) -> None:
        self.prices = prices
        self.models = models
        self.completion_tokens = completion_tokens
        self.backend = backend
        self.tier = configured_tier(backend)
        self.free = not backend.priced
        self.by_step: dict[tuple[str, str], dict[str, Any]] = {}
        self.unpriced: set[str] = set()
        #: reasoning models called without max_tokens: their reasoning tokens (billed as output) are not counted
        self.reasoning_uncapped: set[str] = set()

    async def call(self, request: ChatRequest) -> ChatResponse:
        # images by the request model's own rule (gpt-4o-mini, patch-based models bill differently)
        prompt = count_message_tokens(request.messages, request.model, image_model=request.model)
        completion = request.max_tokens or self.completion_tokens
        info = model_info(request.model, self.models)
        if not self.backend.offline:
            _check_context(request, prompt, info)
        if not request.max_tokens and info is not None and info.reasoning:
            self.reasoning_uncapped.add(request.model)
        price = self.prices.lookup(request.model)
        # a free backend costs nothing, unless a `prices:` entry names the model id it answers with
        # (the local engine answers as `local:<model>`)
        local_cost = 0.0
        if self.free:
            local_price = self.prices.lookup(self.backend.model_label(request.model), priced=False)
            local_cost = local_price.cost(prompt, completion) if local_price.known else 0.0
        cost = 0.0
        if price.tier_known(self.tier):
            cost = price.cost(prompt, completion, tier=self.tier)
        else:
            self.unpriced.add(request.model)
        row = self.by_step.setdefault((request.step, request.model), {
            "step": request.step, "model": request.model, "calls": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "cost_usd": 0.0, "local_cost": 0.0})
        row["local_cost"] += local_cost
        row["calls"] += 1
        row["prompt_tokens"] += prompt
        row["completion_tokens"] += completion
        row["cost_usd"] += cost
        json_reply = bool(request.response_format and request.response_format.get("type") in
                          ("json_schema", "json_object"))
        return ChatResponse(text="{}" if json_reply else "", model=request.model, backend="dry-run",
                            usage=Usage(prompt, completion, prompt + completion),
                            parsed={} if json_reply else None)


def _check_context(request: ChatRequest, prompt: int, info: ModelInfo | None) -> None:
    """The refusal the API gives a call that asks for more than the model's context window (prompt and
    ``max_tokens`` together: docs/platform.md), so that the dry run counts its record as one that would
    fail and its tokens as never billed. A model whose window is not known (the table, ``models:``) passes."""
    wanted = prompt + (request.max_tokens or 0)
    if info is None or not info.context or wanted <= info.context:
        return
    detail = f"{prompt:,} in the messages" + (f", {request.max_tokens:,} in the completion" if request.max_tokens else "")
    raise BadRequestError(f"{request.model}'s context window is {info.context:,} tokens; this call asks for "
                          f"{wanted:,} ({detail}): the API refuses it (context_length_exceeded)",
                          status=400, hint="shorten the input (or max_tokens), or give this step a model with a "
                                           "larger context window")


def estimate(pipeline: BuiltPipeline, limit: int | None = None, *,
             completion_tokens: int = DEFAULT_COMPLETION_TOKENS, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """The dry-run part of a summary: ``records`` and ``estimate`` (tokens, cost, per step and model).
    ``shard`` ``(I, N)`` counts only the records shard I of N processes (``--shard``)."""
    return asyncio.run(_estimate(pipeline, limit, completion_tokens, shard))


async def _estimate(pipeline: BuiltPipeline, limit: int | None, completion_tokens: int,
                    shard: tuple[int, int] | None = None) -> dict[str, Any]:
    backend = pipeline.backend
    config = pipeline.loaded.config
    counter = _Counter(PriceTable(config.prices, models=config.models), completion_tokens, backend, config.models)
    total = failed = 0
    errors: list[str] = []
    records = pipeline.source.records()
    if shard is not None:
        from .shards import in_shard

        records = in_shard(records, shard)
    for record in records:
        if limit is not None and total >= limit:
            break
        total += 1
        if record.error:
            failed += 1
            if len(errors) < 5:
                errors.append(record.error)
            continue
        fields = dict(record.data)
        ctx = StepContext(record=record, backend=backend, host=pipeline.host, call=counter.call)
        try:
            for step in pipeline.steps:
                added = await step.run(fields, ctx)
                if added:
                    fields.update(added)
        except Exception as exc:  # noqa: BLE001 - a record that would fail is counted, not fatal
            failed += 1
            if len(errors) < 5:
                errors.append(f"{record.where or record.id}: {type(exc).__name__}: {exc}")
    raw = [dict(r) for r in counter.by_step.values()]
    local_costs = [r.pop("local_cost") for r in raw]
    cost = sum(r["cost_usd"] for r in raw)
    local_total = sum(local_costs)
    if counter.free:
        rows = [dict(r, cost_usd=round(lc, 6), cost_usd_on_openai=round(r["cost_usd"], 6))
                for r, lc in zip(raw, local_costs, strict=True)]
    else:
        rows = [dict(r, cost_usd=round(r["cost_usd"], 6)) for r in raw]
    prompt = sum(r["prompt_tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    est: dict[str, Any] = {
        "calls": sum(r["calls"] for r in rows),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_usd": round(local_total, 6) if counter.free else round(cost, 6),  # free: see cost_usd_on_openai
        "completion_tokens_per_call": completion_tokens,
        "tokenizer": tokenizer_name(str(getattr(backend.options, "model", DEFAULT_MODEL))),
        "by_step": rows,
    }
    summary: dict[str, Any] = {"records": {"total": total, "would_fail": failed}, "estimate": est}
    plan = _notes_and_plan(est, counter, cost)
    if plan is not None:
        summary["tier_plan"] = plan
    if errors:
        summary["record_errors"] = errors
    return summary


def _notes_and_plan(est: dict[str, Any], counter: _Counter, cost: float) -> dict[str, Any] | None:
    """Add the estimate's notes; with ``tier: auto``, re-price it at the planner's choice and return the
    plan (:func:`oaipipe.tiers.plan_for`)."""
    backend = counter.backend
    if counter.free:
        est["note"] = (f"the {backend.name} backend costs nothing; on OpenAI these calls would cost about "
                       f"${cost:.4f} (cost_usd_on_openai)")
        est["cost_usd_on_openai"] = round(cost, 6)
    if backend.batched:
        est["note"] = "priced at the Batch API discount (half price)"
    elif not counter.free and counter.tier != "standard":
        est["note"] = f"priced at the {counter.tier} tier"
    if counter.unpriced:
        est["unpriced_models"] = sorted(counter.unpriced)
    if counter.reasoning_uncapped:
        est["reasoning_not_counted"] = sorted(counter.reasoning_uncapped)
    plan = None if counter.free else plan_for(backend, est, counter.prices)
    if plan is None:
        return None
    _at_tier(est, plan.chosen, counter.prices)
    est["note"] = f"priced at the {plan.chosen} tier chosen by the tier planner"
    return plan.to_dict()


def _at_tier(est: dict[str, Any], tier: str, prices: PriceTable) -> None:
    """Re-price the estimate ``est`` (its ``by_step`` rows and total) at ``tier``."""
    for row in est["by_step"]:
        cost = tier_costs([row], prices, [tier])[tier]
        row["cost_usd"] = round(cost, 6) if cost is not None else 0.0
    est["cost_usd"] = round(sum(r["cost_usd"] for r in est["by_step"]), 6)
