"""From examples to fine-tuning rows: selection, DPO pairing, de-duplication, a deterministic split.

* **Selection**: ``select: {sentiment: positive}`` keeps exchanges whose reply was positive; on a run's
  ``records.jsonl`` any record field can be matched (``select: {reply_sentiment: positive}``).
* **SFT rows**: ``{"messages": [...]}``. **DPO rows**: ``{"input": {"messages": [...]},
  "preferred_output": [assistant], "non_preferred_output": [assistant]}``, pairing a reply that matches
  the selection (default: positive) with one of the opposite label (negative) to the same prompt.
* **De-duplication** by the normalised text of (system, user, assistant) — case and whitespace ignored.
* **Split**: an example goes to validation when ``sha256(seed + example) / 2**256 < validation_fraction``:
  the same data gives the same files on every machine, and adding data never moves old examples.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..fsutil import atomic_file
from .sources import Example, matches_select, select_value
from .validate import ParseError

__all__ = ["BuildResult", "DatasetFiles", "build_rows", "dataset_sha256", "write_dataset"]

_OPPOSITE = {"positive": "negative", "negative": "positive"}


@dataclass
class BuildResult:
    """Rows ready to write, plus counts that explain what was kept and why."""

    method: str
    #: the rows; a line that did not parse stays as its ParseError (reported by validation, never written)
    train: list[dict[str, Any] | ParseError] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    #: where each train row came from (same order), for the validation report
    train_where: list[str] = field(default_factory=list)
    validation_where: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def rows_with_where(self, which: str = "train") -> list[tuple[str, Any]]:
        rows: list[Any] = self.train if which == "train" else self.validation
        where = self.train_where if which == "train" else self.validation_where
        return list(zip(where, rows, strict=True))


@dataclass
class DatasetFiles:
    """Written dataset files, as a trainer receives them."""

    train_path: Path
    method: str
    n_train: int
    sha256: str
    validation_path: Path | None = None
    n_validation: int = 0

    def rows(self, which: str = "train") -> list[dict[str, Any]]:
        path = self.train_path if which == "train" else self.validation_path
        if path is None:
            return []
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def to_dict(self) -> dict[str, Any]:
        return {"train_path": str(self.train_path), "validation_path": str(self.validation_path or "") or None,
                "method": self.method, "n_train": self.n_train, "n_validation": self.n_validation,
                "sha256": self.sha256}


def _norm(text: Any) -> str:
    if not isinstance(text, str):
        text = json.dumps(text, sort_keys=True, ensure_ascii=False)
    return re.sub(r"\s+", " ", text).strip().lower()


def _role_text(messages: list[Any], role: str, last: bool = False) -> str:
    found = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == role]
    if not found:
        return ""
    return _norm(found[-1] if last else found[0])


def _dedup_key(row: Any) -> str:
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        msgs = row["messages"]
        return json.dumps([_role_text(msgs, "system"), _role_text(msgs, "user", True),
                           _role_text(msgs, "assistant", True), len(msgs)])
    if isinstance(row, dict) and isinstance(row.get("input"), dict):
        msgs = row["input"].get("messages") or []
        return json.dumps([_role_text(msgs, "system"), _role_text(msgs, "user", True),
                           _norm(row.get("preferred_output")), _norm(row.get("non_preferred_output"))])
    return "raw:" + json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def _prompt_messages(ex: Example) -> list[dict[str, Any]]:
    msgs = list(ex.messages)
    while msgs and msgs[-1].get("role") == "assistant":
        msgs.pop()
    return msgs


def _reply(ex: Example) -> str | None:
    return next((m.get("content") for m in reversed(ex.messages) if m.get("role") == "assistant"), None)


def _sft_row(ex: Example) -> Any:
    if ex.raw is not None:
        raw = ex.raw
        if isinstance(raw, dict) and isinstance(raw.get("input"), dict) and "preferred_output" in raw:
            out = raw.get("preferred_output")
            msgs = raw["input"].get("messages")
            if isinstance(msgs, list) and isinstance(out, list):
                return {"messages": list(msgs) + out[:1]}
        return raw
    return {"messages": ex.messages}


def _dpo_pairs(examples: list[Example], select: dict[str, Any], stats: dict[str, int]) -> list[tuple[str, Any]]:
    """Pair preferred and non-preferred replies to the same prompt."""
    key, wanted = next(iter(select.items())) if select else ("sentiment", "positive")
    wanted_norm = str(wanted).lower()
    opposite = _OPPOSITE.get(wanted_norm)
    groups: dict[str, dict[str, list[Example]]] = {}
    order: list[str] = []
    out: list[tuple[str, Any]] = []
    for ex in examples:
        if ex.raw is not None:
            if isinstance(ex.raw, dict) and "preferred_output" in ex.raw:
                out.append((ex.where, ex.raw))
            else:
                stats["not_pairable"] = stats.get("not_pairable", 0) + 1
            continue
        if ex.rejected is not None:  # CSV with chosen/rejected columns
            out.append((ex.where, {"input": {"messages": _prompt_messages(ex)},
                                   "preferred_output": [{"role": "assistant", "content": _reply(ex)}],
                                   "non_preferred_output": [{"role": "assistant", "content": ex.rejected}]}))
            continue
        other_keys = dict(list(select.items())[1:]) if select else {}
        if other_keys and not matches_select(ex, other_keys):
            continue
        value = select_value(ex, key)
        label = str(value).lower() if value is not None else ""
        side = "preferred" if label == wanted_norm else "rejected" if opposite and label == opposite else None
        if side is None:
            stats["not_pairable"] = stats.get("not_pairable", 0) + 1
            continue
        prompt = json.dumps([[m.get("role"), _norm(m.get("content"))] for m in _prompt_messages(ex)])
        if prompt not in groups:
            groups[prompt] = {"preferred": [], "rejected": []}
            order.append(prompt)
        groups[prompt][side].append(ex)
    for prompt in order:
        group = groups[prompt]
        for good, bad in zip(group["preferred"], group["rejected"], strict=False):
            if _norm(_reply(good)) == _norm(_reply(bad)):
                continue
            out.append((good.where, {"input": {"messages": _prompt_messages(good)},
                                     "preferred_output": [{"role": "assistant", "content": _reply(good)}],
                                     "non_preferred_output": [{"role": "assistant", "content": _reply(bad)}]}))
        unpaired = abs(len(group["preferred"]) - len(group["rejected"]))
        if unpaired:
            stats["not_pairable"] = stats.get("not_pairable", 0) + unpaired
    return out


def _split_score(row: Any, seed: int) -> float:
    blob = f"{seed}:" + json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return int(hashlib.sha256(blob.encode("utf-8")).hexdigest(), 16) / float(2**256)


def build_rows(examples: list[Example], *, method: str = "supervised", select: dict[str, Any] | None = None,
               validation_fraction: float = 0.0, seed: int = 0, dedup: bool = True,
               text_only: bool = True) -> BuildResult:
    """Select, pair (DPO), de-duplicate and split ``examples``."""
    if method not in ("supervised", "dpo"):
        raise DatasetError(f"unknown fine-tuning method {method!r}", hint="use --method supervised or --method dpo")
    if not 0.0 <= validation_fraction < 1.0:
        raise DatasetError(f"validation_fraction must be in [0, 1), got {validation_fraction}",
                           hint="e.g. 0.1 keeps about 10% of the examples for validation")
    stats: dict[str, int] = {"read": len(examples)}
    if text_only:
        kept = [ex for ex in examples if ex.raw is not None or ex.is_text]
        stats["skipped_non_text"] = len(examples) - len(kept)
        examples = kept
    if method == "dpo":
        candidates = _dpo_pairs(examples, dict(select or {}), stats)
    else:
        selected = [ex for ex in examples if ex.raw is not None or matches_select(ex, select)]
        stats["not_selected"] = len(examples) - len(selected)
        candidates = [(ex.where, _sft_row(ex)) for ex in selected]
    result = BuildResult(method=method)
    seen: set[str] = set()
    duplicates = 0
    for where, row in candidates:
        if isinstance(row, ParseError):
            result.train.append(row)
            result.train_where.append(where)
            continue
        if dedup:
            key = _dedup_key(row)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
        if validation_fraction and _split_score(row, seed) < validation_fraction:
            result.validation.append(row)
            result.validation_where.append(where)
        else:
            result.train.append(row)
            result.train_where.append(where)
    stats["duplicates"] = duplicates
    stats["train"] = len(result.train)
    stats["validation"] = len(result.validation)
    result.stats = stats
    return result


def _write_jsonl(path: Path, rows: list[Any]) -> None:
    with atomic_file(path, fsync=False) as out:
        for row in rows:
            if isinstance(row, ParseError):
                continue
            out.fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def dataset_sha256(train_path: Path, validation_path: Path | None = None) -> str:
    """The dataset's identity: sha256 of the training file (plus the validation file, when there is one)."""
    h = hashlib.sha256(train_path.read_bytes())
    if validation_path is not None and validation_path.exists():
        h.update(b"\0validation\0")
        h.update(validation_path.read_bytes())
    return h.hexdigest()


def validation_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".validation" + (out.suffix or ".jsonl"))


def write_dataset(result: BuildResult, out: str | Path) -> DatasetFiles:
    """Write ``out`` (training rows) and, if there are any, ``<out>.validation.jsonl``."""
    out = Path(out)
    _write_jsonl(out, result.train)
    val_path: Path | None = None
    stale = validation_path_for(out)
    if result.validation:
        val_path = stale
        _write_jsonl(val_path, result.validation)
    elif stale.exists():
        stale.unlink()
    return DatasetFiles(train_path=out, method=result.method, n_train=len(result.train),
                        sha256=dataset_sha256(out, val_path), validation_path=val_path,
                        n_validation=len(result.validation))
