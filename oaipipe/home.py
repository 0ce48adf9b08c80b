"""Where oaipipe keeps state that outlives a run: locally trained models, the job registry, caches.

``OAIPIPE_HOME`` overrides the default ``~/.oaipipe`` (tests point it at a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home_dir"]


def home_dir() -> Path:
    """The state folder (created on first use)."""
    root = Path(os.environ.get("OAIPIPE_HOME") or Path.home() / ".oaipipe").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
