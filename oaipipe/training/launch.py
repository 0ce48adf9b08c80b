"""Build → validate → launch → follow: the orchestration shared by ``oaipipe train``, ``oaipipe jobs`` and
the ``train:`` block of a pipeline.

Trainers only talk to their provider; this module writes the job registry, refuses invalid datasets
before anything is uploaded, and reports an earlier job on the same dataset instead of launching another.

Never two jobs for one dataset, even across crashes: :func:`launch_job` holds a lock per dataset (an OS lock
that ends with its process) while it launches, and records the launch in the registry *before* the trainer
talks to its provider (status ``launching``, with a launch key in ``remote["launch_key"]``). A launch cut
short by a crash is then settled by the next attempt: a trainer that can find a job by its launch key
(``find_launched``; the ``openai`` trainer tags the job's ``metadata`` with it) reports the job the provider
has, and the rerun follows that one; when the provider has none, the launch is done again. An in-process
trainer (``in_process = True``) leaves nothing behind at any provider, so it is simply launched again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import Context, Trainer
from ..errors import BackendError, DatasetError, ExitCode, RunLockedError, StorageError, TrainingError
from ..home import home_dir
from ..jobs import LAUNCHING, Job, JobRegistry
from ..pricing import PriceTable
from ..runlock import LockBusy, acquire, describe_holder
from .build import BuildResult, DatasetFiles, build_rows, write_dataset
from .sources import read_examples
from .validate import ValidationReport, validate_rows

__all__ = [
    "FollowStopped",
    "LaunchResult",
    "build_dataset",
    "follow_job",
    "image_steps",
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


class FollowStopped(TrainingError):
    """Following a job was stopped (Ctrl-C, SIGTERM): the job keeps running at its provider (exit code 130)."""

    exit_code = ExitCode.INTERRUPTED


def image_steps(host: Any = None) -> Callable[[str], bool]:
    """Whether the step that logged an exchange sends images (:attr:`oaipipe.base.Step.sends_images`), by
    the exchange's step label: the step type its label names (``type:output``, the default label) is asked
    in ``host``'s registry (a :class:`~oaipipe.plugins.PluginHost`; the installed plugins when None)."""
    known: dict[str, bool] = {}

    def sends_images(label: str) -> bool:
        nonlocal host
        kind = label.split(":", 1)[0]
        if kind not in known:
            if host is None:
                from ..plugins import PluginHost

                host = PluginHost()
            registered = host.registry.get("step", {}).get(kind) if kind else None
            known[kind] = bool(registered is not None and registered.cls.sends_images)
        return known[kind]

    return sends_images


def _step_matches(ex: Any, step: str) -> bool:
    """``step: reply`` matches an exchange logged as ``ask:reply`` (type:output), or ``ask``, or ``reply``."""
    label = str(ex.fields.get("step", ""))
    return label == step or label.endswith(f":{step}") or label.startswith(f"{step}:")


def _quiet(_: str) -> None:
    return None


def build_dataset(data: str | Path, *, method: str = "supervised", select: dict[str, Any] | None = None,
                  system: str | None = None, validation_fraction: float = 0.0, seed: int = 0,
                  step: str | None = None, host: Any = None) -> BuildResult:
    """Read ``data`` (file or folder) and build fine-tuning rows (not written yet).

    Exchanges of steps that send images are left out unless ``step`` names them (see :func:`image_steps`;
    ``host`` holds the pipeline's plugins)."""
    examples = read_examples(data, system=system)
    if step:
        examples = [ex for ex in examples if ex.raw is not None or _step_matches(ex, step)]
    else:  # image exchanges are logged with a text placeholder for the image: not training material
        sends_images = image_steps(host)
        examples = [ex for ex in examples if not sends_images(str(ex.fields.get("step", "")))]
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
    """Launch a job on written, validated ``files`` and record it (or report the earlier one).

    Holds the dataset's launch lock throughout: a second process launching the same dataset at the same
    time stops with a :class:`~oaipipe.errors.RunLockedError` naming the first (it would find the job
    once the first is done). A ``launching`` entry left by a crash is settled first (see the module doc).
    """
    registry = registry or JobRegistry()
    name = trainer.name or getattr(trainer.options, "type", "trainer")
    key: dict[str, Any] = {"dataset_sha256": files.sha256, "trainer": name, "base_model": base_model, "method": files.method,
           "base_url": base_url}
    with _launch_lock(registry, key):
        recovered = _settle_interrupted(trainer, registry, key, force=force, progress=progress)
        if not force:
            same = registry.find_same(**key)
            if same is not None:
                if recovered is None or same.id != recovered.id:
                    progress(f"this dataset was already trained: job {same.id} ({same.status}"
                             + (f", {same.fine_tuned_model}" if same.fine_tuned_model else "")
                             + "); not launching another (to train again: --force on `oaipipe train`, "
                             "`force: true` in a pipeline's `train:` block)")
                return LaunchResult(job=same, reused=True, dataset=files)
        job = Job(id="", trainer=name, base_model=base_model, method=files.method, description=description,
                  dataset=str(files.train_path), dataset_sha256=files.sha256,
                  validation_dataset=str(files.validation_path) if files.validation_path else None,
                  n_examples=files.n_train, base_url=base_url, suffix=suffix,
                  hyperparameters=dict(hyperparameters or {}))
        pending: Job | None = None
        if not getattr(trainer, "in_process", False):
            # on record before the provider hears of it: a crash from here on is settled by the next attempt
            token = secrets.token_hex(8)
            job.remote = {"launch_key": token}
            pending = dataclasses.replace(job, id=f"launching-{token}", status=LAUNCHING,
                                          remote=dict(job.remote))
            registry.add(pending)
        try:
            job = trainer.launch(files, job)
        except Exception as exc:
            if pending is not None:
                _after_failed_launch(trainer, registry, key, pending, exc, force=force, progress=progress)
            raise
        if not job.id:
            raise TrainingError(f"trainer '{name}' launched a job without an id",
                                hint="a trainer's launch() must set job.id")
        if pending is not None:
            registry.replace(pending.id, job)
        else:
            registry.add(job)
    progress(f"launched job {job.id} ({name}, {files.method}, base model {base_model}): {job.status}")
    return LaunchResult(job=job, reused=False, dataset=files)


def _after_failed_launch(trainer: Trainer, registry: JobRegistry, key: dict[str, Any], pending: Job,
                         exc: Exception, *, force: bool, progress: Progress) -> None:
    """Settle the ``launching`` entry of a launch that raised: forget it when no job can exist, else ask the
    provider whether the job reached it (if it cannot be asked either, the entry stays for the next try)."""
    if getattr(exc, "nothing_launched", False):  # the trainer knows the provider has no job
        registry.remove(pending.id)
    elif callable(getattr(trainer, "find_launched", None)):
        with contextlib.suppress(Exception):
            _settle_interrupted(trainer, registry, key, force=force, progress=progress)
    else:
        registry.remove(pending.id)  # the trainer says it failed; no job could be found again anyway


def _launch_lock(registry: JobRegistry, key: dict[str, Any]) -> Any:
    """The lock of one launch key (dataset, trainer, base model, method, server), next to the registry."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:24]
    path = registry.path.with_name(f".{registry.path.name}.launch-{digest}.lock")
    try:
        return acquire(path, dataset_sha256=key["dataset_sha256"], trainer=key["trainer"])
    except LockBusy as busy:
        raise RunLockedError(
            f"another process is launching a fine-tuning job on this dataset right now: "
            f"{describe_holder(busy.holder)}",
            path=path, holder=busy.holder,
            hint="wait for it to finish, then rerun: the job it launched is found and reported, not launched twice",
        ) from None
    except OSError as exc:
        raise StorageError.from_os_error(exc, path) from None


def _settle_interrupted(trainer: Trainer, registry: JobRegistry, key: dict[str, Any], *, force: bool,
                        progress: Progress) -> Job | None:
    """Settle the ``launching`` entries of ``key`` that a crash left (we hold the launch lock, so no launch of
    them is in progress): the job the provider has replaces its entry; an entry whose launch never reached
    the provider is removed. Returns the job found, if any."""
    found: Job | None = None
    for pending in registry.pending(**key):
        launch_key = (pending.remote or {}).get("launch_key")
        if getattr(trainer, "in_process", False):
            registry.remove(pending.id)  # an in-process launch leaves nothing at any provider
            continue
        finder = getattr(trainer, "find_launched", None)
        if not callable(finder) or not launch_key:
            if force:
                registry.remove(pending.id)
                continue
            raise TrainingError(
                f"a launch of this dataset (registry entry {pending.id}, {pending.created_at}) was cut short, and "
                f"trainer '{key['trainer']}' cannot tell whether its provider received the job",
                hint="look for the job at the provider: if it is there, follow it with its own tools; if not, "
                     "pass --force (train.force: true) to launch again",
            )
        job = finder(dataclasses.replace(pending, remote=dict(pending.remote), events=list(pending.events)))
        if job is None:
            registry.remove(pending.id)
            progress(f"an earlier launch of this dataset was cut short before the provider had the job "
                     f"({pending.id}): launching it again")
            continue
        job = registry.replace(pending.id, job)
        progress(f"an earlier launch of this dataset was cut short after the provider had the job: "
                 f"found job {job.id} ({job.status}); following it, not launching another")
        found = job
    return found


def follow_job(trainer: Trainer, job: Job, *, registry: JobRegistry | None = None, poll_interval: float = 2.0,
               timeout: float | None = None, progress: Progress = _quiet,
               stop: threading.Event | None = None) -> Job:
    """Refresh ``job`` until its status is final, printing status changes and new events.

    ``stop`` (set from another thread) ends the following at once with :class:`FollowStopped`; the job
    keeps running at its provider, and ``oaipipe jobs wait`` (or the rerun of a pipeline) picks it up.
    """
    registry = registry or JobRegistry()
    started = time.monotonic()
    last_status = None
    for event in job.events:
        progress(f"  {event.get('message', '')}")
    hiccups = 0

    def pause() -> None:
        if stop is None:
            time.sleep(poll_interval)
        elif stop.wait(poll_interval):
            raise FollowStopped(f"stopped following job {job.id} (status {job.status}); it keeps running",
                                hint=f"rerun the same command, or `oaipipe jobs wait {job.id}`, to follow it")

    while True:
        if stop is not None and stop.is_set():
            raise FollowStopped(f"stopped following job {job.id} (status {job.status}); it keeps running",
                                hint=f"rerun the same command, or `oaipipe jobs wait {job.id}`, to follow it")
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
            pause()
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
        pause()


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
