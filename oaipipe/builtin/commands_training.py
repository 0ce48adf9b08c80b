"""Built-in plugin: the training commands ``dataset`` (with ``dataset export``), ``train``, ``jobs`` (code in
:mod:`oaipipe.commands`)."""

from __future__ import annotations

import click

from ..commands.dataset import dataset
from ..commands.dataset_export import export
from ..commands.jobs import jobs
from ..commands.train import train
from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    dataset.add_command(export)
    for command in (dataset, train, jobs):
        cli.add_command(command)
