"""``oaipipe serve``: the embedded engine behind an OpenAI-compatible HTTP server (standard library only).

See :mod:`oaipipe.testing` for running it inside tests, and ``docs/serve.md`` for the endpoints and switches.
"""

from __future__ import annotations

from . import batches as _batches  # noqa: F401  (registers /v1/batches; order: files first)
from . import files as _files  # noqa: F401  (registers /v1/files)
from . import finetune as _finetune  # noqa: F401  (registers /v1/fine_tuning/jobs)
from .app import OaipipeServer, make_server
from .config import Faults, ServerConfig, parse_error_rate

__all__ = ["Faults", "OaipipeServer", "ServerConfig", "make_server", "parse_error_rate"]
