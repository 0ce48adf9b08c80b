"""``stream: true``: Server-Sent Events in OpenAI's shapes, written as they are due (sources: docs/serve.md).

The engine computes a reply at once; :func:`chat_events` and :func:`response_events` cut it into the events
OpenAI streams (a text delta per word), and the HTTP layer (:meth:`oaipipe.server.app.Handler._send`)
writes them one by one with chunked transfer encoding, spreading the call's latency (``--latency``,
``--jitter``) evenly over the events that carry output, so that a client reads the first delta while the
server is still producing. An injected drop cuts the stream after half of those events.

* chat: ``data: {chat.completion.chunk}`` lines (role first, then content deltas, then the finish reason),
  a usage chunk with empty ``choices`` when ``stream_options.include_usage`` is set (``usage: null`` on the
  others), and ``data: [DONE]``.
* Responses: typed events ``event: <type>`` + ``data: {...}`` with a ``sequence_number`` from 0:
  ``response.created``, ``response.in_progress``, ``response.output_item.added`` / ``.done`` (the reasoning
  item, then the message), ``response.content_part.added``, ``response.output_text.delta`` ...,
  ``response.output_text.done``, ``response.content_part.done``, and ``response.completed`` (or
  ``response.incomplete``) carrying the full response with its usage. No ``[DONE]``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EventStream", "StreamPlan", "chat_events", "response_events", "split_text"]

_PIECE = re.compile(r"\s*\S+\s*|\s+")


def split_text(text: str) -> list[str]:
    """The deltas of a text: a word each, with its surrounding spaces (they join back to ``text``)."""
    pieces = _PIECE.findall(text)
    return pieces if "".join(pieces) == text else [text]


@dataclass
class EventStream:
    """Encoded SSE events in order; ``paced[i]`` marks an event that carries output (the latency is spread
    over those)."""

    events: list[bytes] = field(default_factory=list)
    paced: list[bool] = field(default_factory=list)

    def add(self, data: bytes, *, paced: bool = False) -> None:
        self.events.append(data)
        self.paced.append(paced)

    def __len__(self) -> int:
        return len(self.events)

    def schedule(self, delay: float, drop: bool) -> Iterator[tuple[float, bytes | None]]:
        """(seconds to wait first, event) in order; ``None`` as the event means: cut the connection now.
        ``delay`` is spread evenly over the paced events (all of it before the first event when none is);
        ``drop`` cuts the stream before the second half of the paced events."""
        count = sum(self.paced)
        if count == 0:
            if drop:
                yield delay, None
                return
            for i, event in enumerate(self.events):
                yield (delay if i == 0 else 0.0), event
            return
        gap = delay / count
        cut_at = count // 2 if drop else -1
        sent = 0
        for event, paced in zip(self.events, self.paced, strict=True):
            if paced and sent == cut_at:
                yield 0.0, None
                return
            yield (gap if paced else 0.0), event
            sent += paced


@dataclass
class StreamPlan:
    """What the faults decided for one streamed call: the latency to spread, and whether to cut it."""

    delay: float = 0.0
    drop: bool = False


def _data(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def chat_events(completion: dict[str, Any], *, include_usage: bool) -> EventStream:
    """The chunks of a ``chat.completion`` object (see the module docstring)."""
    stream = EventStream()
    choice = completion["choices"][0]
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"], "service_tier": completion.get("service_tier"),
            "system_fingerprint": completion.get("system_fingerprint")}

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
        data = dict(base)
        data["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                     "finish_reason": finish}]
        if include_usage:
            data["usage"] = usage
        return b"data: " + _data(data) + b"\n\n"

    stream.add(chunk({"role": "assistant", "content": "", "refusal": None}))
    for piece in split_text(choice["message"]["content"] or ""):
        stream.add(chunk({"content": piece}), paced=True)
    stream.add(chunk({}, choice["finish_reason"]))
    if include_usage:
        stream.add(chunk(None, usage=completion["usage"]))
    stream.add(b"data: [DONE]\n\n")
    return stream


def response_events(response: dict[str, Any]) -> EventStream:
    """The typed events of a ``response`` object (see the module docstring)."""
    stream = EventStream()
    seq = 0

    def event(kind: str, paced: bool = False, **fields: Any) -> None:
        nonlocal seq
        payload = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        stream.add(b"event: " + kind.encode() + b"\ndata: " + _data(payload) + b"\n\n", paced=paced)

    started = copy.deepcopy(response)
    started.update(status="in_progress", output=[], usage=None, completed_at=None, incomplete_details=None)
    event("response.created", response=started)
    event("response.in_progress", response=started)
    for index, item in enumerate(response["output"]):
        if item["type"] != "message":
            event("response.output_item.added", output_index=index, item=item)
            event("response.output_item.done", output_index=index, item=item)
            continue
        event("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []})
        for part_index, part in enumerate(item["content"]):
            ids = {"item_id": item["id"], "output_index": index, "content_index": part_index}
            event("response.content_part.added", **ids, part={**part, "text": ""})
            for piece in split_text(part["text"]):
                event("response.output_text.delta", paced=True, **ids, delta=piece, logprobs=[])
            event("response.output_text.done", **ids, text=part["text"], logprobs=[])
            event("response.content_part.done", **ids, part=part)
        event("response.output_item.done", output_index=index, item=item)
    event("response.completed" if response["status"] == "completed" else "response.incomplete", response=response)
    return stream
