"""What several commands share: option decorators, ``-v``/``-q`` and logging, JSON output, ``--api-key-env``.

``-v/--verbose`` and ``-q/--quiet`` mean the same on every command: the ``oaipipe`` group adds them to each
command it runs (:func:`add_verbosity_options`, plugin commands included) and accepts them itself
(``oaipipe -v run`` = ``oaipipe run -v``). ``-v`` sets the ``oaipipe`` logger to INFO, ``-vv`` to DEBUG,
with one handler on stderr (secrets masked); ``-q`` silences progress and notes (and log records under
ERROR); warnings, errors and the data a command prints stay. Library code logs through
``logging.getLogger("oaipipe.<module>")`` and never configures logging itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import ConfigError, redact

__all__ = [
    "STDOUT",
    "Verbosity",
    "add_verbosity_options",
    "backend_options",
    "build_options",
    "configure_logging",
    "disable_option",
    "echo_json",
    "json_option",
    "key_from_env",
    "log_records_to",
    "not_a_stream",
    "note",
    "output_path",
    "progress_printer",
    "refuse_stdout",
    "registry_option",
    "reset_logging",
    "set_option",
    "stdout_output",
    "verbosity",
]

F = TypeVar("F", bound=Callable[..., Any])

set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override a pipeline value, e.g. --set backend.base_url=http://127.0.0.1:8080/v1 (repeatable)",
)
disable_option = click.option("--disable-plugin", "disabled", multiple=True, metavar="NAME",
                              help="Do not load this plugin (repeatable)")


def not_a_stream(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """click callback of a file option that cannot be a stream (a file oaipipe appends to or reads back):
    ``-`` is refused (exit 2) rather than becoming a file named ``-``, as ``-o -`` never does."""
    if value == STDOUT:
        raise click.BadParameter("'-' is not a file: this option names a file oaipipe keeps (appends to, reads "
                                 "back), which standard output cannot be; give a path", ctx=ctx, param=param)
    return value


registry_option = click.option("--registry", "registry_path", type=click.Path(dir_okay=False), default=None,
                               callback=not_a_stream, help="Job registry file (default: $OAIPIPE_HOME/jobs.json)")


def json_option(help: str = "Print JSON instead of text") -> Callable[[F], F]:
    """``--json``: the command prints what it found as JSON on stdout (messages go to stderr)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


# --- -o - ---------------------------------------------------------------------------------------
#
# ``-o -`` means standard output on every command with ``-o/--output`` (the Unix convention), never a file
# named ``-``. A command whose output is one text stream (JSON, JSONL, HTML) writes it there and moves its
# own messages to stderr; one whose output cannot be (a binary format, a file something else reads back)
# refuses ``-o -`` with the reason and the fix (:func:`refuse_stdout`).

#: the ``-o`` value that means standard output
STDOUT = "-"


def refuse_stdout(output: str | None, *, why: str, fix: str) -> None:
    """A :class:`ConfigError` (exit 2) when ``output`` is ``-`` and this output cannot go to standard output."""
    if output == STDOUT:
        raise ConfigError(f"-o - (standard output) cannot be used here: {why}", hint=fix)


def stdout_output(output: str | None, as_json: bool = False) -> bool:
    """Whether ``-o -`` asks for standard output; refuses it with ``--json``, which prints there too, and
    when there is no standard output to write to (closed: ``>&-``), before any work is done."""
    if output != STDOUT:
        return False
    if as_json:
        raise ConfigError("-o - writes the output to standard output, where --json would print too",
                          hint="drop --json (with -o - the messages go to stderr), or give -o FILE")
    if sys.stdout is None or getattr(sys.stdout, "closed", False):
        from ..errors import StorageError

        raise StorageError("cannot write standard output (-o -): it is closed", path=STDOUT,
                           hint="give -o FILE, or run the command with its standard output open (a pipe, a file)")
    return True


@contextmanager
def output_path(output: str, *, suffix: str = "") -> Iterator[Path]:
    """The path a command writes its text output to: ``output`` itself, or for ``-o -`` a file in a
    temporary folder whose text is copied to standard output (line by line, through the same masking as
    everything printed) when the block ends without an error, then removed. Writers that take a path (and
    write it atomically) serve both."""
    if output != STDOUT:
        yield Path(output)
        return
    with tempfile.TemporaryDirectory(prefix="oaipipe-stdout-") as folder:
        path = Path(folder) / f"stdout{suffix}"
        yield path
        if path.is_file():
            out = sys.stdout
            with path.open(encoding="utf-8", newline="") as fh:
                for line in fh:
                    out.write(line)
            out.flush()


# --- -v / -q ------------------------------------------------------------------------------------

_META_KEY = "oaipipe.verbosity"
_VERBOSE = "oaipipe_verbose"
_QUIET = "oaipipe_quiet"


@dataclass
class Verbosity:
    """What ``-v`` (counted) and ``-q`` asked for, on the group and the command together."""

    verbose: int = 0
    quiet: bool = False

    @property
    def level(self) -> int:
        """The level of the ``oaipipe`` logger."""
        if self.verbose >= 2:
            return logging.DEBUG
        if self.verbose:
            return logging.INFO
        return logging.ERROR if self.quiet else logging.WARNING


def verbosity(ctx: click.Context | None = None) -> Verbosity:
    """The verbosity of the command being run (the defaults outside a command)."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return Verbosity()
    found = ctx.meta.get(_META_KEY)
    if found is None:
        found = ctx.meta[_META_KEY] = Verbosity()
    return found


def _on_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        state = verbosity(ctx)
        state.verbose += value
        configure_logging(state)


def _on_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        state = verbosity(ctx)
        state.quiet = True
        configure_logging(state)


def add_verbosity_options(command: click.Command) -> click.Command:
    """Give ``command`` (a group: also every command below it) ``-v/--verbose`` and ``-q/--quiet``.

    Idempotent; an option string the command already uses for something else is left to it.
    """
    names = {p.name for p in command.params}
    taken = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    wanted: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = ((_VERBOSE, ("-v", "--verbose"), {"count": True, "callback": _on_verbose,
                                               "help": "Log more (-v: info, -vv: debug) to stderr"}),
              (_QUIET, ("-q", "--quiet"), {"is_flag": True, "callback": _on_quiet,
                                           "help": "No progress output or notes; data, warnings and errors only"}))
    for name, opts, settings in wanted:
        free = [o for o in opts if o not in taken]
        if name not in names and free:
            command.params.append(click.Option([*free, name], expose_value=False, **settings))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_verbosity_options(sub)
    return command


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (the CLI's masking stream, a test's capture)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_Formatter("%(name)s: %(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_HANDLER = _StderrHandler()


def configure_logging(state: Verbosity | None = None) -> None:
    """Set the ``oaipipe`` logger's level from ``state`` and give it the one stderr handler."""
    logger = logging.getLogger("oaipipe")
    logger.setLevel((state or Verbosity()).level)
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)


@contextmanager
def log_records_to(reporter: Any) -> Iterator[None]:
    """While a run shows its progress: log records are written through ``reporter`` (above a live bar,
    :class:`oaipipe.progress.ReporterLogHandler`) instead of straight to stderr. Outside the CLI (no
    handler of ours on the logger) nothing changes."""
    logger = logging.getLogger("oaipipe")
    if _HANDLER not in logger.handlers:
        yield
        return
    from ..progress import ReporterLogHandler

    handler = ReporterLogHandler(reporter, sys.stderr)
    logger.removeHandler(_HANDLER)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.addHandler(_HANDLER)


def reset_logging() -> None:
    """Undo :func:`configure_logging` (the CLI does when a command ends: a test process runs many)."""
    logger = logging.getLogger("oaipipe")
    logger.removeHandler(_HANDLER)
    logger.setLevel(logging.NOTSET)


def note(text: str | None, *, err: bool = True) -> None:
    """A note (what the user may like to know, not a warning), on stderr unless ``err=False``; ``-q``
    silences it."""
    if text and not verbosity().quiet:
        click.echo(text, err=err)


def progress_printer(as_json: bool) -> Callable[[str], None]:
    """Where progress lines go: stdout, stderr under ``--json``, nowhere under ``-q``."""
    if verbosity().quiet:
        return lambda text: None
    return lambda text: click.echo(text, err=as_json)


# --- keys, backends, datasets ---------------------------------------------------------------------


def key_from_env(var: str | None) -> str | None:
    """The key in ``--api-key-env VAR`` (``None`` without the flag); an unset VAR is a usage error."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"--api-key-env {var}: that environment variable is not set",
                          hint=f"export {var}=... first")
    return value


def backend_options(f: F) -> F:
    """``--backend``, ``--base-url`` and ``--api-key-env`` of the one-off commands (``models``, ``ask``...)."""
    f = click.option("--api-key-env", metavar="VAR",
                     help="Environment variable holding the key for --base-url (OPENAI_API_KEY only goes to OpenAI)")(f)
    f = click.option("--base-url", help="Any OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1")(f)
    f = click.option("--backend", "backend_name", metavar="NAME",
                     help="Backend type: local, openai, requests, or a plugin's")(f)
    return f


def build_options(f: F) -> F:
    """How ``dataset build`` and ``train`` pick and split examples."""
    for opt in reversed([
        click.option("--select", "select", multiple=True, metavar="KEY=VALUE",
                     help="Keep examples whose reply/record matches, e.g. sentiment=positive (repeatable)"),
        click.option("--system", default=None, help="System prompt for CSV/pair rows that have none"),
        click.option("--step", default=None, help="Only exchanges of this pipeline step (e.g. reply)"),
        click.option("--validation-fraction", type=float, default=0.0, show_default=True,
                     help="Share of examples kept for the validation file (deterministic by hash)"),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split"),
    ]):
        f = opt(f)
    return f
