"""Step ``sentiment``: score a text field with a named analyzer.

``{type: sentiment, analyzer: vader, input: "{text}", output: review_sentiment}`` writes the label
(positive/negative/neutral) to ``review_sentiment`` and the score in [-1, 1] to ``review_sentiment_score``.
``analyzer`` is a registered analyzer name, or ``{type: NAME, ...options}``.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from pydantic import Field

from ..base import Step, StepContext, StepOptions
from ..hookspecs import hookimpl
from ..templates import render


class SentimentStep(Step):
    """Score the sentiment of a templated text with an analyzer plugin."""

    class Options(StepOptions):
        analyzer: str | dict[str, Any] = Field("vader", description="Analyzer name, or {type: NAME, ...options}")
        input: str = Field(..., description="Template of the text to score, e.g. '{text}'")
        score: bool = Field(True, description="Also write the score to '<output>_score'")

    templates: ClassVar[tuple[str, ...]] = ("input",)

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
        sentiment = await asyncio.to_thread(self._analyzer.analyze, text)
        ctx.sentiments[text] = sentiment
        out: dict[str, Any] = {self.options.output: sentiment.label}
        if self.options.score:
            out[f"{self.options.output}_score"] = round(sentiment.score, 4)
        return out


@hookimpl
def register_steps(register):  # type: ignore[no-untyped-def]
    register("sentiment", SentimentStep)
