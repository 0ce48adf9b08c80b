"""``oaipipe merge``: combine the sink files of a pipeline's shard runs (``oaipipe run --shard I/N``)."""

from __future__ import annotations

import click

from ..errors import ExitCode
from .common import disable_option, echo_json, json_option, set_option

__all__ = ["merge"]


@click.command()
@click.argument("pipeline", default="pipeline.yaml", type=click.Path(dir_okay=True))
@set_option
@disable_option
@json_option("Print {pipeline, shards, outputs: [{sink, path, records}]} as JSON")
def merge(pipeline: str, overrides: tuple[str, ...], disabled: tuple[str, ...], as_json: bool) -> ExitCode:
    """Merge the shards of a pipeline run with --shard I/N into its sink files, in input order.

    Refuses (naming them) shards of different N, missing or unfinished shards, and a record found in
    the wrong shard or twice. Each sink file ``out.jsonl`` is written from ``out.shard-I-of-N.jsonl``.
    """
    from ..pipeline import load_pipeline
    from ..shards import merge_shards

    built = load_pipeline(pipeline, list(overrides), disabled=list(disabled))
    done = merge_shards(built)
    if as_json:
        echo_json(done)
        return ExitCode.OK
    for out in done["outputs"]:
        click.echo(f"merged {done['shards']} shards: {out['records']} records -> {out['path']}")
    return ExitCode.OK
