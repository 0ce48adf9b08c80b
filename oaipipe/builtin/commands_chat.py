"""Built-in plugin: the one-off call commands ``models``, ``ask``, ``describe`` (code in :mod:`oaipipe.commands`)."""

from __future__ import annotations

import click

from ..commands.ask import ask
from ..commands.describe import describe
from ..commands.models import models
from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    for command in (models, ask, describe):
        cli.add_command(command)
