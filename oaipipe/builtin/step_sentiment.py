"""Step ``sentiment``: score a text field with a named analyzer.

``{type: sentiment, analyzer: vader, input: "{text}", output: review_sentiment}`` writes the label
(positive/negative/neutral) to ``review_sentiment`` and the score in [-1, 1] to ``review_sentiment_score``.
``analyzer`` is a registered analyzer name, or ``{type: NAME, ...options}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from ..base import Step, StepContext, StepOptions
from ..errors import PluginError
from ..hookspecs import hookimpl
from ..templates import render
from ..types import Sentiment

LABELS = ("positive", "negative", "neutral")


def check_sentiment(sentiment: object, analyzer: object) -> None:
    """Enforce the analyzer contract: a :class:`Sentiment` with a known label and a score in [-1, 1]."""
    name = getattr(analyzer, "name", "") or type(analyzer).__name__
    if not isinstance(sentiment, Sentiment):
        raise PluginError(f"analyzer '{name}' returned {type(sentiment).__name__}, not an oaipipe.Sentiment",
                          hint="return Sentiment(label, score) from analyze()")
    if sentiment.label not in LABELS or not (-1.0 <= float(sentiment.score) <= 1.0):
        raise PluginError(
            f"analyzer '{name}' returned label {sentiment.label!r} with score {sentiment.score!r}",
            hint="labels are positive, negative or neutral; scores lie in [-1, 1]",
        )


class SentimentStep(Step):
    """Score the sentiment of a templated text with an analyzer plugin."""

    class Options(StepOptions):
        analyzer: str | dict[str, Any] = Field("vader", description="Analyzer name, or {type: NAME, ...options}")
        input: str = Field(..., description="Template of the text to score, e.g. '{text}'")
        score: bool = Field(True, description="Also write the score to '<output>_score'")

    templates: ClassVar[tuple[str, ...]] = ("input",)
    writes_sentiment: ClassVar[bool] = True
    cpu_bound: ClassVar[bool] = True

    def process_safe(self) -> bool:
        """Local work with an analyzer that can be rebuilt in a worker and calls no backend."""
        if not hasattr(self, "_analyzer"):
            self.prepare()
        return bool(self._analyzer.process_safe and not self._analyzer.needs_backend)

    def cluster_safe(self) -> bool:
        """On a Ray actor the analyzer's backend calls go through the run's shared limiter and cache: only
        the analyzer's own :attr:`~oaipipe.base.Analyzer.process_safe` matters."""
        if not hasattr(self, "_analyzer"):
            self.prepare()
        return bool(self._analyzer.process_safe)

    def outputs(self) -> list[str]:
        out = [self.options.output]
        if self.options.score:
            out.append(f"{self.options.output}_score")
        return out

    def prepare(self) -> None:
        """Build the analyzer now, so that an unknown analyzer name fails before the run starts."""
        assert self.context.host is not None
        self._analyzer = self.context.host.analyzer(self.options.analyzer, self.context)

    async def run(self, fields: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        if not hasattr(self, "_analyzer"):
            self.prepare()
        text = render(self.options.input, fields, where=ctx.record.where)
        sentiment = await self._analyzer.analyze_with(text, ctx)  # analyze() in a thread, or a backend call
        check_sentiment(sentiment, self._analyzer)
        ctx.sentiments[text] = sentiment
        out: dict[str, Any] = {self.options.output: sentiment.label}
        if self.options.score:
            out[f"{self.options.output}_score"] = round(sentiment.score, 4)
        return out


@hookimpl
def register_steps(register):  # type: ignore[no-untyped-def]
    register("sentiment", SentimentStep)
