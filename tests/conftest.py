"""Shared fixtures. Every test gets its own OAIPIPE_HOME and no OpenAI key from the environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from oaipipe.plugins import PluginHost

REPO = Path(__file__).resolve().parent.parent

# the oaipipe_project / oaipipe_server fixtures; installed packages get them from the pytest11 entry point,
# and this line also serves a virtualenv installed before the entry point existed
pytest_plugins = ["oaipipe.testing"]


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


@pytest.fixture
def html_site() -> Any:
    """A web server answering every request with an HTML page (a base_url missing its /v1 API)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: list[str] = []

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_GET(self) -> None:  # noqa: N802
            self.do_POST()

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hits.append(self.path)
            body = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    site = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=site.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{site.server_address[1]}", hits
    site.shutdown()
    site.server_close()
