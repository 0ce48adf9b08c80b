"""OpenAI wire shapes shared by the ``openai`` and ``requests`` backends (and the steps).

Plain functions over dicts: build a Chat Completions or Responses request body from a
:class:`~oaipipe.types.ChatRequest`, and turn either reply into a :class:`~oaipipe.types.ChatResponse`.
Keeping this in one place is what makes the two transports answer identically.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import BadRequestError

__all__ = ["parse_json_reply"]


def parse_json_reply(text: str, *, model: str = "", request_id: str | None = None) -> Any:
    """Decode a reply that was asked to follow a JSON schema; invalid JSON is a :class:`BadRequestError`."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        preview = (text or "")[:120].replace("\n", " ")
        raise BadRequestError(
            f"model {model or '?'} was asked for JSON following a schema but replied with text that is not "
            f"valid JSON ({exc}): {preview!r}",
            request_id=request_id,
            hint="use a model/server that supports response_format json_schema, or drop json_schema from the step",
        ) from None
