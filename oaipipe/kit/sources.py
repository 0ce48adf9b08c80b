"""What the file and folder sources (``csv``, ``jsonl``, ``images``) share: resolving ``path`` and saying
clearly when it is missing or of the wrong kind, a cheap line count, and the one rule for bad input:
whatever goes wrong while parsing one record makes that record an error (naming its line) and the run
goes on (:func:`guarded_record`)."""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from pydantic import Field

from ..base import PluginOptions, Source
from ..errors import InputError, OaipipeError
from ..idset import SeenIds
from ..types import Record

__all__ = [
    "COUNT_LIMIT_BYTES",
    "MAX_LINE_BYTES",
    "MAX_NESTING",
    "FileOptions",
    "FileOptionsT",
    "FileSource",
    "check_columns",
    "checked_path",
    "count_lines",
    "describe_parse_failure",
    "did_you_mean",
    "guarded_record",
    "line_too_long",
    "missing_file_error",
    "numbered",
    "read_lines",
    "records_of_batches",
    "too_deep",
    "unique_id_record",
    "wanted_columns",
]

#: above this size ``count()`` answers None instead of scanning the file
COUNT_LIMIT_BYTES = 50 * 1024 * 1024

#: a line longer than this (bytes) is not read into memory: it becomes a failed record (skipped, not kept)
MAX_LINE_BYTES = 64 * 1024 * 1024

#: a record nested deeper than this (lists/objects in lists/objects) is an error: deeper values cannot be
#: written back as JSON (the journal, the sinks) within Python's recursion limit
MAX_NESTING = 256


def missing_file_error(kind: str, path: Path, given: str, base_dir: Path, *, folder: bool = False,
                       option: str = "path", pipeline_file: str = "") -> InputError:
    """The :class:`InputError` for a ``path`` that does not exist: says where it was looked for and why.

    ``option`` is the option that gave the path: the error is placed on its line of the pipeline file.
    ``pipeline_file`` is that file as the user named it (:attr:`Context.shown_file`), which the hint names;
    ``""`` when there is none (the hint then names the folder paths are resolved against)."""
    what = "folder" if folder else "file"
    where = (f"paths in {pipeline_file} are relative to the folder it is in" if pipeline_file else
             f"relative paths are resolved against {base_dir}")
    return InputError(
        f"{kind} {what} not found: {given} (looked for {path}, resolved against {base_dir})",
        hint=f"{where}; check the spelling or give an absolute path",
        option=option,
    )


def _file_type(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def checked_path(kind: str, given: str, context: Any, *, hint: str, folder: bool = False,
                 option: str = "path") -> Path:
    """``given`` resolved against the pipeline file's folder, checked to be an existing regular file (or,
    with ``folder=True``, folder); an :class:`InputError` naming ``kind`` otherwise: "not found" only when
    nothing is there, "not a regular file" for a folder, a device (``/dev/zero``), a FIFO or a socket.

    ``option`` is the option that gave ``given``: every error is placed on its line of the pipeline file."""
    path: Path = context.path(given)
    try:
        mode = os.stat(path).st_mode  # follows symlinks: what would be opened
    except FileNotFoundError:
        raise missing_file_error(kind, path, given, context.base_dir, folder=folder, option=option,
                                 pipeline_file=getattr(context, "shown_file", "")) from None
    except OSError as exc:
        raise InputError(f"{kind} source path cannot be read: {path}: {exc.strerror or exc}",
                         hint="check the permissions of the path and of its folders", option=option) from None
    if stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode):
        return path
    if folder:
        what = "a file, not a folder" if stat.S_ISREG(mode) else f"{_file_type(mode)}, not a folder"
        raise InputError(f"{kind} source path is {what}: {path}", hint=hint, option=option)
    what = "a folder, not a file" if stat.S_ISDIR(mode) else _file_type(mode)
    raise InputError(f"{kind} source path is not a regular file ({what}): {path}",
                     hint=hint if stat.S_ISDIR(mode) else
                     f"point `source.{option}` at a file on disk; devices, pipes and sockets cannot be read as "
                     "input (resuming needs to read the input again)", option=option)


class FileOptions(PluginOptions):
    """Options of a component that reads or writes one file: ``path``, relative to the pipeline file."""

    path: str = Field(description="The file, relative to the pipeline file")


#: the options of a file source or sink: :class:`FileOptions` or a subclass
FileOptionsT = TypeVar("FileOptionsT", bound=FileOptions)


class FileSource(Source[FileOptionsT]):
    """A source that reads the one file ``options.path``; ``kind`` and ``wrong_kind_hint`` word the errors.

    Generic over its options (a :class:`FileOptions` subclass): ``class TsvSource(FileSource[TsvOptions])``
    makes ``self.options.delimiter`` type-check."""

    kind: ClassVar[str] = "input"
    wrong_kind_hint: ClassVar[str] = "give the path of a file"

    @property
    def file(self) -> Path:
        return self.context.path(self.options.path)

    def _check_exists(self) -> Path:
        return checked_path(self.kind, self.options.path, self.context, hint=self.wrong_kind_hint)

    def _read_error(self, exc: OSError) -> InputError:
        """An I/O error while reading the file (after it was opened): the whole input stops, naming it."""
        return InputError(f"{self.options.path}: cannot read the {self.kind} file: {exc.strerror or exc}",
                          hint="check the disk and the file; rerun the same command to resume")


def count_lines(path: Path, *, limit: int = COUNT_LIMIT_BYTES) -> int | None:
    """Number of lines (a cheap byte scan), or None if the file is bigger than ``limit``."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if size > limit:
        return None
    lines = 0
    last = b"\n"
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if size and last != b"\n":
        lines += 1
    return lines


def read_lines(fh: IO[bytes], limit: int | None = None) -> Iterator[tuple[bytes | None, int]]:
    """``(line, length in bytes)`` for each line of ``fh`` (split at ``\\n``, kept); ``line`` is None for a
    line longer than ``limit`` (default :data:`MAX_LINE_BYTES`), whose bytes are skipped without being held:
    one giant line costs one failed record, not the memory of the machine."""
    limit = MAX_LINE_BYTES if limit is None else limit
    readline = fh.readline
    while raw := readline(limit + 1):
        if len(raw) <= limit or raw.endswith(b"\n"):
            yield raw, len(raw)
            continue
        length = len(raw)
        while (more := readline(1 << 20)) and not more.endswith(b"\n"):
            length += len(more)
        yield None, length + len(more)


def line_too_long(length: int) -> str:
    """The message for a line :func:`read_lines` skipped."""
    return (f"the line is {length:,} bytes long, more than the {MAX_LINE_BYTES:,} a record may have "
            f"(a file without line breaks?); split it")


# --- one bad record -------------------------------------------------------------------------------------


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether ``value`` nests lists/dicts more than ``limit`` levels deep (iterative: never recurses)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values() if isinstance(v, dict | list))
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj if isinstance(v, dict | list))
    return False


def describe_parse_failure(exc: BaseException) -> str:
    """What went wrong parsing one record, in words, for any exception (the fix included where known)."""
    if isinstance(exc, OaipipeError):
        return exc.message + (f"; {exc.hint}" if exc.hint else "")
    if isinstance(exc, RecursionError):
        return (f"nested too deeply to read (more than Python's recursion limit; oaipipe reads at most "
                f"{MAX_NESTING} levels of lists/objects)")
    if isinstance(exc, MemoryError):
        return "too large to hold in memory"
    text = str(exc)
    if isinstance(exc, ValueError) and "integer string conversion" in text:
        # Python refuses to convert integers of more than sys.get_int_max_str_digits() digits (4300)
        return ("a number with more digits than Python converts (4300); write it as a string "
                "(in quotes) if it is an id or a code")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def guarded_record(parse: Callable[[], Record | None], *, where: str, default_id: str,
                   fix: str = "") -> Record | None:
    """The record ``parse()`` builds (None: no record, e.g. a blank line) or, whatever it raises, a :class:`Record` with ``error`` set:
    ``"<where>: <what went wrong>; <fix>"`` (``where`` names the file and line). This is how every file
    source turns one bad line into one failed record instead of a failed run. Raise a
    :class:`~oaipipe.errors.RecordError` in ``parse`` for a problem with its own message (and fix)."""
    try:
        return parse()
    except Exception as exc:  # noqa: BLE001 - anything from one record fails that record only
        message = describe_parse_failure(exc)
        if fix and not isinstance(exc, OaipipeError):
            message += f"; {fix}"
        return Record(default_id, {}, where, error=f"{where}: {message}")


def unique_id_record(rid: str, data: dict[str, Any], where: str, seen: SeenIds, at: int, *, unit: str,
                     holder: str) -> Record:
    """The record named ``rid`` (found at ``unit`` ``at``: row 3, line 7), failed when an earlier record
    had that id: ids must be unique, the resume journal keys on them."""
    first = seen.check_add(rid, at)
    if first is None:
        return Record(rid, data, where)
    earlier = f"{unit} {first}" if first != "earlier" else f"an earlier {unit}"
    return Record(rid, data, where, error=(f"{where}: duplicate id '{rid}' in {holder}, also at {earlier}; "
                                           f"ids must be unique (the resume journal keys on them)"))


def did_you_mean(name: str, choices: list[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``choices``, or ``""``."""
    lowered = {c.lower(): c for c in choices}
    if name.lower() in lowered:
        return f" (did you mean '{lowered[name.lower()]}'?)"
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --- sources of rows in batches (parquet, sqlite, excel, hf-dataset) -------------------------------


def numbered(batches: Iterator[list[dict[str, Any]]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, row)`` over batches of rows."""
    number = 0
    for batch in batches:
        for data in batch:
            number += 1
            yield number, data


def records_of_batches(rows: Iterator[tuple[int, dict[str, Any]]], *, label: str, id_column: str | None,
                       unit: str = "row") -> Iterator[Record]:
    """Records of ``(row number, row)`` pairs: ids from ``id_column`` or the row number (``row-N``), one
    bad row (an empty or duplicate id) failing alone, naming ``label`` and its row. Shared by the
    columnar sources."""
    seen = SeenIds()
    for number, data in rows:
        where = f"{label} {unit} {number}"

        def parse(data: dict[str, Any] = data, number: int = number, where: str = where) -> Record:
            if id_column is None:
                return Record(f"row-{number}", data, where)
            value = data.get(id_column)
            if value is None or value == "":
                return Record(f"row-{number}", data, where, error=(
                    f"{where}: empty id in column '{id_column}'; give every row an id "
                    f"(this record was named row-{number})"))
            return unique_id_record(str(value), data, where, seen, number, unit=unit,
                                    holder=f"column '{id_column}'")

        record = guarded_record(parse, where=where, default_id=f"row-{number}")
        if record is not None:
            yield record


def check_columns(label: str, available: list[str], id_column: str | None, columns: list[str] | None) -> None:
    """Raise an :class:`InputError` (with a did-you-mean) when ``id_column`` or a wanted column is not in ``available``."""
    for key, col in ([("id_column", id_column)] if id_column else []) + [("columns", c) for c in columns or []]:
        if col not in available:
            raise InputError(f"{label}: column '{col}' (source.{key}) is not in the data{did_you_mean(col, available)}",
                             hint=f"columns: {', '.join(available) or '(none)'}", option=key)


def wanted_columns(id_column: str | None, columns: list[str] | None) -> list[str] | None:
    """The columns to read: ``columns`` with ``id_column`` first when it is not among them; ``None`` for all."""
    if columns is None:
        return None
    wanted = list(columns)
    if id_column is not None and id_column not in wanted:
        wanted.insert(0, id_column)
    return wanted
