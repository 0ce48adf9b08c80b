"""Built-in analyzers keyword and vader: labels on clear cases, configuration, score range, threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from oaipipe.base import Analyzer, Context
from oaipipe.errors import ConfigError
from oaipipe.plugins import PluginHost

POSITIVE = "I love this mug, it is excellent and the support was great. Thanks!"
NEGATIVE = "Terrible. It arrived broken and I want a refund, very disappointed."
NEUTRAL = "The package was delivered on Tuesday."


def build(host: PluginHost, **block: Any) -> Analyzer:
    obj = host.build("analyzer", block, Context(host=host))
    assert isinstance(obj, Analyzer)
    return obj


@pytest.mark.parametrize("name", ["keyword", "vader"])
def test_clear_cases(host: PluginHost, name: str) -> None:
    analyzer = build(host, type=name)
    pos, neg, neu = analyzer.analyze(POSITIVE), analyzer.analyze(NEGATIVE), analyzer.analyze(NEUTRAL)
    assert (pos.label, neg.label, neu.label) == ("positive", "negative", "neutral")
    assert pos.score > 0 > neg.score
    assert neu.score == pytest.approx(0.0, abs=0.05)
    assert pos.analyzer == name


@pytest.mark.parametrize("name", ["keyword", "vader"])
@pytest.mark.parametrize("text", ["", "   ", "!!!", "good good good good good great love", "bad " * 50, "😀", "a\nb"])
def test_score_range_and_labels(host: PluginHost, name: str, text: str) -> None:
    result = build(host, type=name).analyze(text)
    assert -1.0 <= result.score <= 1.0
    assert result.label in {"positive", "negative", "neutral"}


def test_keyword_rule_and_score(host: PluginHost) -> None:
    kw = build(host, type="keyword")
    result = kw.analyze("good, good and bad")
    assert result.label == "positive"
    assert result.score == pytest.approx((2 - 1) / 3)
    tie = kw.analyze("good but bad")
    assert (tie.label, tie.score) == ("neutral", 0.0)


def test_keyword_whole_words_only_and_case_insensitive(host: PluginHost) -> None:
    kw = build(host, type="keyword")
    assert kw.analyze("Goodbye, see you").label == "neutral"  # 'good' inside 'goodbye' does not count
    assert kw.analyze("GREAT").label == "positive"
    assert kw.analyze("it is not working at all").label == "negative"  # a phrase


def test_keyword_configured_lists_change_the_result(host: PluginHost) -> None:
    text = "The colour is meh and the lid is wobbly"
    assert build(host, type="keyword").analyze(text).label == "neutral"
    extended = build(host, type="keyword", extra_negative=["meh", "wobbly"])
    assert extended.analyze(text).label == "negative"
    assert extended.analyze(text).score == -1.0
    assert extended.analyze("great").label == "positive"  # defaults still there
    replaced = build(host, type="keyword", positive_words=["wobbly"], negative_words=["great"])
    assert replaced.analyze(text).label == "positive"
    assert replaced.analyze("great").label == "negative"
    empty = build(host, type="keyword", positive_words=[], negative_words=[])
    assert empty.analyze(POSITIVE).label == "neutral"


def test_vader_thresholds(host: PluginHost) -> None:
    default = build(host, type="vader").analyze("good")
    assert default.label == "positive" and 0.05 < default.score < 0.6
    strict = build(host, type="vader", positive_threshold=0.6)
    assert strict.analyze("good").label == "neutral"
    assert strict.analyze("good").score == default.score  # the score is VADER's compound either way
    assert strict.analyze(POSITIVE).label == "positive"


def test_vader_bad_thresholds_are_config_errors(host: PluginHost) -> None:
    with pytest.raises(ConfigError):
        build(host, type="vader", positive_threshold=-0.5, negative_threshold=0.5)
    with pytest.raises(ConfigError):
        build(host, type="vader", positive_threshold=2)


def test_unknown_option_is_rejected(host: PluginHost) -> None:
    with pytest.raises(ConfigError):
        build(host, type="keyword", extra_positives=["x"])


@pytest.mark.parametrize("name", ["keyword", "vader"])
def test_thread_safe(host: PluginHost, name: str) -> None:
    analyzer = build(host, type=name)
    texts = [POSITIVE, NEGATIVE, NEUTRAL] * 100
    expected = [analyzer.analyze(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(analyzer.analyze, texts))
    assert got == expected


def test_host_shares_analyzer_instances(host: PluginHost) -> None:
    assert host.analyzer("vader") is host.analyzer("vader")
    assert host.analyzer("keyword") is not host.analyzer({"type": "keyword", "extra_positive": ["x"]})
