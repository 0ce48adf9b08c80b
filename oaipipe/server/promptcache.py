"""Prompt caching as OpenAI documents it, made deterministic: ``cached_tokens`` in the usage.

OpenAI caches prompt prefixes of 1024 tokens or more and reports cache hits in increments of 128 tokens
(``usage.prompt_tokens_details.cached_tokens`` on chat, ``usage.input_tokens_details.cached_tokens`` on
Responses); ``prompt_cache_key`` is combined with the prefix to route requests (sources in docs/serve.md).

This server remembers, in memory, the prefixes it has seen: the prompt is rendered into the same token
sequence that its ``prompt_tokens`` counts (3 per message, the role, the content, images as their
token count of one marker, 3 for the reply priming), cut into 128-token blocks, and each boundary from
1024 tokens on is remembered as a chained SHA-256 of everything before it. A prompt reports, as cached,
the longest remembered boundary of its own prefix. The memory is per namespace (the caller's key, the
model and the ``prompt_cache_key``) and bounded (least recently used blocks are forgotten first); it
never expires by time, so the same sequence of requests always gives the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from ..tokens import _content_tokens, encoding_name_for_model

__all__ = ["BLOCK", "MINIMUM", "PromptCache", "prompt_token_sequence"]

#: the smallest prompt that is cached, and the size of a cache hit's increments (OpenAI's figures)
MINIMUM = 1024
BLOCK = 128


@lru_cache(maxsize=4)
def _encode(encoding: str) -> Callable[[str], list[int]]:
    """Token ids of a text, with the tokenizer that counts ``prompt_tokens`` (a 4-character fallback)."""
    try:
        import bpe_openai

        enc = bpe_openai.get_encoding(encoding)
        return lambda text: list(enc.encode(text, disallowed_special=()))
    except Exception:  # noqa: BLE001 - any failure: the same fallback as oaipipe.tokens
        return lambda text: [zlib.crc32(text[i:i + 4].encode("utf-8")) for i in range(0, len(text), 4)]


def _marker(*parts: Any) -> int:
    """A negative pseudo-token (never a real token id) standing for a structural element or an image."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return -1 - int.from_bytes(hashlib.sha256(blob).digest()[:4], "big")


def prompt_token_sequence(messages: list[dict[str, Any]], model: str) -> list[int]:
    """The prompt as a token sequence of the length that :func:`oaipipe.tokens.count_message_tokens`
    counts for ``model`` (same rule, same tokenizer), so that a prefix of it is a prefix of the prompt."""
    encode = _encode(encoding_name_for_model(model))
    seq: list[int] = []
    for message in messages:
        seq += [_marker("message")] * 3
        for key, value in message.items():
            if key == "content":
                seq += _content_sequence(value, model, encode)
            elif key == "name":
                seq += [_marker("name")] + encode(str(value))
            elif isinstance(value, str):
                seq += encode(value)
    return seq + [_marker("reply")] * 3


def _content_sequence(content: Any, model: str, encode: Callable[[str], list[int]]) -> list[int]:
    if content is None:
        return []
    if isinstance(content, str):
        return encode(content)
    if not isinstance(content, list):
        return encode(str(content))
    seq: list[int] = []
    for part in content:
        if not isinstance(part, dict):
            seq += encode(str(part))
        elif part.get("type") in ("text", "input_text", "output_text"):
            seq += encode(str(part.get("text", "")))
        elif part.get("type") in ("image_url", "input_image"):
            # an image is part of the prefix by identity, and as long as the tokens it is billed for
            seq += [_marker("image", part.get("image_url"), part.get("detail"))] * _content_tokens([part], model,
                                                                                                   model)
    return seq


class PromptCache:
    """Remembered prompt prefixes, per namespace, at most ``max_blocks`` of them (LRU)."""

    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._blocks)

    def use(self, namespace: tuple[str, ...], sequence: list[int], prompt_tokens: int) -> int:
        """The cached tokens of a prompt (0, or a multiple of 128 from 1024 up to ``prompt_tokens``), and
        remember every 128-token boundary of it from 1024 on for the next prompts."""
        if self.max_blocks <= 0 or prompt_tokens < MINIMUM or len(sequence) < MINIMUM:
            return 0
        digest = hashlib.sha256(json.dumps(list(namespace)).encode("utf-8")).digest()
        boundaries: list[tuple[int, bytes]] = []
        for start in range(0, len(sequence) - BLOCK + 1, BLOCK):
            block = sequence[start:start + BLOCK]
            digest = hashlib.sha256(digest + b"".join(t.to_bytes(5, "big", signed=True) for t in block)).digest()
            if start + BLOCK >= MINIMUM:
                boundaries.append((start + BLOCK, digest))
        cached = 0
        with self._lock:
            for length, key in boundaries:
                if key in self._blocks:
                    cached = length
                    self._blocks.move_to_end(key)
                else:
                    self._blocks[key] = None
            while len(self._blocks) > self.max_blocks:
                self._blocks.popitem(last=False)
        return min(cached, math.floor(prompt_tokens / BLOCK) * BLOCK)
