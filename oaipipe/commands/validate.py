"""``oaipipe validate``: check a pipeline file without running it; every problem in one pass."""

from __future__ import annotations

from typing import Any

import click

from ..errors import ExitCode, OaipipeError, redact
from .common import disable_option, echo_json, json_option, note, set_option

__all__ = ["validate"]


@click.command()
@click.argument("pipeline", default="pipeline.yaml", type=click.Path(dir_okay=True))
@set_option
@disable_option
@click.option("--online", is_flag=True,
              help="Also ask the backend's server (GET /models) for the shutdown_date of each model: warn within "
                   "60 days, refuse past it (one request; a server without the list is not an error)")
@json_option("Print {problems, warnings} as JSON: each problem {file, line, column, key, message, hint, origin} "
             "([] when valid; origin: the --set that gave the value, or null), each warning a line naming its file "
             "and line (as the text output prints them)")
def validate(pipeline: str, overrides: tuple[str, ...], disabled: tuple[str, ...], online: bool,
             as_json: bool) -> ExitCode:
    """Check a pipeline file: YAML, keys, plugin names and options, input files, templates. Calls nothing
    unless --online.

    Every problem of the file is reported at once, each with its file, line and fix (exit 2).
    """
    from ..pipeline import load_pipeline

    try:
        built = load_pipeline(pipeline, list(overrides), disabled=list(disabled))
        if online:
            built.warnings.extend(_server_warnings(built))
    except OaipipeError as exc:
        if not as_json:
            raise
        echo_json({"problems": [problem.to_dict() for problem in exc.problems], "warnings": []})
        return exc.exit_code
    if as_json:
        echo_json({"problems": [], "warnings": [redact(w) for w in built.warnings]})
        return ExitCode.OK
    fields = built.source.fields()
    click.echo(f"ok: {pipeline}: source {built.source.name}"
               + (f" ({len(fields)} fields)" if fields is not None else "")
               + f", {len(built.steps)} steps ({', '.join(s.name for s in built.steps) or 'none'}), "
               f"{len(built.sinks)} sinks, {built.describe_backend()}")
    for warning in built.warnings:
        click.echo(f"warning: {warning}")
    if built.backend_note:
        note(f"note: {built.backend_note}", err=False)
    return ExitCode.OK


def _server_warnings(built: Any) -> list[str]:
    """:func:`oaipipe.lifecycle.check_server_models` for ``validate --online`` (the backend closed after)."""
    import asyncio

    from ..lifecycle import check_server_models

    async def ask() -> list[str]:
        try:
            return await check_server_models(built, explicit=True)
        finally:
            await built.backend.aclose()

    return asyncio.run(ask())
