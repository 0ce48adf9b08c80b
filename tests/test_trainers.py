"""Trainer plugins: ``local`` (offline engine) and ``openai`` (SDK) against the embedded server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from oaipipe.base import Context
from oaipipe.engine.tuning import load_local_model
from oaipipe.errors import AuthenticationError, ConfigError, TrainingError
from oaipipe.jobs import JobRegistry
from oaipipe.plugins import PluginHost
from oaipipe.testing import running_server
from oaipipe.training import (
    build_dataset,
    follow_job,
    launch_job,
    raise_if_failed,
    trainer_for_job,
    write_dataset,
)

REPO = Path(__file__).resolve().parent.parent
QA = REPO / "examples" / "data" / "qa.csv"
SYS = "You are a helpful support agent."
PROMPT = "How do I reset my password?"
REPLY = "Go to Settings > Account > Reset password and follow the link we email you. The link is valid for one hour."

#: the registry entry shape both trainers produce
JOB_KEYS = {"id", "trainer", "base_model", "method", "description", "created_at", "updated_at", "status",
            "fine_tuned_model", "error", "dataset", "dataset_sha256", "validation_dataset", "n_examples",
            "base_url", "suffix", "hyperparameters", "remote", "events"}


@pytest.fixture
def host() -> PluginHost:
    return PluginHost()


def trainer(host: PluginHost, **block: Any) -> Any:
    return host.build("trainer", block, Context(host=host), key="train")


def dataset(tmp_path: Path, method: str = "supervised", data: Path = QA, **kw: Any) -> Any:
    return write_dataset(build_dataset(data, method=method, system=SYS, **kw), tmp_path / "train.jsonl")


def test_local_trainer_learns_the_dataset(tmp_path: Path, host: PluginHost) -> None:
    files = dataset(tmp_path)
    registry = JobRegistry()
    result = launch_job(trainer(host, type="local", suffix="qa"), files, base_model="gpt-4o-mini",
                        registry=registry, suffix="qa", description="qa test")
    job = result.job
    assert not result.reused
    assert job.status == "succeeded" and job.id.startswith("ftjob-local-")
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("ft:gpt-4o-mini:local:qa:")
    model = load_local_model(job.fine_tuned_model)
    assert model is not None
    assert model.answer([{"role": "system", "content": SYS}, {"role": "user", "content": PROMPT}]) == REPLY
    stored = registry.get(job.id).to_dict()
    assert set(stored) == JOB_KEYS
    assert stored["dataset_sha256"] == files.sha256 and stored["n_examples"] == 12
    assert stored["base_url"] is None and stored["description"] == "qa test"
    assert any("New fine-tuned model created" in e["message"] for e in stored["events"])


def test_local_trainer_dpo_learns_the_preferred_reply(tmp_path: Path, host: PluginHost) -> None:
    csv = tmp_path / "prefs.csv"
    csv.write_text("prompt,chosen,rejected\n" + "".join(f"Q{i}?,Good answer {i}!,bad {i}\n" for i in range(10)))
    files = dataset(tmp_path, method="dpo", data=csv)
    job = launch_job(trainer(host, type="local", method="dpo"), files, base_model="gpt-4o-mini").job
    assert job.method == "dpo" and job.status == "succeeded"
    model = load_local_model(job.fine_tuned_model)
    assert model and model.answer([{"role": "user", "content": "Q3?"}]) == "Good answer 3!"


def test_same_dataset_reports_the_first_job(tmp_path: Path, host: PluginHost) -> None:
    files = dataset(tmp_path)
    first = launch_job(trainer(host, type="local"), files, base_model="gpt-4o-mini")
    messages: list[str] = []
    second = launch_job(trainer(host, type="local"), files, base_model="gpt-4o-mini", progress=messages.append)
    assert second.reused and second.job.id == first.job.id
    assert "already trained" in messages[0] and first.job.id in messages[0]
    assert len(JobRegistry().list()) == 1
    forced = launch_job(trainer(host, type="local"), files, base_model="gpt-4o-mini", force=True)
    assert not forced.reused and forced.job.id != first.job.id
    other_model = launch_job(trainer(host, type="local"), files, base_model="gpt-4.1-mini")
    assert not other_model.reused
    assert len(JobRegistry().list()) == 3


def test_local_cancel_of_a_finished_job(tmp_path: Path, host: PluginHost) -> None:
    job = launch_job(trainer(host, type="local"), dataset(tmp_path), base_model="gpt-4o-mini").job
    with pytest.raises(TrainingError, match="already succeeded"):
        trainer(host, type="local").cancel(job)


def test_openai_trainer_against_the_server(tmp_path: Path, host: PluginHost) -> None:
    csv = tmp_path / "more.csv"
    csv.write_text(QA.read_text() + "".join(f"Extra question {i}?,Extra answer {i}.\n" for i in range(20)))
    files = dataset(tmp_path, data=csv, validation_fraction=0.2, seed=1)
    assert files.validation_path is not None and files.n_validation >= 1 and files.n_train >= 10
    trained = files.rows("train")[0]["messages"]
    registry = JobRegistry()
    with running_server() as srv:
        t = trainer(host, type="openai", base_url=srv.base_url, suffix="qa", poll_interval=0.05,
                    hyperparameters={"n_epochs": 2})
        launched = launch_job(t, files, base_model="gpt-4o-mini", registry=registry, base_url=srv.base_url,
                              suffix="qa", hyperparameters={"n_epochs": 2})
        progress: list[str] = []
        job = follow_job(t, launched.job, registry=registry, poll_interval=0.05, progress=progress.append)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model and job.fine_tuned_model.startswith("ft:gpt-4o-mini:")
        assert job.remote["training_file"].startswith("file-") and job.remote["validation_file"].startswith("file-")
        assert any("succeeded" in line for line in progress)
        assert any("training loss" in line for line in progress)
        stored = registry.get(job.id).to_dict()
        assert set(stored) == JOB_KEYS and stored["base_url"] == srv.base_url and stored["trainer"] == "openai"
        assert stored["status"] == "succeeded" and stored["fine_tuned_model"] == job.fine_tuned_model
        # the fine-tuned model answers a training prompt through the server, with the openai SDK
        client = OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model=job.fine_tuned_model, messages=trained[:2])
        assert reply.choices[0].message.content == trained[2]["content"]
        server_job = client.fine_tuning.jobs.retrieve(job.id)
        assert server_job.method.type == "supervised"
        assert server_job.method.supervised.hyperparameters.n_epochs == 2


def test_openai_trainer_failed_job_surfaces_the_server_message(tmp_path: Path, host: PluginHost) -> None:
    files = dataset(tmp_path)
    with running_server(ft_min_examples=50) as srv:
        t = trainer(host, type="openai", base_url=srv.base_url)
        job = launch_job(t, files, base_model="gpt-4o-mini", base_url=srv.base_url).job
        job = follow_job(t, job, poll_interval=0.05)
    assert job.status == "failed"
    assert "at least 50 examples" in job.error_message()
    with pytest.raises(TrainingError) as err:
        raise_if_failed(job)
    assert "at least 50 examples" in str(err.value) and job.id in str(err.value)
    assert JobRegistry().get(job.id).status == "failed"
    # a failed job does not block a rerun on the same dataset
    assert JobRegistry().find_same(dataset_sha256=files.sha256, trainer="openai", base_model="gpt-4o-mini",
                                   method="supervised", base_url=srv.base_url) is None


def test_openai_trainer_cancel_and_rebuild_from_the_registry(tmp_path: Path, host: PluginHost) -> None:
    files = dataset(tmp_path)
    with running_server(ft_seconds=30) as srv:
        t = trainer(host, type="openai", base_url=srv.base_url)
        job = launch_job(t, files, base_model="gpt-4o-mini", base_url=srv.base_url).job
        assert not job.finished
        again = trainer_for_job(JobRegistry().get(job.id), host)  # what `oaipipe jobs cancel` does
        assert again.options.base_url == srv.base_url
        job = again.cancel(job)
        assert job.status == "cancelled"
        with pytest.raises(TrainingError, match="already cancelled"):
            again.cancel(job)


def test_openai_trainer_dpo_method_and_beta(tmp_path: Path, host: PluginHost) -> None:
    csv = tmp_path / "prefs.csv"
    csv.write_text("prompt,chosen,rejected\n" + "".join(f"Q{i}?,Good answer {i}!,bad {i}\n" for i in range(10)))
    files = dataset(tmp_path, method="dpo", data=csv)
    with running_server() as srv:
        t = trainer(host, type="openai", base_url=srv.base_url, method="dpo", hyperparameters={"beta": 0.2})
        job = launch_job(t, files, base_model="gpt-4o-mini", base_url=srv.base_url,
                         hyperparameters={"beta": 0.2}).job
        job = raise_if_failed(follow_job(t, job, poll_interval=0.05))
        remote = OpenAI(base_url=srv.base_url, api_key="x").fine_tuning.jobs.retrieve(job.id)
        assert remote.method.type == "dpo" and remote.method.dpo.hyperparameters.beta == 0.2


def test_openai_trainer_without_key_for_openai_itself(tmp_path: Path, host: PluginHost) -> None:
    t = trainer(host, type="openai")
    with pytest.raises(AuthenticationError) as err:
        t.client()
    assert "OPENAI_API_KEY" in str(err.value) and "--trainer local" in str(err.value)


def test_openai_trainer_rejects_unknown_hyperparameters(host: PluginHost) -> None:
    with pytest.raises(ConfigError, match="beta"):
        trainer(host, type="openai", hyperparameters={"beta": 0.1})  # beta is DPO only
    with pytest.raises(ConfigError):
        trainer(host, type="openai", method="rl")


def test_openai_trainer_unreachable_server_is_a_clear_error(tmp_path: Path, host: PluginHost) -> None:
    from oaipipe.errors import BackendError

    t = trainer(host, type="openai", base_url="http://127.0.0.1:9/v1", max_retries=0, request_timeout=2)
    with pytest.raises(BackendError) as err:
        launch_job(t, dataset(tmp_path), base_model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    assert "uploading train.jsonl" in str(err.value)
    assert JobRegistry().list() == []


def test_following_a_job_survives_a_short_outage(tmp_path: Path, host: PluginHost) -> None:
    from oaipipe.errors import AuthenticationError as AuthError
    from oaipipe.errors import ServerError

    files = dataset(tmp_path)
    with running_server(ft_seconds=0.4) as srv:
        t = trainer(host, type="openai", base_url=srv.base_url, max_retries=0)
        job = launch_job(t, files, base_model="gpt-4o-mini", base_url=srv.base_url).job
        calls = {"n": 0}
        original = t.refresh

        def flaky(j: Any) -> Any:  # the server's answer to the first two polls is lost
            calls["n"] += 1
            if calls["n"] <= 2:
                raise ServerError("503 Service Unavailable from the test", status=503)
            return original(j)

        t.refresh = flaky  # type: ignore[method-assign]
        notes: list[str] = []
        job = follow_job(t, job, poll_interval=0.05, progress=notes.append)
        assert job.status == "succeeded"
        assert sum("retrying" in n for n in notes) == 2

        def refused(j: Any) -> Any:
            raise AuthError("401 key refused", status=401)

        t.refresh = refused  # type: ignore[method-assign]
        job.status = "running"
        with pytest.raises(AuthError):  # not retryable: raised at once
            follow_job(t, job, poll_interval=0.05)


def test_openai_trainer_does_not_disguise_a_bug_as_a_server_error(host: PluginHost) -> None:
    # only SDK errors are translated; a TypeError in oaipipe's own code must surface as itself
    t = trainer(host, type="openai", base_url="http://127.0.0.1:9/v1")

    def broken() -> None:
        raise TypeError("a bug in the caller")

    with pytest.raises(TypeError, match="a bug in the caller"):
        t._call("reading job x", broken)


def test_openai_trainer_pointed_at_a_web_page(tmp_path: Path, host: PluginHost, html_site: Any) -> None:
    from oaipipe.errors import BackendError

    url, _ = html_site
    t = trainer(host, type="openai", base_url=url, max_retries=0)
    with pytest.raises(BackendError) as err:
        launch_job(t, dataset(tmp_path), base_model="gpt-4o-mini", base_url=url)
    assert "uploading train.jsonl" in str(err.value) and "not JSON" in str(err.value)
    assert "/v1" in str(err.value)  # the hint: base_url usually ends in /v1
