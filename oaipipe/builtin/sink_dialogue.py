"""Built-in sinks ``dialogue-jsonl`` and ``dialogue-json``: the dialogue log (what the original module kept).

Every message of every exchange a step made (system, user, assistant) is written with its sentiment.
The sentiment comes from a ``sentiment`` step that scored exactly that text, else from the sink's own
``analyzer`` option (default ``vader``; ``null`` turns it off and leaves ``sentiment: null``).

* ``dialogue-jsonl``: one JSON line per exchange, appended and flushed after each record (during a run:
  after each group of records; rendered in a worker with ``run.workers``). Safe at any size; the format
  to prefer.
* ``dialogue-json``: the original single-document format, a JSON array of ``{role, content, sentiment}``
  entries (plus ``record_id``, ``run_id``, ``step`` and ``time``). Each record's entries are written at
  once over the closing bracket (:class:`JsonArrayLog`): a write costs the record, not the document, and
  the file is valid JSON after each. The file is a log across runs: existing entries are kept.

Both honour ``done_ids`` on resume: what this run wrote for records that did not finish is removed, so
each record ends up in the file exactly once. Image data URLs are never written: an image part of a
message is kept with its URL shortened to ``data:image/png;base64,... (N chars)``.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..base import Analyzer, PluginOptions, Sink
from ..hookspecs import hookimpl
from ..kit.sinks import MODE_FIELD_DOC, JsonArrayLog, JsonlAppendingSink, jsonl_text, start_over, utc_now
from ..kit.sinks import reconcile_jsonl as reconcile_jsonl  # documented import path (docs/plugins.md)
from ..types import Exchange, RecordResult, RunInfo, Sentiment

# --- shared helpers ------------------------------------------------------------------------------------


def safe_content(content: Any) -> Any:
    """The content as the step gave it, with any ``data:`` image URL shortened (never written in full)."""
    if isinstance(content, str):
        return _short_data_url(content) if content.startswith("data:") and ";base64," in content[:100] else content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                part = dict(part)
                image = part.get("image_url")
                if isinstance(image, dict):
                    image = dict(image)
                    image["url"] = _short_data_url(str(image.get("url", "")))
                elif isinstance(image, str):
                    image = _short_data_url(image)
                part["image_url"] = image
            elif isinstance(part, dict) and isinstance(part.get("image_url"), str):
                part = {**part, "image_url": _short_data_url(part["image_url"])}
            parts.append(part)
        return parts
    return content


def _short_data_url(url: str) -> str:
    if url.startswith("data:") and ";base64," in url:
        head = url.split(",", 1)[0]
        return f"{head},... ({len(url)} chars)"
    return url


def content_text(content: Any) -> str:
    """The text of a message's content (text parts joined) for sentiment scoring."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text")]
        return "\n".join(t for t in texts if t)
    return "" if content is None else str(content)


#: recent results of each (shared) analyzer instance: both dialogue sinks score a record's messages once
_RECENT: weakref.WeakKeyDictionary[Analyzer, dict[str, dict[str, Any]]] = weakref.WeakKeyDictionary()


class _SentimentFiller:
    """Finds the sentiment of a message: the sentiment step's result, else the sink's analyzer."""

    def __init__(self, sink: Sink, analyzer: str | dict[str, Any] | None) -> None:
        self.sink = sink
        self.spec = analyzer
        self._analyzer: Analyzer | None = None
        self._cache: dict[str, dict[str, Any]] = {}

    def analyzer(self) -> Analyzer | None:
        if self.spec is None:
            return None
        if self._analyzer is None:
            host = self.sink.context.host
            if host is None:
                from ..plugins import PluginHost

                host = PluginHost()
                self.sink.context.host = host
            self._analyzer = host.analyzer(self.spec, self.sink.context)
        return self._analyzer

    def __call__(self, message: dict[str, Any], sentiments: dict[str, Sentiment]) -> dict[str, Any] | None:
        given = message.get("sentiment")
        if isinstance(given, Sentiment):
            return given.to_dict()
        if isinstance(given, dict):
            return given
        text = content_text(message.get("content"))
        found = sentiments.get(text)
        if found is not None:
            return found.to_dict()
        analyzer = self.analyzer()
        if analyzer is None or not text:
            return None
        try:
            recent = _RECENT.setdefault(analyzer, {})
        except TypeError:  # an analyzer that cannot be weakly referenced: a cache of this sink's own
            recent = self._cache
        cached = recent.get(text)
        if cached is None:
            cached = analyzer.analyze(text).to_dict()
            if len(recent) >= 256:  # system prompts repeat on every record: keep a few
                recent.clear()
            recent[text] = cached
        return dict(cached)

    def messages(self, exchange: Exchange, sentiments: dict[str, Sentiment]) -> list[dict[str, Any]]:
        return [
            {"role": m.get("role"), "content": safe_content(m.get("content")), "sentiment": self(m, sentiments)}
            for m in exchange.messages
        ]


class _DialogueOptions(PluginOptions):
    path: str = Field(..., description="Output file, relative to the pipeline file (folders are created)")
    mode: Literal["append", "overwrite"] = Field(
        "append", description="A dialogue log keeps every run by default. " + MODE_FIELD_DOC)
    analyzer: str | dict[str, Any] | None = Field(
        "vader",
        description="Analyzer for messages no sentiment step scored (name or {type: NAME, ...}); null: none",
    )


# --- dialogue-jsonl -------------------------------------------------------------------------------------


class DialogueJsonlSink(JsonlAppendingSink):
    """Dialogue log, one JSON line per exchange (appended and flushed; exactly once on resume)."""

    kind = "dialogue-jsonl sink"
    run_key = "run_id"
    id_key = "record_id"

    class Options(_DialogueOptions):
        path: str = Field("out/dialogue.jsonl", description="Output .jsonl file, relative to the pipeline file")

    options: Options

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._fill = _SentimentFiller(self, self.options.analyzer)

    def prepare(self) -> None:
        self._fill.analyzer()  # an unknown analyzer name fails when the pipeline is built, not mid-run

    renders_in_worker = True

    def render(self, result: RecordResult, run: RunInfo) -> str:
        if result.error is not None or not result.exchanges:
            return ""
        return jsonl_text([
            {
                "run_id": run.run_id,
                "record_id": result.record.id,
                "step": ex.step,
                "time": utc_now(),
                "model": ex.model,
                "backend": ex.backend,
                "usage": ex.usage.to_dict(),
                "latency": round(ex.latency, 4),
                "request_id": ex.request_id,
                "cached": ex.cached,
                "messages": self._fill.messages(ex, result.sentiments),
            }
            for ex in result.exchanges
        ])


# --- dialogue-json --------------------------------------------------------------------------------------


class DialogueJsonSink(Sink):
    """Dialogue log as ONE JSON array of {role, content, sentiment} entries (the original format).

    Each record's entries are appended at once over the closing bracket (:class:`JsonArrayLog`): a write
    costs the size of the record, the document is valid JSON after each one, and nothing is held in memory.
    """

    class Options(_DialogueOptions):
        path: str = Field("out/dialogue.json", description="Output .json file, relative to the pipeline file")
        flush_every: int = Field(
            50, ge=1, description="No effect (kept so older pipelines load): each record is appended at once")
        indent: int | None = Field(2, ge=0, description="JSON indentation; null for one compact line")

    options: Options

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._run: RunInfo | None = None
        self._log: JsonArrayLog | None = None
        self._fill = _SentimentFiller(self, self.options.analyzer)

    def prepare(self) -> None:
        self._fill.analyzer()  # an unknown analyzer name fails when the pipeline is built, not mid-run

    @property
    def file(self) -> Path:
        return self.context.path(self.options.path)

    @property
    def side_file(self) -> Path:
        """Where oaipipe before 0.x kept records between two rewrites; adopted (once) by the next open."""
        path = self.file
        return path.with_name(f".{path.name}.pending.jsonl")

    def open(self, run: RunInfo, done_ids: set[str] | None = None) -> None:
        path = self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        log = JsonArrayLog(path, indent=self.options.indent, label="dialogue-json", run_key="run_id",
                           id_key="record_id", is_entry=_is_dialogue_entry)
        start_over(path, self.side_file, log.marker, mode=self.options.mode, done_ids=done_ids,
                   ours=log.written_by_us)
        log.open(run_id=run.run_id, done_ids=done_ids, adopt=self._side_records())
        self.side_file.unlink(missing_ok=True)
        self._log, self._run = log, run

    def _side_records(self) -> list[tuple[Any, Any, list[Any]]]:
        side = self.side_file
        if not side.is_file():
            return []
        found = []
        with side.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # cut short by a crash: that record was not counted as done
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and isinstance(item.get("entries"), list):
                    found.append((item.get("run_id"), item.get("record_id"), item["entries"]))
        return found

    def write(self, result: RecordResult) -> None:
        if self._log is None or self._run is None:
            raise RuntimeError("dialogue-json sink: write() before open()")
        if result.error is not None or not result.exchanges:
            return
        now = utc_now()
        new: list[dict[str, Any]] = []
        for ex in result.exchanges:
            for message in self._fill.messages(ex, result.sentiments):
                message.update(record_id=result.record.id, run_id=self._run.run_id, step=ex.step, time=now)
                new.append(message)
        self._log.append(new)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _is_dialogue_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and "role" in entry


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("dialogue-jsonl", DialogueJsonlSink)
    register("dialogue-json", DialogueJsonSink)
