"""Built-in plugin commands_core (placeholder: filled in by its issue)."""

from __future__ import annotations
