"""Built-in plugin: the core commands ``run``, ``merge``, ``validate``, ``schema``, ``plugins`` (code in :mod:`oaipipe.commands`)."""

from __future__ import annotations

import click

from ..commands.merge import merge
from ..commands.plugins import plugins
from ..commands.run import run
from ..commands.schema import schema
from ..commands.validate import validate
from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    for command in (run, merge, validate, schema, plugins):
        cli.add_command(command)
