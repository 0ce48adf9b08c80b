"""``oaipipe report``: one self-contained HTML file with the figures of a run (or two, side by side)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._options import runs_location, store_for
from .common import stdout_output

__all__ = ["report"]


@click.command()
@click.argument("run_ref", required=False, metavar="[RUN]")
@click.option("--compare", "compare_ref", metavar="RUN2", help="Show a second run side by side")
@click.option("--eval", "eval_file", type=click.Path(dir_okay=False),
              help="Add a sentiment evaluation (the JSON of `oaipipe sentiment eval ... -o FILE`)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="report.html",
              show_default=True, help="HTML file to write (-: standard output)")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON: path, size, runs")
@runs_location
def report(run_ref: str | None, compare_ref: str | None, eval_file: str | None, output: str, as_json: bool,
           pipeline_file: str | None, runs_dir: Path | None) -> None:
    """Write an HTML report of RUN (default: the latest): sentiment, latency, throughput, tokens and
    dollars, cache hits, retries, errors and the failed records. One file, no network needed to open it.

    RUN and RUN2 are run ids, unique parts of one, `latest` or `latest~1`.
    """
    from ..report import build_report, read_evaluation, write_report
    from ..store import find_run_dirs, runs_dir_for

    to_stdout = stdout_output(output, as_json)
    evaluation = read_evaluation(eval_file) if eval_file else None
    folder = runs_dir_for(pipeline_file, runs_dir)
    if evaluation is not None and run_ref is None and compare_ref is None and not find_run_dirs(folder):
        text = build_report(None, [], evaluation=evaluation)  # an evaluation alone: no run needed
        ids: list[str] = []
    else:
        with store_for(pipeline_file, runs_dir) as store:
            ids = [store.resolve(run_ref)]
            if compare_ref:
                ids.append(store.resolve(compare_ref))
            text = build_report(store, ids, evaluation=evaluation)
    if to_stdout:
        click.echo(text, nl=False)
        return
    path = write_report(output, text)
    if as_json:
        click.echo(json.dumps({"path": str(path), "bytes": len(text.encode("utf-8")), "runs": ids,
                               "evaluation": evaluation is not None}))
        return
    what = " vs ".join(ids) or "the evaluation"
    click.echo(f"wrote {path} ({len(text) / 1e6:.1f} MB, {what}); open it in a browser (it needs no network)")
