"""Built-in plugin trainer_openai (placeholder: filled in by its issue)."""

from __future__ import annotations
