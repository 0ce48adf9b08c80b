"""``/v1/fine_tuning/jobs``: jobs run in a background thread and train a local model.

Lifecycle: ``validating_files`` → ``running`` → ``succeeded`` (or ``failed`` with an error, or ``cancelled``).
Training is :func:`oaipipe.engine.tuning.train_local_model`; its id becomes ``fine_tuned_model``, so the
model answers through this server and through the ``local`` backend alike.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

from ..engine.tuning import train_local_model
from ..tokens import count_message_tokens
from .app import OaipipeServer, Reply, Request, extension
from .errors import ApiError, not_found, require_object, require_str
from .files import FileStore, _list_reply

__all__ = ["FineTuningJobs", "validate_training_rows"]

TERMINAL = ("succeeded", "failed", "cancelled")
_ROLES = ("system", "developer", "user", "assistant", "tool")


class TrainingFileError(Exception):
    def __init__(self, message: str, param: str = "training_file", code: str = "invalid_training_file") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise TrainingFileError(f"{where}: 'messages' must be a non-empty list.")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise TrainingFileError(f"{where}: messages[{j}] has no valid role (system, user, assistant...).")
        if m.get("content") is None and not m.get("tool_calls"):
            raise TrainingFileError(f"{where}: messages[{j}] has no content.")


def validate_training_rows(data: bytes, method: str, file_id: str, *, min_examples: int) -> list[dict[str, Any]]:
    """Parse and check a fine-tuning JSONL file; raises :class:`TrainingFileError` naming the bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainingFileError(f"The training file {file_id} is not UTF-8 text ({exc}).") from exc
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {n} of {file_id}"
        try:
            row = json.loads(line)
        except ValueError:
            raise TrainingFileError(f"Invalid file format: {where} is not valid JSON.") from None
        if not isinstance(row, dict):
            raise TrainingFileError(f"Invalid file format: {where} is not a JSON object.")
        if method == "dpo":
            inp = row.get("input")
            if not isinstance(inp, dict):
                raise TrainingFileError(f"{where}: a DPO example needs 'input' with 'messages'.")
            _check_messages(inp.get("messages"), where)
            for key in ("preferred_output", "non_preferred_output"):
                value = row.get(key)
                if not isinstance(value, list) or not value or not isinstance(value[-1], dict) \
                        or value[-1].get("role") != "assistant":
                    raise TrainingFileError(f"{where}: '{key}' must be a list ending with an assistant message.")
        else:
            _check_messages(row.get("messages"), where)
            if not any(m.get("role") == "assistant" for m in row["messages"]):
                raise TrainingFileError(f"{where}: the example has no assistant message to learn from.")
        rows.append(row)
    if not rows:
        raise TrainingFileError(f"The training file {file_id} contains no examples.")
    if len(rows) < min_examples:
        raise TrainingFileError(f"Training file {file_id} has {len(rows)} example(s), but must have at least "
                                f"{min_examples} examples.", code="invalid_n_examples")
    return rows


def _row_tokens(row: dict[str, Any], model: str) -> int:
    if "messages" in row:
        return count_message_tokens(row["messages"], model, image_model=model)
    msgs = list((row.get("input") or {}).get("messages", [])) + list(row.get("preferred_output") or [])
    return count_message_tokens(msgs, model, image_model=model)


class FineTuningJobs:
    def __init__(self, server: OaipipeServer, files: FileStore) -> None:
        self.server = server
        self.files = files
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.cancel_flags: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def _event(self, job_id: str, message: str, level: str = "info", data: dict[str, Any] | None = None) -> None:
        event = {"id": "ftevent-" + secrets.token_hex(12), "object": "fine_tuning.job.event",
                 "created_at": int(time.time()), "level": level, "message": message,
                 "data": data or {}, "type": "metrics" if data else "message"}
        with self.lock:
            self.events[job_id].append(event)

    def _update(self, job_id: str, **changes: Any) -> dict[str, Any]:
        with self.lock:
            self.jobs[job_id].update(changes)
            return dict(self.jobs[job_id])

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        body = require_object(body)
        model = require_str(body, "model")
        training_file = require_str(body, "training_file")
        for param in ("training_file", "validation_file"):
            fid = body.get(param)
            if fid is None:
                continue
            try:
                obj = self.files.get(fid)
            except ApiError:
                raise ApiError(400, f"Invalid file ID: {fid}. Upload it first (POST /v1/files).", param=param,
                               code="invalid_file_id") from None
            if obj["purpose"] != "fine-tune":
                raise ApiError(400, f"File {fid} has purpose '{obj['purpose']}'; upload it with purpose "
                               "'fine-tune'.", param=param, code="invalid_file_purpose")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise ApiError(400, "Invalid 'suffix': a string of at most 64 characters.", param="suffix",
                           code="invalid_value")
        method = body.get("method") or {"type": "supervised"}
        if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo"):
            raise ApiError(400, "Invalid 'method.type': the local server trains 'supervised' or 'dpo'.",
                           param="method.type", code="invalid_value")
        mtype = method["type"]
        hyper = dict((method.get(mtype) or {}).get("hyperparameters") or body.get("hyperparameters") or {})
        resolved = {"n_epochs": hyper.get("n_epochs", "auto"), "batch_size": hyper.get("batch_size", "auto"),
                    "learning_rate_multiplier": hyper.get("learning_rate_multiplier", "auto")}
        if mtype == "dpo":
            resolved["beta"] = hyper.get("beta", "auto")
        seed = body.get("seed")
        if seed is None:
            seed = int(self.server.random() * 2**31)
        job_id = "ftjob-" + secrets.token_hex(12)
        job: dict[str, Any] = {
            "id": job_id, "object": "fine_tuning.job", "created_at": int(time.time()), "error": None,
            "fine_tuned_model": None, "finished_at": None, "hyperparameters": {k: v for k, v in resolved.items()
                                                                             if k != "beta"},
            "model": model, "organization_id": "org-oaipipe-local", "result_files": [], "seed": seed,
            "status": "validating_files", "trained_tokens": None, "training_file": training_file,
            "validation_file": body.get("validation_file"), "estimated_finish": None, "integrations": [],
            "metadata": body.get("metadata"), "user_provided_suffix": suffix,
            "method": {"type": mtype, mtype: {"hyperparameters": resolved}},
        }
        with self.lock:
            self.jobs[job_id] = job
            self.events[job_id] = []
            self.cancel_flags[job_id] = threading.Event()
            reply = json.loads(json.dumps(job))  # a deep copy: the job thread changes the nested dicts
        self._event(job_id, f"Created fine-tuning job: {job_id}")
        self._event(job_id, f"Validating training file: {training_file}")
        threading.Thread(target=self._run, args=(job_id,), name=f"ft-{job_id}", daemon=True).start()
        return reply

    def _fail(self, job_id: str, code: str, message: str, param: str | None) -> None:
        with self.lock:
            if self.jobs[job_id]["status"] == "cancelled":  # cancelled meanwhile: that is the outcome
                return
            self.jobs[job_id].update(status="failed", finished_at=int(time.time()),
                                     error={"code": code, "message": message, "param": param})
        self._event(job_id, message, level="error")

    def _run(self, job_id: str) -> None:
        cfg = self.server.config
        step = max(cfg.ft_seconds, 0.0) / 4
        cancel = self.cancel_flags[job_id]
        job = self.get(job_id)
        mtype = job["method"]["type"]
        try:
            if cancel.wait(step):
                return
            try:
                rows = validate_training_rows(self.files.content(job["training_file"]), mtype,
                                              job["training_file"], min_examples=cfg.ft_min_examples)
                if job.get("validation_file"):
                    validate_training_rows(self.files.content(job["validation_file"]), mtype,
                                           job["validation_file"], min_examples=1)
            except TrainingFileError as exc:
                self._fail(job_id, exc.code, exc.message, exc.param)
                return
            except ApiError:
                self._fail(job_id, "invalid_training_file", f"The training file {job['training_file']} was "
                           "deleted before the job could read it.", "training_file")
                return
            hyper = job["hyperparameters"]
            epochs = hyper["n_epochs"] if isinstance(hyper["n_epochs"], int) else 3
            batch = hyper["batch_size"] if isinstance(hyper["batch_size"], int) else max(1, min(8, len(rows) // 10))
            lr = hyper["learning_rate_multiplier"]
            resolved = {"n_epochs": epochs, "batch_size": batch,
                        "learning_rate_multiplier": lr if isinstance(lr, int | float) else 1.8}
            with self.lock:
                if self.jobs[job_id]["status"] == "cancelled":
                    return
                self.jobs[job_id].update(status="running", hyperparameters=resolved,
                                         estimated_finish=int(time.time() + cfg.ft_seconds) + 1)
                self.jobs[job_id]["method"][mtype]["hyperparameters"].update(resolved)
            self._event(job_id, "Files validated, moving job to queued state")
            self._event(job_id, "Fine-tuning job started")
            steps = 3
            for i in range(1, steps + 1):
                if cancel.wait(step / steps * 2):
                    return
                loss = round(1.5 / (i + 1), 4)
                self._event(job_id, f"Step {i}/{steps}: training loss={loss}",
                            data={"step": i, "total_steps": steps, "train_loss": loss})
            if cancel.is_set():
                return
            model_id = train_local_model(rows, base_model=job["model"], suffix=job.get("user_provided_suffix"),
                                         method=mtype)
            tokens = sum(_row_tokens(r, job["model"]) for r in rows) * epochs
            if cancel.wait(step):
                return
            with self.lock:
                if self.jobs[job_id]["status"] == "cancelled":
                    return
                self.jobs[job_id].update(status="succeeded", fine_tuned_model=model_id, trained_tokens=tokens,
                                         finished_at=int(time.time()), estimated_finish=None)
            self._event(job_id, f"New fine-tuned model created: {model_id}")
            self._event(job_id, "The job has successfully completed")
        except Exception as exc:  # noqa: BLE001 - a failed job must say why, not vanish
            self._fail(job_id, "server_error", f"Training failed inside the local server: {exc}", None)

    def get(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise ApiError(404, f"Could not find fine-tune job: {job_id}", param="fine_tuning_job_id",
                               code="fine_tune_not_found") if job_id.startswith("ftjob-") \
                    else not_found("fine-tune job", job_id, "fine_tuning_job_id")
            return json.loads(json.dumps(job))

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.get(job_id)  # 404 for an unknown job
        with self.lock:  # check and change together: a job finishing in between must not become "cancelled"
            status = self.jobs[job_id]["status"]
            if status in TERMINAL:
                raise ApiError(400, f"Job {job_id} has already {status}; only a running job can be cancelled.",
                               param="fine_tuning_job_id", code="invalid_state")
            self.cancel_flags[job_id].set()
            self.jobs[job_id].update(status="cancelled", finished_at=int(time.time()), estimated_finish=None)
        self._event(job_id, "Fine-tuning job cancelled")
        return self.get(job_id)

    def listing(self) -> list[dict[str, Any]]:
        with self.lock:
            jobs = [json.loads(json.dumps(j)) for j in self.jobs.values()]
        return list(reversed(jobs))  # newest first (dicts keep insertion order)

    def event_list(self, job_id: str) -> list[dict[str, Any]]:
        self.get(job_id)
        with self.lock:
            return list(reversed(self.events[job_id]))


@extension
def add_fine_tuning_routes(server: OaipipeServer) -> None:
    jobs = FineTuningJobs(server, server.files)  # type: ignore[attr-defined]
    server.fine_tuning = jobs  # type: ignore[attr-defined]
    server.route("POST", "/v1/fine_tuning/jobs", lambda req: Reply(jobs.create(req.json())))
    server.route("GET", "/v1/fine_tuning/jobs", lambda req: _list_reply(jobs.listing(), req, 20))
    server.route("GET", "/v1/fine_tuning/jobs/{job_id}", lambda req: Reply(jobs.get(req.params["job_id"])))
    server.route("POST", "/v1/fine_tuning/jobs/{job_id}/cancel",
                 lambda req: Reply(jobs.cancel(req.params["job_id"])))

    def events(req: Request) -> Reply:
        return _list_reply(jobs.event_list(req.params["job_id"]), req, 20)

    server.route("GET", "/v1/fine_tuning/jobs/{job_id}/events", events)
