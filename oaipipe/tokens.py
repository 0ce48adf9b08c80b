"""Token counting that works offline.

``bpe-openai`` ships the ``o200k_base`` and ``cl100k_base`` vocabularies inside the wheel, so counts are
exact without a network. ``tiktoken`` is used only when bpe-openai is unavailable and tiktoken can load
its vocabulary from a local cache (it downloads on first use, which is impossible here). If neither
works, a labelled heuristic (about 4 characters per token) keeps budgets and cost estimates usable;
:func:`tokenizer_name` says which one is in use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

__all__ = [
    "count_message_tokens",
    "count_tokens",
    "encoding_name_for_model",
    "image_tokens",
    "tokenizer_name",
]

_CL100K_PREFIXES = ("gpt-3.5", "gpt-35", "text-embedding-ada", "text-embedding-3")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")


def _base_model(model: str) -> str:
    name = (model or "").strip().lower()
    name = name.removeprefix("local:")
    if name.startswith("ft:"):
        parts = name.split(":")
        name = parts[1] if len(parts) > 1 else ""
    return name


def encoding_name_for_model(model: str) -> str:
    """``o200k_base`` for gpt-4o/4.1/5 and o-series (and their ``ft:`` models), ``cl100k_base`` for
    gpt-3.5/gpt-4; unknown models get ``o200k_base``."""
    name = _base_model(model)
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES) or name == "gpt-4" or name.startswith(("gpt-4-", "gpt-4:")):
        return "cl100k_base"
    return "o200k_base"


@lru_cache(maxsize=8)
def _encoder(encoding: str) -> tuple[str, Callable[[str], int]]:
    """(tokenizer label, function counting the tokens of a text) for ``encoding``."""
    try:
        import bpe_openai

        enc = bpe_openai.get_encoding(encoding)
        enc.encode("warm up")
        return "bpe-openai", lambda text: len(enc.encode(text))
    except Exception:  # noqa: BLE001 - any failure means: try the next tokenizer
        pass
    try:
        import tiktoken

        tenc = tiktoken.get_encoding(encoding)
        tenc.encode("warm up")
        return "tiktoken", lambda text: len(tenc.encode(text, disallowed_special=()))
    except Exception:  # noqa: BLE001 - tiktoken without a cached vocabulary tries the network
        pass
    return "heuristic (~4 characters per token)", lambda text: math.ceil(len(text) / 4) if text else 0


def tokenizer_name(model: str = "gpt-4o-mini") -> str:
    """Which tokenizer counts tokens: ``bpe-openai``, ``tiktoken`` or the labelled heuristic."""
    return _encoder(encoding_name_for_model(model))[0]


def count_tokens(text: str, model: str = "gpt-4o-mini") -> int:
    """Number of tokens of ``text`` for ``model``."""
    if not text:
        return 0
    return _encoder(encoding_name_for_model(model))[1](text)


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """Input tokens of one image for gpt-4o-class models (OpenAI's tile rule).

    ``low`` costs 85. ``high`` (and ``auto``) scales the image to fit 2048×2048, then its shortest side to
    768, and charges 170 per 512-px tile plus 85.
    """
    if detail == "low":
        return 85
    w, h = float(max(width, 1)), float(max(height, 1))
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 170 * tiles + 85


def _image_size(part: dict[str, Any]) -> tuple[int, int] | None:
    """Width/height of an ``image_url``/``input_image`` data URL part, if it can be decoded."""
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    try:
        import base64
        import io

        from PIL import Image

        data = base64.b64decode(url.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - an unreadable image is counted as one tile
        return None


def _content_tokens(content: Any, model: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content, model)
    total = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                total += count_tokens(str(part), model)
                continue
            kind = part.get("type")
            if kind in ("text", "input_text", "output_text"):
                total += count_tokens(str(part.get("text", "")), model)
            elif kind in ("image_url", "input_image"):
                inner = part.get("image_url")
                detail = part.get("detail") or (inner.get("detail") if isinstance(inner, dict) else None)
                size = _image_size(part)
                total += image_tokens(*(size or (512, 512)), detail=detail or "auto")
        return total
    return count_tokens(str(content), model)


def count_message_tokens(messages: list[dict[str, Any]], model: str = "gpt-4o-mini") -> int:
    """Prompt tokens of a chat request (OpenAI cookbook rule): 3 per message, the content, 1 per
    ``name``, and 3 for the reply priming. Image parts are counted with :func:`image_tokens`."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value, model)
            elif key == "name":
                total += 1 + count_tokens(str(value), model)
            elif isinstance(value, str):
                total += count_tokens(value, model)
    return total
