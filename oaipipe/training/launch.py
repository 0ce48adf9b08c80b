"""Build → validate → launch → follow: the orchestration shared by ``oaipipe train``, ``oaipipe jobs`` and
the ``train:`` block of a pipeline.

Trainers only talk to their provider; this module writes the job registry, refuses invalid datasets
before anything is uploaded, and reports an earlier job on the same dataset instead of launching another.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import Context, Trainer
from ..errors import BackendError, DatasetError, ExitCode, TrainingError
from ..home import home_dir
from ..jobs import Job, JobRegistry
from ..pricing import PriceTable
from .build import BuildResult, DatasetFiles, build_rows, write_dataset
from .sources import read_examples
from .validate import ValidationReport, validate_rows

__all__ = [
    "LaunchResult",
    "build_dataset",
    "follow_job",
    "launch_job",
    "report_for",
    "trainer_for_job",
]

Progress = Callable[[str], None]

#: consecutive retryable errors (429/5xx/connection) tolerated while following a job
MAX_POLL_ERRORS = 10

class JobStillRunning(TrainingError):
    """``--timeout`` ran out while the job was still running: not a failure of the job (exit code 1)."""

    exit_code = ExitCode.RECORDS_FAILED


#: exchanges of these steps are left out unless ``step:`` names them
_VISION_STEPS = ("describe_image",)


def _step_matches(ex: Any, step: str) -> bool:
    """``step: reply`` matches an exchange logged as ``ask:reply`` (type:output), or ``ask``, or ``reply``."""
    label = str(ex.fields.get("step", ""))
    return label == step or label.endswith(f":{step}") or label.startswith(f"{step}:")


def _quiet(_: str) -> None:
    return None


def build_dataset(data: str | Path, *, method: str = "supervised", select: dict[str, Any] | None = None,
                  system: str | None = None, validation_fraction: float = 0.0, seed: int = 0,
                  step: str | None = None) -> BuildResult:
    """Read ``data`` (file or folder) and build fine-tuning rows (not written yet)."""
    examples = read_examples(data, system=system)
    if step:
        examples = [ex for ex in examples if ex.raw is not None or _step_matches(ex, step)]
    else:  # image exchanges are logged with a text placeholder for the image: not training material
        examples = [ex for ex in examples if not str(ex.fields.get("step", "")).startswith(_VISION_STEPS)]
    return build_rows(examples, method=method, select=select, validation_fraction=validation_fraction, seed=seed)


def report_for(result: BuildResult, *, model: str, source: str, token_limit: int | None = None,
               n_epochs: Any = None, prices: PriceTable | None = None, min_examples: int = 10) -> ValidationReport:
    """The validation report of the training rows of ``result`` (validation rows are checked too)."""
    report = validate_rows(result.rows_with_where("train"), method=result.method, model=model, source=source,
                           token_limit=token_limit, n_epochs=n_epochs, prices=prices, min_examples=min_examples)
    if result.validation:
        val = validate_rows(result.rows_with_where("validation"), method=result.method, model=model,
                            source=source + " (validation)", token_limit=token_limit, min_examples=0)
        for cat, where in val.errors.items():
            for w in where:
                report.add(cat, f"validation {w}")
    return report


def default_dataset_path(result: BuildResult, name: str) -> Path:
    """A content-addressed file under ``$OAIPIPE_HOME/datasets``: the same data gives the same path."""
    blob = json.dumps([result.train, result.validation], sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "dataset"
    return home_dir() / "datasets" / f"{stem}-{result.method}-{digest}.jsonl"


@dataclass
class LaunchResult:
    job: Job
    #: True when an earlier job on the same dataset was found and nothing was launched
    reused: bool
    dataset: DatasetFiles
    report: ValidationReport | None = None
    messages: list[str] = field(default_factory=list)


def launch_job(trainer: Trainer, files: DatasetFiles, *, base_model: str, description: str = "",
               registry: JobRegistry | None = None, force: bool = False, base_url: str | None = None,
               suffix: str | None = None, hyperparameters: dict[str, Any] | None = None,
               progress: Progress = _quiet) -> LaunchResult:
    """Launch a job on written, validated ``files`` and record it (or report the earlier one)."""
    registry = registry or JobRegistry()
    name = trainer.name or getattr(trainer.options, "type", "trainer")
    if not force:
        same = registry.find_same(dataset_sha256=files.sha256, trainer=name, base_model=base_model,
                                  method=files.method, base_url=base_url)
        if same is not None:
            progress(f"this dataset was already trained: job {same.id} ({same.status}"
                     + (f", {same.fine_tuned_model}" if same.fine_tuned_model else "")
                     + "); not launching another (use --force to train again)")
            return LaunchResult(job=same, reused=True, dataset=files)
    job = Job(id="", trainer=name, base_model=base_model, method=files.method, description=description,
              dataset=str(files.train_path), dataset_sha256=files.sha256,
              validation_dataset=str(files.validation_path) if files.validation_path else None,
              n_examples=files.n_train, base_url=base_url, suffix=suffix,
              hyperparameters=dict(hyperparameters or {}))
    job = trainer.launch(files, job)
    if not job.id:
        raise TrainingError(f"trainer '{name}' launched a job without an id",
                            hint="a trainer's launch() must set job.id")
    registry.add(job)
    progress(f"launched job {job.id} ({name}, {files.method}, base model {base_model}): {job.status}")
    return LaunchResult(job=job, reused=False, dataset=files)


def follow_job(trainer: Trainer, job: Job, *, registry: JobRegistry | None = None, poll_interval: float = 2.0,
               timeout: float | None = None, progress: Progress = _quiet) -> Job:
    """Refresh ``job`` until its status is final, printing status changes and new events."""
    registry = registry or JobRegistry()
    started = time.monotonic()
    last_status = None
    for event in job.events:
        progress(f"  {event.get('message', '')}")
    hiccups = 0
    while True:
        before = len(job.events)
        seen = [dict(e) for e in job.events]
        try:
            job = trainer.refresh(job)
        except BackendError as exc:
            # a long wait outlives short outages: keep polling through retryable errors, for a while
            hiccups += 1
            if not exc.retryable or hiccups > MAX_POLL_ERRORS:
                raise
            progress(f"  (could not read job {job.id}: {exc.message}; retrying)")
            time.sleep(poll_interval)
            continue
        hiccups = 0
        registry.update(job)
        new = [e for e in job.events if e not in seen] if len(job.events) >= before else []
        for event in new:
            progress(f"  {event.get('message', '')}")
        if job.status != last_status:
            progress(f"job {job.id}: {job.status}" + (f" → {job.fine_tuned_model}" if job.fine_tuned_model else ""))
            last_status = job.status
        if job.finished:
            return job
        if timeout is not None and time.monotonic() - started > timeout:
            raise JobStillRunning(f"job {job.id} is still running after {timeout:.0f} s (status {job.status}); "
                                  f"run `oaipipe jobs wait {job.id}` again",
                                  hint="the job keeps running on the server; --timeout only stops the waiting")
        time.sleep(poll_interval)


def raise_if_failed(job: Job) -> Job:
    """A :class:`TrainingError` with the server's message when ``job`` failed or was cancelled."""
    if job.status == "failed":
        raise TrainingError(f"fine-tuning job {job.id} failed: {job.error_message() or 'no reason given'}",
                            hint="fix the dataset or options it names and train again "
                                 "(a failed job does not block a rerun)")
    if job.status == "cancelled":
        raise TrainingError(f"fine-tuning job {job.id} was cancelled", hint="train again to start a new job")
    return job


def trainer_for_job(job: Job, host: Any, *, context: Context | None = None,
                    overrides: dict[str, Any] | None = None) -> Trainer:
    """Rebuild the trainer that launched ``job`` (same plugin, same base URL) to follow or cancel it."""
    block: dict[str, Any] = {"type": job.trainer}
    reg = host.get("trainer", job.trainer)
    if job.base_url and "base_url" in reg.cls.Options.model_fields:
        block["base_url"] = job.base_url
    block.update({k: v for k, v in (overrides or {}).items() if v is not None and k in reg.cls.Options.model_fields})
    trainer = host.build("trainer", block, context or Context(host=host), key="train")
    assert isinstance(trainer, Trainer)
    return trainer


def ensure_valid(report: ValidationReport) -> None:
    if not report.ok:
        cats = ", ".join(f"{k} ({len(v)})" for k, v in report.errors.items())
        raise DatasetError(f"the dataset is not ready for fine-tuning: {cats}\n{report.to_text()}",
                           hint="fix the rows listed above; nothing was uploaded")


def write_built(result: BuildResult, out: str | Path) -> DatasetFiles:
    return write_dataset(result, out)
