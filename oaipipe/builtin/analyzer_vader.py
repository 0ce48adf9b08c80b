"""Built-in analyzer ``vader`` (the default): VADER from ``vaderSentiment``, offline, lexicon included.

The label comes from VADER's compound score: ``>= positive_threshold`` → positive, ``<=
negative_threshold`` → negative, else neutral (0.05 / -0.05 are VADER's own recommendation). The score is
the compound score itself, in [-1, 1].
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ..base import Analyzer, PluginOptions
from ..hookspecs import hookimpl
from ..types import Sentiment


class VaderAnalyzer(Analyzer):
    """VADER (vaderSentiment): rule-based sentiment tuned for short, informal text."""

    class Options(PluginOptions):
        positive_threshold: float = Field(0.05, ge=-1, le=1, description="compound >= this → positive")
        negative_threshold: float = Field(-0.05, ge=-1, le=1, description="compound <= this → negative")

        @model_validator(mode="after")
        def _ordered(self) -> VaderAnalyzer.Options:
            if self.negative_threshold >= self.positive_threshold:
                raise ValueError(
                    f"negative_threshold ({self.negative_threshold}) must be below positive_threshold "
                    f"({self.positive_threshold})"
                )
            return self

    options: Options

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        # loads the lexicon once per analyzer object; polarity_scores only reads it (thread-safe)
        self._vader = SentimentIntensityAnalyzer()

    def analyze(self, text: str) -> Sentiment:
        if not text or not text.strip():
            return Sentiment("neutral", 0.0, analyzer=self.name or "vader")
        compound = float(self._vader.polarity_scores(text)["compound"])
        if compound >= self.options.positive_threshold:
            label = "positive"
        elif compound <= self.options.negative_threshold:
            label = "negative"
        else:
            label = "neutral"
        return Sentiment(label, max(-1.0, min(1.0, compound)), analyzer=self.name or "vader")


@hookimpl
def register_analyzers(register):  # type: ignore[no-untyped-def]
    register("vader", VaderAnalyzer)
