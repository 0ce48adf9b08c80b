"""Built-in source ``jsonl``: one JSON object per line, read line by line (streams any size).

A line that is not valid JSON (or not an object, or not UTF-8) becomes a record with ``error`` set and
the line number in the message: the run logs it as failed and goes on. Blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import Field

from ..base import PluginOptions
from ..errors import InputError
from ..hookspecs import hookimpl
from ..idset import SeenIds
from ..types import Record
from ._source_files import FileSource, count_lines


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

    def count(self) -> int | None:
        return count_lines(self._check_exists())

    def records(self) -> Iterator[Record]:
        path = self._check_exists()
        label = self.options.path
        id_field = self.options.id_field
        seen = SeenIds()
        try:
            "".encode(self.options.encoding)
        except LookupError:
            raise InputError(f"{label}: unknown encoding '{self.options.encoding}'",
                             hint="use a Python codec name such as utf-8 or latin-1") from None
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                where = f"{label} line {lineno}"
                default_id = f"line-{lineno}"
                try:
                    text = raw.decode(self.options.encoding)
                except UnicodeDecodeError as exc:
                    yield Record(default_id, {}, where, error=(
                        f"{where}: not valid {self.options.encoding} ({exc.reason} at byte {exc.start}); "
                        f"save the file as UTF-8 or set `encoding:`"))
                    continue
                if lineno == 1:
                    text = text.lstrip("\ufeff")
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield Record(default_id, {}, where, error=(
                        f"{where}: invalid JSON: {exc.msg} (column {exc.colno}); each line must be one "
                        f"complete JSON object"))
                    continue
                if not isinstance(obj, dict):
                    yield Record(default_id, {}, where, error=(
                        f"{where}: expected a JSON object ({{...}}), got {type(obj).__name__}; "
                        f"each line must be one object"))
                    continue
                if id_field is None:
                    yield Record(default_id, obj, where)
                    continue
                value = obj.get(id_field)
                if value is None or value == "":
                    keys = ", ".join(list(obj)[:20]) or "(none)"
                    yield Record(default_id, obj, where, error=(
                        f"{where}: no '{id_field}' (source.id_field) in this object; its keys: {keys}"))
                    continue
                rid = str(value)
                first = seen.check_add(rid, lineno)
                if first is not None:
                    at = f"line {first}" if first != "earlier" else "an earlier line"
                    yield Record(rid, obj, where, error=(
                        f"{where}: duplicate id '{rid}' in field '{id_field}', also at {at}; "
                        f"ids must be unique (the resume journal keys on them)"))
                    continue
                yield Record(rid, obj, where)


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("jsonl", JsonlSource)
