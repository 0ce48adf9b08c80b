"""Built-in plugin step_sentiment (placeholder: filled in by its issue)."""

from __future__ import annotations
