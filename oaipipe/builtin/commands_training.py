"""Built-in plugin: the training commands ``dataset``, ``train``, ``jobs`` (code in :mod:`oaipipe.commands`)."""

from __future__ import annotations

import click

from ..commands.dataset import dataset
from ..commands.jobs import jobs
from ..commands.train import train
from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    for command in (dataset, train, jobs):
        cli.add_command(command)
