"""Built-in sinks ``dialogue-jsonl`` and ``dialogue-json``: the dialogue log (what the original module kept).

Every message of every exchange a step made (system, user, assistant) is written with its sentiment.
The sentiment comes from a ``sentiment`` step that scored exactly that text, else from the sink's own
``analyzer`` option (default ``vader``; ``null`` turns it off and leaves ``sentiment: null``).

* ``dialogue-jsonl``: one JSON line per exchange, appended and flushed after each record. Safe at any
  size; the format to prefer.
* ``dialogue-json``: the original single-document format, a JSON array of ``{role, content, sentiment}``
  entries (plus ``record_id``, ``run_id``, ``step`` and ``time``), rewritten atomically every ``flush_every``
  records and at the end. The file is a log across runs: existing entries are kept. It holds every entry
  in memory, so prefer ``dialogue-jsonl`` for big runs.

Both honour ``done_ids`` on resume: what this run wrote for records that did not finish is removed, so
each record ends up in the file exactly once. Image data URLs are never written: an image part of a
message is kept with its URL shortened to ``data:image/png;base64,... (N chars)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..base import Analyzer, PluginOptions, Sink
from ..errors import InputError
from ..fsutil import write_text_atomic
from ..hookspecs import hookimpl
from ..types import Exchange, RecordResult, RunInfo, Sentiment
from ._sink_files import MODE_FIELD_DOC, JsonlAppendingSink, start_over, unfinished, utc_now
from ._sink_files import reconcile_jsonl as reconcile_jsonl  # documented import path (docs/plugins.md)

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
        cached = self._cache.get(text)
        if cached is None:
            cached = analyzer.analyze(text).to_dict()
            if len(self._cache) >= 256:  # system prompts repeat on every record: keep a few
                self._cache.clear()
            self._cache[text] = cached
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

    def write(self, result: RecordResult) -> None:
        run = self._open_run()
        if result.error is not None or not result.exchanges:
            return
        self._append_objects([
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

    Between two rewrites of the document, each record's entries are also appended (and flushed) to a
    hidden side file, ``.<name>.pending.jsonl`` next to it, so that a crash loses nothing the runner
    already counted as done: the next ``open`` merges the side file into the document (once), then
    removes it.
    """

    class Options(_DialogueOptions):
        path: str = Field("out/dialogue.json", description="Output .json file, relative to the pipeline file")
        flush_every: int = Field(50, ge=1, description="Rewrite the file after this many records")
        indent: int | None = Field(2, ge=0, description="JSON indentation; null for one compact line")

    options: Options

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._entries: list[Any] = []
        self._run: RunInfo | None = None
        self._pending = 0
        self._dirty = False
        self._open = False
        self._side: Any = None
        self._fill = _SentimentFiller(self, self.options.analyzer)

    def prepare(self) -> None:
        self._fill.analyzer()  # an unknown analyzer name fails when the pipeline is built, not mid-run

    @property
    def file(self) -> Path:
        return self.context.path(self.options.path)

    @property
    def side_file(self) -> Path:
        path = self.file
        return path.with_name(f".{path.name}.pending.jsonl")

    def _load(self, path: Path) -> list[Any]:
        if not path.is_file():
            return []
        move = f"move it away (e.g. `mv {path} {path}.bak`) or point `path:` at another file"
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"dialogue-json: {path} exists but is not valid UTF-8 (byte offset {exc.start}: {exc.reason}); "
                f"it will not be overwritten",
                hint=move,
            ) from None
        if not raw.strip():
            return []
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise InputError(
                f"dialogue-json: {path} exists but is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}); it will not be overwritten",
                hint=move,
            ) from None
        if not isinstance(data, list):
            raise InputError(
                f"dialogue-json: {path} exists but holds a JSON {type(data).__name__}, not an array of "
                f"dialogue entries; it will not be overwritten",
                hint=move,
            )
        return data

    def _merge_side_file(self, entries: list[Any]) -> int:
        """Add the records of the side file that the document does not hold yet; returns how many."""
        side = self.side_file
        if not side.is_file():
            return 0
        present = {(e.get("run_id"), str(e.get("record_id"))) for e in entries if isinstance(e, dict)}
        merged = 0
        with side.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # cut short by a crash: that record was not counted as done
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                key = (item.get("run_id"), str(item.get("record_id")))
                if key in present or not isinstance(item.get("entries"), list):
                    continue
                entries.extend(item["entries"])
                present.add(key)
                merged += 1
        return merged

    def open(self, run: RunInfo, done_ids: set[str] | None = None) -> None:
        path = self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        start_over(path, self.side_file, mode=self.options.mode, done_ids=done_ids, ours=_json_log_written_by_us)
        entries = self._load(path)
        had_side = self.side_file.exists()
        self._dirty = self._merge_side_file(entries) > 0
        if done_ids is not None:
            kept = [
                e for e in entries
                if not (isinstance(e, dict)
                        and unfinished(e.get("run_id"), e.get("record_id"), run_id=run.run_id, done_ids=done_ids))
            ]
            self._dirty = self._dirty or len(kept) != len(entries)
            entries = kept
        self._entries = entries
        self._run = run
        self._pending = 0
        self._side = self.side_file.open("a", encoding="utf-8", newline="\n")
        self._open = True
        if self._dirty or had_side:
            self._flush()

    def write(self, result: RecordResult) -> None:
        if not self._open or self._run is None:
            raise RuntimeError("dialogue-json sink: write() before open()")
        if result.error is not None or not result.exchanges:
            return
        now = utc_now()
        new: list[dict[str, Any]] = []
        for ex in result.exchanges:
            for message in self._fill.messages(ex, result.sentiments):
                message.update(record_id=result.record.id, run_id=self._run.run_id, step=ex.step, time=now)
                new.append(message)
        side = {"run_id": self._run.run_id, "record_id": result.record.id, "entries": new}
        self._side.write(json.dumps(side, ensure_ascii=False, default=str) + "\n")
        self._side.flush()
        self._entries.extend(new)
        self._dirty = True
        self._pending += 1
        if self._pending >= self.options.flush_every:
            self._flush()

    def _flush(self) -> None:
        text = json.dumps(self._entries, ensure_ascii=False, indent=self.options.indent, default=str) + "\n"
        write_text_atomic(self.file, text)
        if self._side is not None:  # everything is in the document now
            self._side.seek(0)
            self._side.truncate()
        self._pending = 0
        self._dirty = False

    def close(self) -> None:
        if self._open and (self._dirty or not self.file.exists()):
            self._flush()
        self._open = False
        if self._side is not None:
            self._side.close()
            self._side = None
            self.side_file.unlink(missing_ok=True)


def _json_log_written_by_us(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, list) and all(isinstance(e, dict) and "role" in e for e in data[:5])


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("dialogue-jsonl", DialogueJsonlSink)
    register("dialogue-json", DialogueJsonSink)
