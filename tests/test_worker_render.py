"""Worker-side rendering (issue 14.3): with ``run.workers`` a worker process renders each record's journal
line, error line and sink text (secrets masked there); the driver appends the bytes in input order, one
write and flush per file and batch. The files are the same as the single-process path's, and a driver
killed mid-run leaves every record exactly once in every sink after the rerun."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from oaipipe.testing import PipelineProject

SECRET = "pw-Zq81xKv0"  # noqa: S105 - a test value, given through ${env:...}

#: an analyzer that fails every 50th record
ECHO = '''
from oaipipe import hookimpl
from oaipipe.base import Analyzer
from oaipipe.types import Sentiment


class Echo(Analyzer):
    process_safe = True

    def analyze(self, text):
        if int(text.split("#")[1].split()[0]) % 50 == 7:
            raise ValueError("no sevens")
        return Sentiment("positive" if "love" in text else "neutral", round(len(text) / 1000, 4))


@hookimpl
def register_analyzers(register):
    register("echo", Echo)
'''

WORDS = ("I love it and it is wonderful", "terrible, \"quoted\" and I want a refund", "é ünïcode café",
         "great value", "awful")
SINKS = [{"type": "jsonl", "path": "out/records.jsonl", "include_failed": True},
         {"type": "csv", "path": "out/fixed.csv", "columns": ["text", "mood", "mood_score"]},
         {"type": "csv", "path": "out/free.csv"},
         {"type": "dialogue-jsonl", "path": "out/dialogue.jsonl"}]
FILES = ("out/records.jsonl", "out/fixed.csv", "out/free.csv", "out/dialogue.jsonl")


def _project(path: Path, workers: int, n: int = 600) -> PipelineProject:
    project = PipelineProject(path)
    # every third row holds the secret (the step's input names it: ${env:...}): it must come out masked
    rows = ((f"r{i}", f"{WORDS[i % len(WORDS)]}{' ' + SECRET if i % 3 == 0 else ''} #{i}") for i in range(n))
    project.write_file("reviews.csv", [("id", "text"), *rows])
    project.write(plugins=["echo.py"], files={"echo.py": ECHO}, sinks=SINKS,
                  steps=[{"type": "sentiment", "analyzer": "echo", "input": "{text} ${env:OAIPIPE_T_WORD}",
                          "output": "mood"}],
                  run={"workers": workers, "pool_min_records": 0})
    return project


def _normalised(project: PipelineProject, name: str, run_id: str) -> str:
    """A file of the run, with its run id and the times of day taken out (they differ between two runs)."""
    folder = project.run_dir() if name in ("journal.jsonl", "errors.jsonl") else project.path
    text = (folder / name).read_text(encoding="utf-8")
    return re.sub(r'"time": "[^"]*"', '"time": T', text.replace(run_id, "RUN"))


def test_the_pool_writes_the_same_bytes_as_the_driver(oaipipe_project: PipelineProject, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAIPIPE_T_WORD", SECRET)
    one, two = _project(tmp_path / "one", workers=1), _project(tmp_path / "two", workers=2)
    first, second = one.run(), two.run()
    assert first.exit_code == second.exit_code == 1, second.err  # 1: some records failed (every 50th)
    assert "workers" not in first.summary and second.summary["workers"]["processes"] == 2
    assert second.summary["records"]["failed"] == 12 and second.summary["records"]["done"] == 588
    for name in (*FILES, "journal.jsonl", "errors.jsonl"):
        a = _normalised(one, name, first.summary["run_id"])
        b = _normalised(two, name, second.summary["run_id"])
        assert a == b, name
        assert SECRET not in b, name  # masked in the worker: the secret never reaches a file
    texts = [r["text"] for r in two.records()]
    assert sum("***" in t for t in texts) == 200  # the field that held the secret is there, masked


def test_a_worker_renders_its_records_output(oaipipe_project: PipelineProject, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """In a worker: the batch comes back as text to append (the same text the driver renders), masked."""
    from oaipipe import executors
    from oaipipe.pipeline import load_pipeline
    from oaipipe.runner import Runner
    from oaipipe.types import Record, RunInfo

    monkeypatch.setenv("OAIPIPE_T_WORD", SECRET)
    project = _project(tmp_path, workers=2, n=3)
    pipeline = load_pipeline(project.file)
    assert pipeline.load_args is not None
    info = RunInfo(pipeline_name="p", run_id="RUN-1", run_dir=str(tmp_path), backend="local", model="m")
    monkeypatch.setattr(executors, "_run", None)
    executors._init_worker(str(project.file), pipeline.load_args, None, info, (SECRET,))
    records = [Record(id="r1", data={"id": "r1", "text": "great value #1"}),
               Record(id="r7", data={"id": "r7", "text": "awful #7"})]
    out = executors._run_batch(records)
    assert out.rendered is not None and len(out.rendered) == 2
    driver = Runner(pipeline)
    for result, rendered in zip(out.results, out.rendered, strict=True):
        assert rendered.sinks == driver.render(result, info)[1].sinks
        assert SECRET not in rendered.journal and "RUN-1" in (rendered.sinks[0] or "")
    ok, failed = out.rendered
    assert ok.error is None and failed.error is not None and "no sevens" in failed.error
    assert ok.sinks[2] is None  # a csv without `columns:`: only the driver knows its header
    assert out.kinds and json.loads(failed.journal)["status"] == "failed"


def test_the_driver_writes_a_batch_with_one_flush_per_file(oaipipe_project: PipelineProject, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from oaipipe.kit.sinks import AppendingSink
    from oaipipe.rundir import StateFile

    flushes = {"sink": 0, "journal": 0}

    class Counted:
        """A sink's open file, its flushes counted (whoever calls them)."""

        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fh, name)

        def flush(self) -> None:
            flushes["sink"] += 1
            self.fh.flush()

    open_for_append = AppendingSink._open_for_append

    def counted_open(self: Any, *args: Any, **kwargs: Any) -> None:
        open_for_append(self, *args, **kwargs)
        self._fh = Counted(self._fh)

    state_flush = StateFile.flush

    def counted_flush(self: Any) -> None:
        flushes["journal"] += self.path.name == "journal.jsonl"
        state_flush(self)

    monkeypatch.setattr(AppendingSink, "_open_for_append", counted_open)
    monkeypatch.setattr(StateFile, "flush", counted_flush)
    monkeypatch.setenv("OAIPIPE_T_WORD", SECRET)
    project = _project(tmp_path, workers=2, n=600)
    project.write(plugins=["echo.py"], sinks=[SINKS[0]],
                  steps=[{"type": "sentiment", "analyzer": "echo", "input": "{text}", "output": "mood"}],
                  run={"workers": 2, "pool_min_records": 0})
    result = project.run()
    assert result.exit_code == 1, result.err  # 1: some records failed (every 50th)
    assert result.summary["workers"]["processes"] == 2 and len(project.records()) == 600
    batches = 3  # 600 records in batches of 256: one flush each (+ the one at close), not one per record
    assert flushes["sink"] <= batches + 1 and flushes["journal"] <= batches + 1, flushes


def test_the_driver_killed_mid_run_leaves_each_record_once_in_every_sink(oaipipe_project: PipelineProject,
                                                                         tmp_path: Path) -> None:
    import os
    import signal

    from oaipipe.testing import wait_until

    n = 6000
    project = _project(tmp_path, workers=2, n=n)
    env = {"OAIPIPE_T_WORD": SECRET}

    def journaled() -> int:
        files = list((tmp_path / "runs").glob("*/*/journal.jsonl"))
        return sum(1 for _ in files[0].open(encoding="utf-8")) if files else 0

    proc = project.start_cli("-q", env=env)
    wait_until(lambda: journaled() >= 256 or proc.poll() is not None, timeout=60, message="a batch journaled")
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert journaled() < n
    result = project.run_cli(timeout=120, env=env)
    assert result.exit_code == 1, result.err  # 1: some records failed (every 50th)
    assert result.summary["status"] == "finished" and result.summary["workers"]["processes"] == 2
    assert result.summary["records"]["skipped"] >= 256
    ok = [f"r{i}" for i in range(n) if i % 50 != 7]
    assert [r["_id"] for r in project.records(0)] == [f"r{i}" for i in range(n)]  # include_failed
    assert [r["record_id"] for r in project.records(1)] == ok
    assert [r["record_id"] for r in project.records(2)] == ok
    journal = [json.loads(line)["id"] for line in (project.run_dir() / "journal.jsonl").open(encoding="utf-8")]
    assert sorted(journal) == sorted(f"r{i}" for i in range(n))
