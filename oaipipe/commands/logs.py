"""``oaipipe logs``: query the exchanges of runs, like ``llm logs``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ._options import runs_location, store_for

__all__ = ["logs"]

LABELS = click.Choice(["positive", "negative", "neutral"])


def _side(name: str, text: str | None, label: str | None, score: Any) -> str:
    mood = ""
    if label:
        mood = f" [{label}" + (f" {float(score):+.2f}" if isinstance(score, int | float) else "") + "]"
    return f"{name}{mood}: {text or ''}"


@click.command()
@click.option("-n", "--count", "limit", type=click.IntRange(min=0), default=10, show_default=True,
              help="Newest N exchanges (0: all)")
@click.option("--run", "run_ref", metavar="ID", help="Only this run (an id, a unique part of one, latest)")
@click.option("--step", help="Only this step (its label, e.g. ask:reply; a part of it matches too)")
@click.option("--model", help="Only this model (a part of its id matches too)")
@click.option("--sentiment", type=LABELS, help="Input or reply has this sentiment")
@click.option("--input-sentiment", type=LABELS, help="The input (user message) has this sentiment")
@click.option("--reply-sentiment", type=LABELS, help="The reply has this sentiment")
@click.option("-q", "--query", help="Full-text search (SQLite FTS5) of system, input and reply")
@click.option("--failed", is_flag=True, help="Only exchanges of records that failed")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@runs_location
def logs(limit: int, run_ref: str | None, step: str | None, model: str | None, sentiment: str | None,
         input_sentiment: str | None, reply_sentiment: str | None, query: str | None, failed: bool,
         as_json: bool, pipeline_file: str | None, runs_dir: Path | None) -> None:
    """Show the exchanges (calls) of runs, newest first, filtered and searched.

    Example: oaipipe logs --sentiment negative -q mug
    """
    from ..store import ExchangeQuery

    with store_for(pipeline_file, runs_dir) as store:
        run_id = store.resolve(run_ref) if run_ref else None
        rows = store.exchanges(ExchangeQuery(run=run_id, step=step, model=model, sentiment=sentiment,
                                             input_sentiment=input_sentiment, reply_sentiment=reply_sentiment,
                                             query=query, failed=failed, limit=limit or None))
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str, ensure_ascii=False))
        return
    if not rows:
        click.echo("no exchanges match")
        return
    for row in reversed(rows):  # oldest of the newest first, like a log
        flags = " cached" if row["cached"] else ""
        failed_note = f" (record failed: {row['record_error']})" if row.get("record_status") == "failed" else ""
        click.echo(f"## {row['record_id']} · {row['step']} · {row['model']} · run {row['run_id']}{failed_note}")
        if row.get("system"):
            click.echo(f"system: {row['system']}")
        click.echo(_side("input", row["input"], row["input_sentiment"], row["input_score"]))
        click.echo(_side("reply", row["reply"], row["reply_sentiment"], row["reply_score"]))
        latency = row.get("latency")
        click.echo(f"({row['prompt_tokens']} + {row['completion_tokens']} tokens"
                   + (f", {latency:.2f}s" if isinstance(latency, int | float) else "")
                   + f", ${row['cost_usd'] or 0:.6f}{flags})")
        click.echo()
