"""Evaluate sentiment analyzers on labelled data: accuracy, per-class precision/recall/F1, macro and weighted
F1, and the confusion matrix, per analyzer (what ``oaipipe sentiment eval`` prints; no click here).

The data is read by the source plugin its file calls for (``.csv``, ``.jsonl``, ``.parquet``, ``.xlsx``, a
folder saved by ``datasets``), so it streams and every bad row is reported with its line. Gold labels are
``positive``, ``negative`` or ``neutral`` (any case), or mapped onto them with ``label_map``
(``{"pos": "positive", "1": "positive"}``).

Each analyzer scores each text through :meth:`~oaipipe.base.Analyzer.analyze_with`, as in a run: an
analyzer that asks a model (``llm``) goes through the call chain of the pipeline it was given (response
cache, rate limits, retries, cost), and its calls, cache hits and dollars are reported with its scores.

The metrics follow scikit-learn's definitions (``precision_recall_fscore_support`` with
``zero_division=0``, over the labels seen in the gold data or the predictions).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError, OaipipeError

__all__ = ["LABEL_ORDER", "Labelled", "evaluate", "metrics", "read_labelled", "source_block_for"]

LABEL_ORDER = ("positive", "neutral", "negative")


@dataclass
class Labelled:
    """What was read: the texts and gold labels, and the rows that could not be used (with why)."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    gold: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def source_block_for(path: Path) -> dict[str, Any]:
    """The source block that reads ``path``, chosen by its extension (or a saved dataset's folder)."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return {"type": "hf-dataset", "path": str(path)}
    kinds = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
             ".xlsx": "excel"}
    if suffix not in kinds:
        raise ConfigError(f"{path}: cannot tell how to read a '{suffix or 'extensionless'}' file",
                          hint="use .csv, .tsv, .jsonl, .parquet, .xlsx, or a folder saved with Dataset.save_to_disk")
    block: dict[str, Any] = {"type": kinds[suffix], "path": str(path)}
    if suffix == ".tsv":
        block["delimiter"] = "\t"
    return block


def _normal(value: Any, label_map: dict[str, str]) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    mapped = label_map.get(text, label_map.get(text.lower(), text))
    mapped = str(mapped).strip().lower()
    return mapped if mapped in LABEL_ORDER else None


def read_labelled(path: str | Path, *, text_column: str, label_column: str, host: Any,
                  label_map: dict[str, str] | None = None, limit: int | None = None) -> Labelled:
    """Texts and gold labels of ``path``. A row without a text is skipped (and said so); a gold label that
    is not a sentiment label is an :class:`InputError` naming the row and the fix."""
    from .base import Context

    path = Path(path)
    if not path.exists():
        raise InputError(f"labelled data not found: {path}", hint="give the path of a .csv, .jsonl, .parquet or .xlsx")
    block = source_block_for(path.resolve())
    source = host.build("source", block, Context(base_dir=Path.cwd(), host=host), key="source")
    fields = source.fields()
    if fields is not None:
        for what, column in (("--text-column", text_column), ("--label-column", label_column)):
            if column not in fields:
                raise InputError(f"{path}: no column '{column}' ({what})",
                                 hint=f"columns: {', '.join(fields)}; name the right one with {what}")
    mapping = {str(k).strip(): v for k, v in (label_map or {}).items()}
    mapping.update({str(k).strip().lower(): v for k, v in (label_map or {}).items()})
    out = Labelled()
    for record in source.records():
        if limit is not None and len(out.texts) >= limit:
            break
        if record.error:
            out.skipped.append(record.error)
            continue
        where = record.where or record.id
        if label_column not in record.data or text_column not in record.data:
            missing = label_column if label_column not in record.data else text_column
            raise InputError(f"{where}: no '{missing}' in this row",
                             hint=f"its keys: {', '.join(map(str, record.data)) or '(none)'}")
        raw = record.data.get(label_column)
        label = _normal(raw, mapping)
        if label is None:
            raise InputError(
                f"{where}: gold label {raw!r} (column '{label_column}') is not positive, negative or neutral",
                hint=f"map it: --label-map {str(raw).strip() or 'VALUE'}=positive (repeatable)")
        text = record.data.get(text_column)
        if text is None or not str(text).strip():
            out.skipped.append(f"{where}: empty text in column '{text_column}'")
            continue
        out.ids.append(record.id)
        out.texts.append(str(text))
        out.gold.append(label)
    if not out.texts:
        raise InputError(f"{path}: no labelled text to evaluate on", hint="check --text-column and --label-column")
    return out


def _labels(*groups: Iterable[str]) -> list[str]:
    seen = {label for group in groups for label in group}
    return [label for label in LABEL_ORDER if label in seen] + sorted(seen - set(LABEL_ORDER))


def metrics(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted F1 and the confusion matrix
    (rows: gold, columns: predicted) of two equally long label lists."""
    if len(gold) != len(predicted):
        raise ValueError("gold and predicted differ in length")
    labels = _labels(gold, predicted)
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g]][index[p]] += 1
    per_class: dict[str, dict[str, float | int]] = {}
    for label, i in index.items():
        tp = matrix[i][i]
        predicted_n = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    n = len(gold)
    total_support = sum(int(c["support"]) for c in per_class.values())
    return {
        "n": n,
        "accuracy": sum(matrix[i][i] for i in range(len(labels))) / n if n else 0.0,
        "macro_f1": sum(float(c["f1"]) for c in per_class.values()) / len(per_class) if per_class else 0.0,
        "weighted_f1": (sum(float(c["f1"]) * int(c["support"]) for c in per_class.values()) / total_support
                        if total_support else 0.0),
        "per_class": per_class,
        "confusion": {"labels": labels, "matrix": matrix},
    }


class _Chain:
    """The call chain of an evaluation: the pipeline's response cache and rate limits around its backend."""

    def __init__(self, pipeline: Any) -> None:
        from .calls import CallChain
        from .runner import RunOptions

        self.pipeline = pipeline
        self.call = CallChain.build(pipeline, RunOptions())


class _Counted:
    """One analyzer's calls through the chain, counted (calls, cache hits, tokens, dollars) like a run's."""

    def __init__(self, chain: _Chain) -> None:
        from .pricing import PriceTable
        from .stats import RunStats

        self.chain = chain
        self.stats = RunStats(prices=PriceTable(chain.pipeline.loaded.config.prices,
                                                 models=chain.pipeline.loaded.config.models),
                              priced=chain.pipeline.backend.priced)

    async def __call__(self, request: Any) -> Any:
        response = await self.chain.call(request)
        self.stats.add_call(request.step, response, batch=self.chain.pipeline.backend.batched,
                            requested=request.model)
        return response


async def evaluate(data: Labelled, analyzers: dict[str, Any], *, pipeline: Any = None,
                   concurrency: int = 8) -> dict[str, Any]:
    """Score every text with every analyzer and compute :func:`metrics` per analyzer. ``pipeline`` gives
    the backend and call chain of analyzers that need one (``llm``)."""

    results: dict[str, Any] = {}
    chain: _Chain | None = None
    try:
        for name, analyzer in analyzers.items():
            calls = None
            if getattr(analyzer, "needs_backend", False):
                if pipeline is None:
                    raise ConfigError(f"analyzer '{name}' asks a backend: give a pipeline (--pipeline) whose "
                                      f"backend it should ask")
                chain = chain or _Chain(pipeline)
                calls = _Counted(chain)
            results[name] = await _score(data, analyzer, calls, pipeline, concurrency)
    finally:
        if chain is not None:
            await _close(pipeline)
    return {"n": len(data.texts), "labels": _labels(data.gold), "gold": data.gold, "ids": data.ids,
            "skipped": data.skipped, "analyzers": results}


async def _score(data: Labelled, analyzer: Any, calls: _Counted | None, pipeline: Any,
                 concurrency: int) -> dict[str, Any]:
    """One analyzer over every text, as a ``sentiment`` step would score it, and its metrics."""
    from .base import StepContext
    from .builtin.step_sentiment import check_sentiment
    from .types import Record

    gate = asyncio.Semaphore(concurrency)
    backend = pipeline.backend if pipeline is not None else None
    host = pipeline.host if pipeline is not None else None

    async def one(i: int) -> tuple[str | None, float | None, str]:
        async with gate:
            ctx = StepContext(record=Record(data.ids[i], {}), backend=backend, host=host,  # type: ignore[arg-type]
                              call=calls)
            try:
                sentiment = await analyzer.analyze_with(data.texts[i], ctx)
                check_sentiment(sentiment, analyzer)
            except OaipipeError as exc:
                return None, None, f"{data.ids[i]}: {exc}"
            return sentiment.label, float(sentiment.score), ""

    answers = await asyncio.gather(*(one(i) for i in range(len(data.texts))))
    errors = [e for _, _, e in answers if e]
    scored = [(g, a[0]) for g, a in zip(data.gold, answers, strict=True) if a[0] is not None]
    result: dict[str, Any] = metrics([g for g, _ in scored], [p for _, p in scored]) if scored else {"n": 0}
    result["errors"] = len(errors)
    result["error_examples"] = errors[:5]
    result["predictions"] = [a[0] for a in answers]
    result["scores"] = [a[1] for a in answers]
    if calls is not None:
        s = calls.stats
        result["calls"] = {"calls": s.calls, "cached": s.cached, "prompt_tokens": s.prompt_tokens,
                           "completion_tokens": s.completion_tokens, "cost_usd": round(s.cost_usd, 6)}
    return result


async def _close(pipeline: Any) -> None:
    with contextlib.suppress(Exception):  # closing connections after the scores are in
        await pipeline.backend.aclose()
