"""Built-in plugin commands_serve (placeholder: filled in by its issue)."""

from __future__ import annotations
