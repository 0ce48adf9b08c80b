"""``oaipipe serve``: the embedded engine behind an OpenAI-compatible HTTP server (standard library only).

See :mod:`oaipipe.testing` for running it inside tests, and ``docs/serve.md`` for the endpoints and switches.
"""

from __future__ import annotations

from .app import OaipipeServer, make_server
from .config import Faults, ServerConfig, parse_error_rate

__all__ = ["Faults", "OaipipeServer", "ServerConfig", "make_server", "parse_error_rate"]
