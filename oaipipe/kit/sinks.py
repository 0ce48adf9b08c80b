"""What the file sinks share: appending (a flush per record, or per group of records for a sink that
renders in a worker: ``renders_in_worker``), and the resume rules.

On resume (``done_ids`` given) a sink drops what this run wrote for records that did not finish
(:func:`unfinished`), and always drops a last line cut short by a crash, so that every record ends up in
the file exactly once. :class:`AppendingSink` holds the append/flush/fsync plumbing of ``jsonl``, ``csv``
and ``dialogue-jsonl``; :class:`JsonlAppendingSink` adds the JSONL resume rewrite (:func:`reconcile_jsonl`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, ClassVar

from ..base import Context, Sink
from ..errors import InputError, RunLockedError, StorageError
from ..fsutil import atomic_file, write_text_atomic
from ..types import RecordResult, RunInfo
from .sources import FileOptionsT

__all__ = ["AppendingSink", "JsonArrayLog", "JsonlAppendingSink", "MODE_FIELD_DOC", "dumps_indented", "first_line", "jsonl_text", "jsonl_written_by", "reconcile_jsonl", "refused_output", "start_over", "unfinished", "utc_now"]


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds: ``2026-11-25T06:30:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


MODE_FIELD_DOC = ("overwrite: a new run (the first, or --fresh, or after a change) starts the file over; "
                  "append: the file collects every run (each entry carries its run id). A resumed run always "
                  "continues the file")


def refused_output(path: str | Path, message: str, *, fix: str | None = None) -> StorageError:
    """The error of a sink that will not write its output ``path``: something it did not write is there (the
    user's file, another program's table, a file where a folder goes), and it is left as it is.

    An output problem, not an input one: a :class:`~oaipipe.errors.StorageError` (exit 9, ``IO_ERROR``, "an
    output ... cannot be written"), naming the path, with the fix (``fix``; by default: move it away or point
    the sink's ``path:`` at another file, then rerun the same command)."""
    hint = fix or (f"move it away (e.g. `mv {path} {path}.bak`) or point the sink's `path:` at another file, then "
                   f"rerun the same command")
    return StorageError(message, path=path, hint=hint)


def start_over(path: Path, *extra: Path, mode: str, done_ids: set[str] | None,
               ours: Callable[[Path], bool]) -> None:
    """For ``mode: overwrite``, remove the files a *new* run (``done_ids is None``) must start over.

    Only a file that oaipipe wrote (``ours(path)``) is removed: anything else is the user's, and is refused.
    """
    if mode != "overwrite" or done_ids is not None:
        return
    if path.is_file() and path.stat().st_size and not ours(path):
        raise refused_output(path, f"{path} exists and was not written by this sink; it is not overwritten")
    for p in (path, *extra):
        p.unlink(missing_ok=True)


def first_line(path: Path) -> str:
    """The first line of the text file ``path`` (undecodable bytes replaced), ``""`` when it is empty."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        return fh.readline()


def jsonl_written_by(path: Path, *keys: str) -> bool:
    """Whether the first line of ``path`` is a JSON object with all of ``keys`` (one of our lines)."""
    try:
        obj = json.loads(first_line(path))
    except ValueError:
        return False
    return isinstance(obj, dict) and all(k in obj for k in keys)


def unfinished(run_value: Any, record_id: Any, *, run_id: str, done_ids: set[str] | None) -> bool:
    """Whether an entry written with ``run_value``/``record_id`` must go on resume: it belongs to this run
    (``run_id``) and its record is not among ``done_ids`` (it will be processed again). Never on a new run."""
    return done_ids is not None and run_value == run_id and str(record_id) not in done_ids


def reconcile_jsonl(path: Path, *, run_id: str, done_ids: set[str] | None, run_key: str, id_key: str) -> int:
    """Make an existing JSONL log safe to append to; returns the number of lines dropped.

    Drops a truncated last line (a crash mid-write) and, when ``done_ids`` is given (a resumed run), every
    line of this run (``line[run_key] == run_id``) whose ``line[id_key]`` is not in ``done_ids``: those
    records will be processed again. Other lines, including other runs' and lines that are not JSON, are
    kept byte for byte. The file is rewritten atomically, and only if something was dropped.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    needle = json.dumps(run_id).encode("utf-8")
    dropped = 0
    with atomic_file(path, "wb") as out, path.open("rb") as src:
        for line in src:
            if not line.endswith(b"\n"):
                dropped += 1  # truncated by a crash mid-write
                continue
            if done_ids is not None and needle in line:
                try:
                    obj = json.loads(line)
                except ValueError:
                    obj = None
                if isinstance(obj, dict) and unfinished(obj.get(run_key), obj.get(id_key), run_id=run_id,
                                                        done_ids=done_ids):
                    dropped += 1
                    continue
            out.fh.write(line)
        if not dropped:
            out.discard()
    return dropped


class AppendingSink(Sink[FileOptionsT]):
    """A sink that appends to the file ``options.path``, flushing after each record and fsync'ing on close.

    Subclasses open with :meth:`_open_for_append`, check with :meth:`_open_run` and write with
    :meth:`_append`; ``kind`` names the sink in messages.
    """

    kind: ClassVar[str] = "sink"

    def __init__(self, options: FileOptionsT | None = None, context: Context | None = None) -> None:
        super().__init__(options, context)
        self._fh: Any = None
        self._run: RunInfo | None = None

    @property
    def file(self) -> Path:
        return self.context.path(self.options.path)

    def _open_for_append(self, path: Path, run: RunInfo, *, newline: str) -> None:
        self._run = run
        self._fh = path.open("a", encoding="utf-8", newline=newline)

    def _open_run(self) -> RunInfo:
        """The run being written; a ``RuntimeError`` before :meth:`open`."""
        if self._fh is None or self._run is None:
            raise RuntimeError(f"{self.kind}: write() before open()")
        return self._run

    def _append(self, text: str) -> None:
        self._fh.write(text)
        self._fh.flush()

    def write(self, result: RecordResult) -> None:
        """For a ``renders_in_worker`` subclass: append what :meth:`render` gives, and flush."""
        text = self.render(result, self._open_run())
        if text is None:
            raise NotImplementedError(f"{self.kind}: render() gave None and write() is not overridden")
        if text:
            self._append(text)

    def write_rendered(self, text: str) -> None:
        """Append text :meth:`render` made (in this process or a worker's), without flushing."""
        self._open_run()
        self._fh.write(text)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            finally:
                self._fh.close()
                self._fh = None


class JsonlAppendingSink(AppendingSink[FileOptionsT]):
    """An :class:`AppendingSink` of JSON lines that carry the run id (``run_key``) and record id (``id_key``)."""

    run_key: ClassVar[str]
    id_key: ClassVar[str]

    def open(self, run: RunInfo, done_ids: set[str] | None = None) -> None:
        path = self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        start_over(path, mode=getattr(self.options, "mode", "append"), done_ids=done_ids,
                   ours=lambda p: jsonl_written_by(p, self.run_key, self.id_key))
        reconcile_jsonl(path, run_id=run.run_id, done_ids=done_ids, run_key=self.run_key, id_key=self.id_key)
        self._open_for_append(path, run, newline="\n")

    def _append_objects(self, objects: list[dict[str, Any]]) -> None:
        """Append one JSON line per object, in one write."""
        self._append(jsonl_text(objects))


def jsonl_text(objects: list[dict[str, Any]]) -> str:
    """One JSON line per object (``ensure_ascii=False``, anything else as ``str``), joined."""
    return "".join([_LINE(obj) + "\n" for obj in objects])


_LINE = json.JSONEncoder(ensure_ascii=False, default=str).encode  # json.dumps(obj, ensure_ascii=False, default=str)


# --- one JSON array that grows at its tail -------------------------------------------------------------

_NOT_WS = re.compile(r"[^ \t\r\n]")
_LEAF = json.JSONEncoder(ensure_ascii=False, default=str).encode  # the C encoder (json.dumps with indent is Python)
_SIMPLE: dict[type, Callable[[Any], str]] = {
    str: encode_basestring, int: int.__repr__, type(None): lambda v: "null", bool: lambda v: "true" if v else "false",
    float: lambda v: float.__repr__(v) if v - v == 0 else _LEAF(v),  # NaN and infinities as json writes them
}


def dumps_indented(value: Any, indent: int, level: int = 0) -> str:
    """``json.dumps(value, indent=indent, ensure_ascii=False, default=str)``, character for character, with
    every line after the first indented ``level`` times more. Faster: json.dumps turns to pure Python as
    soon as ``indent`` is set, while here the leaves are encoded directly."""
    if isinstance(value, dict) and value:
        parts = []
        for key, item in value.items():
            if not isinstance(key, str):  # json's key conversions (numbers, None, booleans): leave them to json
                return json.dumps(value, ensure_ascii=False, default=str, indent=indent).replace(
                    "\n", "\n" + " " * (indent * level))
            parts.append(encode_basestring(key) + ": " + dumps_indented(item, indent, level + 1))
        inner = "\n" + " " * (indent * (level + 1))
        return "{" + inner + ("," + inner).join(parts) + "\n" + " " * (indent * level) + "}"
    if isinstance(value, list | tuple) and value:
        inner = "\n" + " " * (indent * (level + 1))
        return ("[" + inner + ("," + inner).join([dumps_indented(v, indent, level + 1) for v in value])
                + "\n" + " " * (indent * level) + "]")
    simple = _SIMPLE.get(type(value))
    return simple(value) if simple is not None else _LEAF(value)


_DECODER = json.JSONDecoder()
_FAILED = object()


def _utf8(value: Any) -> Any:
    """A string parsed from Latin-1 text back to what the UTF-8 bytes said (see :class:`_ArrayWalk`)."""
    if isinstance(value, str):
        try:
            return value.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return value
    return value


class _ArrayWalk:
    """One pass over the elements of a JSON array in a file, from byte ``start``, a block at a time (flat
    memory). Iterating yields ``(start, end, element)`` with byte offsets; then ``end`` is the offset just
    after the last complete element (``start`` if none), ``closed`` says the array ended with ``]`` and
    nothing but whitespace, and ``problem`` is ``(offset, reason)`` where the walk stopped short otherwise.

    ``document=True`` expects the opening ``[`` first; else ``after_element`` says whether an element comes
    before ``start``. The file is decoded as Latin-1 so that a character offset is a byte offset; strings of
    the yielded elements are UTF-8 read as Latin-1: pass the ones you need through :func:`_utf8`.
    """

    BLOCK = 1 << 20

    def __init__(self, fh: Any, start: int, *, document: bool = False, after_element: bool = False) -> None:
        fh.seek(start)
        self.fh = fh
        self.base = start
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.document = document
        self.after_element = after_element
        self.start = start
        self.end = start
        self.count = 0
        self.closed = False
        self.problem: tuple[int, str] | None = None

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self.fh.read(self.BLOCK)
        if not data:
            self.eof = True
            return False
        if self.pos > self.BLOCK:  # forget what was walked over
            self.base += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += data.decode("latin-1")
        return True

    def _peek(self) -> str | None:
        """The next character that is not whitespace (``pos`` moves to it), or ``None`` at the end of the file."""
        while True:
            found = _NOT_WS.search(self.buf, self.pos)
            if found is not None:
                self.pos = found.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self._more():
                return None

    def _stop(self, reason: str, at: int | None = None) -> None:
        self.problem = (self.base + (self.pos if at is None else at), reason)

    def _element(self) -> tuple[Any, int] | object:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(self.buf) - 64 or exc.msg.startswith("Unterminated string")
                if cut and self._more():
                    continue  # the block ended inside the element: read on
                self._stop(exc.msg, exc.pos)
                return _FAILED
            if end == len(self.buf) and not isinstance(value, dict | list | str) and self._more():
                continue  # a number the block cut short
            return value, end

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        if self.document:
            char = self._peek()
            if char != "[":
                self._stop("holds a JSON object, not an array" if char == "{" else "expecting '['")
                return
            self.pos += 1
        expect = "comma" if self.after_element else "first"
        while True:
            char = self._peek()
            if char is None:
                self._stop("the array is not closed")
                return
            if char == "]" and expect != "value":
                self.pos += 1
                if self._peek() is not None:
                    self._stop("text after the closing ]")
                    return
                self.closed = True
                return
            if expect == "comma":
                if char != ",":
                    self._stop("expecting ',' or ']' after an entry")
                    return
                self.pos += 1
                expect = "value"
                continue
            found = self._element()
            if not isinstance(found, tuple):  # _FAILED: the walk stopped
                return
            value: Any = found[0]
            end: int = found[1]
            start, self.pos = self.base + self.pos, end
            self.end = self.base + end
            self.count += 1
            expect = "comma"
            yield start, self.end, value


class JsonArrayLog:
    """A log kept as ONE JSON array document (``[entry, entry, ...]``) that grows at its tail.

    * :meth:`append` writes the new entries and the closing bracket over the old closing bracket, in one
      positioned write: it costs the size of the entries, never of the document, and the document is
      valid JSON after every append. A new document is laid out as ``json.dumps(entries, indent=indent)``.
    * While a run writes the document, a marker ``.<name>.writing`` next to it says where that run's
      writes began (every byte before is a finished document); :meth:`close` removes it. Found at
      :meth:`open` (the writer was killed), it bounds what the kill may have torn: that part is walked and
      cut back to the last complete entry. Nothing else is ever cut: a document without a marker must be
      whole, or it is refused and left as it is (it may not be ours).
    * :meth:`open` reads only the tail of a document for a new run (its last entry must pass ``is_entry``),
      and walks it once for a resumed run (``done_ids`` given) to drop this run's entries of records that did
      not finish (:func:`unfinished`, by ``run_key``/``id_key``), so each record is in it exactly once.
    * The document is locked (``flock``) while open: a second writer is refused instead of interleaving.
    """

    def __init__(self, path: Path, *, indent: int | None, label: str, run_key: str, id_key: str,
                 is_entry: Callable[[Any], bool]) -> None:
        self.path = path
        self.indent = indent
        self.label = label
        self.run_key = run_key
        self.id_key = id_key
        self.is_entry = is_entry
        self._fh: Any = None
        self._runs: set[Any] = set()
        self._torn = False  # a failed write left a tail the marker must still cover
        self._end = 0  # where the closing bracket starts: just after the last entry, or after "["
        self._empty = True
        pad = " " * (indent or 0)
        self._sep = ", " if indent is None else ",\n" + pad
        self._first_sep = "" if indent is None else "\n" + pad

    @property
    def marker(self) -> Path:
        return self.path.with_name(f".{self.path.name}.writing")

    # -- writing ------------------------------------------------------------------------------------------

    def _closing(self) -> bytes:
        return b"]\n" if self._empty or self.indent is None else b"\n]\n"

    def _render(self, entry: Any) -> str:
        if self.indent is None:
            return json.dumps(entry, ensure_ascii=False, default=str)
        return dumps_indented(entry, self.indent, 1)

    def _write_at(self, offset: int, data: bytes) -> None:
        self._fh.seek(offset)
        view = memoryview(data)
        while view:
            view = view[self._fh.write(view):]

    def append(self, entries: list[Any]) -> int:
        """Add ``entries`` at the end of the array; returns the number of bytes written."""
        if self._fh is None:
            raise RuntimeError(f"{self.label}: append() before open()")
        if not entries:
            return 0
        was_empty = self._empty
        text = (self._first_sep if was_empty else self._sep) + self._sep.join(map(self._render, entries))
        data = text.encode("utf-8")
        self._empty = False
        closing = self._closing()
        try:
            self._write_at(self._end, data + closing)
        except BaseException:  # a full disk, Ctrl-C mid-write: put the closing bracket back if we can
            self._empty = was_empty
            try:
                self._fh.truncate(self._end)
                self._write_at(self._end, self._closing())
            except OSError:
                self._torn = True  # the marker stays: the next open cuts the tail
            raise
        self._end += len(data)
        return len(data) + len(closing)

    def close(self) -> None:
        if self._fh is None:
            return
        try:
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()  # releases the lock
            self._fh = None
        if not self._torn:
            self.marker.unlink(missing_ok=True)

    # -- opening ------------------------------------------------------------------------------------------

    def written_by_us(self, path: Path | None = None) -> bool:
        """Whether the document (``path`` is ignored: it is this log's) is one this log writes, which
        ``mode: overwrite`` may remove: a killed writer's marker names it, or it is a whole JSON array whose
        first entries pass ``is_entry``."""
        saved = self._fh
        try:
            with open(self.path, "rb", buffering=0) as self._fh:
                if self._marker_region() is not None:
                    return True
                walk = _ArrayWalk(self._fh, 0, document=True)
                for n, (_, _, entry) in enumerate(walk):
                    if n < 5 and not self.is_entry(entry):
                        return False
                return walk.problem is None
        except OSError:
            return False
        finally:
            self._fh = saved

    def open(self, *, run_id: str, done_ids: set[str] | None,
             adopt: list[tuple[Any, Any, list[Any]]] | None = None) -> None:
        """Check (and repair) the document, or start one; then it takes :meth:`append`.

        ``adopt``: ``(run, record id, entries)`` left by an older writer; each is appended unless the
        document already holds that record, or it is this run's and not in ``done_ids``.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        self._fh = os.fdopen(fd, "r+b", buffering=0)
        try:
            self._lock()
            present: set[tuple[Any, str]] = set()
            self._runs = {run_id, *(a[0] for a in adopt or ())}
            region = self._marker_region()
            if self._first_char() is None:  # no file yet, or only whitespace: a new document
                self._new_document()
            elif done_ids is not None or adopt:
                self._walk_all(run_id, done_ids, None if region is None else region.start, present,
                               {a[0] for a in adopt or ()})
            elif region is not None:  # a new run after a killed writer: cut its torn tail, if any
                self._commit(region.end, empty=region.count == 0 and not region.after_element)
            else:
                self._check_tail()
            for run, record_id, entries in adopt or ():
                if (run, str(record_id)) not in present and not unfinished(run, record_id, run_id=run_id,
                                                                            done_ids=done_ids):
                    self.append(entries)
                    present.add((run, str(record_id)))
        except BaseException:
            self._fh.close()
            self._fh = None
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"{self.label}: {self.path} is being written by another run (it is locked)",
                                 path=self.path,
                                 hint="wait until that run ends, or point this sink's `path:` at another file") from None
        except OSError:  # a file system without locks: go on unlocked
            pass

    def _size(self) -> int:
        return os.fstat(self._fh.fileno()).st_size

    def _read(self, offset: int, size: int) -> bytes:
        self._fh.seek(offset)
        return self._fh.read(size) or b""

    def _first_char(self) -> int | None:
        """The offset of the first byte that is not whitespace, or ``None``."""
        offset = 0
        while True:
            block = self._read(offset, 1 << 16)
            if not block:
                return None
            stripped = block.lstrip(b" \t\r\n")
            if stripped:
                return offset + len(block) - len(stripped)
            offset += len(block)

    def _marker_region(self) -> _ArrayWalk | None:
        """The part a killed writer wrote, walked, if its marker is for THIS file: same inode, a document
        before it, and every whole entry in it written by the marker's runs. Else ``None``."""
        try:
            mark = json.loads(self.marker.read_text(encoding="utf-8"))
            stat = os.fstat(self._fh.fileno())
            start, runs = int(mark["start"]), set(mark["runs"])
            if (mark.get("ino"), mark.get("dev")) != (stat.st_ino, stat.st_dev) or not 0 < start <= stat.st_size:
                return None
        except (OSError, ValueError, TypeError, KeyError):
            return None
        before = self._read(start - 1, 1)
        if before not in (b"[", b"}"):
            return None
        walk = _ArrayWalk(self._fh, start, after_element=before == b"}")
        for _, _, entry in walk:
            if not isinstance(entry, dict) or _utf8(entry.get(self.run_key)) not in runs:
                return None
        return walk

    def _new_document(self) -> None:
        self._mark(1)  # before the file changes: a kill between leaves an empty file, a new document again
        self._fh.truncate(0)
        self._end, self._empty = 1, True
        self._write_at(0, b"[" + self._closing())

    def _mark(self, start: int) -> None:
        stat = os.fstat(self._fh.fileno())
        write_text_atomic(self.marker, json.dumps({"start": start, "ino": stat.st_ino, "dev": stat.st_dev,
                                                   "runs": sorted(self._runs, key=str), "pid": os.getpid()},
                                                  ensure_ascii=False) + "\n")

    def _commit(self, end: int, *, empty: bool) -> None:
        """The document is whole up to ``end`` (just after its last entry, or after ``[``): mark that, then
        make the closing bracket follow there, cutting anything after it (a torn or dropped tail)."""
        self._mark(end)
        self._end, self._empty = end, empty
        closing = self._closing()
        if self._size() != end + len(closing) or self._read(end, len(closing)) != closing:
            self._fh.truncate(end)
            self._write_at(end, closing)

    def _check_tail(self) -> None:
        """A new run on a document without a marker: it must start with ``[`` and end with a whole entry
        that ``is_entry`` accepts (or be ``[]``), then ``]``. Only the tail is read."""
        size, first = self._size(), self._first_char()
        if first is None or self._read(first, 1) != b"[":
            return self._refuse()
        window = 1 << 16
        while True:
            base = max(0, size - window)
            text = self._read(base, size - base).decode("latin-1")
            body = text.rstrip(" \t\r\n")
            if not body.endswith("]"):
                return self._refuse()
            inner = body[:-1].rstrip(" \t\r\n")
            last = len(inner) - 1  # the character before "]"
            if last >= 0 and inner[last] == "[" and base + last == first:
                return self._commit(first + 1, empty=True)
            if last >= 0 and inner[last] != "}":
                return self._refuse()
            found = self._entry_ending_at(text, last) if last >= 0 else None
            before = text[:found[0]].rstrip(" \t\r\n") if found is not None else ""
            if not before and base > 0:
                window *= 4  # the last entry began before the window
                continue
            if found is None or not before or not (
                    before[-1] == "," or (before[-1] == "[" and base + len(before) - 1 == first)):
                return self._refuse()
            if not self.is_entry(found[1]):
                shown = _utf8(json.dumps(found[1], ensure_ascii=False))
                return self._refuse(f"its last entry is not one this sink writes: {shown[:80]}")
            return self._commit(base + last + 1, empty=False)

    @staticmethod
    def _entry_ending_at(text: str, last: int) -> tuple[int, Any] | None:
        """The JSON object that ends at ``text[last]`` (a ``}``): the one ``{`` from which exactly that much
        text parses. (A ``{`` inside a string parses to at most ``{}`` within the string, and one of a
        nested object ends before ``last``: only the object's own ``{`` does.)"""
        stop = last
        while (start := text.rfind("{", 0, stop)) >= 0:
            try:
                return start, json.loads(text[start:last + 1])
            except ValueError:
                stop = start
        return None

    def _walk_all(self, run_id: str, done_ids: set[str] | None, start: int | None,
                  present: set[tuple[Any, str]], runs: set[Any]) -> None:
        """Walk the whole document: drop this run's unfinished records, note which records of ``runs`` it
        holds; a torn tail is cut only past ``start`` (the killed writer's part)."""
        walk = _ArrayWalk(self._fh, 0, document=True)
        kept_end: int | None = None  # just after the last entry kept
        dropped = False
        later: list[tuple[int, int, bool]] = []  # every entry from the first dropped one on: (start, end, drop)
        for begin, end, entry in walk:
            if not (isinstance(entry, dict) and self.is_entry(entry)):
                line, column = self._line_column(begin)
                return self._refuse(f"its entry at line {line}, column {column} is not one this sink writes: "
                                    f"{_utf8(json.dumps(entry, ensure_ascii=False))[:80]}")
            run, record_id = _utf8(entry.get(self.run_key)), _utf8(entry.get(self.id_key))
            drop = unfinished(run, record_id, run_id=run_id, done_ids=done_ids)
            if run in runs and not drop:
                present.add((run, str(record_id)))
            if drop or dropped:
                dropped = True
                later.append((begin, end, drop))
            if not drop and not dropped:
                kept_end = end
        if walk.problem is not None and (start is None or walk.problem[0] < start or walk.end < start):
            return self._refuse(walk=walk)
        opening = self._first_char()
        assert opening is not None
        if any(not drop for _, _, drop in later):
            return self._rewrite(kept_end, opening + 1, later)
        self._commit(opening + 1 if kept_end is None else kept_end, empty=kept_end is None)

    def _rewrite(self, kept_end: int | None, after_opening: int, later: list[tuple[int, int, bool]]) -> None:
        """Entries to drop sit before entries to keep (rare: a record redone mid-log): write the document
        again without them, atomically (a temp file moved into place), then reopen it."""
        head = after_opening if kept_end is None else kept_end
        with atomic_file(self.path, "wb") as out:
            self._fh.seek(0)
            remaining = head
            while remaining > 0:
                block = self._fh.read(min(remaining, 1 << 20))
                if not block:
                    raise InputError(f"{self.label}: {self.path} changed while it was being read", hint="rerun")
                out.fh.write(block)
                remaining -= len(block)
            empty = kept_end is None
            for begin, end, drop in later:
                if not drop:
                    out.fh.write((self._first_sep if empty else self._sep).encode("utf-8") + self._read(begin, end - begin))
                    empty = False
            self._empty = empty
            out.fh.write(self._closing())
            end = out.fh.tell() - len(self._closing())
        self._fh.close()
        self._fh = os.fdopen(os.open(self.path, os.O_RDWR), "r+b", buffering=0)
        self._lock()
        self._commit(end, empty=empty)

    def _refuse(self, reason: str | None = None, *, walk: _ArrayWalk | None = None) -> None:
        if reason is None:
            if walk is None:
                walk = _ArrayWalk(self._fh, 0, document=True)
                for _ in walk:
                    pass
            if walk.problem is None:  # whole, but not an array whose entries are ours
                reason = "it is not an array of entries this sink writes"
            elif walk.problem[1].startswith("holds"):
                reason = walk.problem[1] + " of entries"
            else:
                line, column = self._line_column(walk.problem[0])
                reason = f"it is not a valid JSON array (line {line}, column {column}: {walk.problem[1]})"
        raise refused_output(self.path, f"{self.label}: {self.path} exists but {reason}; it will not be overwritten")

    def _line_column(self, offset: int) -> tuple[int, int]:
        line, start, done = 1, 0, 0
        self._fh.seek(0)
        while done < offset:
            block = self._fh.read(min(1 << 20, offset - done))
            if not block:
                break
            line += block.count(b"\n")
            if b"\n" in block:
                start = done + block.rindex(b"\n") + 1
            done += len(block)
        return line, offset - start + 1
