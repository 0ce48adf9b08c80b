"""``oaipipe train``: build, validate and launch (and follow) a fine-tuning job.

Thin over :mod:`oaipipe.training` and :mod:`oaipipe.jobs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, ExitCode
from ..models_table import DEFAULT_FINE_TUNE_MODEL
from ..models_table import FINE_TUNE_DEFAULT_WHY as FT_MODEL_WHY
from .common import (
    build_options,
    echo_json,
    json_option,
    key_from_env,
    progress_printer,
    refuse_stdout,
    registry_option,
)

__all__ = ["train"]


def _hyperparameters(n_epochs: int | None, batch_size: int | None, lr: float | None, beta: float | None) -> dict:
    hp = {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": lr, "beta": beta}
    return {k: v for k, v in hp.items() if v is not None}


def _trainer(trainer: str, block: dict[str, Any], base_url: str | None, api_key_env: str | None) -> Any:
    """The trainer ``--trainer`` names, built from the flags that it takes."""
    from ..base import Context
    from ..plugins import PluginHost

    host = PluginHost()
    reg = host.get("trainer", trainer, key="--trainer")
    fields = reg.cls.Options.model_fields
    block = {"type": trainer, **block}
    if base_url:
        if "base_url" not in fields:
            raise ConfigError(f"trainer '{trainer}' does not take --base-url",
                              hint="--base-url is for --trainer openai (an OpenAI-compatible server)")
        block["base_url"] = base_url
    block["api_key"] = key_from_env(api_key_env)
    block = {k: v for k, v in block.items() if v is not None and k in fields}
    return host.build("trainer", block, Context(host=host), key="--trainer")


#: why `train -o -` is refused, and the fix
_NOT_STDOUT = "the job is launched from the dataset file (uploaded, and recorded in the job registry)"
_NOT_STDOUT_FIX = ("drop -o (the dataset goes to $OAIPIPE_HOME/datasets/), or give -o train.jsonl; to see the dataset "
                   "on standard output, use `oaipipe dataset build DATA -o -`")


@click.command()
@click.argument("data", type=click.Path())
@click.option("--trainer", default="local", show_default=True, help="local (offline engine), openai, or a plugin")
@click.option("--method", type=click.Choice(["supervised", "dpo"]), default="supervised", show_default=True)
@click.option("--model", default=DEFAULT_FINE_TUNE_MODEL, show_default=True,
              help="Base model to fine-tune; " + FT_MODEL_WHY)
@click.option("--suffix", default=None, help="Added to the fine-tuned model name")
@click.option("--base-url", default=None, help="OpenAI-compatible server for --trainer openai")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Environment variable holding the key (default: OPENAI_API_KEY for OpenAI itself)")
@build_options
@click.option("--n-epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--learning-rate-multiplier", type=float, default=None)
@click.option("--beta", type=float, default=None, help="DPO only")
@click.option("--max-tokens-per-example", type=int, default=None)
@click.option("--description", default=None, help="Shown by `oaipipe jobs list`")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Where to write the dataset (default: $OAIPIPE_HOME/datasets/, content-addressed; not -: the job "
                   "is launched from the file)")
@click.option("--wait", is_flag=True, help="Follow the job until it finishes; print the fine-tuned model id")
@click.option("--force", is_flag=True, help="Launch even if this dataset was trained already")
@click.option("--poll-interval", type=float, default=2.0, show_default=True)
@click.option("--timeout", type=float, default=None, help="Stop waiting after this many seconds")
@registry_option
@json_option()
def train(data: str, trainer: str, method: str, model: str, suffix: str | None, base_url: str | None,
          api_key_env: str | None, select: tuple[str, ...], system: str | None, step: str | None,
          validation_fraction: float, seed: int, n_epochs: int | None, batch_size: int | None,
          learning_rate_multiplier: float | None, beta: float | None, max_tokens_per_example: int | None,
          description: str | None, output: str | None, wait: bool, force: bool, poll_interval: float,
          timeout: float | None, registry_path: str | None, as_json: bool) -> ExitCode:
    """Build, validate and launch a fine-tuning job on DATA (CSV, JSONL, a folder, or a dialogue log)."""
    from ..jobs import JobRegistry
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

    refuse_stdout(output, why=_NOT_STDOUT, fix=_NOT_STDOUT_FIX)
    say = progress_printer(as_json)
    hp = _hyperparameters(n_epochs, batch_size, learning_rate_multiplier, beta)
    if "beta" in hp and method != "dpo":
        raise ConfigError("--beta applies to --method dpo only", hint="drop --beta or add --method dpo")
    trainer_obj = _trainer(trainer, {"model": model, "method": method, "suffix": suffix, "hyperparameters": hp,
                                     "poll_interval": poll_interval, "seed": seed or None}, base_url, api_key_env)
    result = build_dataset(data, method=method, select=parse_select(select), system=system,
                           validation_fraction=validation_fraction, seed=seed, step=step)
    report = report_for(result, model=model, source=data, token_limit=max_tokens_per_example, n_epochs=n_epochs)
    if not report.ok:
        if as_json:
            echo_json({"status": "invalid", "build": result.stats, "report": report.to_dict()})
        ensure_valid(report)  # raises DatasetError with the report; nothing uploaded
    files = write_dataset(result, Path(output) if output else default_dataset_path(result, Path(data).stem))
    if not as_json:
        click.echo(report.to_text())
        click.echo(f"dataset: {files.train_path} ({files.n_train} examples"
                   + (f", {files.n_validation} for validation" if files.n_validation else "") + ")")
    registry = JobRegistry(registry_path)
    launched = launch_job(trainer_obj, files, base_model=model, registry=registry, force=force,
                          base_url=getattr(trainer_obj.options, "base_url", None), suffix=suffix,
                          hyperparameters=hp, progress=say,
                          description=description or f"{Path(data).name}: {files.n_train} {method} examples")
    job = launched.job
    if wait and not job.finished:
        job = follow_job(trainer_obj, job, registry=registry, poll_interval=poll_interval, timeout=timeout,
                         progress=say)
    if as_json:
        echo_json({"status": job.status, "reused": launched.reused, "job": job.to_dict(),
                   "dataset": files.to_dict(), "report": report.to_dict()})
    if job.finished:
        raise_if_failed(job)
        if not as_json:
            click.echo(f"fine-tuned model: {job.fine_tuned_model}")
    elif not as_json:
        click.echo(f"job {job.id} is {job.status}; follow it with `oaipipe jobs wait {job.id}`")
    return ExitCode.OK
