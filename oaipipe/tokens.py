"""Token counting that works offline.

``bpe-openai`` ships the ``o200k_base`` and ``cl100k_base`` vocabularies inside the wheel, so counts are
exact without a network. ``tiktoken`` is used only when bpe-openai is unavailable and tiktoken can load
its vocabulary from a local cache (it downloads on first use, which is impossible here). If neither
works, a labelled heuristic (about 4 characters per token) keeps budgets and cost estimates usable;
:func:`tokenizer_name` says which one is in use.

Any text can be counted: a user's text that spells a special token (``<|endoftext|>``, ``<|endofprompt|>``,
``<|fim_prefix|>``...) is counted as the plain text it is, as OpenAI's API tokenizes it (the tokenizers
refuse such text by default); a text past the tokenizer's own limits (1M characters or 200k tokens at
once for bpe-openai) is counted in pieces cut at word boundaries.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .models_table import DEFAULT_MODEL

__all__ = [
    "count_message_tokens",
    "count_tokens",
    "encoding_name_for_model",
    "image_patches",
    "image_rule",
    "image_tokens",
    "SPECIAL_TOKENS",
    "bpe_openai_bindings",
    "special_tokens",
    "tokenizer_name",
]

_log = logging.getLogger("oaipipe")

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


#: a longer text is counted in pieces of at most this many characters (bpe-openai refuses 1M characters or
#: 200k tokens at once; a character is at most 4 byte-level tokens, so 40k characters stay under both)
PIECE_CHARS = 40_000


#: the special-token strings of each encoding (bpe-openai's and tiktoken's tables; a test compares them)
SPECIAL_TOKENS: dict[str, frozenset[str]] = {
    "o200k_base": frozenset({"<|endoftext|>", "<|endofprompt|>"}),
    "cl100k_base": frozenset({"<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                              "<|endofprompt|>"}),
}

_BINDINGS = "bpe_openai._bindings"


def bpe_openai_bindings() -> Any:
    """bpe-openai's native module (``bpe_openai._bindings``), loaded WITHOUT the package's ``__init__``.

    Importing ``bpe_openai`` decodes the three vocabularies it ships (o200k, cl100k, voyage3: base64 lines
    into Python dicts) for its tiktoken-compatible wrapper: ~0.5 s of CPU, paid by every process that counts a
    token. Counting needs only the native tokenizer, which carries its own vocabularies and builds one
    encoding in ~50 ms. The module is registered in ``sys.modules`` under its own name, so a later
    ``import bpe_openai`` in the same process uses this one (a native module is initialised once). Falls
    back to the ordinary import if the wheel's layout differs."""
    module = sys.modules.get(_BINDINGS)
    if module is not None:
        return module
    spec = importlib.util.find_spec("bpe_openai")  # the top-level package is found, not imported
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_bindings" + suffix)
            if not os.path.isfile(path):
                continue
            loader = importlib.machinery.ExtensionFileLoader(_BINDINGS, path)
            native = importlib.util.spec_from_file_location(_BINDINGS, path, loader=loader)
            if native is None:
                continue
            module = importlib.util.module_from_spec(native)
            sys.modules[_BINDINGS] = module
            try:
                loader.exec_module(module)
            except BaseException:
                sys.modules.pop(_BINDINGS, None)
                raise
            return module
    return importlib.import_module(_BINDINGS)


def _utf8_safe(text: str) -> str:
    """``text`` with lone surrogates replaced (as bpe-openai's wrapper does before encoding)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


_Encoder = tuple[str, Callable[[str], int], frozenset[str]]
_ENCODERS: dict[str, _Encoder] = {}
_BUILDING = threading.Lock()


def _encoder(encoding: str) -> _Encoder:
    """(tokenizer label, function counting the tokens of a text, special-token strings) for ``encoding``,
    built once per process (threads that count at the same time wait for the one build)."""
    found = _ENCODERS.get(encoding)
    if found is None:
        with _BUILDING:
            found = _ENCODERS.get(encoding)
            if found is None:
                found = _ENCODERS[encoding] = _build_encoder(encoding)
    return found


def _build_encoder(encoding: str) -> _Encoder:
    """The counter of ``encoding``: bpe-openai, else tiktoken (only from its local cache), else the heuristic.

    Built on the first count of that encoding, and only for that encoding. Counting is ``encode_ordinary``'s:
    special-token strings in the text are ordinary text (bpe-openai's native ``count`` is exactly
    ``len(encode_ordinary(text))``; a test compares them)."""
    specials = SPECIAL_TOKENS.get(encoding)
    try:
        if specials is None:
            raise LookupError(encoding)
        native = bpe_openai_bindings().tokenizer_for_encoding(encoding)

        def count(text: str) -> int:
            try:
                return int(native.count(text))
            except UnicodeEncodeError:
                return int(native.count(_utf8_safe(text)))

        count("warm up <|endoftext|>")
        return "bpe-openai", count, specials
    except Exception:  # noqa: BLE001 - any failure means: try the next tokenizer
        pass
    try:
        import tiktoken

        tenc = tiktoken.get_encoding(encoding)
        tenc.encode_ordinary("warm up <|endoftext|>")
        return "tiktoken", lambda text: len(tenc.encode_ordinary(text)), frozenset(tenc.special_tokens_set)
    except Exception:  # noqa: BLE001 - tiktoken without a cached vocabulary tries the network
        pass
    return "heuristic (~4 characters per token)", _heuristic, frozenset()


def _heuristic(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


def _pieces(text: str) -> Iterator[str]:
    """``text`` in pieces of at most :data:`PIECE_CHARS` characters, cut before a space that follows a
    non-space (where the tokenizers' pre-tokenizer cuts anyway, so the sum is the whole text's count)."""
    start, n = 0, len(text)
    while n - start > PIECE_CHARS:
        end = start + PIECE_CHARS
        cut = end
        probe = text.rfind(" ", start + PIECE_CHARS // 2, end)
        while probe > start and text[probe - 1].isspace():
            probe = text.rfind(" ", start + PIECE_CHARS // 2, probe)
        if probe > start:
            cut = probe
        yield text[start:cut]
        start = cut
    yield text[start:]


def special_tokens(encoding: str = "o200k_base") -> frozenset[str]:
    """The special-token strings of ``encoding`` (counted as plain text by :func:`count_tokens`)."""
    return _encoder(encoding)[2]


def tokenizer_name(model: str = DEFAULT_MODEL) -> str:
    """Which tokenizer counts tokens: ``bpe-openai``, ``tiktoken`` or the labelled heuristic."""
    return _encoder(encoding_name_for_model(model))[0]


def count_tokens(text: str, model: str = DEFAULT_MODEL) -> int:
    """Number of tokens of ``text`` for ``model``, for any text: special-token strings count as the plain
    text they are, and a text of any length is counted (in pieces past :data:`PIECE_CHARS`). Counting
    never fails a record: should the tokenizer still refuse a piece, that piece is estimated (~4
    characters per token) and a warning is logged."""
    if not text:
        return 0
    label, count, _ = _encoder(encoding_name_for_model(model))
    total = 0
    for piece in _pieces(text):
        try:
            total += count(piece)
        except Exception as exc:  # noqa: BLE001 - a count is an estimate; it must not fail the record
            _log.warning("%s could not count %d characters (%s: %s); estimated at ~4 characters per token",
                         label, len(piece), type(exc).__name__, exc)
            total += _heuristic(piece)
    return total


#: tile-rule models: (base tokens, tokens per 512-px tile); ``low`` detail costs the base alone.
#: gpt-4o-mini bills images at 2833 + 5667 per tile so that an image costs the same dollars as on gpt-4o.
_TILE_RULES: dict[str, tuple[int, int]] = {
    "gpt-4o-mini": (2833, 5667),
}
_DEFAULT_TILE_RULE = (85, 170)

#: patch-rule models: 32-px patches, capped at 1536, times this multiplier (longest prefix wins)
_PATCH_MULTIPLIERS: dict[str, float] = {
    "gpt-4.1-mini": 1.62,
    "gpt-4.1-nano": 2.46,
    "gpt-5-mini": 1.62,
    "gpt-5-nano": 2.46,
    "o4-mini": 1.72,
}
PATCH_SIZE = 32
PATCH_BUDGET = 1536


def image_rule(model: str | None) -> tuple[str, tuple[float, ...]]:
    """Which image rule prices ``model``: ``("tile", (base, per_tile))`` or ``("patch", (multiplier,))``.

    ``None`` (and any model not listed, e.g. gpt-4o, gpt-4.1, gpt-5, o1/o3) gets gpt-4o's 85/170 tile rule.
    """
    if model is None:
        return "tile", _DEFAULT_TILE_RULE
    name = _base_model(model)
    patch = [k for k in _PATCH_MULTIPLIERS if name.startswith(k)]
    tile = [k for k in _TILE_RULES if name.startswith(k)]
    best_patch = max(patch, key=len) if patch else ""
    best_tile = max(tile, key=len) if tile else ""
    if best_patch and len(best_patch) >= len(best_tile):
        return "patch", (_PATCH_MULTIPLIERS[best_patch],)
    if best_tile:
        return "tile", _TILE_RULES[best_tile]
    return "tile", _DEFAULT_TILE_RULE


def image_patches(width: int, height: int) -> int:
    """32-px patches of an image, after scaling it down to fit :data:`PATCH_BUDGET` patches (OpenAI's rule)."""
    w, h = max(width, 1), max(height, 1)
    patches = math.ceil(w / PATCH_SIZE) * math.ceil(h / PATCH_SIZE)
    if patches <= PATCH_BUDGET:
        return patches
    shrink = math.sqrt(PATCH_SIZE ** 2 * PATCH_BUDGET / (w * h))
    shrink *= min(max(math.floor(w * shrink / PATCH_SIZE), 1) / (w * shrink / PATCH_SIZE),
                  max(math.floor(h * shrink / PATCH_SIZE), 1) / (h * shrink / PATCH_SIZE))
    rw, rh = max(int(w * shrink), 1), max(int(h * shrink), 1)
    return min(PATCH_BUDGET, math.ceil(rw / PATCH_SIZE) * math.ceil(rh / PATCH_SIZE))


def _tiles(width: int, height: int) -> int:
    w, h = float(max(width, 1)), float(max(height, 1))
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / 512) * math.ceil(h / 512)


def image_tokens(width: int, height: int, detail: str = "auto", model: str | None = None) -> int:
    """Input tokens of one image for ``model`` (``None``: gpt-4o's rule, as before).

    Tile rule (gpt-4o, gpt-4.1, gpt-5, o1/o3, unknown models: 85/170; gpt-4o-mini: 2833/5667): ``low``
    costs the base; ``high``/``auto`` fit the image into 2048×2048, scale its shortest side down to 768,
    and charge the base plus one tile price per 512-px tile.
    Patch rule (gpt-4.1-mini/nano, gpt-5-mini/nano, o4-mini): 32-px patches, scaled down to at most 1536,
    times the model's multiplier (rounded); ``detail`` does not change it.
    """
    kind, params = image_rule(model)
    if kind == "patch":
        return round(image_patches(width, height) * params[0])
    base, per_tile = int(params[0]), int(params[1])
    if detail == "low":
        return base
    return per_tile * _tiles(width, height) + base


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


def _content_tokens(content: Any, model: str, image_model: str | None = None) -> int:
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
                total += image_tokens(*(size or (512, 512)), detail=detail or "auto", model=image_model)
        return total
    return count_tokens(str(content), model)


def count_message_tokens(messages: list[dict[str, Any]], model: str = DEFAULT_MODEL, *,
                         image_model: str | None = None) -> int:
    """Prompt tokens of a chat request (OpenAI cookbook rule): 3 per message, the content, 1 per
    ``name``, and 3 for the reply priming. Image parts are counted with :func:`image_tokens` for
    ``image_model`` (``None``: gpt-4o's tile rule, the default for compatibility; pass the request's
    model to get what OpenAI bills for that model)."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value, model, image_model)
            elif key == "name":
                total += 1 + count_tokens(str(value), model)
            elif isinstance(value, str):
                total += count_tokens(value, model)
    return total
