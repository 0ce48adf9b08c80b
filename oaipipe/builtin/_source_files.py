"""What the file and folder sources (``csv``, ``jsonl``, ``images``) share: resolving ``path`` and saying
clearly when it is missing or of the wrong kind, and a cheap line count."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..base import Source
from ..errors import InputError

__all__ = ["COUNT_LIMIT_BYTES", "FileSource", "checked_path", "count_lines", "missing_file_error"]

#: above this size ``count()`` answers None instead of scanning the file
COUNT_LIMIT_BYTES = 50 * 1024 * 1024


def missing_file_error(kind: str, path: Path, given: str, base_dir: Path, *, folder: bool = False) -> InputError:
    what = "folder" if folder else "file"
    return InputError(
        f"{kind} {what} not found: {given} (looked for {path}, resolved against {base_dir})",
        hint="paths in pipeline.yaml are relative to the pipeline file's folder; check the spelling "
        "or give an absolute path",
    )


def checked_path(kind: str, given: str, context: Any, *, hint: str, folder: bool = False) -> Path:
    """``given`` resolved against the pipeline file's folder, checked to be an existing file (or, with
    ``folder=True``, folder); an :class:`InputError` naming ``kind`` otherwise (``hint`` when it exists but
    is of the other kind)."""
    path: Path = context.path(given)
    if path.is_dir() if folder else path.is_file():
        return path
    if path.is_file() if folder else path.is_dir():
        what = "a file, not a folder" if folder else "a folder, not a file"
        raise InputError(f"{kind} source path is {what}: {path}", hint=hint)
    raise missing_file_error(kind, path, given, context.base_dir, folder=folder)


class FileSource(Source):
    """A source that reads the one file ``options.path``; ``kind`` and ``wrong_kind_hint`` word the errors."""

    kind: ClassVar[str]
    wrong_kind_hint: ClassVar[str]
    options: Any

    @property
    def file(self) -> Path:
        return self.context.path(self.options.path)

    def _check_exists(self) -> Path:
        return checked_path(self.kind, self.options.path, self.context, hint=self.wrong_kind_hint)


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
