"""``oaipipe assistants`` and ``assistants show``: the local assistant presets.

OpenAI's hosted Assistants API was shut down on 2026-08-26; presets are local (see
:mod:`oaipipe.assistants`) and map onto plain chat or Responses calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import ExitCode
from .common import json_option

__all__ = ["assistants", "show"]


def _lookup(file: str | None, pipeline: str | None) -> tuple[str | None, Path | None]:
    """(the pipeline's `assistants:` setting, base dir) for the lookup."""
    if not pipeline:
        return None, Path.cwd()
    from ..config import load_config

    loaded = load_config(pipeline)
    return loaded.config.assistants, loaded.base_dir


def _summary(preset: Any) -> dict[str, Any]:
    return {"name": preset.name, "model": preset.model, "description": preset.description}


@click.group("assistants", invoke_without_command=True)
@click.option("--file", "file", type=click.Path(dir_okay=False), help="An assistants.yaml/.json file")
@click.option("--pipeline", type=click.Path(dir_okay=True), help="Use this pipeline's `assistants:` file")
@json_option("Print JSON")
@click.pass_context
def assistants(ctx: click.Context, file: str | None, pipeline: str | None, as_json: bool) -> ExitCode:
    """List the assistant presets (local: the hosted Assistants API is gone)."""
    from ..assistants import find_registry, load_presets

    ctx.ensure_object(dict)
    ctx.obj.update(file=file, pipeline=pipeline, as_json=as_json)
    if ctx.invoked_subcommand is not None:
        return ExitCode.OK
    setting, base_dir = _lookup(file, pipeline)
    path = find_registry(file, pipeline_setting=setting, base_dir=base_dir)
    if path is None:
        if as_json:
            click.echo(json.dumps({"file": None, "assistants": []}))
            return ExitCode.OK
        click.echo("no assistants file found (looked for assistants.yaml/.json in the current folder and "
                   "in $OAIPIPE_HOME); copy examples/assistants.yaml or pass --file", err=True)
        return ExitCode.OK
    presets = load_presets(path)
    if as_json:
        click.echo(json.dumps({"file": str(path), "assistants": [_summary(p) for p in presets.values()]},
                              indent=2))
        return ExitCode.OK
    click.echo(f"{len(presets)} presets in {path}:")
    width = max((len(n) for n in presets), default=4)
    for preset in presets.values():
        model = preset.model or "(backend's model)"
        click.echo(f"  {preset.name:<{width}}  {model:<18}  {preset.description}")
    return ExitCode.OK


@assistants.command("show")
@click.argument("name")
@json_option("Print JSON")
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> ExitCode:
    """Show one preset in full."""
    from ..assistants import get_preset

    obj = ctx.obj or {}
    setting, base_dir = _lookup(obj.get("file"), obj.get("pipeline"))
    preset = get_preset(name, explicit=obj.get("file"), pipeline_setting=setting, base_dir=base_dir)
    data = preset.model_dump(exclude_none=True)
    if as_json or obj.get("as_json"):
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return ExitCode.OK
    for key, value in data.items():
        if isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False)
        click.echo(f"{key}: {value}")
    return ExitCode.OK
