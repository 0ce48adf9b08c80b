"""``oaipipe runs``: the runs of a run folder, and ``oaipipe runs show ID``: one run's summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ._options import runs_location, store_for

__all__ = ["runs", "show"]


def _money(value: Any) -> str:
    return "-" if value is None else f"${float(value):.4f}"


def _when(value: Any) -> str:
    return str(value or "-").replace("T", " ").split("+")[0][:19]


@click.group(invoke_without_command=True)
@runs_location
@click.option("--name", "pipeline_name", metavar="PIPELINE", help="Only the runs of this pipeline (its name:)")
@click.option("-n", "--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Newest N runs (0: all)")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@click.pass_context
def runs(ctx: click.Context, pipeline_file: str | None, runs_dir: Path | None, pipeline_name: str | None,
         limit: int, as_json: bool) -> None:
    """List runs: status, records done/failed, cost, when (newest first).

    Reads the run store (runs.db in the run folder), which is brought up to date from the run directories
    first: runs made before the store existed are listed too.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(pipeline_file=pipeline_file, runs_dir=runs_dir)
    if ctx.invoked_subcommand is not None:
        return
    with store_for(pipeline_file, runs_dir) as store:
        rows = store.runs(pipeline=pipeline_name, limit=limit or None)
    if as_json:
        click.echo(json.dumps([{k: v for k, v in r.items() if k not in ("summary", "config")} for r in rows],
                              indent=2, default=str))
        return
    if not rows:
        click.echo("no runs yet (run a pipeline with `oaipipe run pipeline.yaml`)")
        return
    header = ("RUN", "PIPELINE", "STATUS", "DONE", "FAILED", "CALLS", "COST", "STARTED")
    table = [header] + [
        (r["run_id"], r["pipeline"], r["status"] or "-", str(r["records_done"]), str(r["records_failed"]),
         "-" if r["calls"] is None else str(r["calls"]), _money(r["cost_usd"]), _when(r["started_at"]))
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@runs.command()
@click.argument("run_id", required=False, metavar="[ID]")
@runs_location
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON (its summary.json included)")
@click.pass_context
def show(ctx: click.Context, run_id: str | None, pipeline_file: str | None, runs_dir: Path | None,
         as_json: bool) -> None:
    """Show one run: its summary, cost by step and model, retries, failed records.

    ID is a run id, a unique part of one, `latest` (the default) or `latest~1`.
    """
    parent = ctx.obj or {}
    with store_for(pipeline_file or parent.get("pipeline_file"), runs_dir or parent.get("runs_dir")) as store:
        found = store.resolve(run_id)
        run = store.run(found)
        failed = store.records(found, status="failed", limit=20)
    if as_json:
        run["failed_records"] = [{k: r[k] for k in ("id", "location", "error", "error_class")} for r in failed]
        click.echo(json.dumps(run, indent=2, default=str))
        return
    summary = run.get("summary") or {}
    click.echo(f"run {run['run_id']} of pipeline {run['pipeline']}: {run['status']}")
    click.echo(f"  started {_when(run['started_at'])}, finished {_when(run['finished_at'])}"
               + (f" ({run['elapsed_s']:.1f}s)" if run.get("elapsed_s") is not None else ""))
    click.echo(f"  backend {run['backend'] or '-'}, model {run['model'] or '-'}")
    total = run.get("records_total")
    click.echo(f"  records: {run['records_done']} done, {run['records_failed']} failed"
               + (f" (of {total})" if total is not None else ""))
    if summary:
        tokens = summary.get("tokens") or {}
        click.echo(f"  last invocation: {summary.get('calls', 0)} calls ({summary.get('cached', 0)} cached), "
                   f"{tokens.get('prompt', 0)} + {tokens.get('completion', 0)} tokens, "
                   f"{_money(summary.get('cost_usd'))}")
        retries = summary.get("retries")
        if isinstance(retries, dict):
            by = ", ".join(f"{k}: {v}" for k, v in (retries.get("by_status") or {}).items())
            click.echo(f"  attempts {summary.get('attempts', '-')}, retries {retries.get('total', 0)}"
                       + (f" ({by})" if by else ""))
        for row in summary.get("by_step") or []:
            click.echo(f"    {row.get('step')} ({row.get('model')}): {row.get('calls', 0)} calls, "
                       f"{row.get('cached', 0)} cached, {row.get('prompt_tokens', 0)} + "
                       f"{row.get('completion_tokens', 0)} tokens, {_money(row.get('cost_usd'))}")
        train = summary.get("train")
        if isinstance(train, dict):
            click.echo(f"  train: {train.get('status')}"
                       + (f", model {train['fine_tuned_model']}" if train.get("fine_tuned_model") else ""))
    else:
        click.echo("  no summary.json: the run is going, or was stopped before it could write one")
    click.echo(f"  run directory: {run['run_dir']}")
    if failed:
        click.echo("  failed records:")
        for r in failed:
            click.echo(f"    {r['id']}: {r['error']}")
