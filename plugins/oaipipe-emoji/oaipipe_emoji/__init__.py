"""oaipipe-emoji: an installable oaipipe plugin registering the ``emoji`` sentiment analyzer.

Found through the ``oaipipe`` entry-point group (see pyproject.toml); no ``plugins:`` entry needed.
"""

from __future__ import annotations

from pydantic import Field

from oaipipe import Analyzer, PluginOptions, Sentiment, hookimpl

POSITIVE = set("😀😃😄😁😊🙂😍🥰😎👍👏🎉❤💖💯✨🙏🤩😻🌟")
NEGATIVE = set("😡😠🤬😞😢😭😩😒🙁☹👎💩🤮😤💔😱😖😣🙄")


class EmojiAnalyzer(Analyzer):
    """Scores a text by its emoji: 😀 👍 ❤️ against 😡 👎 💩."""

    class Options(PluginOptions):
        positive: str = Field("", description="Extra emoji that count as positive")
        negative: str = Field("", description="Extra emoji that count as negative")
        min_count: int = Field(1, ge=1, description="Emoji needed before a text is called positive or negative")

    def analyze(self, text: str) -> Sentiment:
        positive = POSITIVE | set(self.options.positive)
        negative = NEGATIVE | set(self.options.negative)
        pos = sum(1 for ch in text if ch in positive)
        neg = sum(1 for ch in text if ch in negative)
        score = (pos - neg) / max(1, pos + neg)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        if pos + neg < self.options.min_count:
            label = "neutral"
        return Sentiment(label, score, analyzer=self.name)


@hookimpl
def register_analyzers(register):  # type: ignore[no-untyped-def]
    register("emoji", EmojiAnalyzer)
