"""``oaipipe models``: the backend's models, and the local engine's own."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import ExitCode
from .common import backend_options, json_option, key_from_env

__all__ = ["models"]

#: report["problem_kind"] -> exit code (other problems are said, and exit 0)
_PROBLEM_CODES = {"auth": ExitCode.AUTH_ERROR, "connection": ExitCode.BACKEND_ERROR}


def _print_report(report: dict[str, Any], backend_name: str, where: str, fell_back: bool, offline: bool) -> None:
    if not offline or not fell_back:
        click.echo(f"{backend_name} backend ({where}):")
        for m in report["models"]:
            click.echo(f"  {m['id']}" + (f"  ({m['owned_by']})" if m.get("owned_by") else "")
                       + (f"  shuts down {m['shutdown_date']}" if m.get("shutdown_date") else ""))
    for item in report.get("lifecycle") or []:
        click.echo(f"{item['level']}: {item['message']}", err=True)
    if report["local_models"] or offline:
        listed = report["local_models"] if not offline else report["models"]
        click.echo("local engine (offline, deterministic, not GPT):")
        for m in listed:
            click.echo(f"  {m['id']}")
    if report["problem"]:
        click.echo(report["problem"], err=True)


@click.command("models")
@click.argument("pipeline", required=False, type=click.Path(dir_okay=True))
@backend_options
@json_option("Print JSON")
def models(pipeline: str | None, backend_name: str | None, base_url: str | None, api_key_env: str | None,
           as_json: bool) -> ExitCode:
    """List the backend's models, and the local engine's own."""
    from ..oneoff import list_models_report, load_backend, where

    oneoff = load_backend(pipeline, backend_name, base_url, api_key=key_from_env(api_key_env), quick=True)
    for warning in oneoff.warnings:
        click.echo(f"warning: {warning}", err=True)
    report = list_models_report(oneoff.backend, oneoff.note, oneoff.context)
    if as_json:
        click.echo(json.dumps({**report, "warnings": oneoff.warnings}, indent=2))
    else:
        _print_report(report, oneoff.backend.name, where(oneoff.backend), bool(oneoff.note), oneoff.backend.offline)
    return _PROBLEM_CODES.get(report.get("problem_kind") or "", ExitCode.OK)
