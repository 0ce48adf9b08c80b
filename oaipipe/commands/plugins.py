"""``oaipipe plugins``: each loaded plugin, where it came from and what it registers."""

from __future__ import annotations

import json
import sys

import click

from ..errors import ExitCode
from .common import disable_option, json_option

__all__ = ["plugins"]


@click.command()
@click.option("--pipeline", type=click.Path(exists=True), help="Also load the plugins this pipeline lists")
@json_option("Print JSON: a list of {name, origin, registers}")
@disable_option
def plugins(pipeline: str | None, as_json: bool, disabled: tuple[str, ...]) -> ExitCode:
    """List loaded plugins: where each came from and what it registers."""
    from ..schema import plugin_host_for

    host = plugin_host_for(pipeline, list(disabled))
    described = host.describe()
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return ExitCode.OK
    width = max((len(p["name"]) for p in described), default=10)
    for p in described:
        regs = ", ".join(p["registers"]) or "-"
        click.echo(f"{p['name']:<{width}}  {p['origin']:<12}  {regs}")
    sys.stdout.flush()
    return ExitCode.OK
