"""One exception tree for everything oaipipe raises on purpose.

Every message says what went wrong *and what to do about it*; where a file is involved it names the
file (and line, when known). Secrets never appear in a message: use :func:`redact` on anything that might
hold one.

::

    OaipipeError
     ├── ConfigError                 pipeline.yaml / --set / plugin options are wrong
     │    └── UnknownPluginError     a `type:` (or analyzer) name that no plugin registers
     ├── PluginError                 a plugin raised in a lifecycle hook
     │    └── PluginLoadError        a `plugins:` entry or entry point that cannot be imported
     ├── InputError                  the source cannot be read (missing file, missing column, ...)
     ├── RecordError                 one record failed; the run goes on (logged to errors.jsonl)
     │    ├── TemplateError          a `{field}` the record does not have
     │    └── ImageError             an image that is missing, unreadable, corrupt or too large
     ├── BackendError                a model backend failed
     │    ├── AuthenticationError    401/403: the key was refused or is missing
     │    ├── BadRequestError        400/404/422: the request itself is wrong (never retried)
     │    ├── RateLimitError         429 after all retries
     │    ├── ServerError            5xx after all retries
     │    └── BackendConnectionError timeouts, refused or dropped connections after all retries
     ├── DatasetError                a fine-tuning dataset cannot be built or fails validation
     ├── TrainingError               a fine-tuning job failed, or a job id is unknown
     ├── RunAborted                  --max-failures / --max-cost / a changed pipeline stopped the run
     ├── StorageError                a file or folder cannot be written (or read back): permissions, a full
     │                               disk, a read-only file system, a run directory deleted mid-run
     └── RunLockedError              another run of this pipeline (or another run writing the same output
                                     file, or another process writing the job registry) holds the lock

Each class carries the :class:`ExitCode` the command line exits with (``exit_code``).
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import functools
import json
import os
import re
import threading
import urllib.parse
from pathlib import Path
from typing import Any

__all__ = [
    "AuthenticationError",
    "BackendConnectionError",
    "BackendError",
    "BadRequestError",
    "ConfigError",
    "DatasetError",
    "ExitCode",
    "ImageError",
    "InputError",
    "OaipipeError",
    "PluginError",
    "PluginLoadError",
    "Problem",
    "RateLimitError",
    "RecordError",
    "RedactingStream",
    "RunAborted",
    "RunLockedError",
    "ServerError",
    "StorageError",
    "TemplateError",
    "TrainingError",
    "UnknownPluginError",
    "mask_secrets",
    "redact",
    "redact_data",
    "register_secret",
]


class ExitCode(enum.IntEnum):
    """What the ``oaipipe`` command exits with (pytest's ``ExitCode`` is the model).

    Commands return a member; every error class names its member in ``exit_code``. The values are a
    public contract (scripts test them): never renumber, only add.
    """

    #: success: every record done, the command did what was asked
    OK = 0
    #: the run finished but some records failed (see errors.jsonl), or a ``jobs wait`` / ``train --wait``
    #: stopped waiting (``--timeout``) while the job still runs
    RECORDS_FAILED = 1
    #: usage or configuration error: bad flags, pipeline.yaml, plugin options, plugin import, a plugin
    #: that failed in a hook
    USAGE_ERROR = 2
    #: the input cannot be read (missing file, missing column)
    INPUT_ERROR = 3
    #: a backend error stopped the command
    BACKEND_ERROR = 4
    #: authentication: the key is missing or was refused
    AUTH_ERROR = 5
    #: a fine-tuning dataset is invalid (also the dataset of a run's ``train:`` step)
    DATASET_ERROR = 6
    #: a fine-tuning job failed or is unknown (also the job of a run's ``train:`` step)
    TRAINING_ERROR = 7
    #: the run was stopped on purpose (``--max-failures``, ``--max-cost`` reached, a changed pipeline)
    ABORTED = 8
    #: an output or state file cannot be written or read (the message names the path)
    IO_ERROR = 9
    #: another process holds a run's lock or the job registry's (or is launching a job on the same dataset)
    RUN_LOCKED = 10
    #: interrupted (Ctrl-C, SIGTERM); rerun the same command to resume
    INTERRUPTED = 130


class OaipipeError(Exception):
    """Base of every error oaipipe raises on purpose. ``str(err)`` is the message a user sees."""

    #: what the command line exits with for this kind of error
    exit_code: ExitCode = ExitCode.RECORDS_FAILED
    #: the option of the component's block the error is about (``path``), when one is: whoever builds the
    #: component from a pipeline file places the error on that option's line (``source.path``)
    option: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        self._problems: list[Problem] = []
        super().__init__(self.__str__())

    def __str__(self) -> str:
        placed = self._problems[0] if len(self._problems) == 1 else None
        if placed is not None and placed.where():  # placed in a file by whoever found it: say where
            return str(placed)
        return self._text()

    def _text(self) -> str:
        """The message and its hint, redacted (no place)."""
        text = redact(self.message)
        if self.hint:
            text += f"\n  hint: {redact(self.hint)}"
        return text

    @property
    def problems(self) -> list[Problem]:
        """What is wrong, one by one, each with its place and fix (``oaipipe validate --json``)."""
        return list(self._problems) or [Problem(self.message, hint=self.hint)]

    def set_problems(self, problems: list[Problem]) -> None:
        """Say what :attr:`problems` lists (an error placed by whoever found it, or several of a file)."""
        self._problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of a file: where it is, what is wrong and the fix (``oaipipe validate --json`` lists these)."""

    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    key: str | None = None
    hint: str | None = None
    #: where the value came from when it is not a line of the file: ``--set source.path=x.csv``
    origin: str | None = None

    @classmethod
    def of(cls, exc: OaipipeError, *, file: str | None = None, line: int | None = None,
           column: int | None = None, key: str | None = None, origin: str | None = None) -> Problem:
        """An error that carries no place of its own (an :class:`InputError`, say), placed at ``key``."""
        return cls(exc.message, file=file, line=line, column=column, key=key, hint=exc.hint, origin=origin)

    def where(self) -> str:
        """``file:line:column: key: `` (the parts that are known), or ``file: key (from --set k=v): `` for a
        value given on the command line."""
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        if self.key:
            where += f"{self.key} (from {self.origin}): " if self.origin else f"{self.key}: "
        return where

    def __str__(self) -> str:
        text = redact(self.where() + self.message)
        return text + (f"\n  hint: {redact(self.hint)}" if self.hint else "")

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "key": self.key,
                "message": redact(self.message), "hint": redact(self.hint) if self.hint else None,
                "origin": redact(self.origin) if self.origin else None}


class ConfigError(OaipipeError):
    """The pipeline file, a ``--set`` override or a plugin's options block is wrong.

    ``problems`` lists what is wrong one by one: this error alone, or (``problems=``) each of several found
    in one pass (``oaipipe validate`` prints them all).
    """

    exit_code = ExitCode.USAGE_ERROR

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
        hint: str | None = None,
        problems: list[Problem] | None = None,
        origin: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.column = column
        self.key = key
        #: where the value came from when it is not a line of the file (``--set source.path=x.csv``)
        self.origin = origin
        #: the message without the place
        self.detail = message
        where = Problem("", file=self.file, line=line, column=column, key=key, origin=origin).where()
        super().__init__(where + message, hint=hint)
        self._problems = list(problems or [])

    def __str__(self) -> str:
        return self._text()  # the message carries the place already

    def set_origin(self, origin: str) -> None:
        """Say where the value of :attr:`key` came from (a ``--set``): the message names it instead of a line.
        For an error of one problem (several are listed again by whoever collects them)."""
        self.origin = origin
        self.message = Problem("", file=self.file, line=self.line, column=self.column, key=self.key,
                               origin=origin).where() + self.detail
        self.args = (self._text(),)

    @property
    def problems(self) -> list[Problem]:
        """Each problem with its own place and fix (one: this error itself, unless several were given)."""
        if self._problems:
            return list(self._problems)
        return [Problem(self.detail, file=self.file, line=self.line, column=self.column, key=self.key,
                        hint=self.hint, origin=self.origin)]


class UnknownPluginError(ConfigError):
    """A name that no loaded plugin registers; the message lists the names that exist."""


class PluginError(OaipipeError):
    """A plugin misbehaved: it raised in a hook, or broke the contract of its base class."""

    exit_code = ExitCode.USAGE_ERROR


class PluginLoadError(PluginError):
    """A plugin module could not be found or imported, or does not fit the hook specs."""


class InputError(OaipipeError):
    """The input cannot be read at all (as opposed to one bad record). ``option`` names the option of the
    component's block it is about (``path``), when one is: the error is then placed on that option's line."""

    exit_code = ExitCode.INPUT_ERROR

    def __init__(self, message: str, *, hint: str | None = None, option: str | None = None) -> None:
        self.option = option
        super().__init__(message, hint=hint)


class RecordError(OaipipeError):
    """One record cannot be processed. The runner logs it to ``errors.jsonl`` and goes on."""


class TemplateError(RecordError):
    """A ``{field}`` template names a field the record does not have."""


class ImageError(RecordError):
    """An image is missing, unreadable, corrupt or over the size cap."""


class BackendError(OaipipeError):
    """A backend call failed. ``status`` is the HTTP status when there was one."""

    exit_code = ExitCode.BACKEND_ERROR
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(message, hint=hint)


class AuthenticationError(BackendError):
    """The server refused the key (401/403), or no key was given where one is needed."""

    exit_code = ExitCode.AUTH_ERROR


class BadRequestError(BackendError):
    """400/404/422: the request is wrong; retrying will not help."""


class RateLimitError(BackendError):
    """429 Too Many Requests, still failing after every retry."""

    retryable = True


class ServerError(BackendError):
    """5xx from the server, still failing after every retry."""

    retryable = True


class BackendConnectionError(BackendError):
    """Timeout, refused or dropped connection, still failing after every retry."""

    retryable = True


class DatasetError(OaipipeError):
    """A fine-tuning dataset cannot be built, or it fails validation."""

    exit_code = ExitCode.DATASET_ERROR


class TrainingError(OaipipeError):
    """A fine-tuning job failed or was cancelled, or a job id is unknown."""

    exit_code = ExitCode.TRAINING_ERROR


class RunAborted(OaipipeError):
    """The run was stopped on purpose: too many failures, the cost budget, a changed pipeline."""

    exit_code = ExitCode.ABORTED


class StorageError(OaipipeError):
    """A file or folder oaipipe must write (or read back) cannot be: no permission, a full disk or quota, a
    read-only file system, a folder removed while a run was writing it, an output file a sink did not write
    (``oaipipe.kit.refused_output``: left as it is). ``path`` is the file concerned.

    :meth:`from_os_error` turns an ``OSError`` into one, naming the path and what to do about it.
    """

    exit_code = ExitCode.IO_ERROR
    #: the ``errno`` of the ``OSError`` it came from, if any
    errno: int | None = None

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(message, hint=hint)

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | Path | None = None, *, doing: str | None = None) -> StorageError:
        """``cannot write out/records.jsonl: Permission denied`` with a hint for the errno.

        ``path`` is used when the error does not name a file itself (a ``write()`` on an open file);
        ``doing`` is the verb (default: ``write`` for a full or read-only disk, else ``access``)."""
        if doing is None:
            doing = "write" if exc.errno in _WRITE_ERRNOS else "access"
        where = exc.filename if exc.filename is not None else path
        shown = os.fsdecode(where) if where is not None else "its output"
        reason = exc.strerror or type(exc).__name__
        hint = _STORAGE_HINTS.get(exc.errno or 0, "fix the cause and rerun the same command: finished records "
                                                  "are kept")
        if exc.filename2 is not None:
            shown += f" -> {os.fsdecode(exc.filename2)}"
        err = cls(f"cannot {doing} {shown}: {reason}", path=where, hint=hint)
        err.errno = exc.errno
        return err


#: errnos that are a problem of the storage (as opposed to a network error that happens to be an OSError)
STORAGE_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EFBIG", "EIO", "ENOENT", "ENOTDIR", "EISDIR",
        "EEXIST", "ENAMETOOLONG", "ELOOP", "EMLINK", "ESTALE", "ETXTBSY", "EBUSY", "EXDEV", "ENOTEMPTY",
        "EMFILE", "ENFILE",
    ) if hasattr(errno, name)
)

_WRITE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG") if hasattr(errno, n))
_RERUN = "then rerun the same command: finished records are kept"
_STORAGE_HINTS: dict[int, str] = {
    code: hint for name, hint in (
        ("EACCES", f"oaipipe may not write there: fix the permissions or point the path elsewhere, {_RERUN}"),
        ("EPERM", f"oaipipe may not write there: fix the permissions or point the path elsewhere, {_RERUN}"),
        ("EROFS", f"that file system is read-only: point the path (or run.dir) elsewhere, {_RERUN}"),
        ("ENOSPC", f"the disk is full: free some space, {_RERUN}"),
        ("EDQUOT", f"the disk quota is used up: free some space, {_RERUN}"),
        ("EFBIG", f"the file is larger than the file system allows: point the path elsewhere, {_RERUN}"),
        ("ENOTDIR", "a part of that path is a file, not a folder: point the path elsewhere"),
        ("EISDIR", "that path is a folder: give a file name"),
        ("EEXIST", "something is in the way (a file where a folder is needed?): move it away or point the path "
                   "elsewhere"),
        ("ENOENT", f"the folder does not exist (any more): create it or point the path elsewhere, {_RERUN}"),
        ("EMFILE", "too many open files: raise the limit (ulimit -n) or lower backend.concurrency"),
        ("ENFILE", "too many open files on the system: close other programs or lower backend.concurrency"),
    ) if (code := getattr(errno, name, None)) is not None
}


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a problem of the storage: an ``OSError`` with a storage errno or a file name,
    and not a network error (``ConnectionError``, ``TimeoutError``, ``socket`` errors)."""
    import socket

    if not isinstance(exc, OSError) or isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return False
    return exc.errno in STORAGE_ERRNOS or exc.filename is not None


class RunLockedError(OaipipeError):
    """Another run of this pipeline holds its lock (or another run is writing the same output file, another
    process the job registry, or another launch the same dataset's job).

    The lock is an OS lock (``flock``) held by the running process: it ends with that process, whatever
    way it ends, so there is never a stale lock to delete. ``holder`` is what the holder wrote about
    itself (``pid``, ``host``, ``since``, ``pipeline``, ``command``), as far as it could be read.
    """

    exit_code = ExitCode.RUN_LOCKED

    def __init__(self, message: str, *, path: str | Path | None = None, holder: dict[str, Any] | None = None,
                 hint: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.holder = dict(holder or {})
        super().__init__(message, hint=hint)


# --- secrets ------------------------------------------------------------------------------------
#
# Masking is by value: every key oaipipe resolves (oaipipe.keys), every value read from ${env:...}
# (oaipipe.config) and ``oaipipe serve --api-key`` is registered, and OPENAI_API_KEY always counts.
# A registered value is masked as it is, and as JSON, Python repr and URL encoding show it, so that it is
# found in serialized text too. Values under 4 characters are not registered (see config.MIN_SECRET_LENGTH).
#
# The choke points that apply it: OaipipeError.__str__ (every message), RunDir (every JSON file of a run
# directory), the runner (every record before sinks, journal and errors.jsonl see it: redact_data), and
# the CLI (stdout and stderr are RedactingStream while a command runs).

_KEY_PATTERNS = [
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9_\-\.]{8,}"),
    # the password of a URL's user info (a proxy's https://user:password@host/v1)
    re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^/\s@]+(?=@)"),
]
MASK = "***"
_MIN_LENGTH = 4
#: variables whose value is always a secret, registered or not
_SECRET_ENV_VARS = ("OPENAI_API_KEY",)
_registered_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_registered_forms: tuple[str, ...] = ()  # every form of every registered secret, longest first


def _forms(value: str) -> tuple[str, ...]:
    """The ways ``value`` shows up in text: as is, JSON-escaped, repr-escaped, URL-encoded."""
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        value.encode("unicode_escape").decode("ascii"),
        repr(value)[1:-1],
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote(value),
        urllib.parse.quote_plus(value),
    }
    return tuple(f for f in forms if len(f) >= _MIN_LENGTH)


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact`, :func:`mask_secrets` and :func:`redact_data` mask it.

    Values shorter than 4 characters are ignored: masking them would wreck ordinary text.
    """
    global _registered_forms
    if not value or len(value) < _MIN_LENGTH:
        return
    with _secrets_lock:
        if value in _registered_secrets:
            return
        _registered_secrets.add(value)
        forms = {f for secret in _registered_secrets for f in _forms(secret)}
        _registered_forms = tuple(sorted(forms, key=len, reverse=True))


def _all_forms() -> tuple[str, ...]:
    """Every form of every secret (registered, and the variables that always are), longest first."""
    return _merged_forms(_registered_forms, tuple(os.environ.get(name) for name in _SECRET_ENV_VARS))


@functools.lru_cache(maxsize=8)
def _merged_forms(registered: tuple[str, ...], env_values: tuple[str | None, ...]) -> tuple[str, ...]:
    forms = set(registered)
    for env in env_values:
        if env and len(env) >= _MIN_LENGTH:
            forms.update(_forms(env))
    return tuple(sorted(forms, key=len, reverse=True))


def _mask(text: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret (and ``OPENAI_API_KEY``) replaced by ``***``, nothing else."""
    if not text or not isinstance(text, str):
        return text
    forms = _all_forms()
    return _mask(text, forms) if forms else text


def redact(text: str) -> str:
    """Mask secrets in a message: registered ones (:func:`mask_secrets`), and anything shaped like a key
    (``sk-...``, ``Bearer ...``) or a URL's password."""
    if not text:
        return text
    text = mask_secrets(text)
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


#: fields of dataclasses :func:`redact_data` leaves alone: record ids, which the journal and sinks key on
IDENTITY_FIELDS = frozenset({"id", "record_id"})


def redact_data(obj: Any, *, keep_fields: frozenset[str] = IDENTITY_FIELDS) -> Any:
    """``obj`` with :func:`mask_secrets` applied to every string inside it (dict keys and values, lists,
    tuples, dataclass fields except ``keep_fields``). Copy on write: what holds no secret is returned as
    it is (the same object), so the common case costs one scan of the strings."""
    forms = _all_forms()
    if not forms:
        return obj
    return _walk(obj, forms, keep_fields)


def _walk(obj: Any, forms: tuple[str, ...], keep: frozenset[str]) -> Any:
    if isinstance(obj, str):
        return _mask(obj, forms)
    if isinstance(obj, dict):
        out = {}
        changed = False
        for key, value in obj.items():
            new_key = _walk(key, forms, keep) if isinstance(key, str) else key
            new_value = _walk(value, forms, keep)
            changed = changed or new_key is not key or new_value is not value
            out[new_key] = new_value
        return out if changed else obj
    if isinstance(obj, list | tuple):
        items = [_walk(v, forms, keep) for v in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        if isinstance(obj, list):
            return items
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)  # a namedtuple, or a tuple
    if obj is None or isinstance(obj, int | float):
        return obj
    names = _dataclass_fields(type(obj))  # type: ignore[arg-type]  # typeshed: a class is Hashable, type[Any] is not seen so
    if names:
        changes = {}
        for name in names:
            if name in keep:
                continue
            value = getattr(obj, name)
            new = _walk(value, forms, keep)
            if new is not value:
                changes[name] = new
        return dataclasses.replace(obj, **changes) if changes else obj
    return obj


@functools.lru_cache(maxsize=256)
def _dataclass_fields(cls: type) -> tuple[str, ...]:
    """The init fields of a dataclass type (none for any other type)."""
    if not dataclasses.is_dataclass(cls):
        return ()
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


class RedactingStream:
    """A text stream that masks secrets (:func:`mask_secrets`) in everything written to it.

    The CLI puts one over ``sys.stdout`` and ``sys.stderr`` while a command runs: whatever a command, a
    plugin, a progress bar or a log handler prints goes through it. Every other attribute is the wrapped
    stream's.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        #: a write or flush found the reading end of the pipe closed (``oaipipe ... | head``)
        self.reader_gone = False

    @property
    def wrapped(self) -> Any:
        return self._stream

    def write(self, text: Any) -> int:
        try:
            if isinstance(text, str):
                self._stream.write(mask_secrets(text))
                return len(text)
            return int(self._stream.write(text) or 0)
        except BrokenPipeError:
            self.reader_gone = True
            raise

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self.reader_gone = True
            raise

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
