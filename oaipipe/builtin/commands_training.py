"""Training commands: ``oaipipe dataset build|validate``, ``oaipipe train``, ``oaipipe jobs list|show|wait|cancel``.

Thin over :mod:`oaipipe.training` and :mod:`oaipipe.jobs`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, DatasetError, OaipipeError
from ..hookspecs import hookimpl

_registry_option = click.option("--registry", "registry_path", type=click.Path(dir_okay=False), default=None,
                                help="Job registry file (default: $OAIPIPE_HOME/jobs.json)")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _progress(as_json: bool) -> Any:
    return lambda text: click.echo(text, err=as_json)


def _exit(code: int) -> None:
    from ..cli import set_exit_code

    set_exit_code(code)


def _registry(path: str | None) -> Any:
    from ..jobs import JobRegistry

    return JobRegistry(path)


def _key_from_env(var: str | None) -> str | None:
    """The key in ``--api-key-env VAR`` (``None`` without the flag); an unset VAR is a usage error."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"--api-key-env {var}: that environment variable is not set",
                          hint=f"export {var}=... first")
    return value


def _hyperparameters(n_epochs: int | None, batch_size: int | None, lr: float | None, beta: float | None) -> dict:
    hp = {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": lr, "beta": beta}
    return {k: v for k, v in hp.items() if v is not None}


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


def _build_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--select", "select", multiple=True, metavar="KEY=VALUE",
                     help="Keep examples whose reply/record matches, e.g. sentiment=positive (repeatable)"),
        click.option("--system", default=None, help="System prompt for CSV/pair rows that have none"),
        click.option("--step", default=None, help="Only exchanges of this pipeline step (e.g. reply)"),
        click.option("--validation-fraction", type=float, default=0.0, show_default=True,
                     help="Share of examples kept for the validation file (deterministic by hash)"),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split"),
    ]):
        f = opt(f)
    return f


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.group()
    def dataset() -> None:
        """Build and validate fine-tuning datasets (OpenAI's chat JSONL / DPO format)."""

    @dataset.command("build")
    @click.argument("data", type=click.Path())
    @click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
                  help="Training JSONL to write (a validation split goes to OUT.validation.jsonl)")
    @click.option("--format", "fmt", type=click.Choice(["sft", "dpo"]), default="sft", show_default=True,
                  help="sft: {messages}; dpo: {input, preferred_output, non_preferred_output}")
    @_build_options
    @click.option("--model", default="gpt-4o-mini", show_default=True, help="Model the report counts tokens for")
    @_json_option
    def dataset_build(data: str, output: str, fmt: str, select: tuple[str, ...], system: str | None,
                      step: str | None, validation_fraction: float, seed: int, model: str, as_json: bool) -> None:
        """Build a fine-tuning dataset from DATA (dialogue log, run records, CSV, JSONL or a folder)."""
        from ..training import build_dataset, parse_select, report_for, write_dataset

        method = "dpo" if fmt == "dpo" else "supervised"
        result = build_dataset(data, method=method, select=parse_select(select), system=system,
                               validation_fraction=validation_fraction, seed=seed, step=step)
        report = report_for(result, model=model, source=output)
        # a dataset that is not ready is not written (no empty or half-usable file to train on by mistake)
        files = write_dataset(result, output) if report.ok else None
        if as_json:
            dataset_info = ({**files.to_dict(), "written": True} if files is not None else
                            {"train_path": output, "written": False, "n_train": len(result.train),
                             "n_validation": len(result.validation)})
            _echo_json({"dataset": dataset_info, "build": result.stats, "report": report.to_dict()})
        else:
            s = result.stats
            click.echo(f"read {s.get('read', 0)} example(s); kept {len(result.train)} for training"
                       + (f", {len(result.validation)} for validation" if result.validation else "")
                       + f" ({s.get('duplicates', 0)} duplicate(s), {s.get('not_selected', 0)} not selected"
                       + (f", {s['not_pairable']} without a pair" if s.get("not_pairable") else "")
                       + (f", {s['skipped_non_text']} with images skipped" if s.get("skipped_non_text") else "")
                       + ")")
            if files is not None:
                click.echo(f"wrote {files.train_path}"
                           + (f" and {files.validation_path}" if files.validation_path else ""))
            click.echo(report.to_text())
            if files is None:
                click.echo(f"nothing written to {output}: the dataset is not ready (see the errors above)")
        if not report.ok:
            _exit(DatasetError.exit_code)

    @dataset.command("validate")
    @click.argument("file", type=click.Path())
    @click.option("--method", type=click.Choice(["supervised", "dpo"]), default=None,
                  help="Default: detected from the rows")
    @click.option("--model", default="gpt-4o-mini", show_default=True, help="Base model (tokenizer, limit, price)")
    @click.option("--max-tokens-per-example", type=int, default=None, help="Override the model's example limit")
    @click.option("--n-epochs", type=int, default=None, help="Epochs for the estimate (default: OpenAI's rule)")
    @click.option("--min-examples", type=int, default=10, show_default=True)
    @_json_option
    def dataset_validate(file: str, method: str | None, model: str, max_tokens_per_example: int | None,
                         n_epochs: int | None, min_examples: int, as_json: bool) -> None:
        """Check a fine-tuning JSONL file the way OpenAI's data-preparation guide does; exit 6 if not ready."""
        from ..training import validate_file

        report = validate_file(file, method=method, model=model, token_limit=max_tokens_per_example,
                               n_epochs=n_epochs, min_examples=min_examples)
        if as_json:
            _echo_json(report.to_dict())
        else:
            click.echo(report.to_text())
        if not report.ok:
            _exit(DatasetError.exit_code)

    @cli.command()
    @click.argument("data", type=click.Path())
    @click.option("--trainer", default="local", show_default=True, help="local (offline engine), openai, or a plugin")
    @click.option("--method", type=click.Choice(["supervised", "dpo"]), default="supervised", show_default=True)
    @click.option("--model", default="gpt-4o-mini", show_default=True, help="Base model to fine-tune")
    @click.option("--suffix", default=None, help="Added to the fine-tuned model name")
    @click.option("--base-url", default=None, help="OpenAI-compatible server for --trainer openai")
    @click.option("--api-key-env", default=None, metavar="VAR",
                  help="Environment variable holding the key (default: OPENAI_API_KEY for OpenAI itself)")
    @_build_options
    @click.option("--n-epochs", type=int, default=None)
    @click.option("--batch-size", type=int, default=None)
    @click.option("--learning-rate-multiplier", type=float, default=None)
    @click.option("--beta", type=float, default=None, help="DPO only")
    @click.option("--max-tokens-per-example", type=int, default=None)
    @click.option("--description", default=None, help="Shown by `oaipipe jobs list`")
    @click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                  help="Where to write the dataset (default: $OAIPIPE_HOME/datasets/, content-addressed)")
    @click.option("--wait", is_flag=True, help="Follow the job until it finishes; print the fine-tuned model id")
    @click.option("--force", is_flag=True, help="Launch even if this dataset was trained already")
    @click.option("--poll-interval", type=float, default=2.0, show_default=True)
    @click.option("--timeout", type=float, default=None, help="Stop waiting after this many seconds")
    @_registry_option
    @_json_option
    def train(data: str, trainer: str, method: str, model: str, suffix: str | None, base_url: str | None,
              api_key_env: str | None, select: tuple[str, ...], system: str | None, step: str | None,
              validation_fraction: float, seed: int, n_epochs: int | None, batch_size: int | None,
              learning_rate_multiplier: float | None, beta: float | None, max_tokens_per_example: int | None,
              description: str | None, output: str | None, wait: bool, force: bool, poll_interval: float,
              timeout: float | None, registry_path: str | None, as_json: bool) -> None:
        """Build, validate and launch a fine-tuning job on DATA (CSV, JSONL, a folder, or a dialogue log)."""
        from ..base import Context
        from ..plugins import PluginHost
        from ..training import (
            build_dataset,
            default_dataset_path,
            ensure_valid,
            follow_job,
            launch_job,
            parse_select,
            raise_if_failed,
            report_for,
            write_dataset,
        )

        say = _progress(as_json)
        hp = _hyperparameters(n_epochs, batch_size, learning_rate_multiplier, beta)
        if "beta" in hp and method != "dpo":
            raise ConfigError("--beta applies to --method dpo only", hint="drop --beta or add --method dpo")
        host = PluginHost()
        reg = host.get("trainer", trainer, key="--trainer")
        fields = reg.cls.Options.model_fields
        block: dict[str, Any] = {"type": trainer, "model": model, "method": method, "suffix": suffix,
                                 "hyperparameters": hp, "poll_interval": poll_interval, "seed": seed or None}
        if base_url:
            if "base_url" not in fields:
                raise ConfigError(f"trainer '{trainer}' does not take --base-url",
                                  hint="--base-url is for --trainer openai (an OpenAI-compatible server)")
            block["base_url"] = base_url
        block["api_key"] = _key_from_env(api_key_env)
        block = {k: v for k, v in block.items() if v is not None and k in fields}
        trainer_obj = host.build("trainer", block, Context(host=host), key="--trainer")

        result = build_dataset(data, method=method, select=parse_select(select), system=system,
                               validation_fraction=validation_fraction, seed=seed, step=step)
        report = report_for(result, model=model, source=data, token_limit=max_tokens_per_example,
                            n_epochs=n_epochs)
        if not report.ok:
            if as_json:
                _echo_json({"status": "invalid", "build": result.stats, "report": report.to_dict()})
            ensure_valid(report)  # raises DatasetError with the report; nothing uploaded
        out = Path(output) if output else default_dataset_path(result, Path(data).stem)
        files = write_dataset(result, out)
        if not as_json:
            click.echo(report.to_text())
            click.echo(f"dataset: {files.train_path} ({files.n_train} examples"
                       + (f", {files.n_validation} for validation" if files.n_validation else "") + ")")
        registry = _registry(registry_path)
        launched = launch_job(trainer_obj, files, base_model=model, registry=registry, force=force,
                              base_url=getattr(trainer_obj.options, "base_url", None), suffix=suffix,
                              hyperparameters=hp, progress=say,
                              description=description or f"{Path(data).name}: {files.n_train} {method} examples")
        job = launched.job
        if wait and not job.finished:
            job = follow_job(trainer_obj, job, registry=registry, poll_interval=poll_interval, timeout=timeout,
                             progress=say)
        if as_json:
            _echo_json({"status": job.status, "reused": launched.reused, "job": job.to_dict(),
                        "dataset": files.to_dict(), "report": report.to_dict()})
        if job.finished:
            raise_if_failed(job)
            if not as_json:
                click.echo(f"fine-tuned model: {job.fine_tuned_model}")
        elif not as_json:
            click.echo(f"job {job.id} is {job.status}; follow it with `oaipipe jobs wait {job.id}`")

    @cli.group()
    def jobs() -> None:
        """The job registry: every fine-tuning job oaipipe launched."""

    def _refreshed(job: Any, registry: Any, api_key_env: str | None) -> Any:
        """The job as its provider sees it now (the stored one, with a note, if the provider cannot be asked)."""
        if job.finished:
            return job
        try:
            job = _trainer(job, api_key_env).refresh(job)
        except OaipipeError as exc:
            click.echo(f"note: could not refresh {job.id}: {exc}", err=True)
            return job
        registry.update(job)
        return job

    _refresh_option = click.option("--refresh", is_flag=True,
                                   help="Ask the provider for the current status of unfinished jobs first")
    _key_env_option = click.option("--api-key-env", default=None, metavar="VAR",
                                   help="Environment variable holding the key (with --refresh)")

    @jobs.command("list")
    @_refresh_option
    @_key_env_option
    @_registry_option
    @_json_option
    def jobs_list(refresh: bool, api_key_env: str | None, registry_path: str | None, as_json: bool) -> None:
        """List every job, oldest first (the stored status; --refresh asks the provider)."""
        registry = _registry(registry_path)
        items = registry.list()
        if refresh:
            items = [_refreshed(job, registry, api_key_env) for job in items]
        if as_json:
            _echo_json([j.to_dict() for j in items])
            return
        if not items:
            click.echo("no fine-tuning jobs yet: `oaipipe train DATA` launches one")
            return
        for job in items:
            click.echo(_job_line(job))

    @jobs.command("show")
    @click.argument("job_id")
    @_refresh_option
    @_key_env_option
    @_registry_option
    @_json_option
    def jobs_show(job_id: str, refresh: bool, api_key_env: str | None, registry_path: str | None,
                  as_json: bool) -> None:
        """Everything the registry knows about one job (--refresh: ask the provider first)."""
        registry = _registry(registry_path)
        job = registry.get(job_id)
        if refresh:
            job = _refreshed(job, registry, api_key_env)
        if as_json:
            _echo_json(job.to_dict())
        else:
            _show_job(job)

    def _trainer(job: Any, api_key_env: str | None) -> Any:
        from ..plugins import PluginHost
        from ..training import trainer_for_job

        return trainer_for_job(job, PluginHost(), overrides={"api_key": _key_from_env(api_key_env)})

    @jobs.command("wait")
    @click.argument("job_id")
    @click.option("--poll-interval", type=float, default=2.0, show_default=True)
    @click.option("--timeout", type=float, default=None)
    @click.option("--api-key-env", default=None, metavar="VAR", help="Environment variable holding the key")
    @_registry_option
    @_json_option
    def jobs_wait(job_id: str, poll_interval: float, timeout: float | None, api_key_env: str | None,
                  registry_path: str | None, as_json: bool) -> None:
        """Follow a job until it finishes; exit 7 if it failed or was cancelled, 1 if --timeout ran out first."""
        from ..training import follow_job, raise_if_failed

        registry = _registry(registry_path)
        job = registry.get(job_id)
        if not job.finished:
            job = follow_job(_trainer(job, api_key_env), job, registry=registry, poll_interval=poll_interval,
                             timeout=timeout, progress=_progress(as_json))
        if as_json:
            _echo_json(job.to_dict())
        raise_if_failed(job)
        if not as_json:
            click.echo(f"fine-tuned model: {job.fine_tuned_model}")

    @jobs.command("cancel")
    @click.argument("job_id")
    @click.option("--api-key-env", default=None, metavar="VAR", help="Environment variable holding the key")
    @_registry_option
    @_json_option
    def jobs_cancel(job_id: str, api_key_env: str | None, registry_path: str | None, as_json: bool) -> None:
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
                _echo_json({**job.to_dict(), "already_finished": True})
            else:
                click.echo(f"job {job.id} already finished (status {job.status}); there is nothing to cancel")
            return
        job = (trainer or _trainer(job, api_key_env)).cancel(job)
        registry.update(job)
        if as_json:
            _echo_json(job.to_dict())
        else:
            click.echo(f"job {job.id}: {job.status}")
