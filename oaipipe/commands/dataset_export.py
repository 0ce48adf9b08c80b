"""``oaipipe dataset export``: a run's training dataset in the formats other trainers take.

Thin over :mod:`oaipipe.training.export` (formats, pairing, checks and the atomic write live there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import ExitCode
from ._options import runs_location, store_for
from .common import STDOUT, echo_json, json_option, output_path, refuse_stdout, stdout_output

__all__ = ["export"]

_FORMATS = ["hf-jsonl", "hf-parquet", "dpo-jsonl", "dpo-parquet", "openai-jsonl"]


def _run_dir(run: str | None, pipeline_file: str | None, runs_dir: Path | None) -> Path:
    """The run folder RUN names: a run folder itself, a pipeline file (its latest run), or a run id /
    ``latest`` / ``latest~N`` among the runs of ``--pipeline`` / ``--runs-dir``."""
    pipeline_name = None
    if run:
        path = Path(run)
        if path.is_dir():
            return path
        if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
            from ..config import load_config

            pipeline_file, run, pipeline_name = str(path), None, load_config(path).config.name
    with store_for(pipeline_file, runs_dir) as store:
        found = store.resolve(run, pipeline=pipeline_name)
        return Path(store.run(found)["run_dir"])


def _print(result: Any, output: str) -> None:
    data = result.to_dict()
    err = output == STDOUT  # the rows are on stdout: the messages go to stderr
    how = f"; pairs: {data['pairing']}" if data["pairing"] else ""
    click.echo(f"wrote {data['rows']} row(s) to {'standard output' if err else data['path']} ({data['format']}) "
               f"from run {data['run']} (select {data['select'] or 'none: every exchange'}"
               + (f", step {data['step']}" if data["step"] else "") + f"{how})", err=err)
    click.echo(f"the shape is documented at {data['shape_source']}", err=err)


@click.command("export")
@click.argument("run", required=False, metavar="[RUN]")
@click.option("--format", "fmt", type=click.Choice(_FORMATS), required=True,
              help="hf-jsonl / hf-parquet: {messages} (TRL SFTTrainer); dpo-jsonl / dpo-parquet: {prompt, chosen, "
                   "rejected} (TRL DPOTrainer); openai-jsonl: OpenAI's fine-tuning JSONL")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write (-: standard output, for the JSONL formats)")
@runs_location
@click.option("--all", "all_exchanges", is_flag=True, help="Every exchange, not only those train.select keeps")
@click.option("--select", "select", multiple=True, metavar="KEY=VALUE",
              help="Instead of the run's train.select: keep exchanges whose reply/record matches (repeatable)")
@click.option("--step", default=None, help="Only exchanges of this step (default: the run's train.step)")
@click.option("--chosen", "chosen_step", default=None, metavar="STEP",
              help="DPO: in each record, this step's reply is the chosen one ...")
@click.option("--rejected", "rejected_step", default=None, metavar="STEP",
              help="... and this step's reply to the same prompt the rejected one")
@json_option()
def export(run: str | None, fmt: str, output: str, pipeline_file: str | None, runs_dir: Path | None,
           all_exchanges: bool, select: tuple[str, ...], step: str | None, chosen_step: str | None,
           rejected_step: str | None, as_json: bool) -> ExitCode:
    """Export the training dataset of RUN for other trainers (Hugging Face TRL and datasets, OpenAI).

    RUN is a run id (or a unique part of one), `latest` (the default), `latest~N`, a run folder, or a
    pipeline file (its latest run). The exchanges are those the run's `train.select` keeps (`--all`: every
    one), in input order. DPO pairs come from two steps (`--chosen STEP --rejected STEP`) or, without them,
    from a positive and a negative reply to the same prompt (docs/training.md).
    """
    from ..training import parse_select
    from ..training.export import FORMATS, export_run

    spec = FORMATS[fmt]
    if stdout_output(output, as_json) and not spec.text:
        streams = [f.name for f in FORMATS.values() if f.text and f.rows == spec.rows]
        refuse_stdout(output, why=f"{fmt} is a binary {spec.container} file, written through a seekable file",
                      fix=f"give -o FILE.{spec.container}" + (f", or use --format {streams[0]} for a stream of "
                                                             "text lines" if streams else ""))
    with output_path(output, suffix=".jsonl") as path:
        result = export_run(_run_dir(run, pipeline_file, runs_dir), fmt, path, select=parse_select(select),
                            all_exchanges=all_exchanges, step=step, chosen_step=chosen_step,
                            rejected_step=rejected_step)
    if as_json:
        echo_json(result.to_dict())
    else:
        _print(result, output)
    if not result.run_complete:
        state = (f"its status is {result.run_status}" if result.run_status else
                 "it has no summary: it is still running, or was killed")
        click.echo(f"warning: run {result.run_dir.name} has not finished ({state}); the export holds only the "
                   f"records it finished so far: finish the run (rerun the same `oaipipe run` command), then "
                   f"export again", err=True)
    return ExitCode.OK
