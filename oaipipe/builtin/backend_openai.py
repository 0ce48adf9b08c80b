"""Built-in plugin backend_openai (placeholder: filled in by its issue)."""

from __future__ import annotations
