"""``oaipipe run``: run a pipeline file, print its summary, exit with what the summary says."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import click

from ..errors import ExitCode
from .common import disable_option, log_records_to, set_option, verbosity

__all__ = ["run", "summary_exit_code"]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _shown(path: str | None) -> str:
    """A path relative to the working folder when it lies below it (what a user can paste)."""
    if not path:
        return ""
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _print_summary(summary: dict[str, Any]) -> None:
    from ..progress import retries_text

    rec = summary.get("records", {})
    status = summary.get("status")
    if status == "nothing-to-do":
        click.echo(summary.get("message", "nothing to do"))
        return
    if status == "dry-run":
        _print_dry_run(summary)
        return
    tokens = summary.get("tokens", {})
    attempt = summary.get("this_attempt") or {}
    if attempt.get("only") == "train":  # the counts below are the run's, made by an earlier attempt
        click.echo(f"{status}: this attempt ran only the train: step of run {summary.get('run_id')} "
                   f"(its records were done before: {attempt.get('calls', 0)} calls, "
                   f"${attempt.get('cost_usd', 0):.4f})")
    click.echo(
        ("  run totals: " if attempt.get("only") == "train" else f"{status}: ")
        + f"{rec.get('done', 0)} done, {rec.get('failed', 0)} failed"
        + (f", {rec.get('skipped')} already done before" if rec.get("skipped") else "")
        + f" in {summary.get('elapsed_s', 0):.1f}s ({summary.get('records_per_s', 0)}/s); "
        f"{summary.get('calls', 0)} calls ({summary.get('cached', 0)} cached), "
        + (f"{summary['attempts']} attempts, " if "attempts" in summary else "")
        + f"{tokens.get('total', 0)} tokens, ${summary.get('cost_usd', 0):.4f}"
    )
    retried = retries_text(summary)
    if retried:
        click.echo(f"  {retried}")
    cache = summary.get("prompt_cache") or {}
    if tokens.get("cached"):
        click.echo(f"  prompt cache: {tokens['cached']} of {tokens.get('prompt', 0)} prompt tokens cached "
                   f"({100 * float(cache.get('hit_rate') or 0):.1f}% hit rate), "
                   f"${float(cache.get('saved_usd') or 0):.4f} saved")
    _print_tier_line(summary.get("tier") or {})
    unpriced = sorted({row["model"] for row in summary.get("by_step", []) if not row.get("priced", True)})
    if unpriced:
        click.echo(f"  note: no price known for {', '.join(unpriced)}, counted as $0 "
                   f"(add `prices: {{MODEL: {{input: USD_PER_1M, output: USD_PER_1M}}}}` to the pipeline)")
    click.echo(f"  run directory: {_shown(summary.get('run_dir'))}")
    for sink in summary.get("sinks", []):
        click.echo(f"  output: {sink}")
    if rec.get("failed"):
        click.echo(f"  errors: {_shown(summary.get('errors_file'))}")
    if status == "budget-reached":
        click.echo("  the cost budget was reached: run the same command again to continue "
                   "(--max-cost applies to each invocation)")
    train = summary.get("train")
    if train:
        model = train.get("fine_tuned_model")
        click.echo(f"  train: {train.get('status')}" + (f", model {model}" if model else "")
                   + (f" ({train.get('reason')})" if train.get("reason") else ""))


def _print_dry_run(summary: dict[str, Any]) -> None:
    rec = summary.get("records", {})
    click.echo(f"dry run: {rec.get('total', 0)} records would be processed; no call was made")
    est = summary.get("estimate")
    if est:
        click.echo(f"  estimated tokens: {est.get('prompt_tokens', 0)} in, {est.get('completion_tokens', 0)} out; "
                   f"estimated cost ${est.get('cost_usd', 0):.4f}")
        for row in est.get("by_step", []):
            click.echo(f"  step {row['step']} ({row['model']}): {row['calls']} calls, {row['prompt_tokens']} in, "
                       f"{row['completion_tokens']} out, ${row['cost_usd']:.4f}")
        if est.get("completion_tokens_per_call"):
            click.echo(f"  (completion tokens: max_tokens where set, else {est['completion_tokens_per_call']} "
                       f"per call)")
        if est.get("note"):
            click.echo(f"  note: {est['note']}")
        if est.get("reasoning_not_counted"):
            click.echo(f"  note: {', '.join(est['reasoning_not_counted'])}: reasoning model; its reasoning tokens, billed as "
                       "output, are not in this estimate; set max_tokens on the step to cap them")
    if rec.get("would_fail"):
        errors = summary.get("record_errors", [])
        shown = f" (the first {len(errors)})" if len(errors) < rec["would_fail"] else ""
        click.echo(f"  {rec['would_fail']} records would fail{shown}:")
        for error in errors:  # one per line, its hint under it
            click.echo("    " + error.replace("\n", "\n    "))
    if summary.get("tier_plan"):
        _print_tier_plan(summary["tier_plan"])


def _print_tier_plan(plan: dict[str, Any]) -> None:
    """The tier planner's table: each tier's estimated cost and time against the deadline, the choice."""
    click.echo(f"  tier plan (deadline {plan['deadline']}):")
    click.echo(f"    {'tier':<9} {'est. cost':>11} {'est. time':>10}  {'meets deadline':<14}  chosen")
    for row in plan["tiers"]:
        cost = "unknown" if row["cost_usd"] is None else f"${row['cost_usd']:.4f}"
        chosen = "<- chosen" if row["tier"] == plan["chosen"] else row["note"]
        click.echo(f"    {row['tier']:<9} {cost:>11} {row['time']:>10}  {'yes' if row['meets_deadline'] else 'no':<14}"
                   f"  {chosen}")
    click.echo(f"  {plan['reason']}")


def _print_tier_line(tier: dict[str, Any]) -> None:
    """The run's tier, what it paid against the standard tier, and the flex calls sent again at standard."""
    if not tier.get("chosen") and not tier.get("flex_fallbacks"):
        return
    text = f"  tier: {tier.get('chosen') or 'as configured'}"
    standard, saved = tier.get("standard_cost_usd"), tier.get("saved_usd")
    if standard is not None and saved is not None:
        text += f", paid ${standard - saved:.4f} against ${standard:.4f} at standard (saved ${saved:.4f})"
    if tier.get("flex_fallbacks"):
        text += f"; {tier['flex_fallbacks']} flex calls met 'resource unavailable' and went at standard"
    click.echo(text)


def _budget(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """``--max-cost``: a finite number of USD > 0 (NaN or inf would never trigger; 0 would start nothing)."""
    from ..pricing import check_budget

    if value is None:
        return None
    try:
        return check_budget(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--max-cost "), ctx=ctx, param=param) from None


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """``--shard I/N``: shard I (0..N-1) of N."""
    from ..shards import parse_shard

    if value is None:
        return None
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def summary_exit_code(summary: dict[str, Any]) -> ExitCode:
    """The exit code a finished run's summary calls for (the last rule that applies wins)."""
    code = ExitCode.OK
    if summary.get("records", {}).get("failed") and summary.get("status") != "nothing-to-do":
        code = ExitCode.RECORDS_FAILED
    train_status = (summary.get("train") or {}).get("status")
    if train_status == "invalid":
        code = ExitCode.DATASET_ERROR  # the run is done, the dataset it gave fails validation
    elif train_status in ("failed", "error", "cancelled"):
        code = ExitCode.TRAINING_ERROR  # the run is done, its fine-tuning job is not
    if summary.get("status") == "budget-reached":
        code = ExitCode.ABORTED  # stopped on purpose by --max-cost; rerun (with a higher budget) to go on
    return code


@click.command()
@click.argument("pipeline", default="pipeline.yaml", type=click.Path(dir_okay=True))
@set_option
@click.option("--resume/--fresh", "resume", default=True,
              help="Continue the last unfinished run (default), or start a new run")
@click.option("--limit", type=click.IntRange(min=1), help="Process at most N records")
@click.option("--dry-run", is_flag=True, help="Validate and estimate tokens and cost; call nothing")
@click.option("--max-failures", type=click.IntRange(min=0), help="Abort after more than N failed records")
@click.option("--retry-failed", is_flag=True, help="Rerun only the records that failed in the last run")
@click.option("--no-cache", is_flag=True, help="Do not reuse cached responses")
@click.option("--max-cost", type=float, callback=_budget, help="Stop starting records past this many USD")
@click.option("--shard", callback=_shard, metavar="I/N",
              help="Process only shard I of N (0..N-1, by record id) as its own run; then `oaipipe merge`")
@click.option("--executor", type=click.Choice(["local", "ray"]),
              help="Where CPU-bound steps run (default: run.executor, local): worker processes, or Ray actors")
@click.option("--ray-address", metavar="ADDR", help="With --executor ray: the cluster to join (default: a local Ray)")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout")
@disable_option
def run(pipeline: str, overrides: tuple[str, ...], resume: bool, limit: int | None, dry_run: bool,
        max_failures: int | None, retry_failed: bool, no_cache: bool, max_cost: float | None,
        shard: tuple[int, int] | None, executor: str | None, ray_address: str | None, as_json: bool,
        disabled: tuple[str, ...]) -> ExitCode:
    """Run a pipeline file (default: pipeline.yaml)."""
    from ..pipeline import load_pipeline
    from ..progress import make_reporter
    from ..runner import RunOptions, run_pipeline

    quiet = verbosity().quiet  # -q: no progress output
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops a run like Ctrl-C: summary written, resumable
    built = load_pipeline(pipeline, list(overrides), disabled=list(disabled))
    if ray_address is not None and (executor or built.loaded.config.run.executor) != "ray":
        raise click.UsageError("--ray-address is read only with --executor ray (or run.executor: ray), and this run "
                               "uses local worker processes: give --executor ray too, or drop --ray-address")
    options = RunOptions(fresh=not resume, limit=limit, dry_run=dry_run, max_failures=max_failures,
                         retry_failed=retry_failed, use_cache=not no_cache, max_cost=max_cost, shard=shard,
                         executor=executor, ray_address=ray_address)
    reporter = make_reporter(quiet=quiet or as_json)  # a live bar on a terminal, plain lines otherwise
    with log_records_to(reporter):  # -v: retries and rate-limit changes are logged above the progress display
        summary = asyncio.run(run_pipeline(built, options, reporter))
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(summary)
    return summary_exit_code(summary)
