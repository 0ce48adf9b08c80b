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
     └── RunAborted                  --max-failures / --max-cost / a changed pipeline stopped the run

The CLI maps the tree onto exit codes (see ``oaipipe.cli``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "AuthenticationError",
    "BackendConnectionError",
    "BackendError",
    "BadRequestError",
    "ConfigError",
    "DatasetError",
    "ImageError",
    "InputError",
    "OaipipeError",
    "PluginError",
    "PluginLoadError",
    "RateLimitError",
    "RecordError",
    "RunAborted",
    "ServerError",
    "TemplateError",
    "TrainingError",
    "UnknownPluginError",
    "redact",
]


class OaipipeError(Exception):
    """Base of every error oaipipe raises on purpose. ``str(err)`` is the message a user sees."""

    #: process exit code the CLI uses for this kind of error
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = redact(self.message)
        if self.hint:
            text += f"\n  hint: {redact(self.hint)}"
        return text


class ConfigError(OaipipeError):
    """The pipeline file, a ``--set`` override or a plugin's options block is wrong."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.column = column
        self.key = key
        where = ""
        if self.file:
            where = self.file
            if line is not None:
                where += f":{line}"
                if column is not None:
                    where += f":{column}"
            where += ": "
        if key:
            where += f"{key}: "
        super().__init__(where + message, hint=hint)


class UnknownPluginError(ConfigError):
    """A name that no loaded plugin registers; the message lists the names that exist."""


class PluginError(OaipipeError):
    """A plugin misbehaved: it raised in a hook, or broke the contract of its base class."""

    exit_code = 2


class PluginLoadError(PluginError):
    """A plugin module could not be found or imported, or does not fit the hook specs."""


class InputError(OaipipeError):
    """The input cannot be read at all (as opposed to one bad record)."""

    exit_code = 3


class RecordError(OaipipeError):
    """One record cannot be processed. The runner logs it to ``errors.jsonl`` and goes on."""


class TemplateError(RecordError):
    """A ``{field}`` template names a field the record does not have."""


class ImageError(RecordError):
    """An image is missing, unreadable, corrupt or over the size cap."""


class BackendError(OaipipeError):
    """A backend call failed. ``status`` is the HTTP status when there was one."""

    exit_code = 4
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

    exit_code = 5


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

    exit_code = 6


class TrainingError(OaipipeError):
    """A fine-tuning job failed or was cancelled, or a job id is unknown."""

    exit_code = 7


class RunAborted(OaipipeError):
    """The run was stopped on purpose: too many failures, the cost budget, a changed pipeline."""

    exit_code = 8


# --- secrets ------------------------------------------------------------------------------------

_KEY_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9_\-\.]{8,}"),
    # the password of a URL's user info (a proxy's https://user:password@host/v1)
    re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^/\s@]+(?=@)"),
]
_registered_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret (an API key) so that :func:`redact` masks it wherever it appears."""
    if value and len(value) >= 4:
        _registered_secrets.add(value)


def redact(text: str) -> str:
    """Mask API keys in ``text``: registered secrets, ``OPENAI_API_KEY``, ``sk-...``, bearer tokens and URL passwords."""
    if not text:
        return text
    secrets = set(_registered_secrets)
    env_key = os.environ.get("OPENAI_API_KEY")
    if env_key and len(env_key) >= 4:
        secrets.add(env_key)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text
