"""The text files a user writes (the pipeline file, an assistants file): read as UTF-8, with one clear
:class:`~oaipipe.errors.ConfigError` for bytes that are not UTF-8 and for characters YAML refuses (NUL and
other control characters), naming the file, line, column and (for a byte) its offset, and the fix."""
from __future__ import annotations

import unicodedata
from pathlib import Path

import yaml

from .errors import ConfigError


def line_column(text: str, index: int) -> tuple[int, int]:
    """The line and column (both from 1) of the character at ``index`` of ``text``."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def read_text(path: Path, *, what: str) -> str:
    """The file's text; bytes that are not UTF-8 are a :class:`ConfigError` naming where (OSError passes)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = data[:exc.start]
        line = head.count(b"\n") + 1
        column = exc.start - (head.rfind(b"\n") + 1) + 1
        raise ConfigError(f"{what} is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                          f"cannot be decoded ({exc.reason})", file=path, line=line, column=column,
                          hint="save the file as UTF-8 (in most editors: save with encoding UTF-8)") from None


def yaml_position(exc: yaml.YAMLError, text: str) -> tuple[int | None, int | None]:
    """Line and column (from 1) of a YAML error, for the reader's errors (a refused character) too."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return mark.line + 1, mark.column + 1
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.position, int):
        return line_column(text, exc.position)
    return None, None


def refused_character(exc: yaml.reader.ReaderError, text: str, file: str | Path, *, what: str) -> ConfigError:
    """The :class:`ConfigError` for a character YAML does not allow (NUL, other control characters)."""
    line, column = yaml_position(exc, text)
    char = exc.character if isinstance(exc.character, str) else chr(exc.character)
    name = unicodedata.name(char, "a control character")
    return ConfigError(f"{what} holds a character YAML does not allow: U+{ord(char):04X} ({name})",
                       file=file, line=line, column=column,
                       hint="delete that character: YAML files cannot hold NUL or other control characters")
