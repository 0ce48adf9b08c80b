"""Built-in plugin: the command group ``assistants`` (code in :mod:`oaipipe.commands.assistants`)."""

from __future__ import annotations

import click

from ..commands.assistants import assistants
from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(assistants)
