"""``run.executor: ray`` (issue 15): the steps on a pool of Ray actors, on a local Ray with 2 CPUs.

Few and small tests: one Ray for the module (starting one takes seconds on a loaded machine).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_scale_out import DYING, _project, _strip
from test_scale_out import SENTIMENT as SENTIMENT_STEPS

from oaipipe.testing import PipelineProject

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'oaipipe[ray]'; the test extra has it)")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Any:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_sentiment_pipeline_on_ray_gives_the_same_records_in_the_same_order(
        oaipipe_project: PipelineProject, tmp_path: Path) -> None:
    here = _project(tmp_path / "here", workers=1)
    there = _project(tmp_path / "ray", workers=2)
    assert here.run().exit_code == 0
    result = there.run("--executor", "ray")
    assert result.exit_code == 0, result.err
    assert result.summary["workers"] == {"processes": 2, "restarts": 0, "executor": "ray"}
    assert _strip(there.records()) == _strip(here.records())


def test_an_actor_killed_mid_batch_has_its_records_redone_exactly_once(oaipipe_project: PipelineProject,
                                                                       tmp_path: Path) -> None:
    project = _project(tmp_path, plugins=["dying.py"], files={"dying.py": DYING.replace("{safe}", "True")},
                       steps=[{"type": "sentiment", "analyzer": "dying", "input": "{text}", "output": "mood"}])
    result = project.run("--executor", "ray")
    assert result.exit_code == 0, result.err
    # Ray's own error listener (started by the test's ray.init) prints "(raylet) A worker died" to stdout
    summary = json.loads(result.out[result.out.index("\n{\n") + 1:] if result.summary is None else result.out)
    died = int((tmp_path / "died").read_text())
    assert died != os.getpid() and summary["workers"]["restarts"] >= 1  # an actor's process died
    ids = [r["_id"] for r in project.records()]
    assert ids == [f"r{i}" for i in range(600)]
    journal = Path(summary["journal"]).read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["id"] for line in journal) == sorted(ids)


def test_with_ray_the_calls_stay_under_the_configured_rpm_counted_at_the_server(
        oaipipe_project: PipelineProject, tmp_path: Path) -> None:
    from oaipipe.testing import running_server

    # the server lets 1200 RPM through, enforced per second (20 a second, no burst); the pipeline is
    # configured at 600 RPM: one limiter (in the driver, where every backend call is made) keeps the whole
    # run under it, so the server never answers 429
    with running_server(rpm=1200, rate_burst=1) as srv:
        project = _project(tmp_path, n=30, workers=2,
                           backend={"type": "openai", "base_url": srv.base_url, "concurrency": 16, "rpm": 600},
                           steps=[{"type": "ask", "prompt": "Reply to: {text}", "output": "reply"},
                                  *SENTIMENT_STEPS])
        result = project.run("--executor", "ray")
        stats = srv.stats()
    assert result.exit_code == 0, result.err
    assert result.summary["records"]["done"] == 30
    assert stats["requests"] == 30 and not stats["by_status"].get("429")
    assert result.summary["rate_limit"]["rpm"] == 600
    assert "workers" not in result.summary  # a step calls the backend: the steps stay in the driver
