"""Built-in plugin step_ask (placeholder: filled in by its issue)."""

from __future__ import annotations
