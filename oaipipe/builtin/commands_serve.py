"""Built-in plugin: the command ``serve`` (code in :mod:`oaipipe.commands.serve`)."""

from __future__ import annotations

import click

from ..commands.serve import serve_command
from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(serve_command)
