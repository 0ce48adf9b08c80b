"""A one-file oaipipe plugin: the ``shouty`` sentiment analyzer.

Shouting (exclamation marks, WORDS IN CAPITALS) usually means an upset customer. This analyzer measures
how much a text shouts and calls it negative above a threshold. Use it from pipeline.yaml:

    plugins: [plugins/shouty_sentiment.py]
    steps:
      - {type: sentiment, analyzer: shouty, input: "{text}", output: shouting}
      - {type: sentiment, analyzer: {type: shouty, threshold: 0.5}, input: "{text}", output: loud}
"""

from __future__ import annotations

import re

from pydantic import Field

from oaipipe import Analyzer, PluginOptions, Sentiment, hookimpl

WORD = re.compile(r"[^\W\d_]+")


class ShoutyAnalyzer(Analyzer):
    """Negative when a text shouts: many '!' and ALL-CAPS words."""

    class Options(PluginOptions):
        threshold: float = Field(0.3, gt=0, description="Shouting level (0..1) from which a text is negative")
        min_caps_length: int = Field(2, ge=1, description="Shortest word that counts as ALL-CAPS")

    def analyze(self, text: str) -> Sentiment:
        words = WORD.findall(text)
        caps = sum(1 for w in words if len(w) >= self.options.min_caps_length and w.isupper())
        level = min(1.0, (caps + text.count("!")) / max(1, len(words)))
        label = "negative" if level >= self.options.threshold else "neutral"
        return Sentiment(label, -level, analyzer=self.name)


@hookimpl
def register_analyzers(register):
    register("shouty", ShoutyAnalyzer)
