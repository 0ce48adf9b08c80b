"""The numbers behind each figure of a run report, from the run store (no plotting here).

Everything large is aggregated before it reaches a figure (histogram bins, time bins, group counts), so a
report of a million-record run is as small as one of twenty records.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any

from ..store import RunStore

__all__ = ["RunFigures", "run_figures"]

LABELS = ("positive", "neutral", "negative")
FAILED_SHOWN = 200


@dataclass
class RunFigures:
    """What one run's report shows."""

    run: dict[str, Any]
    #: sentiment field -> (analyzer, {label: count})
    sentiments: dict[str, tuple[str, dict[str, int]]] = field(default_factory=dict)
    #: (input label, reply label) -> count, over exchanges where both sides have a sentiment
    input_vs_reply: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (bin edges, counts) of the latency of calls that were not answered from the cache
    latency: tuple[list[float], list[int]] = ([], [])
    latency_calls: int = 0
    #: (bin start times ISO, records finished per second in the bin)
    throughput: tuple[list[str], list[float]] = ([], [])
    #: rows {step, model, prompt_tokens, completion_tokens, cost_usd, calls, cached}
    by_step: list[dict[str, Any]] = field(default_factory=list)
    by_step_source: str = "summary.json"
    #: step -> (answered from the cache, called)
    cache: dict[str, tuple[int, int]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    attempts: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    failed_total: int = 0


def _bins(values: list[float], target: int = 30) -> tuple[list[float], list[int]]:
    """Histogram of ``values``: ``target`` equal bins from 0 (latency) to the maximum."""
    if not values:
        return [], []
    top = max(values)
    width = (top / target) if top > 0 else 1.0
    counts = [0] * target
    for v in values:
        counts[min(target - 1, int(v / width)) if width else 0] += 1
    return [round(i * width, 6) for i in range(target + 1)], counts


def _parse_time(value: str) -> float | None:
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def _throughput(times: list[float], started: float | None = None, target: int = 60) -> tuple[list[str], list[float]]:
    """Records finished per second, in about ``target`` bins of a round width, from the run's start (when
    it is less than an hour before the first record: a resumed run counts from its first record)."""
    if not times:
        return [], []
    start, end = min(times), max(times)
    if started is not None and 0 <= start - started < 3600:
        start = started
    span = max(end - start, 0.001)
    width = next((w for w in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
                  if span / w <= target), 3600 * math.ceil(span / target / 3600))
    n = int(span // width) + 1
    counts = [0] * n
    for t in times:
        counts[int((t - start) // width)] += 1
    stamps = [_dt.datetime.fromtimestamp(start + i * width, _dt.UTC).isoformat(timespec="milliseconds")
              for i in range(n)]
    return stamps, [c / width for c in counts]


def run_figures(store: RunStore, run_id: str) -> RunFigures:
    """Gather every figure's numbers for one run."""
    run = store.run(run_id)
    figs = RunFigures(run=run)
    q = store.query
    for row in q("SELECT field, analyzer, label, count(*) AS n FROM sentiments WHERE run_id = ? "
                 "GROUP BY field, analyzer, label", (run_id,)):
        _, counts = figs.sentiments.setdefault(row["field"], (row["analyzer"], {}))
        counts[row["label"]] = row["n"]
    for row in q("SELECT input_sentiment AS i, reply_sentiment AS r, count(*) AS n FROM exchanges "
                 "WHERE run_id = ? AND input_sentiment IS NOT NULL AND reply_sentiment IS NOT NULL "
                 "GROUP BY i, r", (run_id,)):
        figs.input_vs_reply[(row["i"], row["r"])] = row["n"]
    latencies = [r[0] for r in q("SELECT latency FROM exchanges WHERE run_id = ? AND cached = 0 "
                                 "AND latency IS NOT NULL", (run_id,))]
    figs.latency = _bins(latencies)
    figs.latency_calls = len(latencies)
    times = [t for (value,) in q("SELECT time FROM records WHERE run_id = ? AND time IS NOT NULL", (run_id,))
             if (t := _parse_time(value)) is not None]
    figs.throughput = _throughput(times, _parse_time(run.get("started_at") or ""))
    summary = run.get("summary") or {}
    figs.by_step = [dict(r) for r in summary.get("by_step") or []]
    if not figs.by_step:  # a run without a summary (killed): what its exchanges say
        figs.by_step_source = "exchanges"
        figs.by_step = [dict(r) for r in q(
            "SELECT step, model, count(*) AS calls, sum(cached) AS cached, "
            "sum(CASE WHEN cached THEN 0 ELSE prompt_tokens END) AS prompt_tokens, "
            "sum(CASE WHEN cached THEN 0 ELSE completion_tokens END) AS completion_tokens, "
            "sum(cost_usd) AS cost_usd FROM exchanges WHERE run_id = ? GROUP BY step, model", (run_id,))]
    for row in q("SELECT step, sum(cached) AS hits, count(*) AS n FROM exchanges WHERE run_id = ? GROUP BY step",
                 (run_id,)):
        figs.cache[row["step"]] = (int(row["hits"] or 0), int(row["n"]) - int(row["hits"] or 0))
    retries = summary.get("retries")
    if isinstance(retries, dict):
        figs.retries = {str(k): int(v) for k, v in (retries.get("by_status") or {}).items()}
    figs.attempts = summary.get("attempts") if isinstance(summary.get("attempts"), int) else None
    for row in q("SELECT error_class, count(*) AS n FROM records WHERE run_id = ? AND status = 'failed' "
                 "GROUP BY error_class ORDER BY n DESC", (run_id,)):
        figs.errors[row["error_class"] or "?"] = row["n"]
    figs.failed_total = sum(figs.errors.values())
    figs.failed = [{k: r[k] for k in ("id", "location", "error_class", "error")}
                   for r in store.records(run_id, status="failed", limit=FAILED_SHOWN)]
    return figs
