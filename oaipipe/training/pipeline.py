"""The ``train:`` block of a pipeline: after a run, train on its records.

The runner calls :func:`train_after_run` with the run's ``records.jsonl``. The dataset files go into the
run directory (``train.jsonl``, ``train.validation.jsonl``); the job goes into the registry. Too few
examples is not a crash: the summary says ``status: skipped`` and why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..base import Context, Trainer
from ..errors import OaipipeError
from ..jobs import JobRegistry
from ..models_table import DEFAULT_FINE_TUNE_MODEL
from .build import write_dataset
from .launch import build_dataset, follow_job, launch_job, report_for

__all__ = ["build_train_block", "train_after_run"]


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value)


def build_train_block(train_block: dict[str, Any] | None, *, host: Any, context: Context,
                      backend_options: Any = None, file: str | None = None,
                      lines: Any = None) -> tuple[Trainer, dict[str, Any]]:
    """Validate a ``train:`` block and build its trainer (no network), with the backend's settings inherited.

    ``oaipipe validate`` can call this to check every key of ``train:`` (unknown keys are errors with
    the file and line, through ``file``/``lines`` as in :meth:`PluginHost.build`).
    """
    block = dict(train_block or {})
    block.setdefault("type", "local")
    reg = host.get("trainer", block["type"], key="train.type", file=file)
    option_fields = reg.cls.Options.model_fields
    if backend_options is not None:
        if "base_url" in option_fields and not block.get("base_url") and not block.get("api_key"):
            if getattr(backend_options, "base_url", None):
                block["base_url"] = backend_options.base_url
            key = _secret(getattr(backend_options, "api_key", None))
            if key:
                block["api_key"] = key
        # the backend's model when the pipeline names one; not the chat default (DEFAULT_MODEL takes no
        # fine-tuning): the trainer then fine-tunes DEFAULT_FINE_TUNE_MODEL
        if not block.get("model") and "model" in getattr(backend_options, "model_fields_set", ()):
            block["model"] = backend_options.model
    trainer = host.build("trainer", block, context, key="train", file=file, lines=lines)
    assert isinstance(trainer, Trainer)
    return trainer, block


def _not_trainable(report: Any, n_train: int, opts: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """The outcome of a dataset that fails validation: ``skipped`` (too few examples) or ``invalid``."""
    if set(report.errors) == {"too_few_examples"}:
        reason = (f"only {n_train} training example(s) matched select {dict(opts.select) or '{}'}; "
                  f"at least {opts.min_examples} are needed: run on more records or loosen `train.select`")
        say(f"training skipped: {reason}")
        return {"status": "skipped", "reason": reason}
    cats = ", ".join(f"{k} ({len(v)})" for k, v in report.errors.items())
    say(f"training skipped: the dataset has format errors: {cats}")
    return {"status": "invalid", "reason": f"the dataset has format errors: {cats}"}


def train_after_run(train_block: dict[str, Any], *, records_path: Path, host: Any, context: Context,
                    backend_options: Any = None, registry: JobRegistry | None = None,
                    progress: Callable[[str], None] | None = None,
                    stop: threading.Event | None = None) -> dict[str, Any]:
    """Build, validate and train on a finished run's records; return a summary for ``summary.json``.

    ``backend_options`` (the pipeline's validated backend block) supplies the base model, and, for a
    trainer that talks to a server (``openai``) with neither ``base_url`` nor ``api_key`` of its own,
    the backend's ``base_url`` and ``api_key``.

    A rerun on the same records finds the job launched before (also one whose launch a crash cut short,
    see :func:`~oaipipe.training.launch_job`) and follows it instead of launching another. ``stop`` (an
    event set from another thread) ends the following at once: the job keeps running.
    """
    say = progress or (lambda _msg: None)
    trainer, block = build_train_block(train_block, host=host, context=context, backend_options=backend_options)
    opts: Any = trainer.options
    base_model = opts.model or DEFAULT_FINE_TUNE_MODEL
    records_path = Path(records_path)
    summary: dict[str, Any] = {"trainer": block["type"], "method": opts.method, "base_model": base_model,
                               "select": dict(opts.select)}
    try:
        result = build_dataset(records_path, method=opts.method, select=opts.select, system=opts.system,
                               validation_fraction=opts.validation_fraction, seed=opts.seed or 0, step=opts.step,
                               host=host)
        files = write_dataset(result, records_path.parent / "train.jsonl")
        report = report_for(result, model=base_model, source=str(files.train_path),
                            token_limit=opts.max_tokens_per_example,
                            n_epochs=opts.hyperparameters.get("n_epochs"), min_examples=opts.min_examples)
    except OaipipeError as exc:
        return {**summary, "status": "invalid", "reason": str(exc)}
    summary.update({"dataset": str(files.train_path), "validation_dataset": str(files.validation_path or "") or None,
                    "dataset_sha256": files.sha256, "examples": files.n_train,
                    "validation_examples": files.n_validation, "build": result.stats,
                    "report": report.to_dict()})
    if not report.ok:
        return {**summary, **_not_trainable(report, files.n_train, opts, say)}
    registry = registry or JobRegistry()
    base_url = getattr(opts, "base_url", None)
    try:
        launched = launch_job(trainer, files, base_model=base_model, registry=registry, force=opts.force,
                              base_url=base_url, suffix=opts.suffix, hyperparameters=opts.hyperparameters,
                              description=opts.description or f"{context.pipeline_name}: {files.n_train} "
                                                              f"{opts.method} examples from {records_path.parent.name}",
                              progress=say)
        job = launched.job
        if opts.wait and not job.finished:
            job = follow_job(trainer, job, registry=registry, poll_interval=opts.poll_interval,
                             timeout=opts.timeout, progress=say, stop=stop)
    except OaipipeError as exc:
        return {**summary, "status": "error", "reason": str(exc)}
    summary.update({"job_id": job.id, "status": job.status, "fine_tuned_model": job.fine_tuned_model,
                    "error": job.error_message() or None, "reused_job": launched.reused})
    return summary
