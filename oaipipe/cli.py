"""The ``oaipipe`` command line: thin over the library. Sub-commands come from plugins
(``register_commands``), the core ones from ``oaipipe.builtin.commands_core``.

Exit codes:

====  =====================================================================================
0     success (every record done)
1     the run finished but some records failed (see errors.jsonl in the run directory), or a
      ``jobs wait`` / ``train --wait`` timed out while the job still runs
2     usage or configuration error: bad flags, pipeline.yaml, plugin options, plugin import or a
      plugin that failed in a hook
3     the input cannot be read (missing file, missing column)
4     a backend error that stopped the command
5     authentication: the key is missing or was refused
6     a fine-tuning dataset is invalid (also the dataset of a run's ``train:`` step)
7     a fine-tuning job failed or is unknown (also the job of a run's ``train:`` step)
8     the run was stopped on purpose (--max-failures, --max-cost reached, a changed pipeline)
9     an I/O problem, naming the path: no permission, a full disk, a read-only file system, a run
      directory deleted while its run was going (``StorageError``); rerun after fixing it
10    another run of this pipeline holds the lock (or another run is writing the same output file):
      the message names the holder (pid, host, since when) (``RunLockedError``)
130   interrupted (Ctrl-C, SIGTERM); rerun the same command to resume (a ``train:`` job keeps running:
      the rerun or ``oaipipe jobs wait`` follows it)
====  =====================================================================================
"""

from __future__ import annotations

import sys

import click

from .errors import OaipipeError, RedactingStream, StorageError, is_storage_error, redact

__all__ = ["cli", "main"]


class OaipipeGroup(click.Group):
    """Loads plugin commands lazily, the first time the command list is needed."""

    _loaded = False

    def _load_plugin_commands(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from .plugins import PluginHost

        host = PluginHost()
        host.hook.register_commands(cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)


@click.group(cls=OaipipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oaipipe")
def cli() -> None:
    """oaipipe: run YAML pipelines of OpenAI-model steps (chat, vision, sentiment, fine-tuning) as plugins.

    Start with `oaipipe run pipeline.yaml`. It runs offline on the embedded engine when no
    OPENAI_API_KEY is set.
    """


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: run the CLI and map errors onto exit codes.

    While it runs, stdout and stderr mask every registered secret (:class:`~oaipipe.errors.RedactingStream`):
    whatever a command, a plugin, a progress bar or a log handler prints.
    """
    out, err = sys.stdout, sys.stderr
    if out is not None and not isinstance(out, RedactingStream):
        sys.stdout = RedactingStream(out)  # type: ignore[assignment]
    if err is not None and not isinstance(err, RedactingStream):
        sys.stderr = RedactingStream(err)  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: list[str] | None) -> int:
    cli._exit_code = 0  # type: ignore[attr-defined]
    try:
        cli.main(args=argv, prog_name="oaipipe", standalone_mode=False)
    except OaipipeError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("\ninterrupted: rerun the same command to resume where it stopped", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("\ninterrupted: rerun the same command to resume where it stopped", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if not is_storage_error(exc):
            return _unexpected(exc)
        err = StorageError.from_os_error(exc)  # wherever it happened: name the path, exit 9
        click.echo(f"error: {err}", err=True)
        return err.exit_code
    except Exception as exc:  # noqa: BLE001 - last resort: one readable line, never a key
        return _unexpected(exc)
    return getattr(cli, "_exit_code", 0)


def _unexpected(exc: BaseException) -> int:
    """The last resort: one readable line, never a key (OAIPIPE_DEBUG=1 re-raises for the traceback)."""
    click.echo(f"error: unexpected {type(exc).__name__}: {redact(str(exc))}", err=True)
    click.echo("  hint: this is a bug in oaipipe or a plugin; rerun with OAIPIPE_DEBUG=1 for the traceback",
               err=True)
    import os

    if os.environ.get("OAIPIPE_DEBUG"):
        raise exc
    return 1


def set_exit_code(code: int) -> None:
    """Commands that finish without an exception but want a non-zero exit call this."""
    cli._exit_code = code  # type: ignore[attr-defined]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
