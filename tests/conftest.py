"""Shared fixtures. Every test gets its own OAIPIPE_HOME and no OpenAI key from the environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from oaipipe.plugins import PluginHost

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("oaipipe-home")
    monkeypatch.setenv("OAIPIPE_HOME", str(home))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return home


@pytest.fixture
def server() -> Iterator:
    """The embedded OpenAI-compatible server on a free loopback port (no injected faults)."""
    from oaipipe.testing import running_server

    with running_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def host() -> PluginHost:
    """The built-in plugins only (no entry points), one host per test module."""
    from oaipipe.plugins import PluginHost

    return PluginHost(entry_points=False)
