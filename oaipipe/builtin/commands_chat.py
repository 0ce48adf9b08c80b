"""Built-in plugin commands_chat (placeholder: filled in by its issue)."""

from __future__ import annotations
