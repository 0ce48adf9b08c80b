"""Built-in analyzer ``keyword``: the original module's rule, with word lists you can configure.

Count the words of a positive list and of a negative list in the lower-cased text (whole words only:
``good`` does not match ``goodbye``; phrases such as ``not working`` work too). More positive words →
positive, more negative → negative, else neutral. Score = (pos - neg) / max(1, pos + neg).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from ..base import Analyzer, PluginOptions
from ..hookspecs import hookimpl
from ..types import Sentiment

POSITIVE_WORDS: list[str] = [
    "good", "great", "excellent", "love", "loved", "happy", "amazing", "awesome", "fantastic", "wonderful",
    "perfect", "best", "thanks", "thank you", "nice", "helpful", "recommend", "pleased", "satisfied",
    "beautiful", "brilliant", "delighted", "enjoy", "enjoyed", "fast", "glad", "impressed",
    "outstanding", "superb", "works great", "gorgeous", "comfortable", "appreciate", "appreciated",
]

NEGATIVE_WORDS: list[str] = [
    "bad", "terrible", "awful", "hate", "hated", "broken", "refund", "disappointed", "disappointing",
    "poor", "worst", "horrible", "useless", "angry", "annoyed", "annoying", "cheap", "complaint", "defective",
    "damaged", "faulty", "late", "problem", "return", "slow", "unhappy", "waste", "wrong", "crap",
    "not working", "never again", "scam", "sorry", "apologise", "apologize",
]


def _pattern(words: list[str]) -> re.Pattern[str] | None:
    cleaned = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not cleaned:
        return None
    body = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in cleaned)
    return re.compile(rf"\b(?:{body})\b")


class KeywordAnalyzer(Analyzer):
    """Counts positive and negative words (the classic rule); word lists configurable."""

    class Options(PluginOptions):
        positive_words: list[str] = Field(default_factory=lambda: list(POSITIVE_WORDS),
                                          description="Replaces the default positive word list")
        negative_words: list[str] = Field(default_factory=lambda: list(NEGATIVE_WORDS),
                                          description="Replaces the default negative word list")
        extra_positive: list[str] = Field(default_factory=list, description="Added to positive_words")
        extra_negative: list[str] = Field(default_factory=list, description="Added to negative_words")

    options: Options

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        opts = self.options
        # compiled once; re.Pattern is safe to use from several threads
        self._pos = _pattern(opts.positive_words + opts.extra_positive)
        self._neg = _pattern(opts.negative_words + opts.extra_negative)

    def counts(self, text: str) -> tuple[int, int]:
        """(positive, negative) word counts in ``text``."""
        lowered = (text or "").lower()
        pos = len(self._pos.findall(lowered)) if self._pos else 0
        neg = len(self._neg.findall(lowered)) if self._neg else 0
        return pos, neg

    def analyze(self, text: str) -> Sentiment:
        pos, neg = self.counts(text)
        label = "positive" if pos > neg else "negative" if neg > pos else "neutral"
        score = (pos - neg) / max(1, pos + neg)
        return Sentiment(label, float(score), analyzer=self.name or "keyword")


@hookimpl
def register_analyzers(register):  # type: ignore[no-untyped-def]
    register("keyword", KeywordAnalyzer)
