"""Which API key a backend sends, decided in one place.

* The backend block's ``api_key`` (usually ``${env:SOME_VAR}``) always wins.
* Otherwise ``OPENAI_API_KEY`` — but only for OpenAI itself (``base_url`` unset). A custom ``base_url``
  (vLLM, Ollama, a proxy, ``oaipipe serve``) never receives the OpenAI key by accident: give it one
  explicitly if it needs one.

Every key resolved here is registered with :func:`oaipipe.errors.register_secret`, so it is masked in
every message, log and file oaipipe writes.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import register_secret

__all__ = ["NO_KEY_PLACEHOLDER", "is_openai_host", "resolve_api_key"]

#: sent where the SDK insists on a key but the server needs none (a custom base_url without api_key)
NO_KEY_PLACEHOLDER = "sk-no-key"


def is_openai_host(base_url: str | None) -> bool:
    """True when calls go to api.openai.com (no ``base_url``, or one pointing there)."""
    return not base_url or "api.openai.com" in base_url


def resolve_api_key(options: Any) -> str | None:
    """The key for a backend's options (``api_key``, ``base_url``), or ``None`` when there is none."""
    secret = getattr(options, "api_key", None)
    if secret is not None:
        value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
        value = value.strip()
        if value:
            register_secret(value)
            return value
    if is_openai_host(getattr(options, "base_url", None)):
        env = os.environ.get("OPENAI_API_KEY", "").strip()
        if env:
            register_secret(env)
            return env
    return None
