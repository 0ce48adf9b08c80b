"""``run.executor: ray`` (issue 15): the steps on a pool of Ray actors, on a local Ray with 2 CPUs.

One Ray for the module (starting one takes seconds on a loaded machine). API steps run on the actors too,
their calls through the run's one limiter actor and one cache actor (:mod:`oaipipe.ray_cluster`); the
calls are counted at ``oaipipe serve``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_scale_out import DYING, _project, _strip
from test_scale_out import SENTIMENT as SENTIMENT_STEPS

from oaipipe.errors import ConfigError
from oaipipe.testing import PipelineProject, running_server

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'oaipipe[ray]'; the test extra has it)")

REPO = Path(__file__).resolve().parent.parent
ASK = {"type": "ask", "prompt": "Reply to: {text}", "output": "reply"}


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[str]:
    """A local Ray with 2 CPUs for the module; yields its address (for a driver in another process)."""
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield str(context.address_info["gcs_address"])
    ray.shutdown()


def _api_project(path: Path, base_url: str, n: int, **backend: Any) -> PipelineProject:
    return _project(path, n=n, workers=2,
                    backend={"type": "openai", "base_url": base_url, "concurrency": 4, **backend},
                    steps=[ASK, *SENTIMENT_STEPS])


def test_a_sentiment_pipeline_on_ray_gives_the_same_records_in_the_same_order(
        oaipipe_project: PipelineProject, tmp_path: Path) -> None:
    here = _project(tmp_path / "here", workers=1)
    there = _project(tmp_path / "ray", workers=2)
    assert here.run().exit_code == 0
    result = there.run("--executor", "ray")
    assert result.exit_code == 0, result.err
    assert result.summary["workers"] == {"processes": 2, "restarts": 0, "executor": "ray"}
    assert _strip(there.records()) == _strip(here.records())


def test_the_demo_pipeline_on_ray_gives_the_same_records_in_the_same_order(tmp_path: Path) -> None:
    """The shipped demo (API steps and CPU steps, the embedded engine offline) runs all its steps on Ray."""
    records = []
    for name, args in (("here", ()), ("ray", ("--executor", "ray"))):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(REPO / "pipeline.yaml", folder / "pipeline.yaml")
        shutil.copytree(REPO / "examples", folder / "examples")
        shutil.copytree(REPO / "plugins", folder / "plugins")
        project = PipelineProject(folder)
        result = project.run(*args, "--set", "run.workers=2")
        assert result.exit_code == 0, result.err
        if args:
            assert result.summary["workers"]["executor"] == "ray"  # every step ran on the actors
        lines = (folder / "out/records.jsonl").read_text(encoding="utf-8").splitlines()
        records.append([{k: v for k, v in json.loads(line).items() if k != "_run"} for line in lines])
        assert all(r["reply"] and r["image_description"] for r in records[-1])
    assert records[1] == records[0] and len(records[0]) > 10


def test_which_steps_run_on_ray_is_decided_by_capabilities(tmp_path: Path) -> None:
    from oaipipe.executors import pool_plan
    from oaipipe.pipeline import load_pipeline

    mixed = _api_project(tmp_path / "mixed", "http://127.0.0.1:9/v1", 5)
    assert pool_plan(load_pipeline(mixed.file), "ray")[0] == 2  # an API step and a CPU step: on the actors
    assert pool_plan(load_pipeline(mixed.file), "local")[0] == 0  # the process pool keeps API steps here
    batched = _project(tmp_path / "batched", n=5, backend={"type": "batch", "base_url": "http://127.0.0.1:9/v1"},
                       steps=[ASK])
    workers, why = pool_plan(load_pipeline(batched.file), "ray")
    assert workers == 0 and "batched" in why  # the Batch API's jobs are the driver's


def test_two_actors_share_one_rate_limit_counted_at_the_server(tmp_path: Path) -> None:
    # the server lets 900 RPM through, enforced per second (15 a second, no burst); the pipeline is configured
    # at 600 RPM. The 2 actors each make calls: one limiter for both keeps the whole run under 600 RPM, so
    # the server never answers 429 (two limiters of 600 each would send up to 20 a second)
    with running_server(rpm=900, rate_burst=1) as srv:
        project = _api_project(tmp_path, srv.base_url, 40, rpm=600)
        result = project.run("--executor", "ray")
        stats = srv.stats()
    assert result.exit_code == 0, result.err
    assert result.summary["workers"]["executor"] == "ray"  # the API step ran on the actors
    assert result.summary["records"]["done"] == 40 and result.summary["calls"] == 40
    # one limiter hands out 10 turns a second; two limiters of 600 RPM would send 20 a second into the
    # server's 15 (about 5 refused a second, over 10 in the run). Under heavy CPU load an actor that
    # took its turn may send it late, bunching two turns into one server second: a 429 or two, retried
    refused = stats["by_status"].get("429", 0)
    assert refused <= 2 and stats["requests"] == 40 + refused, stats
    assert result.summary["rate_limit"]["rpm"] == 600
    assert result.summary["rate_limit"]["shared_by"] == 2  # both actors took their turns from it


def test_a_fresh_rerun_of_a_ray_run_makes_no_call_the_cache_is_shared(tmp_path: Path) -> None:
    with running_server() as srv:
        project = _api_project(tmp_path, srv.base_url, 30)
        first = project.run("--executor", "ray")
        assert first.exit_code == 0, first.err
        replies = [r["reply"] for r in project.records()]
        assert srv.stats()["requests"] == 30
        again = project.run("--executor", "ray", "--fresh")
        assert srv.stats()["requests"] == 30  # no new call: every answer came from the one cache
    assert again.exit_code == 0, again.err
    assert again.summary["workers"]["executor"] == "ray"
    assert again.summary["cache"]["hits"] == 30 and again.summary["cache"]["misses"] == 0
    assert [r["reply"] for r in project.records()] == replies


def test_a_cost_budget_on_ray_stops_after_the_batches_sent_and_counts_every_call(tmp_path: Path) -> None:
    # each call costs about $0.05 here: the budget of $0.20 is reached after a few calls; the driver counts
    # the calls as batches come back and sends no new batch: at most 2 batches per actor (of 2 x
    # backend.concurrency = 4 records) were out when it saw the budget reached
    with running_server() as srv:
        project = _api_project(tmp_path, srv.base_url, 100, concurrency=2, model="gpt-6-luna")
        project.write(**{**project.config(), "prices": {"local:gpt-6-luna": {"input": 1000, "output": 1000}}})
        result = project.run("--executor", "ray", "--max-cost", "0.2")
        requests = srv.stats()["requests"]
        assert result.exit_code == 8, result.err
        assert result.summary["status"] == "budget-reached" and result.summary["workers"]["executor"] == "ray"
        done = result.summary["records"]["done"]
        assert result.summary["calls"] == requests == done  # every call made was counted and written
        assert done <= 4 + 2 * 2 * 4 + 4  # the batch that crossed the budget, the batches out, one more batch
        again = project.run("--executor", "ray")
        assert again.exit_code == 0, again.err
    assert [r["_id"] for r in project.records()] == [f"r{i}" for i in range(100)]


def test_actors_that_build_another_backend_than_the_driver_stop_the_run_before_any_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the actors load the pipeline file in the cluster's environment, which lacks the driver's variable
    with running_server() as srv:
        monkeypatch.setenv("OAIPIPE_TEST_SERVER", srv.base_url)
        project = _api_project(tmp_path, "${env:OAIPIPE_TEST_SERVER:-http://127.0.0.1:9/v1}", 10)
        result = project.run("--executor", "ray")
        assert srv.stats()["requests"] == 0
    assert result.exit_code == ConfigError.exit_code, result.err
    assert "a Ray actor built the backend openai (http://127.0.0.1:9/v1)" in result.err
    assert "runtime_env" in result.err


def test_an_actor_killed_mid_batch_has_its_records_redone_exactly_once(oaipipe_project: PipelineProject,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAIPIPE_TEST_DRIVER", str(os.getpid()))  # the analyzer never kills the test itself
    # the record r60's analyzer kills its actor's process after the record's call was answered: the batch is
    # redone on a new actor, every record written once, and only the calls that were in flight at the kill
    # (at most backend.concurrency = 4) are made again: the finished ones are in the shared cache
    with running_server() as srv:
        project = _project(tmp_path, n=120, workers=2, plugins=["dying.py"],
                           files={"dying.py": DYING.replace("{safe}", "True").replace("#300", "#60")},
                           backend={"type": "openai", "base_url": srv.base_url, "concurrency": 4},
                           steps=[ASK, {"type": "sentiment", "analyzer": "dying", "input": "{text}",
                                        "output": "mood"}])
        result = project.run("--executor", "ray")
        requests = srv.stats()["requests"]
    assert result.exit_code == 0, result.err
    summary = json.loads(result.out)  # stdout is the summary alone: Ray's "worker died" line went to stderr
    died = int((tmp_path / "died").read_text())
    assert died != os.getpid() and summary["workers"]["restarts"] >= 1  # an actor's process died
    ids = [r["_id"] for r in project.records()]
    assert ids == [f"r{i}" for i in range(120)]
    journal = Path(summary["journal"]).read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["id"] for line in journal) == sorted(ids)
    assert 120 <= requests <= 120 + 4, requests


def test_with_json_stdout_is_the_summary_alone_after_an_actor_died(oaipipe_project: PipelineProject,
                                                                     tmp_path: Path) -> None:
    """Ray prints "(raylet) A worker died or was killed ..." when an actor dies: on stderr, not before the
    summary on stdout."""
    project = _project(tmp_path, plugins=["dying.py"], files={"dying.py": DYING.replace("{safe}", "True")},
                       steps=[{"type": "sentiment", "analyzer": "dying", "input": "{text}", "output": "mood"}])
    result = project.run("--executor", "ray")
    assert result.exit_code == 0, result.err
    summary = json.loads(result.out)
    assert summary["workers"]["restarts"] >= 1 and (tmp_path / "died").exists()
    assert [r["_id"] for r in project.records()] == [f"r{i}" for i in range(600)]


def test_a_driver_killed_during_a_ray_run_resumes_exactly_once(tmp_path: Path, local_ray: str) -> None:
    # the driver runs in its own process, on this module's Ray; SIGKILL once records were written, then rerun
    with running_server() as srv:
        project = _api_project(tmp_path, srv.base_url, 60, rpm=600)
        driver = project.start_cli("--executor", "ray", "--ray-address", local_ray, "--json")
        journal = _wait_for_journal(project, driver, lines=8)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        killed_at = len(journal.read_text(encoding="utf-8").splitlines())
        assert 8 <= killed_at < 60  # killed mid-run
        result = project.run("--executor", "ray")
        requests = srv.stats()["requests"]
    assert result.exit_code == 0, result.err
    assert result.summary["workers"]["executor"] == "ray"
    assert result.summary["records"]["done"] + result.summary["records"]["skipped"] == 60
    ids = [r["_id"] for r in project.records()]
    assert ids == [f"r{i}" for i in range(60)]  # exactly once, in input order
    lines = journal.read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(ids)
    assert requests <= 60 + 2 * 2 * 8  # at most the batches out at the kill (2 per actor) are asked again


def _wait_for_journal(project: PipelineProject, driver: Any, lines: int) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()
        for journal in project.path.glob("runs/*/*/journal.jsonl"):
            if len(journal.read_text(encoding="utf-8").splitlines()) >= lines:
                return journal
        time.sleep(0.05)
    raise AssertionError("the driver wrote no record in time")


def test_the_tier_the_driver_chose_is_the_tier_the_actors_call_at(tmp_path: Path) -> None:
    """``backend.tier`` (configured, or chosen by ``auto``) is decided once, in the driver; the actors build
    their backend from the file, so they are told the tier: every call on the cluster goes at flex."""
    with running_server() as srv:
        project = _api_project(tmp_path, srv.base_url, 12, tier="auto", deadline="6h")
        result = project.run("--executor", "ray")
    assert result.exit_code == 0, result.err
    assert result.summary["workers"]["executor"] == "ray"
    assert result.summary["tier"]["chosen"] == "flex"
    assert result.summary["tier"]["calls"] == {"flex": 12}, result.summary["tier"]


def test_calls_made_on_the_actors_are_priced_as_the_model_they_asked_for(tmp_path: Path) -> None:
    """serve answers as ``local:<model>``, which no price table knows: a call is priced by the model it
    asked for, also when an actor made it (the actor sends that model back with the answer's counts)."""
    with running_server() as srv:
        project = _api_project(tmp_path, srv.base_url, 8, model="gpt-6-luna")
        result = project.run("--executor", "ray")
    assert result.exit_code == 0, result.err
    assert result.summary["workers"]["executor"] == "ray"
    (ask,) = result.summary["by_step"]
    assert ask["model"] == "local:gpt-6-luna" and ask["priced"] is True and ask["calls"] == 8
    assert result.summary["cost_usd"] > 0
