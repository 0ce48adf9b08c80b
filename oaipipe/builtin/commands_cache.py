"""Commands ``oaipipe cache stats`` and ``oaipipe cache clear`` (defined in :mod:`oaipipe.commands.cache`)."""

from __future__ import annotations

import click

from ..commands.cache import cache
from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(cache)
