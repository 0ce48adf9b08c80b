"""Built-in trainer ``local``: the embedded engine learns the dataset, offline and in-process.

The job finishes inside :meth:`LocalTrainer.launch` (status ``succeeded`` with an ``ft:...:local:...``
model id). The engine (backend ``local``, ``oaipipe serve``) answers that model with the trained reply
of the nearest training prompt, so the train → use loop is visible without any network.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, ClassVar

from ..base import Trainer
from ..engine.tuning import train_local_model
from ..errors import TrainingError
from ..hookspecs import hookimpl


def _event(message: str, level: str = "info") -> dict[str, Any]:
    return {"id": f"ftevent-local-{secrets.token_hex(6)}", "created_at": int(time.time()),
            "level": level, "message": message}


class LocalTrainer(Trainer):
    """Fine-tune the embedded offline engine (no network, no key)."""

    class Options(Trainer.Options):
        type: str = "local"

    in_process: ClassVar[bool] = True

    def launch(self, dataset: Any, job: Any) -> Any:
        job.id = f"ftjob-local-{secrets.token_hex(8)}"
        job.status = "running"
        job.add_events([_event(f"Validating training file: {dataset.train_path.name} ({dataset.n_train} examples)")])
        try:
            rows = dataset.rows("train")
            model_id = train_local_model(rows, base_model=job.base_model, suffix=job.suffix or self.options.suffix,
                                         method=job.method)
        except (OSError, ValueError, KeyError) as exc:
            job.status = "failed"
            job.error = {"code": "invalid_training_file", "message": f"the local engine could not learn "
                         f"{dataset.train_path}: {exc}", "param": "training_file"}
            job.add_events([_event(job.error["message"], "error")])
            return job
        job.status = "succeeded"
        job.fine_tuned_model = model_id
        job.add_events([_event(f"Trained {len(rows)} examples on the local engine"),
                        _event(f"New fine-tuned model created: {model_id}"),
                        _event("The job has successfully completed")])
        return job

    def refresh(self, job: Any) -> Any:
        return job

    def cancel(self, job: Any) -> Any:
        if job.finished:
            raise TrainingError(f"job {job.id} is already {job.status}; there is nothing to cancel",
                                hint="local jobs finish as soon as they start")
        job.status = "cancelled"
        job.add_events([_event("Job cancelled")])
        return job


@hookimpl
def register_trainers(register: Any) -> None:
    register("local", LocalTrainer)
