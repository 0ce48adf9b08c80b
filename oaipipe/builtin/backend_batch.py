"""Built-in plugin backend_batch (placeholder: filled in by its issue)."""

from __future__ import annotations
