"""Built-in plugin commands_training (placeholder: filled in by its issue)."""

from __future__ import annotations
