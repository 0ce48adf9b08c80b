"""Built-in source ``records``: records held by the Python caller (``Pipeline.run(records=...)``).

The input is a list of dicts, a pandas DataFrame, or any iterable of dicts (a generator too large for
memory is read one item at a time, never materialized). It is not written in the block: the caller hands
it over in the components' context (``context.settings["records"]``); the block names only how ids are
made (``id_field``, else the position: ``0``, ``1``, ...) and ``input``, the input's fingerprint (what
resuming compares, see :func:`input_fingerprint`).

A pipeline file cannot use this source on its own (there is nothing to read): it says so.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any

from pydantic import Field

from ..base import PluginOptions, Source
from ..errors import InputError
from ..extras import require
from ..hookspecs import hookimpl
from ..idset import SeenIds
from ..kit.sources import unique_id_record
from ..types import Record

__all__ = ["RecordsSource", "input_fingerprint", "is_dataframe"]

#: rows of a DataFrame converted to dicts at a time
_CHUNK = 1024


def is_dataframe(obj: Any) -> bool:
    """A pandas DataFrame (checked without importing pandas)."""
    return type(obj).__module__.startswith("pandas") and hasattr(obj, "itertuples") and hasattr(obj, "columns")


def input_fingerprint(records: Any, key: str | None = None) -> str:
    """What a run of ``records`` is recognized by when it is resumed.

    * ``key`` given: ``key:<key>`` (the caller vouches that the same key means the same records);
    * a DataFrame: a hash of its content (values, index and column names);
    * a list or tuple: a hash of its items (they are in memory already);
    * any other iterable (a generator, a file reader): it cannot be read twice, so it gets a fingerprint
      of its own (``stream:<random>``): an interrupted run of it is not resumed by a later call, which is
      refused with a message until ``fresh=True`` (or pass ``input_key=`` to make it resumable).
    """
    if key:
        return f"key:{key}"
    digest = hashlib.sha256()
    if is_dataframe(records):
        pd = require("pandas", extra="pandas", feature="a DataFrame of records")
        digest.update(json.dumps([str(c) for c in records.columns]).encode())
        digest.update(pd.util.hash_pandas_object(records, index=True).values.tobytes())
        return "sha256:" + digest.hexdigest()[:24]
    if isinstance(records, list | tuple):
        for item in records:
            digest.update(json.dumps(item, sort_keys=True, default=str).encode())
            digest.update(b"\n")
        return "sha256:" + digest.hexdigest()[:24]
    return f"stream:{uuid.uuid4().hex}"


class RecordsSource(Source):
    """Records handed over by Python code: ``Pipeline.run(records=...)``."""

    class Options(PluginOptions):
        id_field: str | None = Field(None, description="Field holding a unique, stable id; else the position")
        input: str | None = Field(None, description="Fingerprint of the input (set by oaipipe.Pipeline.run)")

    options: Options

    def _input(self) -> Any:
        records = self.context.settings.get("records")
        if records is None:
            raise InputError("the records source has no records: nothing was handed over",
                             hint="pass them in Python: Pipeline(...).run(records=[{...}, ...]) (a list of dicts, "
                                  "a DataFrame or any iterable of dicts)")
        if isinstance(records, str | bytes | Mapping) or not isinstance(records, Iterable):
            raise InputError(f"records must be a list of dicts, a DataFrame or an iterable of dicts, "
                             f"not a {type(records).__name__}",
                             hint="wrap one record in a list: run(records=[{...}])")
        return records

    def fields(self) -> list[str] | None:
        if "records" not in self.context.settings:  # a pipeline file on its own: there is nothing to read
            raise InputError("the records source reads records handed over by Python code, and a pipeline "
                             "file has none", hint="run it from Python: oaipipe.Pipeline.from_yaml(path)"
                                                   ".run(records=[...]), or use a file source (csv, jsonl...)")
        records = self.context.settings["records"]
        if records is None:
            return None  # handed over at run time
        if is_dataframe(records):
            return [str(c) for c in records.columns]
        if isinstance(records, list | tuple) and records and all(isinstance(r, Mapping) for r in records):
            common = set(records[0])
            for item in records:
                common &= set(item)
            return [str(k) for k in records[0] if k in common]
        return None

    def count(self) -> int | None:
        records = self.context.settings.get("records")
        return len(records) if isinstance(records, Sized) and not isinstance(records, str | bytes) else None

    def records(self) -> Iterator[Record]:
        records = self._input()
        items: Iterable[Any] = _rows(records) if is_dataframe(records) else records
        seen = SeenIds()
        id_field = self.options.id_field
        for position, item in enumerate(items):
            where = f"records[{position}]"
            if not isinstance(item, Mapping):
                yield Record(str(position), {}, where,
                             error=f"{where}: a record must be a dict, not a {type(item).__name__}")
                continue
            data = {str(k): v for k, v in item.items()}
            if id_field is None:
                yield Record(str(position), data, where)
                continue
            value = data.get(id_field)
            if value is None or value == "":
                yield Record(str(position), data, where,
                             error=f"{where}: no '{id_field}' (id_field) in this record; its keys: "
                                   f"{', '.join(list(data)[:20]) or '(none)'}")
                continue
            yield unique_id_record(str(value), data, where, seen, position, unit="record",
                                   holder=f"field '{id_field}'")


def _rows(frame: Any) -> Iterator[dict[str, Any]]:
    """The rows of a DataFrame as dicts of plain Python values, a chunk at a time (missing values: None)."""
    for start in range(0, len(frame), _CHUNK):
        chunk = frame.iloc[start:start + _CHUNK]
        chunk = chunk.astype(object).where(chunk.notna(), None)
        yield from chunk.to_dict("records")


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("records", RecordsSource)
