"""Built-in plugin backend_requests (placeholder: filled in by its issue)."""

from __future__ import annotations
