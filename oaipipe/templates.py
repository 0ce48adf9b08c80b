"""``{field}`` templates over a record.

``"Reply to: {text}"`` takes ``text`` from the record; ``{{`` and ``}}`` are literal braces; a dotted
name reads into a nested value (``{review.title}``). A field the record lacks is a
:class:`~oaipipe.errors.TemplateError` that names the field and the fields the record has.
"""

from __future__ import annotations

import difflib
import string
from typing import Any

from .errors import TemplateError

__all__ = ["fields_of", "render"]

_FORMATTER = string.Formatter()


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    """The template's (literal, field, spec, conversion) parts; a :class:`TemplateError` when malformed."""
    try:
        return list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"bad template {template!r}: {exc}", hint="write literal braces as {{ and }}") from None


def fields_of(template: str) -> list[str]:
    """The top-level field names a template reads, in order (``"{a} {b.c}"`` → ``["a", "b"]``)."""
    names: list[str] = []
    for _, field, _, _ in _parse(template):
        if field:
            root = field.split(".", 1)[0].split("[", 1)[0]
            if root not in names:
                names.append(root)
    return names


def _lookup(fields: dict[str, Any], name: str, template: str, where: str) -> Any:
    value: Any = fields
    for part in name.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
            continue
        have = sorted(fields) if value is fields else sorted(value) if isinstance(value, dict) else []
        close = difflib.get_close_matches(part, have, n=1)
        hint = f"did you mean '{{{close[0]}}}'? " if close else ""
        hint += f"the record has: {', '.join(have) or '(no fields)'}"
        at = f" ({where})" if where else ""
        raise TemplateError(f"template {template!r} needs field '{name}', which the record lacks{at}", hint=hint)
    return value


def render(template: str, fields: dict[str, Any], *, where: str = "") -> str:
    """Fill ``template`` from ``fields``; ``None`` renders as an empty string."""
    out: list[str] = []
    for literal, field, spec, conv in _parse(template):
        out.append(literal)
        if field is None:
            continue
        if field == "":
            raise TemplateError(f"template {template!r} has an empty {{}}", hint="name a field: {text}")
        value = _lookup(fields, field, template, where)
        if value is None:
            value = ""
        if conv == "r":
            value = repr(value)
        elif conv == "s":
            value = str(value)
        out.append(format(value, spec) if spec else str(value))
    return "".join(out)
