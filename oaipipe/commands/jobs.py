"""``oaipipe jobs list|show|wait|cancel``: the job registry, every fine-tuning job oaipipe launched.

Thin over :mod:`oaipipe.jobs` and :mod:`oaipipe.training`.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import ExitCode, OaipipeError
from .common import echo_json, json_option, key_from_env, note, progress_printer, registry_option

__all__ = ["cancel", "jobs", "list_jobs", "show", "wait"]

_refresh_option = click.option("--refresh", is_flag=True,
                               help="Ask the provider for the current status of unfinished jobs first")
_key_env_option = click.option("--api-key-env", default=None, metavar="VAR",
                               help="Environment variable holding the key (with --refresh)")


def _registry(path: str | None) -> Any:
    from ..jobs import JobRegistry

    return JobRegistry(path)


def _trainer(job: Any, api_key_env: str | None) -> Any:
    """The trainer that launched ``job`` (to ask its provider about it)."""
    from ..plugins import PluginHost
    from ..training import trainer_for_job

    return trainer_for_job(job, PluginHost(), overrides={"api_key": key_from_env(api_key_env)})


def _refreshed(job: Any, registry: Any, api_key_env: str | None) -> Any:
    """The job as its provider sees it now (the stored one, with a note, if the provider cannot be asked)."""
    if job.finished:
        return job
    try:
        job = _trainer(job, api_key_env).refresh(job)
    except OaipipeError as exc:
        note(f"note: could not refresh {job.id}: {exc}")
        return job
    registry.update(job)
    return job


def _job_line(job: Any) -> str:
    model = job.fine_tuned_model or "-"
    return f"{job.id}  {job.status:<10} {job.trainer:<7} {job.method:<10} {job.base_model:<14} {model}  {job.created_at}"


def _show_job(job: Any) -> None:
    click.echo(f"job {job.id}")
    for key in ("description", "status", "trainer", "method", "base_model", "fine_tuned_model", "created_at",
                "updated_at", "dataset", "dataset_sha256", "validation_dataset", "n_examples", "base_url", "suffix"):
        value = getattr(job, key)
        if value not in (None, ""):
            click.echo(f"  {key}: {value}")
    if job.hyperparameters:
        click.echo(f"  hyperparameters: {json.dumps(job.hyperparameters)}")
    if job.error:
        click.echo(f"  error: {job.error_message()}")
    if job.events:
        click.echo("  events:")
        for event in job.events[-10:]:
            click.echo(f"    [{event.get('level', 'info')}] {event.get('message', '')}")


@click.group()
def jobs() -> None:
    """The job registry: every fine-tuning job oaipipe launched."""


@jobs.command("list")
@_refresh_option
@_key_env_option
@registry_option
@json_option()
def list_jobs(refresh: bool, api_key_env: str | None, registry_path: str | None, as_json: bool) -> ExitCode:
    """List every job, oldest first (the stored status; --refresh asks the provider)."""
    registry = _registry(registry_path)
    items = registry.list()
    if refresh:
        items = [_refreshed(job, registry, api_key_env) for job in items]
    if as_json:
        echo_json([j.to_dict() for j in items])
        return ExitCode.OK
    if not items:
        click.echo("no fine-tuning jobs yet: `oaipipe train DATA` launches one")
        return ExitCode.OK
    for job in items:
        click.echo(_job_line(job))
    return ExitCode.OK


@jobs.command("show")
@click.argument("job_id")
@_refresh_option
@_key_env_option
@registry_option
@json_option()
def show(job_id: str, refresh: bool, api_key_env: str | None, registry_path: str | None,
         as_json: bool) -> ExitCode:
    """Everything the registry knows about one job (--refresh: ask the provider first)."""
    registry = _registry(registry_path)
    job = registry.get(job_id)
    if refresh:
        job = _refreshed(job, registry, api_key_env)
    if as_json:
        echo_json(job.to_dict())
    else:
        _show_job(job)
    return ExitCode.OK


@jobs.command("wait")
@click.argument("job_id")
@click.option("--poll-interval", type=float, default=2.0, show_default=True)
@click.option("--timeout", type=float, default=None)
@click.option("--api-key-env", default=None, metavar="VAR", help="Environment variable holding the key")
@registry_option
@json_option()
def wait(job_id: str, poll_interval: float, timeout: float | None, api_key_env: str | None,
         registry_path: str | None, as_json: bool) -> ExitCode:
    """Follow a job until it finishes; exit 7 if it failed or was cancelled, 1 if --timeout ran out first."""
    from ..training import follow_job, raise_if_failed

    registry = _registry(registry_path)
    job = registry.get(job_id)
    if not job.finished:
        job = follow_job(_trainer(job, api_key_env), job, registry=registry, poll_interval=poll_interval,
                         timeout=timeout, progress=progress_printer(as_json))
    if as_json:
        echo_json(job.to_dict())
    raise_if_failed(job)
    if not as_json:
        click.echo(f"fine-tuned model: {job.fine_tuned_model}")
    return ExitCode.OK


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--api-key-env", default=None, metavar="VAR", help="Environment variable holding the key")
@registry_option
@json_option()
def cancel(job_id: str, api_key_env: str | None, registry_path: str | None, as_json: bool) -> ExitCode:
    """Cancel a job that is still running (a job that already finished: a message and exit 0)."""
    registry = _registry(registry_path)
    job = registry.get(job_id)
    trainer = None
    if not job.finished:  # the job may have finished on the server since the registry last looked
        trainer = _trainer(job, api_key_env)
        job = trainer.refresh(job)
        registry.update(job)
    if job.finished:
        # nothing to do is not a failure: exit 0 and say so (documented in docs/training.md)
        if as_json:
            echo_json({**job.to_dict(), "already_finished": True})
        else:
            click.echo(f"job {job.id} already finished (status {job.status}); there is nothing to cancel")
        return ExitCode.OK
    job = (trainer or _trainer(job, api_key_env)).cancel(job)
    registry.update(job)
    if as_json:
        echo_json(job.to_dict())
    else:
        click.echo(f"job {job.id}: {job.status}")
    return ExitCode.OK
