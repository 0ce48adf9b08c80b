"""Deterministic offline chat: a readable reply built from the input, labelled as the local model.

The same messages always give the same reply, on every machine (choices use SHA-256 of the input, never
``hash()``). The tone follows VADER's sentiment of the last user message: a thankful reply to praise, an
apology with a next step to a complaint, an answer-shaped reply to a question. Image parts are measured
with Pillow and described (:mod:`oaipipe.engine.vision`). ``ft:`` models answer from what they were
trained on (:mod:`oaipipe.engine.tuning`). A JSON schema in ``response_format`` gives JSON that validates
against it, filled from what the engine knows about the input.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..models_table import DEFAULT_MODEL
from ..tokens import count_message_tokens, count_tokens
from ..types import Usage
from .errors import InvalidRequest, ModelNotFound
from .schema_fill import fill_schema
from .tuning import load_local_model
from .vision import ImageFacts, describe, load_image_url, measure

__all__ = ["EngineReply", "analyse_messages", "complete", "engine_model_name", "warm_up"]

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]+")
_STOP = set(["a", "an", "the", "and", "or", "but", "if", "then", "than", "so", "to", "of", "in", "on", "at", "by", "for", "with", "from", "about", "into", "over", "after", "before", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "have", "has", "had", "i", "me", "my", "mine", "we", "us", "our", "you", "your", "yours", "it", "its", "this", "that", "these", "those", "there", "here", "they", "them", "their", "he", "she", "him", "her", "his", "hers", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "not", "no", "yes", "very", "really", "just", "also", "too", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "one", "ones", "some", "any", "all", "more", "most", "much", "many", "get", "got", "gets", "getting", "make", "made", "item", "thing", "things", "product", "order", "ordered", "bought", "buy", "please", "thanks", "thank", "hello", "hi", "dear", "would've", "i'm", "it's", "don't", "didn't", "doesn't", "isn't", "wasn't", "can't", "won't", "i've"]) | set(
    ["work", "works", "worked", "working", "arrived", "arrive", "came", "come", "comes", "went", "goes", "going", "used", "using", "use", "uses", "days", "week", "weeks", "month", "months", "time", "times", "again", "still", "even", "ever", "never", "always", "only", "well", "within"]
) | {"nobody", "anybody", "somebody", "someone", "anyone", "everyone", "something", "anything", "nothing",
     "everything", "answer", "answers", "answered", "reply", "replied", "respond", "responded", "wait",
     "waiting", "waited", "yet", "since", "bit", "lot", "lots", "couple", "pair", "kind", "sort", "piece", "way",
     "review", "reviews", "message", "feedback", "comment", "comments", "text", "customer", "question",
     "summarize", "summarise", "summary", "describe", "following"}
#: complaint phrases VADER scores as neutral; they tip a neutral text to negative
_COMPLAINT = re.compile(
    r"\b(never (arrived|came|showed up|received)|not (working|arrived|received|delivered)|doesn't work|"
    r"does not work|didn't work|stopped working|nobody (answers|replies|responds|called)|no (reply|response|"
    r"answer)|still waiting|broken|broke|damaged|defective|missing|refund|late|wrong (item|size|colou?r)|"
    r"cracked|leak(s|ed|ing)?|faulty)\b", re.IGNORECASE)
_QUESTION_START = re.compile(r"^\s*(what|why|how|when|where|who|which|can|could|do|does|did|is|are|will|would|should)\b",
                             re.IGNORECASE)


@dataclass
class EngineReply:
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    parsed: Any = None
    finish_reason: str = "stop"


@dataclass
class Analysis:
    """What the engine knows about a request: texts, sentiment, images."""

    system: str
    user: str
    sentiment_label: str
    sentiment_score: float
    is_question: bool
    keywords: list[str]
    images: list[ImageFacts]


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def warm_up() -> None:
    """Load VADER's lexicon and the tokenizer now (about half a second, once per process), so that the
    first request is as quick as the others."""
    _vader()
    count_tokens("warm up")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content
                        if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text"))
    return "" if content is None else str(content)


def _image_urls(content: Any) -> list[str]:
    urls: list[str] = []
    if not isinstance(content, list):
        return urls
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("image_url", "input_image"):
            continue
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest("An image part has no URL; give image_url.url as a data URL or a file path.",
                                 param="messages")
        urls.append(url)
    return urls


def _digest(*parts: Any) -> int:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


_TOKEN = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d+")
_DETERMINERS = {"the", "this", "that", "these", "those", "my", "your", "our", "their", "his", "her", "a", "an"}
#: words that describe a noun rather than name it ("the red mug" is about the mug)
_MODIFIERS = {"new", "old", "first", "second", "third", "last", "next", "other", "same", "whole", "big", "small",
              "little", "large", "tiny", "huge", "brand", "super", "fast", "slow", "only", "own", "replacement",
              "extra", "spare", "main", "cheap", "expensive"} | {
    "red", "blue", "green", "yellow", "black", "white", "grey", "gray", "pink", "purple", "orange", "brown"}


def _is_content_word(word: str) -> bool:
    return len(word) >= 3 and word.isalpha() and word not in _STOP


def _noun_after_determiner(tokens: list[str]) -> str | None:
    """The head of the first ``the/this/my ... <word>`` phrase: "the red mug" → "mug"."""
    for i, tok in enumerate(tokens[:-1]):
        if tok not in _DETERMINERS:
            continue
        run = []
        for nxt in tokens[i + 1:i + 3]:
            if not _is_content_word(nxt):
                break
            run.append(nxt)
        if not run:
            continue
        if len(run) == 2 and (run[0] in _MODIFIERS or run[0] in _vader().lexicon or run[0].endswith("ly")):
            return run[1]
        if run[0] in _MODIFIERS or run[0] in _vader().lexicon:
            continue
        return run[0]
    return None


def _keywords(text: str, limit: int = 3) -> list[str]:
    """Topic words of a text, the most likely noun first."""
    tokens = [t.lower().strip("'-") for t in _TOKEN.findall(text)]
    seen: list[str] = []
    head = _noun_after_determiner(tokens)
    if head:
        seen.append(head)
    for low in tokens:
        if not _is_content_word(low) or low in seen or low in _vader().lexicon or low in _MODIFIERS:
            continue
        seen.append(low)
        if len(seen) >= limit:
            break
    return seen[:limit]


def analyse_messages(messages: list[dict[str, Any]]) -> Analysis:
    """Texts, sentiment, keywords and measured images of a chat request."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list of {role, content} objects.", param="messages")
    system = " ".join(_text_of(m.get("content")) for m in messages
                      if isinstance(m, dict) and m.get("role") in ("system", "developer"))
    last_user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    user = _text_of(last_user.get("content")) if last_user else ""
    images = [measure(load_image_url(u)) for u in _image_urls(last_user.get("content"))] if last_user else []
    compound = float(_vader().polarity_scores(user)["compound"]) if user.strip() else 0.0
    if -0.05 < compound < 0.05 and _COMPLAINT.search(user):
        compound = -0.3  # a complaint in neutral words ("my order never arrived")
    label = "positive" if compound >= 0.05 else ("negative" if compound <= -0.05 else "neutral")
    stripped = user.strip()
    is_question = stripped.endswith("?") or bool(_QUESTION_START.match(stripped) and len(stripped) < 200)
    return Analysis(system=system, user=user, sentiment_label=label, sentiment_score=compound,
                    is_question=is_question, keywords=_keywords(user), images=images)


def _topic(a: Analysis, fallback: str = "your message") -> str:
    if not a.keywords:
        return fallback
    return f"the {a.keywords[0]}"


_POSITIVE = (
    "Thank you so much for your kind words about {topic}! We're delighted it worked out for you, and we'll "
    "share your feedback with the team.",
    "Thanks a lot for taking the time to tell us about {topic}. It's great to hear you're happy, and we look "
    "forward to helping you again.",
    "We really appreciate your feedback on {topic}! Knowing it made a difference for you means a lot to the "
    "whole team.",
)
_NEGATIVE = (
    "We're sorry to hear about {topic}; that is not the experience we want you to have. Please reply with "
    "your order number and we'll arrange a replacement or a full refund right away.",
    "I apologise for the trouble with {topic}. I've flagged this with our support team: if you send us your "
    "order number, we'll make it right within two business days.",
    "Thank you for letting us know, and sorry about {topic}. As a next step, please contact us with your "
    "order details so we can fix this for you, by replacement or refund.",
)
_NEUTRAL = (
    "Thank you for your message about {topic}. We've noted your feedback; let us know if there is anything "
    "we can help you with.",
    "Thanks for getting in touch about {topic}. If you have any questions, just reply and we'll be glad to "
    "help.",
)
_QUESTION = (
    "Good question about {topic}. In short: yes, that's possible, and our support team can walk you "
    "through the details; reply with what you're trying to do and we'll send you the exact steps.",
    "Thanks for asking about {topic}. Here's the short answer: it depends on your setup, so tell us a "
    "little more and we'll give you a precise, step-by-step answer.",
)


def _text_reply(a: Analysis, model: str, seed: int) -> str:
    if a.images:
        sentences = [describe(f, a.user) for f in a.images]
        if len(sentences) > 1:
            sentences = [f"Image {i}: {s}" for i, s in enumerate(sentences, 1)]
        return " ".join(sentences)
    instruction = a.user.strip().lower()
    if instruction.startswith(("summarize", "summarise", "summary")) or "summar" in a.system.lower():
        first = _first_sentence(a.user)
        return f"Summary: {first}" if first else "Summary: (nothing to summarise)"
    if not a.user.strip() or re.fullmatch(r"\s*(hi|hello|hey|good (morning|afternoon|evening))\W*", a.user, re.I):
        return "Hello! How can we help you today?"
    templates: tuple[str, ...]
    if a.is_question and a.sentiment_label != "negative":
        templates = _QUESTION
    elif a.sentiment_label == "positive":
        templates = _POSITIVE
    elif a.sentiment_label == "negative":
        templates = _NEGATIVE
    else:
        templates = _NEUTRAL
    fallback = "your message" if templates in (_POSITIVE, _NEUTRAL) else "this"
    return templates[seed % len(templates)].format(topic=_topic(a, fallback))


def _known_fields(a: Analysis, reply: str) -> dict[str, Any]:
    """Values a JSON schema property can be filled with, by normalised property name."""
    stars = max(1, min(5, round(3 + 2 * a.sentiment_score)))
    intent = "question" if a.is_question else {"negative": "complaint", "positive": "praise"}.get(
        a.sentiment_label, "feedback")
    known: dict[str, Any] = {
        "sentiment": a.sentiment_label, "label": a.sentiment_label, "tone": a.sentiment_label,
        "polarity": a.sentiment_label, "score": round(a.sentiment_score, 4),
        "sentiment_score": round(a.sentiment_score, 4), "confidence": round(abs(a.sentiment_score), 4),
        "reply": reply, "response": reply, "answer": reply, "message": reply, "text": reply,
        "summary": _first_sentence(a.user) or reply, "keywords": a.keywords, "topics": a.keywords,
        "topic": a.keywords[0] if a.keywords else "", "product": a.keywords[0] if a.keywords else "",
        "item": a.keywords[0] if a.keywords else "", "subject": a.keywords[0] if a.keywords else "",
        "stars": stars, "rating": stars, "star_rating": stars,
        "category": intent, "intent": intent, "type": intent, "kind": intent,
        "language": "en", "is_question": a.is_question, "question": a.is_question,
    }
    if a.images:
        f = a.images[0]
        sentence = describe(f, a.user)
        names = [c.name for c in f.dominant_colors]
        known.update({
            "width": f.width, "height": f.height, "format": f.format, "mode": f.mode,
            "orientation": f.orientation, "colors": names, "colours": names, "dominant_colors": names,
            "dominant_colours": names, "main_color": names[0] if names else "", "dominant_color": names[0] if names else "",
            "color": names[0] if names else "", "brightness": f.brightness, "brightness_word": f.brightness_word,
            "description": sentence, "caption": sentence, "summary": sentence, "alt_text": sentence,
            "alt": sentence, "reply": sentence, "text": sentence, "answer": sentence,
            "aspect_ratio": round(f.width / f.height, 4) if f.height else 0.0,
            "is_dark": f.brightness < 0.4, "is_bright": f.brightness >= 0.6,
            "product": f"{names[0]} object" if names else "object", "subject": f"{names[0]} object" if names else "object",
        })
    return known


def _first_sentence(text: str) -> str:
    body = text.split(":", 1)[1] if ":" in text[:40] else text
    return re.split(r"(?<=[.!?])\s", body.strip(), maxsplit=1)[0][:200].strip()


def engine_model_name(model: str) -> str:
    """The honest label: ``local:<model>``; ``ft:`` ids are returned unchanged."""
    if model.startswith("ft:") or model.startswith("local:"):
        return model
    return "local:" + model


def _truncate(text: str, max_tokens: int, model: str) -> str:
    words = text.split(" ")
    lo, hi = 0, len(words)
    while lo < hi:  # longest word prefix within the budget
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid]), model) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def complete(messages: list[dict[str, Any]], model: str, *, response_format: dict[str, Any] | None = None,
             temperature: float | None = None, max_tokens: int | None = None) -> EngineReply:
    """Answer a chat request. Raises :class:`ModelNotFound` for an ``ft:`` model that was never trained
    here, :class:`InvalidImage` for an unreadable image, :class:`InvalidRequest` for a malformed request."""
    if not model:
        raise InvalidRequest(f"No model given; name one, e.g. {DEFAULT_MODEL}.", param="model")
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
    analysis = analyse_messages(messages)
    seed = _digest(model, messages)
    reply = None
    if model.startswith("ft:"):
        trained = load_local_model(model)
        if trained is None:
            raise ModelNotFound(f"The model '{model}' does not exist in the local model store; train it first "
                                "(oaipipe train) or pick one from `oaipipe models`.")
        reply = trained.answer(messages)
    if reply is None:
        reply = _text_reply(analysis, model, seed)
    parsed: Any = None
    kind = (response_format or {}).get("type") if isinstance(response_format, dict) else None
    if response_format is not None and kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequest("response_format.type must be one of text, json_object, json_schema.",
                             param="response_format")
    if kind == "json_schema":
        block = response_format.get("json_schema") or {}  # type: ignore[union-attr]
        schema = block.get("schema") if isinstance(block, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema must be a JSON schema object.",
                                 param="response_format")
        parsed = fill_schema(schema, _known_fields(analysis, reply))
        text = json.dumps(parsed, ensure_ascii=False)
    elif kind == "json_object":
        parsed = {"reply": reply, "sentiment": analysis.sentiment_label}
        if analysis.images:
            parsed = {"description": reply, **{k: v for k, v in _known_fields(analysis, reply).items()
                                              if k in ("width", "height", "format", "orientation", "colors",
                                                       "brightness")}}
        text = json.dumps(parsed, ensure_ascii=False)
    else:
        text = reply
    finish = "stop"
    if max_tokens is not None and count_tokens(text, model) > max_tokens:
        text = _truncate(text, max_tokens, model)
        finish = "length"
        parsed = None
    prompt_tokens = count_message_tokens(messages, model, image_model=model)  # images by this model's rule
    completion_tokens = count_tokens(text, model)
    usage = Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
    return EngineReply(text=text, model=engine_model_name(model), usage=usage, parsed=parsed,
                       finish_reason=finish)
