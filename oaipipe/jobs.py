"""The job registry: every fine-tuning job any trainer launched, in ``$OAIPIPE_HOME/jobs.json``.

One JSON document ``{"version": 1, "jobs": [...]}``, rewritten atomically (temp file + ``os.replace``)
under an OS lock (``flock`` on ``jobs.json.lock``, see :mod:`oaipipe.runlock`), so concurrent writers never
lose each other's jobs and a crash never leaves half a file. The lock ends with its holder: a writer
killed while holding it (SIGKILL) delays nobody. Each job records its id, a description, creation time, trainer, base model, method, the dataset
file and its sha256, status, the fine-tuned model, the error, the server's base URL (never a key) and
the last events.

A rerun with the same dataset hash, trainer, base model, method and base URL finds the newest such job
(:meth:`JobRegistry.find_same`) instead of launching another; failed and cancelled jobs do not count.
While a job is being launched its entry has the status ``launching`` (see
:func:`oaipipe.training.launch_job`): a launch cut short by a crash is found again, never repeated blindly.
"""

from __future__ import annotations

import builtins
import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import RunLockedError, StorageError, TrainingError, redact
from .fsutil import remove_stale_temps, write_text_atomic
from .home import home_dir
from .runlock import LockBusy, acquire, describe_holder

__all__ = ["ACTIVE_STATUSES", "FINAL_STATUSES", "LAUNCHING", "Job", "JobRegistry", "default_registry_path"]

#: statuses after which a job never changes (OpenAI's names)
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES = frozenset({"validating_files", "queued", "running", "pending"})
#: the status of a registry entry whose job is being launched (the provider may not have it yet)
LAUNCHING = "launching"
EVENTS_TAIL = 20


def default_registry_path() -> Path:
    return home_dir() / "jobs.json"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Job:
    """One fine-tuning job as the registry keeps it."""

    id: str
    trainer: str
    base_model: str
    method: str = "supervised"
    description: str = ""
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    status: str = "queued"
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None
    dataset: str = ""
    dataset_sha256: str = ""
    validation_dataset: str | None = None
    n_examples: int = 0
    base_url: str | None = None
    suffix: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    #: the provider's own ids: uploaded files, the remote job
    remote: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def add_events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append events not seen yet (by id, else by message+time); return the new ones."""
        seen = {(e.get("id"), e.get("message"), e.get("created_at")) for e in self.events}
        new = [e for e in events if (e.get("id"), e.get("message"), e.get("created_at")) not in seen]
        self.events = (self.events + new)[-EVENTS_TAIL:]
        return new

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data.get("error"):
            data["error"] = {k: redact(str(v)) if isinstance(v, str) else v for k, v in data["error"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def error_message(self) -> str:
        if not self.error:
            return ""
        msg = self.error.get("message") or ""
        code = self.error.get("code")
        return f"{msg} ({code})" if code else msg


class JobRegistry:
    """Read and update the registry file. Every write holds the lock and replaces the file atomically."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_registry_path()

    # --- file plumbing --------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the registry's OS lock (``flock``): it ends with its holder, so a writer killed while
        holding it delays nobody; a live holder is waited for up to ``timeout`` seconds."""
        try:
            lock = acquire(self.lock_path, wait=timeout, registry=str(self.path))
        except LockBusy as busy:  # another process holds the lock: exit 10, as for a run's lock
            raise RunLockedError(f"the job registry {self.path} is locked by {describe_holder(busy.holder)}, "
                                 f"still after {timeout:.0f} s", path=self.lock_path, holder=busy.holder,
                                 hint="that process is writing the registry; try again when it is done (the lock "
                                      "ends with the process: there is nothing to delete)") from None
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.lock_path) from None
        with lock:
            remove_stale_temps(self.path)  # left by a writer killed mid-write; we are the only writer now
            yield

    def _read(self) -> list[Job]:
        if not self.path.exists():
            return []
        # a state file that cannot be read is an I/O problem (exit 9, like a run's pipeline.json), not a
        # training one: the jobs it lists are fine, and the fix is the file's
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.path, doing="read") from None
        except ValueError as exc:
            raise StorageError(f"the job registry {self.path} cannot be read: {exc}", path=self.path,
                               hint="restore it from a backup, or move it away to start a new registry") from None
        if not isinstance(data, dict | list):
            raise StorageError(f"the job registry {self.path} cannot be read: it holds a JSON "
                               f"{type(data).__name__}, not {{\"version\": 1, \"jobs\": [...]}}", path=self.path,
                               hint="restore it from a backup, or move it away to start a new registry")
        items = data.get("jobs", []) if isinstance(data, dict) else data
        return [Job.from_dict(item) for item in items if isinstance(item, dict) and item.get("id")]

    def _write(self, jobs: list[Job]) -> None:
        payload = json.dumps({"version": 1, "jobs": [j.to_dict() for j in jobs]}, indent=2, ensure_ascii=False)
        try:
            write_text_atomic(self.path, redact(payload) + "\n", fsync=False, newline=None)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.path, doing="write") from None

    # --- queries --------------------------------------------------------------------------------

    def list(self) -> list[Job]:
        return self._read()

    def get(self, job_id: str) -> Job:
        jobs = self._read()
        for job in jobs:
            if job.id == job_id:
                return job
        matches = [j for j in jobs if j.id.startswith(job_id)] if job_id else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            listed = ", ".join(j.id for j in reversed(matches[-10:]))  # newest first
            more = f" (and {len(matches) - 10} more)" if len(matches) > 10 else ""
            raise TrainingError(f"job id '{job_id}' is ambiguous: it starts {len(matches)} jobs in the registry "
                                f"{self.path}: {listed}{more}",
                                hint="give more of the id (or the whole id); `oaipipe jobs list` shows every job")
        known = ", ".join(j.id for j in reversed(jobs[-5:])) or "(none yet)"  # newest first
        raise TrainingError(f"no job '{job_id}' in the registry {self.path}",
                            hint=f"`oaipipe jobs list` shows every job; recent ids: {known}")

    def find_same(self, *, dataset_sha256: str, trainer: str, base_model: str, method: str,
                  base_url: str | None) -> Job | None:
        """The newest job on the same dataset/trainer/base model/method/server that did not fail."""
        for job in reversed(self._read()):
            if (job.dataset_sha256 == dataset_sha256 and job.trainer == trainer and job.base_model == base_model
                    and job.method == method and (job.base_url or None) == (base_url or None)
                    and job.status not in ("failed", "cancelled")):
                return job
        return None

    # --- updates --------------------------------------------------------------------------------

    def add(self, job: Job) -> Job:
        with self._locked():
            jobs = [j for j in self._read() if j.id != job.id]
            jobs.append(job)
            self._write(jobs)
        return job

    def replace(self, old_id: str, job: Job) -> Job:
        """Put ``job`` where the entry ``old_id`` was (a ``launching`` entry becoming the launched job)."""
        job.updated_at = _now()
        with self._locked():
            jobs = [j for j in self._read() if j.id != job.id]
            for i, existing in enumerate(jobs):
                if existing.id == old_id:
                    jobs[i] = job
                    break
            else:
                jobs.append(job)
            self._write(jobs)
        return job

    def remove(self, job_id: str) -> None:
        """Drop the entry ``job_id`` (a ``launching`` entry whose launch never reached the provider)."""
        with self._locked():
            jobs = self._read()
            kept = [j for j in jobs if j.id != job_id]
            if len(kept) != len(jobs):
                self._write(kept)

    def pending(self, *, dataset_sha256: str, trainer: str, base_model: str, method: str,
                base_url: str | None) -> builtins.list[Job]:
        """Entries still ``launching`` on this dataset/trainer/base model/method/server (a launch in progress,
        or one cut short by a crash)."""
        return [job for job in self._read()
                if job.status == LAUNCHING and job.dataset_sha256 == dataset_sha256 and job.trainer == trainer
                and job.base_model == base_model and job.method == method
                and (job.base_url or None) == (base_url or None)]

    def update(self, job: Job) -> Job:
        job.updated_at = _now()
        with self._locked():
            jobs = self._read()
            for i, existing in enumerate(jobs):
                if existing.id == job.id:
                    jobs[i] = job
                    break
            else:
                jobs.append(job)
            self._write(jobs)
        return job
