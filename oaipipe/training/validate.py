"""The validation report: everything OpenAI's data-preparation cookbook checks, before any upload.

Format categories (the cookbook's names): ``data_type``, ``missing_messages_list``,
``message_missing_key``, ``message_unrecognized_key``, ``unrecognized_role``, ``missing_content``,
``example_missing_assistant_message``; plus ``invalid_content_part`` (a parts list holding anything but text and
image parts of OpenAI's shape), ``image_in_assistant_message`` (an image part in a reply: fine-tuning
learns text replies), ``invalid_json`` (a line that is not JSON), ``invalid_weight``
(a message ``weight`` other than 0 or 1),
``missing_preferred_output`` / ``missing_non_preferred_output`` (DPO rows), ``too_few_examples``
(OpenAI refuses fewer than 10) and ``example_over_token_limit``.

Token counts are exact and offline (:mod:`oaipipe.tokens`: o200k_base / cl100k_base), with the usual
per-message overhead (3 tokens per message, 1 per name, 3 to prime the reply). The report also gives
the epochs that will be used, the billed tokens and an estimated price (:mod:`oaipipe.pricing`).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..models_table import DEFAULT_FINE_TUNE_MODEL
from ..pricing import PriceTable
from ..tokens import count_message_tokens, tokenizer_name
from .estimate import TrainingEstimate, estimate_training, token_limit_for

__all__ = ["CATEGORIES", "MIN_EXAMPLES", "ValidationReport", "read_rows", "validate_file", "validate_rows"]

MIN_EXAMPLES = 10
PER_MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3

ALLOWED_MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id", "refusal"}
ALLOWED_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

#: category → what to do about it
CATEGORIES: dict[str, str] = {
    "invalid_json": "each line must be one complete JSON object",
    "data_type": "each line must be a JSON object ({...}), not a list, string or number",
    "missing_messages_list": "each example needs a non-empty \"messages\" list "
                             "(DPO: \"input\": {\"messages\": [...]})",
    "message_missing_key": "every message needs both \"role\" and \"content\"",
    "message_unrecognized_key": "messages may only have role, content, name, weight, function_call, "
                                "tool_calls, tool_call_id; remove the others",
    "unrecognized_role": "role must be system, developer, user, assistant, tool or function",
    "missing_content": "content must be a non-empty string or a non-empty list of content parts",
    "invalid_content_part": "a content part must be {\"type\": \"text\", \"text\": \"...\"} or {\"type\": \"image_url\", "
                            "\"image_url\": {\"url\": \"https://... or data:image/...\", \"detail\": \"auto|low|high\"}}",
    "invalid_weight": "a message's \"weight\" must be 0 (do not learn from this reply) or 1 (learn from it)",
    "example_missing_assistant_message": "each example needs at least one assistant message to learn from",
    "image_in_assistant_message": "images may only be in user messages; an assistant reply (what the model "
                                  "learns to write) must be text",
    "missing_preferred_output": "DPO rows need \"preferred_output\": [{\"role\": \"assistant\", \"content\": ...}]",
    "missing_non_preferred_output": "DPO rows need \"non_preferred_output\": [{\"role\": \"assistant\", "
                                    "\"content\": ...}]",
    "too_few_examples": f"OpenAI requires at least {MIN_EXAMPLES} training examples; add more data "
                        "(or loosen the selection)",
    "example_over_token_limit": "shorten these examples or split them; they exceed the model's per-example "
                                "token limit (--max-tokens-per-example)",
}


@dataclass
class ValidationReport:
    """What :func:`validate_rows` found. ``ok`` is false when anything in ``errors`` is set."""

    source: str
    method: str
    model: str
    n_examples: int
    errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    token_limit: int = 0
    tokenizer: str = ""
    tokens: dict[str, float] = field(default_factory=dict)
    assistant_tokens: dict[str, float] = field(default_factory=dict)
    messages_per_example: dict[str, float] = field(default_factory=dict)
    estimate: TrainingEstimate | None = None
    min_examples: int = MIN_EXAMPLES

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, category: str, where: str) -> None:
        """Blame ``where`` for ``category`` (once: a row with several bad messages is one bad example)."""
        listed = self.errors.setdefault(category, [])
        if where not in listed[-8:]:  # rows are checked in order: a repeat is among the last few
            listed.append(where)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "method": self.method,
            "model": self.model,
            "n_examples": self.n_examples,
            "min_examples": self.min_examples,
            "errors": {k: {"count": len(v), "where": v[:20], "fix": CATEGORIES.get(k, "")}
                       for k, v in self.errors.items()},
            "warnings": list(self.warnings),
            "token_limit": self.token_limit,
            "tokenizer": self.tokenizer,
            "per_message_overhead": PER_MESSAGE_OVERHEAD,
            "tokens_per_example": self.tokens,
            "assistant_tokens_per_example": self.assistant_tokens,
            "messages_per_example": self.messages_per_example,
            "estimate": self.estimate.to_dict() if self.estimate else None,
        }

    def to_text(self) -> str:
        lines = [f"dataset {self.source}: {self.n_examples} {self.method} example(s) for {self.model}"]
        if self.errors:
            lines.append(f"FORMAT ERRORS ({sum(len(v) for v in self.errors.values())}):")
            for cat, where in self.errors.items():
                shown = ", ".join(where[:5]) + (f", ... ({len(where) - 5} more)" if len(where) > 5 else "")
                lines.append(f"  {cat}: {len(where)} — {shown}")
                lines.append(f"    fix: {CATEGORIES.get(cat, '')}")
        else:
            lines.append("no format errors")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        if self.tokens:
            t = self.tokens
            lines.append(f"tokens per example ({self.tokenizer}, incl. {PER_MESSAGE_OVERHEAD} per message): "
                         f"min {t['min']:.0f}, max {t['max']:.0f}, mean {t['mean']:.1f}, median {t['median']:.0f}; "
                         f"limit {self.token_limit:,}")
        if self.assistant_tokens:
            a = self.assistant_tokens
            lines.append(f"assistant tokens per example: min {a['min']:.0f}, max {a['max']:.0f}, mean {a['mean']:.1f}")
        if self.estimate:
            e = self.estimate
            price = (f"~${e.estimated_cost_usd:.4f} at ${e.price_per_1m}/1M training tokens"
                     if e.estimated_cost_usd is not None else f"no training price known for {self.model}")
            lines.append(f"epochs: {e.n_epochs} ({e.epochs_source}); billed tokens: {e.billing_tokens_per_epoch:,} "
                         f"× {e.n_epochs} = {e.billed_tokens:,}; estimated price: {price}")
        lines.append("OK: ready to train" if self.ok else "NOT READY: fix the errors above before training")
        return "\n".join(lines)


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "max": max(values), "mean": round(statistics.fmean(values), 2),
            "median": statistics.median(values), "total": sum(values)}


def _check_messages(report: ValidationReport, messages: Any, where: str, *, need_assistant: bool) -> bool:
    """Cookbook checks on one messages list; True when usable for token counting."""
    if not isinstance(messages, list) or not messages:
        report.add("missing_messages_list", where)
        return False
    usable = True
    for message in messages:
        if not isinstance(message, dict):
            report.add("data_type", f"{where} (a message is not an object)")
            usable = False
            continue
        if "role" not in message or "content" not in message:
            report.add("message_missing_key", where)
        if any(k not in ALLOWED_MESSAGE_KEYS for k in message):
            report.add("message_unrecognized_key", where)
        if message.get("role") not in ALLOWED_ROLES:
            report.add("unrecognized_role", where)
        content = message.get("content")
        has_calls = bool(message.get("function_call") or message.get("tool_calls"))
        if not has_calls and (not content or not isinstance(content, str | list)):
            report.add("missing_content", where)
        if "weight" in message and not _valid_weight(message["weight"]):
            report.add("invalid_weight", where)
        if isinstance(content, list) and not all(_valid_part(part) for part in content):
            report.add("invalid_content_part", where)
        if message.get("role") == "assistant" and _has_image(content):
            report.add("image_in_assistant_message", where)
    if need_assistant and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        report.add("example_missing_assistant_message", where)
    return usable


#: what an image part's url may be: a web address or an image as a data URL (OpenAI's vision fine-tuning guide)
_IMAGE_URL_PREFIXES = ("http://", "https://", "data:image/")


def _valid_part(part: Any) -> bool:
    """A content part of OpenAI's chat format: non-empty text, or an image by URL with a known detail."""
    if not isinstance(part, dict):
        return False
    if part.get("type") == "text":
        return isinstance(part.get("text"), str) and bool(part["text"])
    if part.get("type") == "image_url":
        image = part.get("image_url")
        return (isinstance(image, dict) and isinstance(image.get("url"), str)
                and image["url"].startswith(_IMAGE_URL_PREFIXES) and image.get("detail", "auto") in ("auto", "low", "high"))
    return False


def _has_image(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") in ("image_url", "input_image") for part in content)


def _valid_weight(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value in (0, 1)


def _check_output(report: ValidationReport, row: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = row.get(key)
    if not isinstance(value, list) or not value:
        report.add(f"missing_{key}", where)
        return []
    _check_messages(report, value, f"{where} ({key})", need_assistant=True)
    return [m for m in value if isinstance(m, dict)]


def _conversation(report: ValidationReport, row: dict[str, Any], method: str,
                  where: str) -> tuple[list[Any], list[Any]] | None:
    """(every message of the example, the replies whose tokens are trained on), or ``None`` when its
    messages are unusable (the problems are added to ``report``)."""
    if method == "dpo":
        inp = row.get("input")
        messages = inp.get("messages") if isinstance(inp, dict) else None
        usable = _check_messages(report, messages, where, need_assistant=False)
        preferred = _check_output(report, row, "preferred_output", where)
        rejected = _check_output(report, row, "non_preferred_output", where)
        if not usable or not isinstance(messages, list):
            return None
        return list(messages) + preferred + rejected, preferred + rejected
    messages = row.get("messages")
    if not _check_messages(report, messages, where, need_assistant=True) or not isinstance(messages, list):
        return None
    return list(messages), [m for m in messages if m.get("role") == "assistant"]


def validate_rows(rows: list[tuple[str, Any]], *, method: str = "supervised", model: str = DEFAULT_FINE_TUNE_MODEL,
                  source: str = "dataset", token_limit: int | None = None, n_epochs: int | str | None = None,
                  prices: PriceTable | None = None, min_examples: int = MIN_EXAMPLES) -> ValidationReport:
    """Check ``rows`` (``(where, row)`` pairs; a row that failed to parse is a ``_ParseError``)."""
    if method not in ("supervised", "dpo"):
        raise DatasetError(f"unknown fine-tuning method {method!r}", hint="use supervised or dpo")
    limit = token_limit or token_limit_for(model)
    parsed = [(where, row) for where, row in rows if not isinstance(row, ParseError)]
    report = ValidationReport(source=source, method=method, model=model, n_examples=len(parsed),
                              token_limit=limit, tokenizer=tokenizer_name(model), min_examples=min_examples)
    lengths: list[int] = []
    assistant: list[int] = []
    n_messages: list[int] = []
    for where, row in rows:
        if isinstance(row, ParseError):
            report.add("invalid_json", f"{where} ({row})")
            continue
        if not isinstance(row, dict):
            report.add("data_type", where)
            continue
        example = _conversation(report, row, method, where)
        if example is None:
            continue
        convo, replies = example
        # a count never fails (oaipipe.tokens.count_tokens; every message here is a dict); images are counted at
        # the model's own rate, and a reply's images (an error above) like its text
        n = count_message_tokens(convo, model, image_model=model)
        a = sum(count_message_tokens([m], model, image_model=model) - REPLY_PRIMING - PER_MESSAGE_OVERHEAD
                for m in replies)
        lengths.append(n)
        assistant.append(a)
        n_messages.append(len(convo))
        if n > limit:
            report.add("example_over_token_limit", f"{where} ({n:,} tokens)")
    if len(parsed) < min_examples:
        report.add("too_few_examples", f"{len(parsed)} example(s), at least {min_examples} needed")
    report.tokens = _stats(lengths)
    report.assistant_tokens = _stats(assistant)
    report.messages_per_example = _stats(n_messages)
    if lengths:
        report.estimate = estimate_training(lengths, model=model, token_limit=limit, n_epochs=n_epochs, prices=prices)
    if method == "supervised":
        # only parsed examples with a messages list take part: an unparseable line is an error, not an example
        with_messages = [r["messages"] for _, r in parsed if isinstance(r, dict) and isinstance(r.get("messages"), list)]
        missing_system = sum(1 for msgs in with_messages
                             if not any(isinstance(m, dict) and m.get("role") == "system" for m in msgs))
        if 0 < missing_system < len(with_messages):
            report.warnings.append(f"{missing_system} example(s) have no system message while others do")
    return report


class ParseError(str):
    """A row that could not be parsed; its text is the reason."""


def read_rows(path: str | Path) -> list[tuple[str, Any]]:
    """``(where, row)`` pairs of a JSONL file, with unparseable lines kept as :class:`ParseError`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}", hint="give the path of a .jsonl fine-tuning file")
    if path.suffix.lower() in (".csv", ".tsv", ".xlsx"):
        raise DatasetError(f"{path} is not a fine-tuning JSONL file",
                           hint=f"build one first: oaipipe dataset build {path} -o train.jsonl "
                                "(or let `oaipipe train` do both)")
    rows: list[tuple[str, Any]] = []
    try:
        with path.open(encoding="utf-8-sig") as fh:  # a BOM (Windows editors) is not part of line 1
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    rows.append((f"line {n}", ParseError(f"{exc.msg} at column {exc.colno}")))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text: {exc}", hint="save the file as UTF-8 JSONL") from None
    return rows


def detect_method(rows: list[tuple[str, Any]]) -> str:
    """``dpo`` when the first object row has the preference shape, else ``supervised``."""
    for _, row in rows:
        if isinstance(row, dict):
            return "dpo" if "preferred_output" in row or "input" in row else "supervised"
    return "supervised"


def validate_file(path: str | Path, *, method: str | None = None, **kwargs: Any) -> ValidationReport:
    """Validate a fine-tuning JSONL file (method detected from its rows unless given)."""
    rows = read_rows(path)
    return validate_rows(rows, method=method or detect_method(rows), source=str(path), **kwargs)
