"""Build a JSON value that validates against a JSON schema, filling properties by name from known facts.

Supports what OpenAI's structured outputs accept: objects (properties/required), strings (enum, const,
minLength/maxLength), numbers and integers (minimum/maximum), booleans, arrays (items, minItems/maxItems),
``anyOf``, nullable types (``["string", "null"]``), and ``$ref`` into ``$defs``/``definitions``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["fill_schema"]

_MAX_DEPTH = 12


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 20:
        ref = schema["$ref"]
        node: Any = root
        if isinstance(ref, str) and ref.startswith("#"):
            for part in ref.lstrip("#").strip("/").split("/"):
                if not part:
                    continue
                node = node.get(part, {}) if isinstance(node, dict) else {}
        else:
            node = {}
        schema = node if isinstance(node, dict) else {}
        seen += 1
    return schema


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type")
    if isinstance(t, list):
        return [x for x in t if isinstance(x, str)]
    if isinstance(t, str):
        return [t]
    if "properties" in schema:
        return ["object"]
    if "items" in schema:
        return ["array"]
    if "enum" in schema and schema["enum"]:
        v = schema["enum"][0]
        return ["string" if isinstance(v, str) else "number"]
    return ["string"]


#: enum values that mean the same as a known value ("negative" fits an enum of complaint/praise/question)
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "negative": ("complaint", "negative", "bad", "unhappy", "dissatisfied", "angry", "poor", "low", "con"),
    "positive": ("praise", "positive", "good", "happy", "satisfied", "compliment", "great", "high", "pro"),
    "neutral": ("neutral", "mixed", "feedback", "other", "ok", "okay", "medium", "info", "information"),
    "question": ("question", "inquiry", "enquiry", "request", "support"),
    "complaint": ("complaint", "negative", "issue", "problem", "bad"),
    "praise": ("praise", "positive", "compliment", "good"),
    "feedback": ("feedback", "neutral", "other", "comment"),
}


def _match_enum(options: list[Any], value: Any) -> tuple[bool, Any]:
    if isinstance(value, str) and value.lower() in _SYNONYMS:
        lowered = {opt.lower(): opt for opt in options if isinstance(opt, str)}
        for candidate in (value.lower(), *_SYNONYMS[value.lower()]):
            if candidate in lowered:
                return True, lowered[candidate]
    if value is not None:
        for opt in options:
            if opt == value or (isinstance(opt, str) and isinstance(value, str) and opt.lower() == value.lower()):
                return True, opt
        if isinstance(value, str):  # a known label like "positive" may be spelled "Positive review"
            for opt in options:
                if isinstance(opt, str) and value.lower() in opt.lower():
                    return True, opt
    return False, None


def _pick_enum(options: list[Any], value: Any, alternative: Any = None) -> Any:
    """The option meaning ``value`` (or else ``alternative``), else the first option."""
    for candidate in (value, alternative):
        found, option = _match_enum(options, candidate)
        if found:
            return option
    return options[0] if options else None


def _number(schema: dict[str, Any], value: Any, integer: bool) -> int | float:
    num: float = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        lo = schema["exclusiveMinimum"] + (1 if integer else 1e-6)
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        hi = schema["exclusiveMaximum"] - (1 if integer else 1e-6)
    if isinstance(lo, int | float) and num < lo:
        num = float(lo)
    if isinstance(hi, int | float) and num > hi:
        num = float(hi)
    if integer:
        out = int(round(num))
        if isinstance(lo, int | float) and out < lo:
            out += 1
        if isinstance(hi, int | float) and out > hi:
            out -= 1
        return out
    return num


def _string(schema: dict[str, Any], value: Any, name: str) -> str:
    if isinstance(value, list):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif value is None:
        fmt = schema.get("format")
        text = {"date-time": "1970-01-01T00:00:00Z", "date": "1970-01-01", "time": "00:00:00",
                "email": "user@example.com", "uri": "https://example.com", "uuid":
                "00000000-0000-0000-0000-000000000000"}.get(fmt or "", "")
    else:
        text = str(value)
    min_len = schema.get("minLength")
    max_len = schema.get("maxLength")
    if isinstance(max_len, int) and len(text) > max_len:
        text = text[:max_len]
    if isinstance(min_len, int) and len(text) < min_len:
        text = text + "x" * (min_len - len(text))
    return text


def _fill(schema: Any, name: str, known: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
    if not isinstance(schema, dict):
        return known.get(_norm(name))
    schema = _resolve(schema, root)
    value = known.get(_norm(name)) if (name or "" in known) else None
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            resolved = [_resolve(o, root) for o in options if isinstance(o, dict)]
            usable = [o for o in resolved if _types(o) != ["null"]]
            if value is None and len(usable) < len(resolved) and depth > _MAX_DEPTH:
                return None
            return _fill(usable[0] if usable else resolved[0], name, known, root, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve(part, root) if isinstance(part, dict) else {}
            for k, v in part.items():
                if k in ("properties",) and k in merged:
                    merged[k] = {**merged[k], **v}
                elif k == "required" and k in merged:
                    merged[k] = list(merged[k]) + list(v)
                else:
                    merged[k] = v
        return _fill(merged, name, known, root, depth + 1)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return _pick_enum(schema["enum"], value, known.get("intent"))
    types = _types(schema)
    non_null = [t for t in types if t != "null"]
    if not non_null:
        return None
    if depth > _MAX_DEPTH and "null" in types:
        return None
    kind = non_null[0]
    if value is not None:  # prefer a type the known value already has
        for t in non_null:
            if (t == "string" and isinstance(value, str)) or (t == "boolean" and isinstance(value, bool)) or \
               (t in ("number", "integer") and isinstance(value, int | float) and not isinstance(value, bool)) \
               or (t == "array" and isinstance(value, list)):
                kind = t
                break
    if kind == "object":
        props = schema.get("properties") or {}
        out: dict[str, Any] = {}
        if depth > _MAX_DEPTH:
            return {k: _fill({"type": "string"}, k, known, root, depth + 1) for k in schema.get("required", [])}
        for prop, sub in props.items():
            out[prop] = _fill(sub, prop, known, root, depth + 1)
        return out
    if kind == "array":
        items = schema.get("items") or {}
        low, high = schema.get("minItems"), schema.get("maxItems")
        min_items = low if isinstance(low, int) else 0
        max_items = high if isinstance(high, int) else None
        if isinstance(value, list) and value:
            item_schema = _resolve(items, root) if isinstance(items, dict) else {}
            values = [_fill(item_schema, "", {"": v}, root, depth + 1) if _types(item_schema)[0] != "object"
                      else _fill(item_schema, "", known, root, depth + 1) for v in value]
        else:
            values = [_fill(items, name.rstrip("s"), known, root, depth + 1)] if depth <= _MAX_DEPTH else []
        while len(values) < min_items:
            values.append(_fill(items, name.rstrip("s"), known, root, depth + 1))
        if max_items is not None:
            values = values[:max_items]
        return values
    if kind == "boolean":
        return bool(value) if isinstance(value, bool | int) else False
    if kind in ("number", "integer"):
        return _number(schema, value, kind == "integer")
    if kind == "null":
        return None
    return _string(schema, value, name)


def fill_schema(schema: dict[str, Any], known: dict[str, Any]) -> Any:
    """A value valid against ``schema``; properties take ``known[normalised name]`` when the type fits."""
    known_norm = {_norm(k): v for k, v in known.items()}
    return _fill(schema, "", known_norm, schema, 0)
