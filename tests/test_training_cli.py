"""The training loop end to end through the CLI: run → dialogue → dataset → fine-tune → registry → ask."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from oaipipe.base import BackendOptions, Context
from oaipipe.cli import main
from oaipipe.jobs import JobRegistry
from oaipipe.plugins import PluginHost
from oaipipe.testing import running_server
from oaipipe.training import train_after_run

REPO = Path(__file__).resolve().parent.parent
QA = REPO / "examples" / "data" / "qa.csv"
SYS = "You are a helpful support agent."


def out_of(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A copy of the shipped demo pipeline and its example data."""
    for name in ("pipeline.yaml", "examples", "plugins"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, tmp_path / name)
    return tmp_path / "pipeline.yaml"


def summary_of(pipeline: Path) -> dict[str, Any]:
    found = sorted(pipeline.parent.glob("runs/*/*/summary.json"))
    assert found, "no run directory"
    return json.loads(found[-1].read_text())


def first_trained_exchange(dataset: str) -> list[dict[str, Any]]:
    with open(dataset, encoding="utf-8") as fh:
        return json.loads(fh.readline())["messages"]


def test_offline_loop_from_the_shipped_demo(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(demo)]) == 0
    out, _ = out_of(capsys)
    train = summary_of(demo)["train"]
    assert train["status"] == "succeeded", train
    assert train["examples"] >= 10 and train["select"] == {"reply_sentiment": "positive"}
    model = train["fine_tuned_model"]
    assert model.startswith("ft:gpt-6-luna:local:") and model in out
    dataset = Path(train["dataset"])
    assert dataset.parent.parent.parent.name == "runs" and dataset.name == "train.jsonl"
    # every exchange kept had a positive reply and no image placeholder
    for line in dataset.read_text().splitlines():
        msgs = json.loads(line)["messages"]
        assert "[image:" not in msgs[-2]["content"]
    assert main(["dataset", "validate", str(dataset)]) == 0
    out_of(capsys)
    job = JobRegistry().get(train["job_id"])
    assert job.trainer == "local" and job.status == "succeeded" and job.fine_tuned_model == model
    assert job.dataset == str(dataset)
    # asking the fine-tuned model a training prompt returns the trained reply
    messages = first_trained_exchange(train["dataset"])
    assert main(["ask", "--backend", "local", "--model", model, "--system", messages[0]["content"],
                 messages[1]["content"]]) == 0
    out, _ = out_of(capsys)
    assert out.strip() == messages[2]["content"]


def test_the_same_loop_through_the_openai_trainer_and_the_server(demo: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with running_server() as srv:
        code = main(["run", str(demo), "--set", "backend.base_url=" + srv.base_url,
                     "--set", "train.type=openai", "--set", "train.poll_interval=0.05"])
        assert code == 0, out_of(capsys)
        train = summary_of(demo)["train"]
        assert train["status"] == "succeeded", train
        job = JobRegistry().get(train["job_id"])
        assert job.trainer == "openai" and job.base_url == srv.base_url
        assert job.fine_tuned_model == train["fine_tuned_model"] and job.fine_tuned_model.startswith("ft:")
        assert set(job.to_dict()) == set(JobRegistry().list()[0].to_dict())
        messages = first_trained_exchange(train["dataset"])
        client = OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model=job.fine_tuned_model, messages=messages[:2])
        assert reply.choices[0].message.content == messages[2]["content"]
        out_of(capsys)
        assert main(["ask", "--backend", "openai", "--base-url", srv.base_url, "--model", job.fine_tuned_model,
                     "--system", messages[0]["content"], messages[1]["content"]]) == 0
        assert out_of(capsys)[0].strip() == messages[2]["content"]


def test_train_csv_wait_ask_and_rerun(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(QA), "--system", SYS, "--suffix", "qa", "--wait"]) == 0
    out, _ = out_of(capsys)
    assert "OK: ready to train" in out and "epochs: 8" in out
    model = out.strip().splitlines()[-1].removeprefix("fine-tuned model: ")
    assert model.startswith("ft:gpt-4o-mini:local:qa:")
    assert main(["ask", "--backend", "local", "--model", model, "--system", SYS, "Can I return an item?"]) == 0
    assert out_of(capsys)[0].strip().startswith("Yes, within 30 days of delivery.")
    # the same dataset again: the first job is reported, nothing new is launched
    assert main(["train", str(QA), "--system", SYS, "--suffix", "qa", "--json"]) == 0
    out, err = out_of(capsys)
    data = json.loads(out)
    assert data["reused"] is True and data["job"]["fine_tuned_model"] == model
    assert "already trained" in err
    assert len(JobRegistry().list()) == 1
    assert main(["train", str(QA), "--system", SYS, "--force"]) == 0
    assert len(JobRegistry().list()) == 2


def test_too_few_examples_are_refused_before_any_upload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small.csv"
    small.write_text("prompt,completion\n" + "".join(f"q{i},a{i}\n" for i in range(4)))
    with running_server() as srv:
        code = main(["train", str(small), "--trainer", "openai", "--base-url", srv.base_url, "--wait"])
        stats = srv.stats()
    assert code == 6
    out, err = out_of(capsys)
    assert "too_few_examples" in err and "nothing was uploaded" in err
    assert not any(path.startswith("/v1/files") for path in stats["by_path"]), stats
    assert stats["requests"] == 0
    assert JobRegistry().list() == []


def test_invalid_rows_are_refused_with_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "chat.jsonl"
    good = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(11)]
    bad = {"messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    data.write_text("".join(json.dumps(r) + "\n" for r in [*good, bad]))
    assert main(["train", str(data), "--json"]) == 6
    out, err = out_of(capsys)
    report = json.loads(out)
    assert report["status"] == "invalid" and "unrecognized_role" in report["report"]["errors"]
    assert "chat.jsonl line 12" in err


def test_openai_trainer_without_wait_then_jobs_wait_show_list(capsys: pytest.CaptureFixture[str]) -> None:
    with running_server() as srv:
        assert main(["train", str(QA), "--trainer", "openai", "--base-url", srv.base_url, "--n-epochs", "2"]) == 0
        out, _ = out_of(capsys)
        job_id = out.strip().splitlines()[-1].split()[1]
        assert "oaipipe jobs wait" in out and job_id.startswith("ftjob-")
        assert main(["jobs", "wait", job_id, "--poll-interval", "0.05"]) == 0
        out, _ = out_of(capsys)
        assert out.strip().splitlines()[-1].startswith("fine-tuned model: ft:gpt-4o-mini:")
        assert main(["jobs", "show", job_id, "--json"]) == 0
        shown = json.loads(out_of(capsys)[0])
        assert shown["status"] == "succeeded" and shown["hyperparameters"] == {"n_epochs": 2}
        assert shown["base_url"] == srv.base_url and shown["events"]
        assert main(["jobs", "show", job_id]) == 0
        assert "fine_tuned_model: ft:" in out_of(capsys)[0]
        assert main(["jobs", "list", "--json"]) == 0
        assert [j["id"] for j in json.loads(out_of(capsys)[0])] == [job_id]
        assert main(["jobs", "list"]) == 0
        assert job_id in out_of(capsys)[0]


def test_failed_job_exits_7_with_the_server_message(capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(ft_min_examples=50) as srv:
        code = main(["train", str(QA), "--trainer", "openai", "--base-url", srv.base_url, "--wait",
                     "--poll-interval", "0.05"])
        assert code == 7
        _, err = out_of(capsys)
        assert "failed" in err and "at least 50 examples" in err
        job_id = JobRegistry().list()[0].id
        assert main(["jobs", "wait", job_id]) == 7
        assert "at least 50 examples" in out_of(capsys)[1]


def test_jobs_cancel_and_unknown_ids(capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(ft_seconds=30) as srv:
        assert main(["train", str(QA), "--trainer", "openai", "--base-url", srv.base_url]) == 0
        job_id = JobRegistry().list()[0].id
        out_of(capsys)
        # a key variable that is not set is a usage error, as for `train`, not a silent fall-back
        assert main(["jobs", "cancel", job_id, "--api-key-env", "NO_SUCH_VAR_XYZ"]) == 2
        assert "NO_SUCH_VAR_XYZ" in out_of(capsys)[1]
        assert main(["jobs", "cancel", job_id, "--json"]) == 0
        assert json.loads(out_of(capsys)[0])["status"] == "cancelled"
        assert JobRegistry().get(job_id).status == "cancelled"
    assert main(["jobs", "show", "ftjob-missing"]) == 7
    assert "oaipipe jobs list" in out_of(capsys)[1]
    assert main(["jobs", "list"]) == 0


def test_jobs_registry_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "my-jobs.json"
    assert main(["train", str(QA), "--registry", str(reg)]) == 0
    assert len(JobRegistry(reg).list()) == 1 and JobRegistry().list() == []
    out_of(capsys)
    assert main(["jobs", "list", "--registry", str(reg), "--json"]) == 0
    assert len(json.loads(out_of(capsys)[0])) == 1


def test_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(QA), "--beta", "0.1"]) == 2
    assert "--method dpo" in out_of(capsys)[1]
    assert main(["train", str(QA), "--base-url", "http://127.0.0.1:1/v1"]) == 2
    assert "--trainer openai" in out_of(capsys)[1]
    assert main(["train", str(QA), "--trainer", "nope"]) == 2
    assert "known trainers" in out_of(capsys)[1]
    assert main(["train", str(QA), "--api-key-env", "NO_SUCH_VAR_XYZ", "--trainer", "openai"]) == 2
    assert main(["train", str(QA), "--select", "oops"]) == 6


def test_dataset_build_from_a_dialogue_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "dialogue.jsonl"
    lines = []
    for i in range(30):
        label = "positive" if i % 3 else "negative"
        lines.append({"run_id": "r", "record_id": f"r{i}", "step": "ask:reply", "messages": [
            {"role": "system", "content": SYS, "sentiment": None},
            {"role": "user", "content": f"Question {i}", "sentiment": None},
            {"role": "assistant", "content": f"Answer {i}", "sentiment": {"label": label, "score": 1}}]})
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "ds" / "train.jsonl"
    assert main(["dataset", "build", str(log), "-o", str(out), "--select", "sentiment=positive",
                 "--validation-fraction", "0.2", "--json"]) == 0
    data = json.loads(out_of(capsys)[0])
    assert data["build"]["not_selected"] == 10
    assert data["dataset"]["n_train"] + data["dataset"]["n_validation"] == 20
    assert len(out.read_text().splitlines()) == data["dataset"]["n_train"]
    assert main(["dataset", "validate", str(out)]) == 0
    out_of(capsys)
    # DPO needs pairs to the same prompt: none here, so the build says so and exits 6
    assert main(["dataset", "build", str(log), "-o", str(tmp_path / "dpo.jsonl"), "--format", "dpo"]) == 6
    text = out_of(capsys)[0]
    assert "without a pair" in text and "too_few_examples" in text
    # a dataset that is not ready is not written: no empty file to train on by mistake
    assert not (tmp_path / "dpo.jsonl").exists() and not (tmp_path / "dpo.validation.jsonl").exists()
    assert "nothing written" in text and "wrote" not in text
    assert main(["dataset", "build", str(log), "-o", str(tmp_path / "dpo.jsonl"), "--format", "dpo",
                 "--validation-fraction", "0.2", "--json"]) == 6
    data = json.loads(out_of(capsys)[0])
    assert data["dataset"]["written"] is False and data["report"]["ok"] is False
    assert not list(tmp_path.glob("dpo*"))


def test_train_after_run_skips_too_few_examples(tmp_path: Path) -> None:
    records = tmp_path / "run" / "journal.jsonl"
    records.parent.mkdir()
    records.write_text(json.dumps({"id": "r1", "status": "done", "fields": {"reply_sentiment": "positive"},
                                   "exchanges": [{"step": "ask:reply", "messages": [
                                       {"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "hello!"}]}]}) + "\n")
    host = PluginHost()
    summary = train_after_run({"type": "local", "select": {"reply_sentiment": "positive"}}, records_path=records,
                              host=host, context=Context(host=host), backend_options=BackendOptions())
    assert summary["status"] == "skipped"
    assert "only 1 training example" in summary["reason"] and "train.select" in summary["reason"]
    assert JobRegistry().list() == []
    assert (tmp_path / "run" / "train.jsonl").exists()


def test_train_after_run_inherits_the_backend_server(tmp_path: Path) -> None:
    records = tmp_path / "run" / "journal.jsonl"
    records.parent.mkdir()
    rows = [{"id": f"r{i}", "status": "done", "fields": {"reply_sentiment": "positive"},
             "exchanges": [{"step": "ask:reply", "messages": [
                 {"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}]}
            for i in range(12)]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    host = PluginHost()
    secret = "sk-pipeline-secret-0123456789"
    with running_server() as srv:
        backend = BackendOptions(type="openai", model="gpt-4o-mini", base_url=srv.base_url, api_key=secret)
        summary = train_after_run({"type": "openai", "poll_interval": 0.05}, records_path=records, host=host,
                                  context=Context(host=host, pipeline_name="demo"), backend_options=backend)
    assert summary["status"] == "succeeded", summary
    job = JobRegistry().get(summary["job_id"])
    assert job.base_url == srv.base_url and job.description.startswith("demo: 12 supervised")
    registry_text = (JobRegistry().path).read_text()
    assert secret not in registry_text and secret not in json.dumps(summary)


def test_train_block_is_validated_key_by_key() -> None:
    from oaipipe.errors import ConfigError
    from oaipipe.training import build_train_block

    host = PluginHost()
    with pytest.raises(ConfigError) as err:
        build_train_block({"type": "local", "selct": {"sentiment": "positive"}}, host=host, context=Context(host=host),
                          file="pipeline.yaml")
    assert "selct" in str(err.value) and "select" in str(err.value)
    with pytest.raises(ConfigError):
        build_train_block({"type": "local", "validation_fraction": 2}, host=host, context=Context(host=host))
    trainer, block = build_train_block({"type": "openai"}, host=host, context=Context(host=host),
                                       backend_options=BackendOptions(model="gpt-4.1-mini", base_url="http://x/v1"))
    assert trainer.options.base_url == "http://x/v1" and trainer.options.model == "gpt-4.1-mini"


def test_a_pipeline_can_name_the_fine_tuned_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(QA), "--system", SYS, "--wait"]) == 0
    model = out_of(capsys)[0].strip().splitlines()[-1].removeprefix("fine-tuned model: ")
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "q1", "text": "Where is my order?"}) + "\n")
    (tmp_path / "p.yaml").write_text(
        "name: use-ft\n"
        f"backend: {{type: local, model: '{model}'}}\n"
        "source: {type: jsonl, path: q.jsonl, id_field: id}\n"
        f"steps: [{{type: ask, system: '{SYS}', prompt: '{{text}}', output: reply}}]\n"
        "sinks: [{type: jsonl, path: out/records.jsonl}]\n")
    assert main(["run", str(tmp_path / "p.yaml")]) == 0
    record = json.loads((tmp_path / "out" / "records.jsonl").read_text().splitlines()[0])
    assert record["reply"].startswith("You can follow your parcel from the link in your shipping confirmation")


def test_cancelling_a_finished_job_says_so_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(QA), "--wait"]) == 0  # the local trainer: succeeded at once
    job = JobRegistry().list()[0]
    assert job.status == "succeeded"
    out_of(capsys)
    assert main(["jobs", "cancel", job.id]) == 0
    out = out_of(capsys)[0]
    assert f"job {job.id} already finished (status succeeded)" in out and "nothing to cancel" in out
    assert main(["jobs", "cancel", job.id, "--json"]) == 0
    data = json.loads(out_of(capsys)[0])
    assert data["already_finished"] is True and data["status"] == "succeeded"
    assert JobRegistry().get(job.id).status == "succeeded"


def test_cancelling_a_job_that_finished_on_the_server_updates_the_registry(
        capsys: pytest.CaptureFixture[str]) -> None:
    with running_server() as srv:
        assert main(["train", str(QA), "--trainer", "openai", "--base-url", srv.base_url]) == 0
        job_id = JobRegistry().list()[0].id
        assert JobRegistry().get(job_id).status not in ("succeeded", "failed", "cancelled")
        client = OpenAI(base_url=srv.base_url, api_key="sk-test")
        for _ in range(500):  # let the server finish the job behind the registry's back
            if client.fine_tuning.jobs.retrieve(job_id).status == "succeeded":
                break
            time.sleep(0.02)
        out_of(capsys)
        assert main(["jobs", "cancel", job_id]) == 0
        out = out_of(capsys)[0]
        assert f"job {job_id} already finished (status succeeded)" in out
        assert JobRegistry().get(job_id).status == "succeeded"
        assert JobRegistry().get(job_id).fine_tuned_model


def test_jobs_wait_timeout_while_running_exits_1_and_says_how_to_go_on(
        capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(ft_seconds=30) as srv:
        assert main(["train", str(QA), "--trainer", "openai", "--base-url", srv.base_url]) == 0
        job_id = JobRegistry().list()[0].id
        out_of(capsys)
        assert main(["jobs", "wait", job_id, "--timeout", "0", "--poll-interval", "0.01"]) == 1
        err = out_of(capsys)[1]
        assert "still running after 0 s" in err and f"oaipipe jobs wait {job_id}" in err
        assert main(["jobs", "cancel", job_id]) == 0


def test_jobs_show_ambiguous_prefix_lists_the_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(QA)]) == 0
    assert main(["train", str(QA), "--force"]) == 0
    ids = [j.id for j in JobRegistry().list()]
    assert len(ids) == 2
    prefix = "ftjob-"
    out_of(capsys)
    assert main(["jobs", "show", prefix]) == 7
    err = out_of(capsys)[1]
    assert "ambiguous" in err and all(i in err for i in ids)


def test_jobs_list_and_show_refresh_asks_the_server(capsys: pytest.CaptureFixture[str]) -> None:
    with running_server() as srv:
        assert main(["train", str(QA), "--trainer", "openai", "--base-url", srv.base_url]) == 0
        job_id = JobRegistry().list()[0].id
        client = OpenAI(base_url=srv.base_url, api_key="sk-test")
        for _ in range(500):  # the server finishes the job behind the registry's back
            if client.fine_tuning.jobs.retrieve(job_id).status == "succeeded":
                break
            time.sleep(0.02)
        out_of(capsys)
        assert main(["jobs", "list"]) == 0
        assert "succeeded" not in out_of(capsys)[0]  # the stored status, no network
        assert main(["jobs", "list", "--refresh"]) == 0
        assert "succeeded" in out_of(capsys)[0]
        assert JobRegistry().get(job_id).status == "succeeded"
        assert main(["jobs", "show", job_id, "--refresh", "--json"]) == 0
        assert json.loads(out_of(capsys)[0])["fine_tuned_model"]
