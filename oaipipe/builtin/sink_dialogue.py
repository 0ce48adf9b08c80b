"""Built-in plugin sink_dialogue (placeholder: filled in by its issue)."""

from __future__ import annotations
