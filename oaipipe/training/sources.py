"""Reading training material: dialogue logs, run records, CSV, JSONL, and folders of them.

Everything is turned into :class:`Example` objects: the chat messages of one exchange (system, user,
assistant, without sentiment annotations), the label of the reply's sentiment, and the fields a
``select:`` filter can match. Rows that are already in a fine-tuning format (``{"messages": ...}`` or
the DPO shape) are carried through untouched in :attr:`Example.raw`, so that validation sees exactly what
the file held.

Recognised inputs (by extension, then by the shape of the first line):

==================  =====================================================================================
``*.csv``           ``prompt``/``completion`` or ``question``/``answer`` columns (optional ``system``,
                    ``sentiment``); ``prompt`` + ``chosen``/``rejected`` (or ``preferred``/
                    ``non_preferred``) gives DPO pairs
``*.jsonl``         chat rows ``{"messages": [...]}``, DPO rows, ``{"prompt", "completion"}`` lines,
                    dialogue-jsonl lines (``run_id``/``record_id`` + ``messages``), or a run's
                    ``records.jsonl`` (``fields`` + ``exchanges``)
``*.json``          a dialogue-json array of ``{role, content, sentiment, record_id}`` entries (the seed's
                    format), or an array of chat rows
a folder            every ``*.csv``, ``*.jsonl`` and ``*.json`` inside it (recursively, sorted)
==================  =====================================================================================
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .validate import ParseError

__all__ = ["Example", "detect_kind", "read_examples", "matches_select", "parse_select"]

#: keys a chat message may carry in a fine-tuning file; everything else (sentiment, record_id, ...) is dropped
MESSAGE_KEYS = ("role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call")

_PAIR_COLUMNS = (("prompt", "completion"), ("question", "answer"), ("input", "output"), ("user", "assistant"))
_DPO_COLUMNS = (("chosen", "rejected"), ("preferred", "non_preferred"), ("preferred_output", "non_preferred_output"))


@dataclass
class Example:
    """One candidate training example."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    #: sentiment label of the (last) assistant reply, when known
    reply_label: str | None = None
    #: what ``select:`` can match: record fields, dialogue line keys, CSV columns
    fields: dict[str, Any] = field(default_factory=dict)
    #: where it came from, in words a user can find (``dialogue.jsonl line 4``)
    where: str = ""
    #: a row already in fine-tuning format, passed through as-is (may be malformed: validation says so)
    raw: Any = None
    #: a rejected reply for DPO, when the input names one (CSV ``rejected`` column)
    rejected: str | None = None

    @property
    def is_text(self) -> bool:
        return all(isinstance(m.get("content"), str) for m in self.messages)


# --- selection ----------------------------------------------------------------------------------


def parse_select(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["reply_sentiment=positive", "model=gpt-6-luna"]`` → a ``select`` mapping."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise DatasetError(f"--select {item!r} is not KEY=VALUE",
                               hint="e.g. --select sentiment=positive or --select reply_sentiment=positive")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _label(value: Any) -> Any:
    if isinstance(value, dict) and "label" in value:
        return value["label"]
    return value


def _norm(value: Any) -> str:
    return str(_label(value)).strip().lower()


def select_value(example: Example, key: str) -> Any:
    """The value ``select: {key: ...}`` compares: ``sentiment`` is the reply's label, else a field."""
    if key in example.fields:
        return _label(example.fields[key])
    if key in ("sentiment", "reply_sentiment", "label"):
        return example.reply_label
    return None


def matches_select(example: Example, select: dict[str, Any] | None) -> bool:
    """True when every ``select`` entry matches (a list value means: any of these)."""
    for key, wanted in (select or {}).items():
        got = select_value(example, key)
        if got is None:
            return False
        options = wanted if isinstance(wanted, list | tuple | set) else [wanted]
        if _norm(got) not in {_norm(w) for w in options}:
            return False
    return True


# --- message helpers ----------------------------------------------------------------------------


def _sentiment_label(message: dict[str, Any]) -> str | None:
    value = message.get("sentiment")
    label = _label(value)
    return str(label) if label not in (None, "") else None


def _clean(messages: list[Any]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        if isinstance(m, dict):
            out.append({k: v for k, v in m.items() if k in MESSAGE_KEYS})
    return out


def _exchange_example(messages: list[Any], fields: dict[str, Any], where: str) -> Example:
    reply = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "assistant"), None)
    return Example(messages=_clean(messages), reply_label=_sentiment_label(reply) if reply else None,
                   fields=fields, where=where)


def _pair_example(row: dict[str, Any], where: str, system: str | None) -> Example | None:
    lowered = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    sys_text = lowered.get("system") or system
    for prompt_col, reply_col in _DPO_COLUMNS:
        if "prompt" in lowered and prompt_col in lowered and reply_col in lowered:
            messages = ([{"role": "system", "content": str(sys_text)}] if sys_text else []) + [
                {"role": "user", "content": str(lowered["prompt"])},
                {"role": "assistant", "content": str(lowered[prompt_col])},
            ]
            return Example(messages=messages, reply_label="positive", fields=lowered, where=where,
                           rejected=str(lowered[reply_col]))
    for prompt_col, reply_col in _PAIR_COLUMNS:
        if prompt_col in lowered and reply_col in lowered:
            messages = ([{"role": "system", "content": str(sys_text)}] if sys_text else []) + [
                {"role": "user", "content": "" if lowered[prompt_col] is None else str(lowered[prompt_col])},
                {"role": "assistant", "content": "" if lowered[reply_col] is None else str(lowered[reply_col])},
            ]
            label = lowered.get("sentiment") or lowered.get("label")
            return Example(messages=messages, reply_label=str(label) if label else None, fields=lowered, where=where)
    return None


# --- per-format readers -------------------------------------------------------------------------


def _read_csv(path: Path, system: str | None) -> Iterator[Example]:
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        pairs = _PAIR_COLUMNS + tuple(("prompt", c) for c, _ in _DPO_COLUMNS)
        if not any(a in header and b in header for a, b in pairs):
            raise DatasetError(
                f"{path}: the CSV has columns {', '.join(header) or '(none)'}, but training needs a "
                "prompt/completion (or question/answer) pair",
                hint="rename the columns to prompt,completion (an optional system column sets the system prompt; "
                     "prompt,chosen,rejected gives DPO pairs); to train on replies to other data, run a pipeline over it "
                     "and train on its dialogue log",
            )
        for i, row in enumerate(reader, start=2):
            ex = _pair_example(row, f"{path.name} line {i}", system)
            if ex is not None:
                yield ex


def _jsonl_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed value or None, parse error) for each non-blank line."""
    try:
        fh = path.open(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    with fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield n, None, f"{exc.msg} at column {exc.colno}"


def _line_kind(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "row"
    if "exchanges" in obj and "fields" in obj:
        return "records"
    if "messages" in obj and any(k in obj for k in ("run_id", "record_id", "step")):
        return "dialogue-jsonl"
    if any(a in {str(k).lower() for k in obj} and b in {str(k).lower() for k in obj} for a, b in _PAIR_COLUMNS):
        return "pairs"
    return "row"


def _read_jsonl(path: Path, system: str | None) -> Iterator[Example]:
    for n, obj, error in _jsonl_lines(path):
        where = f"{path.name} line {n}"
        if error is not None:
            yield Example(raw=ParseError(error), where=where)
            continue
        kind = _line_kind(obj)
        if kind == "records":
            if obj.get("status", "done") != "done":
                continue
            fields = dict(obj.get("fields") or {})
            fields.setdefault("record_id", obj.get("id"))
            for j, exchange in enumerate(obj.get("exchanges") or []):
                if not isinstance(exchange, dict):
                    continue
                extra = {k: v for k, v in exchange.items() if k != "messages"}
                yield _exchange_example(exchange.get("messages") or [], {**extra, **fields},
                                        f"{where} exchange {j + 1}")
        elif kind == "dialogue-jsonl":
            fields = {k: v for k, v in obj.items() if k != "messages"}
            yield _exchange_example(obj.get("messages") or [], fields, where)
        elif kind == "pairs":
            ex = _pair_example(obj, where, system)
            if ex is not None:
                yield ex
        else:
            messages = obj.get("messages") if isinstance(obj, dict) else None
            yield Example(raw=obj, where=where,
                          messages=_clean(messages) if isinstance(messages, list) else [])


def _read_json(path: Path, system: str | None) -> Iterator[Example]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})",
                           hint="a dialogue-json file is one JSON array; a file with one object per line "
                                "should be named .jsonl") from None
    if isinstance(data, dict) and isinstance(data.get("dialogue"), list):
        data = data["dialogue"]
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON array of dialogue entries, found a {type(data).__name__}",
                           hint="dialogue-json is [{\"role\": ..., \"content\": ..., \"sentiment\": ...}, ...]")
    if data and all(isinstance(d, dict) and "role" in d for d in data):
        yield from _dialogue_entries(data, path)
        return
    for i, obj in enumerate(data):
        where = f"{path.name} item {i + 1}"
        kind = _line_kind(obj)
        if kind == "pairs":
            ex = _pair_example(obj, where, system)
            if ex is not None:
                yield ex
        elif kind == "dialogue-jsonl":
            yield _exchange_example(obj.get("messages") or [], {k: v for k, v in obj.items() if k != "messages"}, where)
        else:
            yield Example(raw=obj, where=where)


def _dialogue_entries(entries: list[dict[str, Any]], path: Path) -> Iterator[Example]:
    """Group a flat dialogue-json list into exchanges: an exchange ends at an assistant message.

    Entries with a ``record_id`` (and ``step``) never mix across records (or steps); older files without
    them are grouped by the system → user → assistant order alone. The ``step`` lands in the example's
    fields, so the same step rules apply as for dialogue-jsonl.
    """
    current: list[dict[str, Any]] = []
    current_key: Any = None
    start = 0
    for i, entry in enumerate(entries):
        key = (entry.get("run_id"), entry.get("record_id"), entry.get("step"))
        if current and key != current_key:
            current = []  # an unfinished exchange of another record: drop it
        if not current:
            start, current_key = i, key
        current.append(entry)
        if entry.get("role") == "assistant":
            fields = {k: v for k, v in entry.items() if k not in ("role", "content", "sentiment")}
            yield _exchange_example(current, fields, f"{path.name} entries {start + 1}-{i + 1}")
            current = []


_READERS = {".csv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_json, ".ndjson": _read_jsonl}


def detect_kind(path: Path) -> str:
    """``csv``, ``jsonl``, ``json`` or ``folder``; a :class:`DatasetError` for anything else."""
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in _READERS:
        return suffix.lstrip(".").replace("ndjson", "jsonl")
    raise DatasetError(f"{path}: cannot tell what kind of training data this is (extension {suffix or 'none'})",
                       hint="give a .csv, .jsonl or .json file, or a folder of them")


def read_examples(path: str | Path, *, system: str | None = None) -> list[Example]:
    """Every :class:`Example` in ``path`` (a file or a folder), in a stable order."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"training data not found: {path}", hint="check the path (relative paths start at the "
                           "current folder, or at the pipeline file in a pipeline)")
    kind = detect_kind(path)
    if kind == "folder":
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _READERS)
        if not files:
            raise DatasetError(f"{path} holds no .csv, .jsonl or .json files", hint="put the training data there")
        out: list[Example] = []
        for f in files:
            out.extend(_READERS[f.suffix.lower()](f, system))
        return out
    return list(_READERS[path.suffix.lower()](path, system))
