"""Built-in source ``jsonl``: one JSON object per line, read line by line (streams any size).

Whatever is wrong with one line (not valid JSON, not an object, not UTF-8, nested too deeply, a number
too long for Python, a missing or duplicate id) makes that line a record with ``error`` set, naming the
line (and the byte offset of an undecodable byte): the run logs it as failed and goes on. Blank lines are
skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial

from pydantic import Field

from ..base import PluginOptions
from ..errors import InputError, RecordError
from ..hookspecs import hookimpl
from ..idset import SeenIds
from ..kit.sources import (
    MAX_NESTING,
    FileSource,
    count_lines,
    guarded_record,
    line_too_long,
    read_lines,
    too_deep,
    unique_id_record,
)
from ..types import Record


class JsonlSource(FileSource):
    """Objects of a JSON Lines file, one record per non-blank line."""

    kind = "JSONL"
    wrong_kind_hint = "point `source.path` at a .jsonl file"

    class Options(PluginOptions):
        path: str = Field(..., description="JSONL file, relative to the pipeline file")
        id_field: str | None = Field(
            None, description="Field holding a unique, stable id; without it ids are line-1, line-2, ..."
        )
        encoding: str = Field("utf-8", description="Text encoding of the file")

    options: Options

    def fields(self) -> list[str] | None:
        """Unknown before reading (objects may differ); checks that ``path`` is a regular file, so that
        ``oaipipe validate`` reports a missing file, a folder or ``/dev/zero`` as the csv source does."""
        self._check_exists()
        return None

    def count(self) -> int | None:
        return count_lines(self._check_exists())

    def records(self) -> Iterator[Record]:
        path = self._check_exists()
        label = self.options.path
        try:
            "".encode(self.options.encoding)
        except LookupError:
            raise InputError(f"{label}: unknown encoding '{self.options.encoding}'",
                             hint="use a Python codec name such as utf-8 or latin-1") from None
        seen = SeenIds()
        offset = 0  # byte offset of the current line in the file
        try:
            with path.open("rb") as fh:
                for lineno, (raw, length) in enumerate(read_lines(fh), start=1):
                    where = f"{label} line {lineno}"
                    record = guarded_record(partial(self._parse, raw, length, lineno, offset, where, seen),
                                            where=where, default_id=f"line-{lineno}")
                    offset += length
                    if record is not None:
                        yield record
        except OSError as exc:
            raise self._read_error(exc) from None

    def _parse(self, raw: bytes | None, length: int, lineno: int, offset: int, where: str,
               seen: SeenIds) -> Record | None:
        """The record of one line (None for a blank line); raises for a line that is not one JSON object
        (``raw`` is None for a line too long to read)."""
        if raw is None:
            raise RecordError(line_too_long(length))
        encoding = self.options.encoding
        default_id = f"line-{lineno}"
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise RecordError(
                f"not valid {encoding}: {exc.reason}, byte 0x{raw[exc.start]:02x} at byte offset "
                f"{offset + exc.start} of the file (column {exc.start + 1} of the line)",
                hint="save the file as UTF-8 or set `encoding:`") from None
        if lineno == 1:
            text = text.lstrip("\ufeff")  # a byte-order mark opening the file is fine
        if not text.strip():
            return None
        if text.startswith("\ufeff"):
            raise RecordError("the line starts with a byte-order mark (U+FEFF), which belongs only at the start "
                              "of a file (were files joined together?)", hint="remove the mark from this line")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"invalid JSON: {exc.msg} (column {exc.colno})",
                              hint="each line must be one complete JSON object") from None
        if not isinstance(obj, dict):
            raise RecordError(f"expected a JSON object ({{...}}), got {type(obj).__name__}",
                              hint="each line must be one object")
        if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and too_deep(obj):  # cheap test first
            raise RecordError(f"the object is nested more than {MAX_NESTING} levels deep",
                              hint="flatten it: oaipipe cannot write deeper values back as JSON")
        id_field = self.options.id_field
        if id_field is None:
            return Record(default_id, obj, where)
        value = obj.get(id_field)
        if value is None or value == "":
            keys = ", ".join(list(obj)[:20]) or "(none)"
            return Record(default_id, obj, where, error=(
                f"{where}: no '{id_field}' (source.id_field) in this object; its keys: {keys}"))
        return unique_id_record(str(value), obj, where, seen, lineno, unit="line", holder=f"field '{id_field}'")


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("jsonl", JsonlSource)
