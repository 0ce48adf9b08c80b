"""Built-in plugin step_describe_image (placeholder: filled in by its issue)."""

from __future__ import annotations
