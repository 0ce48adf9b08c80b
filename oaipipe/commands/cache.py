"""``oaipipe cache stats [PIPELINE]`` and ``oaipipe cache clear [PIPELINE] [--older-than 30d]``.

The work is done by :func:`oaipipe.cache.cache_stats` and :func:`oaipipe.cache.clear_cache`; these
functions only parse and print.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import ExitCode

__all__ = ["cache", "clear", "stats"]

_pipeline_argument = click.argument("pipeline", default="pipeline.yaml", type=click.Path(dir_okay=True))
_set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override a pipeline value, e.g. --set run.cache_dir=/tmp/cache (repeatable)",
)
_disable_option = click.option("--disable-plugin", "disabled", multiple=True, metavar="NAME",
                               help="Do not load this plugin (repeatable)")


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from ..cache import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


@click.group("cache")
def cache() -> None:
    """Inspect or empty the response cache of a pipeline."""


@cache.command("stats")
@_pipeline_argument
@_set_option
@_disable_option
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON on stdout")
def stats(pipeline: str, overrides: tuple[str, ...], disabled: tuple[str, ...], as_json: bool) -> ExitCode:
    """Entries, size, age and hits of the response cache of PIPELINE (default: pipeline.yaml)."""
    from ..cache import cache_stats

    data = cache_stats(pipeline, list(overrides), disabled=list(disabled))
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return ExitCode.OK
    where = data.get("path") or data.get("dir")
    click.echo(f"response cache of {data['pipeline']}: {where} ({data.get('store', '?')})"
               + ("" if data.get("enabled") else "  [off: run.cache is false]"))
    click.echo(f"  entries: {data.get('entries', 0):,}")
    click.echo(f"  size:    {_size(data.get('size_bytes'))}")
    if data.get("entries"):
        click.echo(f"  oldest:  {data.get('oldest') or '-'}")
        click.echo(f"  newest:  {data.get('newest') or '-'}")
    if "hits" in data:
        click.echo(f"  hits:    {data.get('hits', 0):,}, misses: {data.get('misses', 0):,} (all runs so far)")
    bounds = [f"max_size {_size(data['max_size'])}" if data.get("max_size") else "",
              f"max_age {data['max_age']}" if data.get("max_age") else ""]
    if any(bounds):
        click.echo(f"  bounds:  {', '.join(b for b in bounds if b)}")
    return ExitCode.OK


@cache.command("clear")
@_pipeline_argument
@click.option("--older-than", type=_Duration(), metavar="DURATION",
              help="Only entries stored longer ago than this: 45s, 90m, 12h, 30d, 2w")
@_set_option
@_disable_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout")
def clear(pipeline: str, older_than: float | None, overrides: tuple[str, ...], disabled: tuple[str, ...],
          as_json: bool) -> ExitCode:
    """Remove the entries of the response cache of PIPELINE (default: pipeline.yaml)."""
    from ..cache import clear_cache

    data = clear_cache(pipeline, older_than, list(overrides), disabled=list(disabled))
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return ExitCode.OK
    which = f" stored more than {data['older_than']} ago" if data.get("older_than") else ""
    click.echo(f"removed {data['removed']:,} entries{which} from {data['path']}")
    return ExitCode.OK
