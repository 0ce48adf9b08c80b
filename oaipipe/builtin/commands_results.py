"""Built-in plugin: the commands that look at what runs did and at analyzers: ``runs`` (``runs show``),
``logs``, ``report`` and ``sentiment`` (``sentiment eval``). The commands live in :mod:`oaipipe.commands`."""

from __future__ import annotations

import click

from ..commands.logs import logs
from ..commands.report import report
from ..commands.runs import runs
from ..commands.sentiment import sentiment
from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    for command in (runs, logs, report, sentiment):
        cli.add_command(command)
