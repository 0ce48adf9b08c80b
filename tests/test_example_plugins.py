"""The example third-party plugins in plugins/: the one-file analyzer and the installable package."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from oaipipe import plugins as plugins_module
from oaipipe.base import Analyzer, Context
from oaipipe.errors import ConfigError
from oaipipe.plugins import PluginHost

REPO = Path(__file__).resolve().parent.parent
EMOJI_DIR = REPO / "plugins" / "oaipipe-emoji"


def test_shouty_from_a_pipeline_relative_path() -> None:
    host = PluginHost(["plugins/shouty_sentiment.py"], base_dir=REPO, entry_points=False)
    assert "shouty" in host.names("analyzer")
    assert "analyzer:shouty" in {r for p in host.describe() for r in p["registers"]}
    shouty = host.analyzer("shouty")
    loud = shouty.analyze("WORST DELIVERY EVER!!! The box was SOAKED!!")
    calm = shouty.analyze("The delivery was fine, thank you.")
    assert loud.label == "negative" and -1.0 <= loud.score < 0
    assert calm.label == "neutral" and calm.score == 0.0
    assert loud.analyzer == "shouty"


def test_shouty_threshold_option() -> None:
    host = PluginHost(["plugins/shouty_sentiment.py"], base_dir=REPO, entry_points=False)
    text = "This is NOT what I ordered"  # 1 caps word of 6: level 1/6
    assert host.analyzer("shouty").analyze(text).label == "neutral"
    assert host.analyzer({"type": "shouty", "threshold": 0.1}).analyze(text).label == "negative"
    with pytest.raises(ConfigError):
        host.build("analyzer", {"type": "shouty", "treshold": 0.1}, Context(host=host))


def test_shipped_pipeline_names_shouty() -> None:
    text = (REPO / "pipeline.yaml").read_text(encoding="utf-8")
    assert "plugins/shouty_sentiment.py" in text


@pytest.fixture
def emoji_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(EMOJI_DIR))
    yield
    sys.modules.pop("oaipipe_emoji", None)


def check_emoji(host: PluginHost) -> None:
    emoji = host.analyzer("emoji")
    assert isinstance(emoji, Analyzer)
    assert emoji.analyze("Arrived today 😀👍").label == "positive"
    assert emoji.analyze("Broken again 😡").label == "negative"
    assert emoji.analyze("No emoji here").label == "neutral"
    mixed = emoji.analyze("😀😡😡")
    assert mixed.label == "negative" and mixed.score == pytest.approx(-1 / 3)


def test_emoji_package_as_dotted_module(emoji_on_path: None) -> None:
    host = PluginHost(extra=["oaipipe_emoji"], entry_points=False)
    check_emoji(host)
    strict = host.analyzer({"type": "emoji", "min_count": 2})
    assert strict.analyze("fine 😀").label == "neutral"


def test_emoji_package_through_the_entry_point_group(emoji_on_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = metadata.entry_points

    def entry_points(**kwargs: str) -> object:
        if kwargs.get("group") == plugins_module.ENTRY_POINT_GROUP:
            calls.append(kwargs["group"])
            return [metadata.EntryPoint(name="emoji", value="oaipipe_emoji", group="oaipipe")]
        return real(**kwargs)

    monkeypatch.setattr(plugins_module.metadata, "entry_points", entry_points)
    host = PluginHost()
    assert calls == ["oaipipe"]
    check_emoji(host)
    [info] = [p for p in host.describe() if p["name"] == "emoji"]
    assert info["origin"].startswith("entry point")
    assert info["registers"] == ["analyzer:emoji"]


def test_emoji_package_declares_the_entry_point() -> None:
    import tomllib

    meta = tomllib.loads((EMOJI_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["entry-points"]["oaipipe"] == {"emoji": "oaipipe_emoji"}


@pytest.mark.parametrize("doc", ["docs/plugins.md", "README.md"])
def test_docs_show_the_shipped_shouty_code(doc: str) -> None:
    code = (REPO / "plugins" / "shouty_sentiment.py").read_text(encoding="utf-8")
    body = code.split('"""', 2)[2].lstrip("\n")  # without the module docstring
    assert body in (REPO / doc).read_text(encoding="utf-8")
