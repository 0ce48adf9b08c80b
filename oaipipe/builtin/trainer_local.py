"""Built-in plugin trainer_local (placeholder: filled in by its issue)."""

from __future__ import annotations
