"""Built-in plugin source_csv (placeholder: filled in by its issue)."""

from __future__ import annotations
