"""A run is finished only when its `train:` step is; never two jobs for one dataset; following is interruptible.

Real `oaipipe run` processes, killed (SIGKILL) or interrupted (SIGINT) around the `train:` step, against
the embedded server's fine-tuning API over HTTP (its jobs take `ft_seconds`) and with the local trainer.
A small trainer plugin stops at a chosen point of its launch (and says so in a file) so that the kill
lands exactly there: before the job is launched, or after the provider created it but before oaipipe
could write it down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from _scale_util import write_pipeline
from openai import OpenAI

from oaipipe.jobs import JobRegistry
from oaipipe.testing import running_server

OAIPIPE = str(Path(sys.executable).parent / "oaipipe")
N = 12

HELD_TRAINER = '''
import os, time
from pathlib import Path
from oaipipe import hookimpl
from oaipipe.builtin.trainer_local import LocalTrainer
from oaipipe.builtin.trainer_openai import OpenAITrainer


def hold(where):
    if os.environ.get("HOLD_TRAIN_AT") == where:
        Path(os.environ["HOLD_MARK"]).write_text(where)
        time.sleep(600)


class HeldOpenAI(OpenAITrainer):
    class Options(OpenAITrainer.Options):
        type: str = "held-openai"

    def launch(self, dataset, job):
        hold("before-launch")
        job = super().launch(dataset, job)
        hold("after-create")  # the provider has the job; the registry does not know its id yet
        return job


class HeldLocal(LocalTrainer):
    class Options(LocalTrainer.Options):
        type: str = "held-local"

    def launch(self, dataset, job):
        hold("before-launch")
        return super().launch(dataset, job)


@hookimpl
def register_trainers(register):
    register("held-openai", HeldOpenAI)
    register("held-local", HeldLocal)
'''


def _pipeline(tmp_path: Path, backend: str, train: str) -> Path:
    (tmp_path / "held_trainer.py").write_text(HELD_TRAINER, encoding="utf-8")
    path = write_pipeline(tmp_path, backend, n=N, extra=f"train: {train}\n")
    path.write_text("plugins: [held_trainer.py]\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def _start(path: Path, *, hold: str | None = None, mark: Path | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    if hold:
        env.update(HOLD_TRAIN_AT=hold, HOLD_MARK=str(mark))
    # a shell's background job inherits SIGINT ignored, and Python keeps it so: restore it in the child
    return subprocess.Popen([OAIPIPE, "run", str(path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition: Any, what: str, proc: subprocess.Popen[str] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _summary(tmp_path: Path) -> dict[str, Any]:
    found = list((tmp_path / "runs").glob("*/*/summary.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text(encoding="utf-8"))


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def _rerun(path: Path) -> dict[str, Any]:
    proc = subprocess.run([OAIPIPE, "run", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _server_jobs(srv: Any) -> list[Any]:
    return list(OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0).fine_tuning.jobs.list())


def _registered_job(predicate: Any) -> bool:
    return any(predicate(job) for job in JobRegistry().list())


def _assert_one_job(srv: Any, summary: dict[str, Any]) -> None:
    jobs = JobRegistry().list()
    assert [j.status for j in jobs] == ["succeeded"], [(j.id, j.status) for j in jobs]
    assert summary["status"] == "finished" and summary["train"]["status"] == "succeeded"
    assert summary["train"]["job_id"] == jobs[0].id and summary["train"]["fine_tuned_model"]
    if srv is not None:
        remote = _server_jobs(srv)
        assert [r.id for r in remote] == [jobs[0].id]
        assert remote[0].status == "succeeded"


def test_sigkill_before_the_job_is_launched_the_rerun_launches_exactly_one(tmp_path: Path) -> None:
    mark = tmp_path / "held"
    with running_server(ft_seconds=0.2) as srv:
        path = _pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}'}}",
                         "{type: held-openai, poll_interval: 0.05}")
        proc = _start(path, hold="before-launch", mark=mark)
        _wait_for(mark.exists, "the train: step", proc)
        assert _summary(tmp_path)["status"] == "training"  # records done; the run is not finished yet
        _kill(proc)
        assert _server_jobs(srv) == []
        summary = _rerun(path)
        assert summary["records"]["done"] == N  # the records of the run, not done again
        _assert_one_job(srv, summary)


def test_sigkill_after_the_provider_created_the_job_the_rerun_follows_that_job(tmp_path: Path) -> None:
    mark = tmp_path / "held"
    with running_server(ft_seconds=0.2) as srv:
        path = _pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}'}}",
                         "{type: held-openai, poll_interval: 0.05}")
        proc = _start(path, hold="after-create", mark=mark)
        _wait_for(mark.exists, "the job to be created", proc)
        _kill(proc)
        assert len(_server_jobs(srv)) == 1
        assert [j.status for j in JobRegistry().list()] == ["launching"]  # on record before the provider had it
        summary = _rerun(path)
        _assert_one_job(srv, summary)  # found by its launch key and followed: not launched a second time
        assert summary["train"]["reused_job"] is True


def test_sigkill_while_following_the_job_the_rerun_follows_it(tmp_path: Path) -> None:
    with running_server(ft_seconds=2) as srv:
        path = _pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}'}}",
                         "{type: openai, poll_interval: 0.05}")
        proc = _start(path)
        _wait_for(lambda: _registered_job(lambda j: j.id.startswith("ftjob-") and not j.finished),
                  "the job to be followed", proc)
        _kill(proc)
        assert _summary(tmp_path)["status"] == "training"
        summary = _rerun(path)
        _assert_one_job(srv, summary)


def test_ctrl_c_while_following_exits_130_at_once_and_the_job_keeps_running(tmp_path: Path) -> None:
    with running_server(ft_seconds=4) as srv:
        path = _pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}'}}",
                         "{type: openai, poll_interval: 0.05}")
        proc = _start(path)
        _wait_for(lambda: _registered_job(lambda j: j.id.startswith("ftjob-") and not j.finished),
                  "the job to be followed", proc)
        os.kill(proc.pid, signal.SIGINT)
        _wait_for(lambda: proc.poll() is not None, "the run to stop after Ctrl-C", timeout=30)
        # it stopped while the job still runs: Ctrl-C was not held back until the job ended
        remote = _server_jobs(srv)
        assert len(remote) == 1 and remote[0].status in ("validating_files", "queued", "running"), remote
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        summary = _summary(tmp_path)
        assert summary["status"] == "training" and summary["train"]["status"] == "interrupted"
        summary = _rerun(path)  # follows the job that kept running
        _assert_one_job(srv, summary)


def test_sigkill_before_local_training_the_rerun_trains_once(tmp_path: Path) -> None:
    mark = tmp_path / "held"
    path = _pipeline(tmp_path, "{type: local}", "{type: held-local}")
    proc = _start(path, hold="before-launch", mark=mark)
    _wait_for(mark.exists, "the train: step", proc)
    assert _summary(tmp_path)["status"] == "training"
    _kill(proc)
    assert JobRegistry().list() == []
    proc = subprocess.run([OAIPIPE, "run", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # what this attempt did (only the train: step), then the run's totals, labelled as such
    assert "finished: this attempt ran only the train: step of run " in proc.stdout
    assert "(its records were done before: 0 calls, $0.0000)" in proc.stdout
    assert f"  run totals: {N} done, 0 failed" in proc.stdout
    summary = _summary(tmp_path)
    _assert_one_job(None, summary)
    assert summary["records"]["done"] == N and summary["this_attempt"]["calls"] == 0
    assert summary["train"]["fine_tuned_model"].startswith("ft:gpt-4o-mini:local:")
    assert _rerun(path)["status"] == "nothing-to-do"
    assert len(JobRegistry().list()) == 1


def test_a_second_launch_of_one_dataset_at_the_same_time_is_refused(tmp_path: Path) -> None:
    from oaipipe.errors import RunLockedError
    from oaipipe.plugins import PluginHost
    from oaipipe.training import build_dataset, launch_job, write_dataset
    from oaipipe.training.launch import _launch_lock

    csv = tmp_path / "qa.csv"
    csv.write_text("prompt,completion\n" + "".join(f"Q{i}?,A{i}.\n" for i in range(12)), encoding="utf-8")
    files = write_dataset(build_dataset(csv), tmp_path / "train.jsonl")
    host = PluginHost(entry_points=False)
    trainer = host.build("trainer", {"type": "local"}, None, key="train")  # type: ignore[arg-type]
    registry = JobRegistry()
    key = {"dataset_sha256": files.sha256, "trainer": "local", "base_model": "gpt-4o-mini",
           "method": "supervised", "base_url": None}
    with _launch_lock(registry, key):  # another process launching this dataset right now
        try:
            launch_job(trainer, files, base_model="gpt-4o-mini", registry=registry)
        except RunLockedError as exc:
            assert f"pid {os.getpid()}" in str(exc) and exc.exit_code == 10
        else:
            raise AssertionError("a second launch of the same dataset went ahead")
    assert registry.list() == []
    assert launch_job(trainer, files, base_model="gpt-4o-mini", registry=registry).reused is False  # free again


def test_trainer_plugin_text_is_valid() -> None:
    compile(textwrap.dedent(HELD_TRAINER), "held_trainer.py", "exec")
