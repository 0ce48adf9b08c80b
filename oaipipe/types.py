"""Plain data passed between the runner and plugins. No behaviour, no plugin machinery."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "Exchange",
    "ModelInfo",
    "Record",
    "RecordResult",
    "RunInfo",
    "Sentiment",
    "Usage",
]


@dataclass(frozen=True)
class Sentiment:
    """What an analyzer says about a text: ``label`` is positive, negative or neutral."""

    label: str
    score: float
    analyzer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 4), "analyzer": self.analyzer}


@dataclass
class Usage:
    """Token counts of one call, as the API reports them.

    ``cached_tokens`` is the part of ``prompt_tokens`` served from the provider's prompt cache (billed at the
    cached price); ``reasoning_tokens`` the part of ``completion_tokens`` a reasoning model spent thinking
    (billed as output). Both APIs report them (``prompt_tokens_details`` / ``input_tokens_details``,
    ``completion_tokens_details`` / ``output_tokens_details``); :func:`oaipipe.openai_wire` reads either.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        """The counts; ``cached_tokens`` / ``reasoning_tokens`` only when the API reported some."""
        data = asdict(self)
        for name in ("cached_tokens", "reasoning_tokens"):
            if not data[name]:
                del data[name]
        return data


@dataclass
class ChatRequest:
    """One chat call, in OpenAI's message format.

    ``messages`` are ``{"role": ..., "content": ...}`` dicts; ``content`` is a string or a list of parts
    (``{"type": "text", "text": ...}``, ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``).
    ``response_format`` is passed as OpenAI's ``response_format`` (e.g. a ``json_schema`` block).
    ``step`` names the pipeline step that made the call (for the cache key and the cost table).
    """

    messages: list[dict[str, Any]]
    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    step: str = ""

    def cache_key(self) -> str:
        """Content address of the call: the same key means the same answer may be reused."""
        payload = {
            "model": self.model,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_format": self.response_format,
            "extra": self.extra,
            "step": self.step,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class ChatResponse:
    """The answer to a :class:`ChatRequest`.

    ``text`` is the assistant reply; ``parsed`` holds the decoded JSON when a JSON schema was asked for.
    ``backend`` names the transport (``local``, ``openai``, ``requests``, ``batch``) and ``model`` what the
    server says answered. ``cached`` is set by the response cache, never by a backend.
    """

    text: str
    model: str
    backend: str
    usage: Usage = field(default_factory=Usage)
    request_id: str | None = None
    latency: float = 0.0
    parsed: Any = None
    cached: bool = False
    finish_reason: str | None = None
    #: the processing tier the server reports it served the call with (``default``, ``flex``,
    #: ``priority``...), or None when it says nothing; prices follow it (:func:`oaipipe.pricing.tier_of`)
    service_tier: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["usage"] = self.usage.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatResponse:
        data = dict(data)
        data["usage"] = Usage(**data.get("usage") or {})
        return cls(**data)


@dataclass(frozen=True)
class ModelInfo:
    """One entry of a backend's model list."""

    id: str
    owned_by: str = ""
    created: int | None = None
    #: YYYY-MM-DD the server says the model shuts down (``GET /v1/models``), or None when none is announced
    shutdown_date: str | None = None


@dataclass
class Record:
    """One input record. ``id`` is stable across runs (the journal keys on it); ``where`` says where it
    came from in words a user can find (``reviews.csv row 12``)."""

    id: str
    data: dict[str, Any]
    where: str = ""
    #: set by a source for a record it could not parse (a bad JSON line): the runner logs it as failed
    error: str | None = None


@dataclass
class Exchange:
    """One system/user/assistant exchange made by a step, as dialogue sinks write it.

    Each message is ``{"role", "content", "sentiment"}``; ``sentiment`` is a :meth:`Sentiment.to_dict`
    or ``None`` until a sentiment step or a sink fills it in.
    """

    record_id: str
    step: str
    messages: list[dict[str, Any]]
    model: str
    backend: str
    usage: Usage = field(default_factory=Usage)
    latency: float = 0.0
    request_id: str | None = None
    cached: bool = False
    #: the model the call asked for, when the server reported another id as ``model`` (its price is the asked
    #: model's when the price table does not know the reported one: :meth:`oaipipe.pricing.PriceTable.lookup`)
    requested: str | None = None
    #: the service tier the reply says it was served at (``flex``, ``priority``...): the rate it is billed at
    service_tier: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["usage"] = self.usage.to_dict()
        for name in ("requested", "service_tier"):  # only when there is something to say (as usage's counts)
            if data[name] is None:
                del data[name]
        return data


@dataclass
class RecordResult:
    """A record after all steps: ``fields`` is the input plus every field the steps added."""

    record: Record
    fields: dict[str, Any]
    exchanges: list[Exchange] = field(default_factory=list)
    sentiments: dict[str, Sentiment] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunInfo:
    """What plugins may know about the run in progress."""

    pipeline_name: str
    run_id: str
    run_dir: str
    backend: str
    model: str
    resumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
