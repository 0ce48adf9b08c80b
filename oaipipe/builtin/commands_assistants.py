"""Built-in plugin commands_assistants (placeholder: filled in by its issue)."""

from __future__ import annotations
