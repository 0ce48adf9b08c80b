"""``oaipipe schema``: the JSON Schema of pipeline.yaml, every plugin's options included (for editors)."""

from __future__ import annotations

import json
import os

import click

from ..errors import ConfigError, ExitCode
from .common import json_option, note, stdout_output

__all__ = ["schema"]


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@click.command()
@click.option("--pipeline", type=click.Path(exists=True), help="Include the plugins this pipeline lists")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              help="Write to a file (-: standard output, as without -o)")
@json_option("Accepted for uniformity: the schema is JSON anyway")
def schema(pipeline: str | None, output: str | None, as_json: bool) -> ExitCode:
    """Print the JSON Schema of pipeline.yaml, every plugin's options included (for editors).

    Point a pipeline file at it with a top-level `$schema: ./pipeline.schema.json` key (or your editor's
    setting); oaipipe accepts and ignores that key.
    """
    from ..schema import pipeline_schema

    if output and pipeline and _same_file(output, pipeline):
        raise ConfigError(f"-o {output} is the pipeline file --pipeline reads: writing the schema there would "
                          f"replace the pipeline", hint="write the schema next to it, e.g. -o pipeline.schema.json")
    to_stdout = stdout_output(output)  # --json is accepted with it: the schema is JSON anyway
    text = json.dumps(pipeline_schema(pipeline), indent=2)
    if output and not to_stdout:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        note(f"wrote {output}")
    else:
        click.echo(text)
    return ExitCode.OK
