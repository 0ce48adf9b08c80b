"""Built-in source ``csv``: a CSV file read in chunks with pandas, one record per data row.

Values arrive as strings exactly as written (``dtype=str``, no NA guessing), so ``007`` stays ``007`` and
an empty cell is ``""``. Memory stays flat however long the file is: pandas reads ``chunksize`` rows at a
time. The only thing that grows with the file is the set of ids seen so far (to report duplicates),
kept compactly (8 bytes an id, see ``oaipipe.idset``).
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterator
from typing import Any

from pydantic import Field

from ..base import PluginOptions
from ..errors import InputError
from ..hookspecs import hookimpl
from ..idset import SeenIds
from ..types import Record
from ._source_files import FileSource, count_lines


def did_you_mean(name: str, choices: list[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``choices``, or ``""``."""
    lowered = {c.lower(): c for c in choices}
    if name.lower() in lowered:
        return f" (did you mean '{lowered[name.lower()]}'?)"
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class CsvSource(FileSource):
    """Rows of a CSV file (pandas, chunked); values are kept as the strings written in the file."""

    kind = "CSV"
    wrong_kind_hint = "point `source.path` at a .csv file (use `type: images` for a folder of images)"

    class Options(PluginOptions):
        path: str = Field(..., description="CSV file, relative to the pipeline file")
        id_column: str | None = Field(
            None, description="Column holding a unique, stable id; without it ids are row-1, row-2, ..."
        )
        columns: list[str] | None = Field(None, description="Keep only these columns (default: all)")
        delimiter: str = Field(",", min_length=1, description="Field separator, e.g. ';' or '\\t'")
        encoding: str = Field("utf-8", description="Text encoding of the file, e.g. utf-8, utf-8-sig, latin-1")
        chunksize: int = Field(1000, ge=1, description="Rows read at a time (memory use is about this many rows)")

    options: Options

    # --- helpers ----------------------------------------------------------------------------------

    def _read_kwargs(self) -> dict[str, Any]:
        return {
            "sep": self.options.delimiter,
            "encoding": self.options.encoding,
            "dtype": str,
            "keep_default_na": False,
            "na_filter": False,
        }

    def header(self) -> list[str]:
        """The header row (empty for an empty file). Reads only the first line."""
        import pandas as pd

        path = self._check_exists()
        try:
            frame = pd.read_csv(path, nrows=0, **self._read_kwargs())
        except pd.errors.EmptyDataError:
            return []
        except UnicodeDecodeError as exc:
            raise self._encoding_error(exc) from None
        except LookupError as exc:
            raise InputError(f"{self.options.path}: unknown encoding '{self.options.encoding}'",
                             hint="use a Python codec name such as utf-8, utf-8-sig or latin-1") from exc
        return [str(c) for c in frame.columns]

    def _encoding_error(self, exc: UnicodeDecodeError) -> InputError:
        return InputError(
            f"{self.options.path}: cannot decode the file as {self.options.encoding}: {exc.reason} "
            f"at byte {exc.start}",
            hint="set `encoding:` in the source block (e.g. latin-1 or cp1252), or save the file as UTF-8",
        )

    def _wanted(self, header: list[str]) -> list[str] | None:
        """Columns to keep (None: all), after checking every named column exists."""
        named: list[tuple[str, str]] = []
        if self.options.id_column is not None:
            named.append(("id_column", self.options.id_column))
        for col in self.options.columns or []:
            named.append(("columns", col))
        for key, col in named:
            if col not in header:
                hint = f"columns in the file: {', '.join(header) if header else '(none: the file is empty)'}"
                if len(header) == 1 and self.options.delimiter not in header[0]:
                    for sep in (";", "\t", "|", ","):
                        if sep != self.options.delimiter and sep in header[0]:
                            hint += f"; the header was read as ONE column: set `delimiter: {sep!r}`"
                            break
                raise InputError(
                    f"{self.options.path}: column '{col}' (source.{key}) is not in the header"
                    f"{did_you_mean(col, header)}",
                    hint=hint,
                )
        if self.options.columns is None:
            return None
        wanted = list(self.options.columns)
        if self.options.id_column is not None and self.options.id_column not in wanted:
            wanted.insert(0, self.options.id_column)
        return wanted

    # --- the Source contract ------------------------------------------------------------------------

    def fields(self) -> list[str] | None:
        header = self.header()
        if not header:
            return None  # an empty file: zero records, nothing to check templates against
        wanted = self._wanted(header)
        return wanted if wanted is not None else header

    def count(self) -> int | None:
        lines = count_lines(self._check_exists())
        return None if lines is None else max(0, lines - 1)

    def records(self) -> Iterator[Record]:
        import pandas as pd

        path = self._check_exists()
        header = self.header()
        if not header:
            return
        wanted = self._wanted(header)
        columns = wanted if wanted is not None else header
        label = self.options.path
        id_column = self.options.id_column
        seen = SeenIds()
        row = 0
        line = 2  # the first data row's line (the header is line 1)
        kwargs = self._read_kwargs()
        if wanted is not None:
            kwargs["usecols"] = wanted
        bad: list[tuple[int, str]] = []  # (file line, why) of rows pandas skipped in the current chunk

        def bad_row() -> Record:
            nonlocal row, line
            at, why = bad.pop(0)
            row += 1
            line = at + 1
            where = f"{label} row {row} (line {at})"
            rid = f"row-{row}" if id_column is None else f"line-{at}"
            return Record(id=rid, data={}, where=where,
                          error=f"{where}: {why}; fix that line (quote values that contain '{self.options.delimiter}')")

        try:
            with pd.read_csv(path, chunksize=self.options.chunksize, on_bad_lines="warn", **kwargs) as reader:
                chunks = iter(reader)
                while True:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", pd.errors.ParserWarning)
                        chunk = next(chunks, None)
                    for w in caught:
                        for m in _SKIPPED.finditer(str(w.message)):
                            bad.append((int(m.group(1)), m.group(2)))
                    if chunk is None:
                        break
                    bad.sort()
                    values = chunk[columns].itertuples(index=False, name=None)
                    for tup in values:
                        while bad and bad[0][0] <= line:
                            yield bad_row()
                        row += 1
                        data = {c: ("" if v is None or v != v else v) for c, v in zip(columns, tup, strict=True)}
                        where = f"{label} row {row} (line {line})"
                        # a quoted value may span lines: keep the line number honest
                        line += 1 + sum(v.count("\n") for v in data.values() if "\n" in v)
                        error = None
                        if id_column is None:
                            rid = f"row-{row}"
                        else:
                            rid = str(data[id_column])
                            if rid == "":
                                rid = f"row-{row}"
                                error = (f"{where}: empty id in column '{id_column}'; give every row an id "
                                         f"(this record was named {rid})")
                            elif (first := seen.check_add(rid, row)) is not None:
                                at = f"row {first}" if first != "earlier" else "an earlier row"
                                error = (f"{where}: duplicate id '{rid}' in column '{id_column}', also at {at}; "
                                         f"ids must be unique (the resume journal keys on them)")
                        yield Record(id=rid, data=data, where=where, error=error)
                    while bad:
                        yield bad_row()
        except UnicodeDecodeError as exc:
            raise self._encoding_error(exc) from None
        except pd.errors.ParserError as exc:
            raise InputError(
                f"{label}: the CSV cannot be parsed after data row {row}: {exc}",
                hint="check quoting and the number of fields on that line, or set `delimiter:`",
            ) from None


#: pandas' warning for a row with the wrong number of fields (on_bad_lines="warn")
_SKIPPED = re.compile(r"Skipping line (\d+): ([^\n]+)")


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("csv", CsvSource)
