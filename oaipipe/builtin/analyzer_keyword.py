"""Built-in plugin analyzer_keyword (placeholder: filled in by its issue)."""

from __future__ import annotations
