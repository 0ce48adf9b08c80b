"""The ``oaipipe`` command line: the group, and the entry point that maps errors onto exit codes.

Sub-commands come from plugins (``register_commands``); the built-in ones are module-level functions in
:mod:`oaipipe.commands` (one module per command or group), added by ``oaipipe/builtin/commands_*.py``.
A command returns an :class:`~oaipipe.errors.ExitCode`; an error raised on purpose carries its own
(``exit_code``). The codes:

====  =====================================================================================
0     ``OK``: success (every record done)
1     ``RECORDS_FAILED``: the run finished but some records failed (see errors.jsonl in the run
      directory), or a ``jobs wait`` / ``train --wait`` timed out while the job still runs (also an
      unexpected error, a bug, reported with a hint)
2     ``USAGE_ERROR``: bad flags, pipeline.yaml, plugin options, plugin import or a plugin that failed
      in a hook
3     ``INPUT_ERROR``: the input cannot be read (missing file, missing column)
4     ``BACKEND_ERROR``: a backend error that stopped the command
5     ``AUTH_ERROR``: the key is missing or was refused
6     ``DATASET_ERROR``: a fine-tuning dataset is invalid (also the dataset of a run's ``train:`` step)
7     ``TRAINING_ERROR``: a fine-tuning job failed or is unknown (also the job of a run's ``train:``)
8     ``ABORTED``: the run was stopped on purpose (--max-failures, --max-cost reached, a changed pipeline)
9     ``IO_ERROR``: an I/O problem, naming the path: no permission, a full disk, a read-only file system, a
      run directory deleted while its run was going, an output file a sink did not write (``StorageError``);
      rerun after fixing it
10    ``RUN_LOCKED``: another run of this pipeline holds the lock (or another run is writing the same output
      file): the message names the holder (pid, host, since when) (``RunLockedError``)
130   ``INTERRUPTED``: Ctrl-C, SIGTERM, or the output's reader gone (``oaipipe ... | head``: quietly); rerun
      the same command to resume (a ``train:`` job keeps running: the rerun or ``oaipipe jobs wait`` follows it)
====  =====================================================================================
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
from collections.abc import Iterator
from typing import Any

import click

from .commands.common import add_verbosity_options, configure_logging, reset_logging
from .errors import ExitCode, OaipipeError, RedactingStream, StorageError, is_storage_error, redact

__all__ = ["cli", "main"]


class OaipipeGroup(click.Group):
    """Loads plugin commands lazily, the first time the command list is needed, and gives every command
    the shared ``-v/--verbose`` and ``-q/--quiet``."""

    _loaded = False

    def _load_plugin_commands(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from .plugins import PluginHost

        host = PluginHost()
        host.add_commands(self)
        logging.getLogger("oaipipe.cli").debug("commands: %s", ", ".join(sorted(self.commands)))

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugin_commands()
        command = super().get_command(ctx, cmd_name)
        return add_verbosity_options(command) if command is not None else None

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        with _carry_broken_pipe():  # the group's own --help and --version write while its context is made
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _carry_broken_pipe():  # a sub-command's output (its --help included)
            return super().invoke(ctx)


@contextlib.contextmanager
def _carry_broken_pipe() -> Iterator[None]:
    """An EPIPE raised inside becomes a :class:`_BrokenPipe`: click's main would end it with a silent exit 1,
    :func:`main` judges it instead (exit 130 when the reader of stdout/stderr went away)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        raise _BrokenPipe(exc) from exc


class _BrokenPipe(Exception):
    """An EPIPE carried past click (which exits 1 on every one, saying nothing) to :func:`main`: a closed
    stdout/stderr (the reader is gone) ends the command quietly; any other is an error like any other."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@click.group(cls=OaipipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oaipipe")
def cli() -> None:
    """oaipipe: run YAML pipelines of OpenAI-model steps (chat, vision, sentiment, fine-tuning) as plugins.

    Start with `oaipipe run pipeline.yaml`. It runs offline on the embedded engine when no
    OPENAI_API_KEY is set.
    """


add_verbosity_options(cli)  # `oaipipe -v run` = `oaipipe run -v`


@cli.result_callback()
def _exit_with(code: Any) -> None:
    """The command's :class:`ExitCode` becomes the process's, in click's standalone mode too (``CliRunner``)."""
    if isinstance(code, int) and code != ExitCode.OK:
        raise click.exceptions.Exit(int(code))


def main(argv: list[str] | None = None) -> ExitCode | int:
    """Entry point of the console script: run the CLI and return its :class:`ExitCode` (a plugin
    command's own integer passes through).

    While it runs, stdout and stderr mask every registered secret (:class:`~oaipipe.errors.RedactingStream`):
    whatever a command, a plugin, a progress bar or a log handler prints.
    """
    out, err = sys.stdout, sys.stderr
    if out is not None and not isinstance(out, RedactingStream):
        sys.stdout = RedactingStream(out)  # type: ignore[assignment]
    if err is not None and not isinstance(err, RedactingStream):
        sys.stderr = RedactingStream(err)  # type: ignore[assignment]
    configure_logging()
    try:
        return _main(argv)
    finally:
        reset_logging()
        sys.stdout, sys.stderr = out, err


def _exit_code(value: Any) -> ExitCode | int:
    if not isinstance(value, int):
        return ExitCode.OK  # a command that returns nothing (or data) succeeded
    try:
        return ExitCode(value)
    except ValueError:
        return value


def _main(argv: list[str] | None) -> ExitCode | int:
    interrupted = "\ninterrupted: rerun the same command to resume where it stopped"
    try:
        code = cli.main(args=argv, prog_name="oaipipe", standalone_mode=False)
    except OaipipeError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(interrupted, err=True)
        return ExitCode.INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return _exit_code(exc.exit_code)
    except click.exceptions.Exit as exc:
        return _exit_code(exc.exit_code)
    except _BrokenPipe as broken:
        if _reader_gone():  # `oaipipe ... | head`: the reader has what it wanted, and hears nothing more
            return ExitCode.INTERRUPTED
        return _os_error(broken.error)
    except OSError as exc:
        return _os_error(exc)
    except Exception as exc:  # noqa: BLE001 - last resort: one readable line, never a key
        return _unexpected(exc)
    return _exit_code(code)


def _os_error(exc: OSError) -> ExitCode:
    if not is_storage_error(exc):
        return _unexpected(exc)
    err = StorageError.from_os_error(exc)  # wherever it happened: name the path, exit 9
    click.echo(f"error: {err}", err=True)
    return err.exit_code


def _reader_gone() -> bool:
    """Whether stdout or stderr lost its reader: a write to it met a closed pipe (``oaipipe ... | head``)."""
    return any(isinstance(s, RedactingStream) and s.reader_gone for s in (sys.stdout, sys.stderr))


def _unexpected(exc: BaseException) -> ExitCode:
    """The last resort: one readable line, never a key (OAIPIPE_DEBUG=1 re-raises for the traceback)."""
    click.echo(f"error: unexpected {type(exc).__name__}: {redact(str(exc))}", err=True)
    click.echo("  hint: this is a bug in oaipipe or a plugin; rerun with OAIPIPE_DEBUG=1 for the traceback",
               err=True)
    import os

    if os.environ.get("OAIPIPE_DEBUG"):
        raise exc
    return ExitCode.RECORDS_FAILED  # exit 1, as documented for an unexpected error


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
