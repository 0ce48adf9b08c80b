"""Built-in source ``csv``: a CSV file read record by record with the standard ``csv`` module.

Values arrive as strings exactly as written (no type or NA guessing), so ``007`` stays ``007`` and an
empty cell is ``""``. Memory stays flat however long the file is: one row is read at a time. The only
thing that grows with the file is the set of ids seen so far (to report duplicates), kept compactly
(8 bytes an id, see ``oaipipe.idset``).

One bad row fails that row alone (a record with ``error`` set, see ``oaipipe.kit.sources.guarded_record``), with
the data row number, the physical line and, for an undecodable byte, its byte offset in the file:

- an undecodable byte, a NUL byte, or a byte-order mark at the start of a line other than the first;
- a row with more fields than the header; one with fewer, unless ``pad_short_rows: true``;
- a quote that is never closed: the row where it opens fails, and the lines it swallowed (to the end of
  the file, or until the row exceeds :data:`ROW_LIMIT` characters) are read again as rows of their own;
- a row whose quoted value spans lines and ends up with the wrong number of fields fails as one record
  that names every line it covers (a balanced pair of stray quotes cannot be told from a real multi-line
  value, so those lines are not read again).

Why not pandas: a chunked ``pandas.read_csv`` rejects the whole file (or the rest of it) for one
undecodable byte or one unclosed quote, cannot say on which physical line a row started, and pads short
rows silently. Reading record by record keeps every one of those a per-row decision.
"""

from __future__ import annotations

import codecs
import csv
from collections import deque
from collections.abc import Iterator
from functools import partial
from typing import IO, Any, NamedTuple

from pydantic import Field

from ..base import PluginOptions
from ..errors import InputError, RecordError
from ..hookspecs import hookimpl
from ..idset import SeenIds
from ..kit.sources import (
    FileSource,
    count_lines,
    did_you_mean,
    guarded_record,
    line_too_long,
    read_lines,
    unique_id_record,
)
from ..types import Record

#: longest row (characters) read: an unclosed quote swallows lines up to here at most, then they are read again
ROW_LIMIT = 16 * 1024 * 1024
_CSV_LIMIT = 2**31 - 1  # the csv module's own per-value limit (131072 by default) is lifted: ROW_LIMIT applies


class _RowTooLong(Exception):
    """Raised into the csv reader when a row exceeds :data:`ROW_LIMIT`."""


def _lines(lines: list[_Line]) -> str:
    """``line 7`` or ``lines 7-9``."""
    a, b = lines[0].number, lines[-1].number
    return f"line {a}" if a == b else f"lines {a}-{b}"

#: what an undecodable byte turns into when an encoding cannot be split into lines as bytes (utf-16, utf-32)
_MARK = "\udbff"  # a lone surrogate: no strict decoder ever produces one
def _undecodable(exc: UnicodeError) -> tuple[str, int]:
    """Each undecodable byte sequence becomes :data:`_MARK` (the codec error handler)."""
    assert isinstance(exc, UnicodeDecodeError)
    return _MARK, exc.end


codecs.register_error("oaipipe.undecodable", _undecodable)


class _Line(NamedTuple):
    """One physical line: its number (from 1), its byte offset in the file (-1: not known), its text, and
    what is wrong with it (an undecodable byte, a NUL, a stray byte-order mark) or None."""

    number: int
    offset: int
    text: str
    problem: str | None


class _Row(NamedTuple):
    """One logical row: its fields (None when it could not be parsed), the lines it took, what is wrong."""

    fields: list[str] | None
    lines: list[_Line]
    problem: str | None


def _ascii_compatible(encoding: str) -> bool:
    """Whether newline, quote and separators are single ASCII bytes in ``encoding`` (utf-8, latin-1,
    cp1252, ...: lines can be split as bytes, and a bad byte has an exact offset); not utf-16/utf-32."""
    probe = '\n\r,;|\t"'
    try:
        return probe.encode(encoding) == probe.encode("ascii") and probe.encode("ascii").decode(encoding) == probe
    except (UnicodeError, LookupError):
        return False


def _check_text(number: int, text: str, offset: int = -1, raw: bytes = b"") -> tuple[str, str | None]:
    """Line ``number`` without a byte-order mark opening the file, and what is wrong with it: a NUL (at byte
    ``offset`` + its index in ``raw``, when the offset is known), or a byte-order mark starting a later line."""
    if "\x00" in text:
        nul = raw.find(b"\x00")
        at = f" at byte offset {offset + nul}" if offset >= 0 and nul >= 0 else ""
        return text, (f"a NUL byte{at} (line {number}): the file looks binary or corrupt; remove the NUL bytes")
    if text.startswith("\ufeff"):
        if number == 1:
            return text[1:], None  # a byte-order mark opening the file is fine
        return text, (f"line {number} starts with a byte-order mark (U+FEFF), which belongs only at the start of "
                      f"a file (were files joined together?); remove it")
    return text, None


def _lines_as_bytes(fh: IO[bytes], encoding: str) -> Iterator[_Line]:
    """Physical lines (ending at \\n, \\r\\n or \\r) decoded one by one: a bad byte spoils only its line."""
    number = 0
    offset = 0
    for raw, length in read_lines(fh):
        if raw is None:
            number += 1
            yield _Line(number, offset, "", f"line {number}: {line_too_long(length)}")
            offset += length
            continue
        pieces = raw.splitlines(keepends=True) if b"\r" in raw and not (
            raw.endswith(b"\r\n") and raw.count(b"\r") == 1) else (raw,)
        for piece in pieces:
            number += 1
            problem = None
            try:
                text = piece.decode(encoding)
            except UnicodeDecodeError as exc:
                text = piece.decode(encoding, "replace")
                problem = (f"cannot decode byte 0x{piece[exc.start]:02x} at byte offset {offset + exc.start} "
                           f"(line {number}, column {exc.start + 1}) as {encoding}: {exc.reason}; save the file "
                           f"as UTF-8, or set `encoding:` to the file's encoding (e.g. latin-1 or cp1252)")
            else:
                if "\x00" in text or text[:1] == "\ufeff":  # rare: the common line costs two C-level tests
                    text, problem = _check_text(number, text, offset, piece)
            yield _Line(number, offset, text, problem)
            offset += len(piece)


def _lines_as_text(fh: IO[bytes], encoding: str) -> Iterator[_Line]:
    """Physical lines of a file in an encoding that cannot be split as bytes (utf-16, utf-32): decoded as a
    stream, with undecodable bytes marked (their line is known, their byte offset is not)."""
    import io

    stream = io.TextIOWrapper(fh, encoding=encoding, errors="oaipipe.undecodable", newline="")
    for number, text in enumerate(stream, start=1):
        problem = None
        if _MARK in text:
            problem = (f"cannot decode line {number} as {encoding}; save the file as UTF-8, or set `encoding:` to "
                       f"the file's encoding")
        else:
            text, problem = _check_text(number, text)
        yield _Line(number, -1, text, problem)


def _feed(lines: Iterator[_Line], replay: deque[_Line], taken: list[_Line], flagged: list[_Line],
          state: dict[str, int]) -> Iterator[str]:
    """The text lines csv reads for :meth:`CsvSource._rows`: the replayed ones first, then the file's; each
    line is noted in ``taken`` (and ``flagged`` if it has a problem); a row past ``ROW_LIMIT`` stops it."""
    while True:
        if replay:
            line = replay.popleft()
        else:
            got = next(lines, None)
            if got is None:
                # csv asks for another line only inside a quoted value: at the end of the file, the
                # quote is not closed
                state["eof"] = bool(taken)
                return
            line = got
        taken.append(line)
        if line.problem:
            flagged.append(line)
        state["chars"] += len(line.text)
        if state["chars"] > ROW_LIMIT:
            raise _RowTooLong
        yield line.text


def _parse_failure(exc: Exception, got: list[_Line]) -> str:
    """The problem of a row csv could not parse (``got``: its lines; all but the first are read again)."""
    if isinstance(exc, _RowTooLong):
        problem = f"the row is longer than {ROW_LIMIT:,} characters"
        if len(got) > 1:
            problem += f": is the quote opened on line {got[0].number} never closed?"
    else:
        problem = f"cannot parse the row: {exc}"
    if len(got) > 1:
        problem += f" (the lines taken into this row, {_lines(got[1:])}, are read again as rows)"
    return problem


def _unclosed_quote(got: list[_Line]) -> str:
    """The problem of a row whose quote runs to the end of the file (all its lines but the first are read
    again)."""
    problem = f"the quote opened on line {got[0].number} is never closed"
    if len(got) > 1:
        problem += (f": the rest of the file ({_lines(got[1:])}) would be one value; those lines are "
                    f"read again as rows")
    return problem + '; close the quote, or write a quote inside a value as ""'


class CsvSource(FileSource):
    """Rows of a CSV file (read row by row); values are kept as the strings written in the file."""

    kind = "CSV"
    wrong_kind_hint = "point `source.path` at a .csv file (use `type: images` for a folder of images)"

    class Options(PluginOptions):
        path: str = Field(..., description="CSV file, relative to the pipeline file")
        id_column: str | None = Field(
            None, description="Column holding a unique, stable id; without it ids are row-1, row-2, ..."
        )
        columns: list[str] | None = Field(None, description="Keep only these columns (default: all)")
        delimiter: str = Field(",", min_length=1, max_length=1,
                               description="Field separator, one character, e.g. ';' or '\\t'")
        encoding: str = Field("utf-8", description="Text encoding of the file, e.g. utf-8, utf-8-sig, latin-1")
        pad_short_rows: bool = Field(
            False,
            description="A row with fewer fields than the header fails (that record only, naming its line); "
                        "true fills the missing trailing fields with \"\" instead",
        )
        chunksize: int = Field(1000, ge=1, description="Ignored (rows are read one at a time); kept so that "
                                                       "older pipeline files stay valid")

    options: Options

    # --- reading ----------------------------------------------------------------------------------

    def _encoding(self) -> str:
        """The codec to decode lines with (utf-8-sig reads as utf-8: only the first line may hold a BOM)."""
        try:
            name = codecs.lookup(self.options.encoding).name
        except LookupError:
            raise InputError(f"{self.options.path}: unknown encoding '{self.options.encoding}'",
                             hint="use a Python codec name such as utf-8, utf-8-sig or latin-1") from None
        return "utf-8" if name == "utf-8-sig" else name

    def _rows(self, fh: IO[bytes]) -> Iterator[_Row]:
        """Logical rows of the open file, bad ones included (``fields`` None and ``problem`` set when a row
        cannot be parsed). The lines a broken quote swallowed are read again after the row that failed."""
        encoding = self._encoding()
        lines = (_lines_as_bytes if _ascii_compatible(encoding) else _lines_as_text)(fh, encoding)
        replay: deque[_Line] = deque()
        taken: list[_Line] = []  # the lines of the row being read
        flagged: list[_Line] = []  # those of them with a problem
        state = {"chars": 0, "eof": False}  # characters taken into the row; the file ended inside it

        def new_reader() -> Iterator[list[str]]:
            feed = _feed(lines, replay, taken, flagged, state)
            return csv.reader(feed, delimiter=self.options.delimiter, strict=False)

        def take() -> tuple[list[_Line], str | None]:
            """The lines of the row just read, and the first problem among them."""
            got = taken[:]
            problem = flagged[0].problem if flagged else None
            taken.clear()
            flagged.clear()
            state["chars"] = 0
            return got, problem

        if csv.field_size_limit() < _CSV_LIMIT:
            csv.field_size_limit(_CSV_LIMIT)  # process-wide, so only ever raised; ROW_LIMIT is what applies
        reader = new_reader()
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except (csv.Error, _RowTooLong) as exc:
                got, _ = take()
                if not got:  # pragma: no cover - csv fails only on a line it has read
                    continue
                problem = _parse_failure(exc, got)
                replay.extendleft(reversed(got[1:]))  # the lines taken into the row are read again as rows
                if len(got) > 1 or isinstance(exc, _RowTooLong):
                    reader = new_reader()  # the feed ended with the exception, or it must start on the replay
                yield _Row(None, got, problem)
                continue
            got, line_problem = take()
            if state["eof"]:
                state["eof"] = False
                replay.extend(got[1:])  # the rest of the file is read again as rows
                reader = new_reader()  # the feed ended with the file: start a new one on the replayed lines
                yield _Row(None, got, _unclosed_quote(got))
                continue
            yield _Row(fields, got, line_problem)

    def _open(self) -> IO[bytes]:
        path = self._check_exists()
        try:
            return path.open("rb")
        except OSError as exc:
            raise self._read_error(exc) from None

    @staticmethod
    def _blank(fields: list[str]) -> bool:
        return not fields or (len(fields) == 1 and not fields[0].strip())

    def _header_row(self, rows: Iterator[_Row]) -> list[str]:
        """The header (the first non-blank row), its names made unique as pandas does (``a``, ``a.1``, and
        ``Unnamed: 2`` for an empty name); [] for an empty file. A header that cannot be read stops the run."""
        for fields, lines, problem in rows:
            if problem is None and fields is not None and self._blank(fields):
                continue
            if problem is not None or fields is None:
                raise InputError(f"{self.options.path} line {lines[0].number}: the header row cannot be read: "
                                 f"{problem}",
                                 hint="the first row must name the columns; fix it (or set `encoding:`/`delimiter:`)")
            names: list[str] = []
            taken: set[str] = set()
            for i, raw_name in enumerate(fields):
                name = raw_name if raw_name != "" else f"Unnamed: {i}"
                base, k = name, 0
                while name in taken:
                    k += 1
                    name = f"{base}.{k}"
                taken.add(name)
                names.append(name)
            return names
        return []

    def header(self) -> list[str]:
        """The header row (empty for an empty file). Reads only the first row."""
        with self._open() as fh:
            try:
                return self._header_row(self._rows(fh))
            except OSError as exc:
                raise self._read_error(exc) from None

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
                    hint=hint, option=key,
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
        with self._open() as fh:
            try:
                yield from self._records(fh)
            except OSError as exc:
                raise self._read_error(exc) from None

    def _records(self, fh: IO[bytes]) -> Iterator[Record]:
        rows = self._rows(fh)
        header = self._header_row(rows)
        if not header:
            return
        wanted = self._wanted(header)
        columns = wanted if wanted is not None else header
        picks = [(c, header.index(c)) for c in columns]
        state: dict[str, Any] = {"row": 0, "seen": SeenIds()}
        for row in rows:
            if row.problem is None and row.fields is not None and self._blank(row.fields):
                continue  # blank lines are skipped (they are not rows)
            state["row"] += 1
            first = row.lines[0].number
            where = f"{self.options.path} row {state['row']} (line {first})"
            default_id = f"row-{state['row']}" if self.options.id_column is None else f"line-{first}"
            record = guarded_record(partial(self._record, row, len(header), picks, where, state),
                                    where=where, default_id=default_id)
            if record is not None:
                yield record

    def _record(self, row: _Row, width: int, picks: list[tuple[str, int]], where: str,
                state: dict[str, Any]) -> Record:
        """The record of one row; raises :class:`RecordError` for a row that is not one."""
        fields, lines, problem = row
        if problem is not None or fields is None:
            raise RecordError(problem or "the row cannot be parsed")
        if len(fields) != width:
            span = ""
            if len(lines) > 1:
                span = (f" (the row runs from line {lines[0].number} to line {lines[-1].number}: a quoted value "
                        f"holds line breaks, or a stray quote joined {_lines(lines[1:])} to it)")
            if len(fields) > width:
                raise RecordError(f"expected {width} fields, saw {len(fields)}{span}",
                                  hint=f"fix that line (quote values that contain '{self.options.delimiter}')")
            if not self.options.pad_short_rows:
                raise RecordError(f"expected {width} fields, saw {len(fields)}{span}",
                                  hint="add the missing values, or set `pad_short_rows: true` in the source "
                                       "block to fill them with \"\"")
            fields = fields + [""] * (width - len(fields))
        data = {c: fields[i] for c, i in picks}
        id_column = self.options.id_column
        row_no = state["row"]
        if id_column is None:
            return Record(f"row-{row_no}", data, where)
        rid = data[id_column]
        if rid == "":
            return Record(f"row-{row_no}", data, where, error=(
                f"{where}: empty id in column '{id_column}'; give every row an id (this record was named row-{row_no})"))
        return unique_id_record(rid, data, where, state["seen"], row_no, unit="row", holder=f"column '{id_column}'")


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("csv", CsvSource)
