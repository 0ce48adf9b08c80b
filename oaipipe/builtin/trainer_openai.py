"""Built-in trainer ``openai``: fine-tuning through the official SDK, against OpenAI or any compatible server.

Uploads the training (and validation) file with purpose ``fine-tune``, creates the job with
``method: {type: supervised|dpo, <type>: {hyperparameters: {...}}}``, and reports status and events
(``fine_tuning.jobs.retrieve`` / ``list_events``) when oaipipe follows it. Each job is tagged with
``metadata: {oaipipe_launch_key: ...}``, so that a launch cut short by a crash is found again
(:meth:`OpenAITrainer.find_launched`) instead of being launched twice. A failed job keeps the
server's error message, which ``oaipipe train --wait`` / ``oaipipe jobs wait`` raise as a
:class:`~oaipipe.errors.TrainingError`.

OpenAI is winding its self-serve fine-tuning down: new jobs stop on 2027-01-06 for active customers
(since 2026-07-02 for the others); existing ``ft:`` models keep answering until their base model shuts
down (docs/platform.md). A create call refused for that reason (:func:`jobs_not_accepted`) says so
plainly and names the alternatives (:data:`WIND_DOWN_HINT`); the datasets oaipipe writes are plain JSONL
in OpenAI's format and stay usable by other trainers.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, SecretStr

from ..base import Trainer
from ..errors import AuthenticationError, BackendError, BadRequestError, OaipipeError, TrainingError
from ..hookspecs import hookimpl
from ..keys import OPENAI_BASE_URL, BaseURL, is_openai_url, resolve_api_key, sdk_client

OPENAI_URL = OPENAI_BASE_URL
#: the metadata key a launched job is tagged with, so that a launch cut short by a crash is found again
LAUNCH_KEY_METADATA = "oaipipe_launch_key"
_HYPERPARAMETERS = {
    "supervised": {"n_epochs", "batch_size", "learning_rate_multiplier"},
    "dpo": {"n_epochs", "batch_size", "learning_rate_multiplier", "beta"},
}



#: what a refusal of new fine-tuning jobs says (OpenAI documents the dates, not the wording: match broadly)
_NOT_ACCEPTED = re.compile(
    r"(fine[- ]?tun\w*|new jobs?).{0,80}(no longer|not (be )?(accepted|available|allowed|supported)|"
    r"unavailable|disabled|discontinued|wind(ing)?[- ]down|not eligible|ineligible)"
    r"|(no longer|not) (accept\w*|allow\w*|creat\w*) new (fine[- ]?tuning )?jobs",
    re.IGNORECASE | re.DOTALL)

WIND_DOWN_HINT = (
    "OpenAI stopped accepting new self-serve fine-tuning jobs (2027-01-06 for active customers, 2026-07-02 "
    "for the others); your existing ft: models keep answering until their base model shuts down. "
    "Alternatives: `train: {type: local}` (the embedded trainer), another OpenAI-compatible fine-tuning "
    "server (`--base-url`), or the dataset in other trainers' formats: `oaipipe dataset export RUN --format "
    "hf-jsonl|hf-parquet|dpo-jsonl|dpo-parquet -o FILE` (a run's dataset for Hugging Face TRL's SFTTrainer / "
    "DPOTrainer and `datasets`), or `oaipipe dataset build DATA --format sft` (messages JSONL from any file); "
    "see docs/training.md (\"Exporting a dataset for other trainers\") and docs/platform.md"
)


def jobs_not_accepted(error: BaseException) -> bool:
    """A refusal of the create call because the platform takes no new fine-tuning jobs (not a bad request)."""
    status = getattr(error, "status", None)
    if status not in (400, 403, 404, 409, 410, 422):
        return False
    return bool(_NOT_ACCEPTED.search(str(getattr(error, "message", "") or error)))


class OpenAITrainer(Trainer):
    """Fine-tune through the OpenAI fine-tuning API (OpenAI or any compatible server)."""

    class Options(Trainer.Options):
        type: str = "openai"
        base_url: BaseURL | None = Field(None, description="Any OpenAI-compatible server, e.g. "
                                         "http://127.0.0.1:8080/v1 (a query string is sent with every call)")
        api_key: SecretStr | None = Field(None, description="Use ${env:OPENAI_API_KEY}; never written anywhere")
        request_timeout: float = Field(120.0, gt=0, description="Seconds per HTTP call (uploads included)")
        max_retries: int = Field(2, ge=0, le=20, description="SDK retries per HTTP call")

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._client: Any = None
        hp = set(self.options.hyperparameters) - _HYPERPARAMETERS[self.options.method]
        if hp:
            from ..errors import ConfigError

            raise ConfigError(f"unknown hyperparameter(s) for {self.options.method}: {', '.join(sorted(hp))}",
                              key="train.hyperparameters",
                              hint=f"allowed: {', '.join(sorted(_HYPERPARAMETERS[self.options.method]))}")

    @property
    def url(self) -> str:
        return self.options.base_url or OPENAI_URL

    def client(self) -> Any:
        if self._client is None:
            import openai

            key = resolve_api_key(self.options)  # OPENAI_API_KEY only for https://api.openai.com
            if key is None and is_openai_url(self.options.base_url):
                raise AuthenticationError(
                    "fine-tuning on OpenAI needs an API key, and none is set",
                    hint="export OPENAI_API_KEY, set train.api_key: ${env:VAR}, or use --trainer local "
                         "(offline) / --base-url for an OpenAI-compatible server")
            # base_url always given (never the SDK's OPENAI_BASE_URL), and no key means a placeholder
            self._client = sdk_client(openai.OpenAI, api_key=key, base_url=self.url,
                                      timeout=self.options.request_timeout, max_retries=self.options.max_retries)
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import openai

        from ..kit.http import not_the_api
        from ..kit.openai import translate_sdk_error

        try:
            result = fn(*args, **kwargs)
        except openai.OpenAIError as exc:  # SDK errors only: a bug elsewhere must not pass for a server error
            err = translate_sdk_error(exc, url=self.url, timeout=self.options.request_timeout)
            err.message = f"{what}: {err.message}"
            raise err from None
        if isinstance(result, str):  # the SDK hands back the text of a non-JSON answer (an HTML page)
            err = not_the_api(self.url, None, result)
            err.message = f"{what}: {err.message}"
            raise err
        return result

    # --- the Trainer contract -------------------------------------------------------------------

    def launch(self, dataset: Any, job: Any) -> Any:
        try:
            return self._launch(dataset, job)
        except OaipipeError as exc:
            # before the create call, or refused by it: the provider has no job (no need to look for one)
            if not job.id and (not job.remote.get("creating") or isinstance(exc, BadRequestError | AuthenticationError)):
                exc.nothing_launched = True  # type: ignore[attr-defined]
            raise
        finally:
            job.remote.pop("creating", None)

    def _launch(self, dataset: Any, job: Any) -> Any:
        client = self.client()
        with dataset.train_path.open("rb") as fh:
            train_file = self._call(f"uploading {dataset.train_path.name}", client.files.create,
                                    file=fh, purpose="fine-tune")
        job.remote["training_file"] = train_file.id
        kwargs: dict[str, Any] = {}
        if dataset.validation_path is not None:
            with dataset.validation_path.open("rb") as fh:
                val_file = self._call(f"uploading {dataset.validation_path.name}", client.files.create,
                                      file=fh, purpose="fine-tune")
            kwargs["validation_file"] = val_file.id
            job.remote["validation_file"] = val_file.id
        method = job.method
        hyper = dict(job.hyperparameters or self.options.hyperparameters)
        spec: dict[str, Any] = {"type": method, method: {"hyperparameters": hyper}} if hyper else {"type": method}
        suffix = job.suffix or self.options.suffix
        if suffix:
            kwargs["suffix"] = suffix
        if self.options.seed is not None:
            kwargs["seed"] = self.options.seed
        launch_key = (job.remote or {}).get("launch_key")
        if launch_key:  # lets find_launched() recognise the job after a crash (extra_body: any SDK version)
            kwargs["extra_body"] = {"metadata": {LAUNCH_KEY_METADATA: launch_key}}
        job.remote["creating"] = True
        try:
            remote = self._call("creating the fine-tuning job", client.fine_tuning.jobs.create,
                                model=job.base_model, training_file=train_file.id, method=spec, **kwargs)
        except BackendError as exc:
            if jobs_not_accepted(exc):
                exc.message = (f"{self.url} does not accept new fine-tuning jobs: {exc.message}")
                exc.hint = WIND_DOWN_HINT
            raise
        job.id = remote.id
        self._apply(job, remote)
        return job

    def find_launched(self, job: Any) -> Any:
        """The provider's job whose metadata carries ``job.remote["launch_key"]`` (a launch a crash cut short),
        as ``job`` filled in, or None. Looks through the newest jobs only (created since the launch began)."""
        launch_key = (job.remote or {}).get("launch_key")
        if not launch_key:
            return None
        since = _epoch(job.created_at) - 600  # clocks differ; a launch takes a while
        page = self._call("listing fine-tuning jobs", self.client().fine_tuning.jobs.list, limit=100,
                          extra_query={f"metadata[{LAUNCH_KEY_METADATA}]": launch_key})
        for n, remote in enumerate(page):  # iterating a page fetches the next ones
            metadata = getattr(remote, "metadata", None) or {}
            if metadata.get(LAUNCH_KEY_METADATA) == launch_key:
                job.id = remote.id
                job.remote["training_file"] = getattr(remote, "training_file", None)
                self._apply(job, remote)
                return job
            if n >= 1000 or (getattr(remote, "created_at", None) or since) < since:
                break  # newest first: older jobs cannot be this launch
        return None

    def _apply(self, job: Any, remote: Any) -> None:
        job.status = remote.status
        job.fine_tuned_model = getattr(remote, "fine_tuned_model", None) or job.fine_tuned_model
        error = getattr(remote, "error", None)
        if error is not None and (getattr(error, "message", None) or getattr(error, "code", None)):
            job.error = {"code": getattr(error, "code", None), "message": getattr(error, "message", None),
                         "param": getattr(error, "param", None)}
        trained = getattr(remote, "trained_tokens", None)
        if trained is not None:
            job.remote["trained_tokens"] = trained

    def refresh(self, job: Any) -> Any:
        client = self.client()
        remote = self._call(f"reading job {job.id}", client.fine_tuning.jobs.retrieve, job.id)
        self._apply(job, remote)
        try:
            page = self._call(f"reading the events of job {job.id}", client.fine_tuning.jobs.list_events,
                              job.id, limit=50)
            events = [{"id": e.id, "created_at": e.created_at, "level": e.level, "message": e.message}
                      for e in getattr(page, "data", [])]
            job.add_events(sorted(reversed(events), key=lambda e: (e["created_at"] or 0)))
        except OaipipeError:
            pass  # events are informative; the status is what matters
        return job

    def cancel(self, job: Any) -> Any:
        if job.finished:
            raise TrainingError(f"job {job.id} is already {job.status}; there is nothing to cancel")
        remote = self._call(f"cancelling job {job.id}", self.client().fine_tuning.jobs.cancel, job.id)
        self._apply(job, remote)
        return job


def _epoch(iso: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return 0.0


@hookimpl
def register_trainers(register: Any) -> None:
    register("openai", OpenAITrainer)
