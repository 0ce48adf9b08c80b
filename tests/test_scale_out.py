"""Scale-out: the process pool of ``run.workers`` and ``--shard I/N`` + ``oaipipe merge`` (issues 14.3, 15.4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oaipipe.shards import parse_shard, shard_of
from oaipipe.testing import PipelineProject

WORDS = ("I love it and it is wonderful", "terrible and I want a refund", "it arrived on Tuesday", "great value", "awful")
SENTIMENT = [{"type": "sentiment", "analyzer": "vader", "input": "{text}", "output": "mood"}]

#: an analyzer that kills its worker process once, in the middle of a batch (record "r300")
DYING = '''
import os
from pathlib import Path
from oaipipe import hookimpl
from oaipipe.base import Analyzer
from oaipipe.types import Sentiment

MARK = Path(__file__).with_name("died")


class Dying(Analyzer):
    process_safe = {safe}

    def analyze(self, text):
        if text.endswith("#300") and os.environ.get("OAIPIPE_TEST_DRIVER") != str(os.getpid()) \\
                and not MARK.exists():
            MARK.write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies mid-batch, as a SIGKILL would
        return Sentiment("positive" if "love" in text else "neutral", 0.5 if "love" in text else 0.0)


@hookimpl
def register_analyzers(register):
    register("dying", Dying)
'''


def _rows(n: int) -> str:
    return "id,text\n" + "".join(f"r{i},{WORDS[i % len(WORDS)]} #{i}\n" for i in range(n))


def _project(path: Path, n: int = 600, workers: int = 2, **blocks: Any) -> PipelineProject:
    project = PipelineProject(path)
    project.write_file("reviews.csv", _rows(n))
    blocks.setdefault("steps", SENTIMENT)
    project.write(run={"workers": workers, "pool_min_records": 0}, **blocks)
    return project


def _strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "_run"} for r in records]


def test_pool_gives_the_same_records_in_the_same_order(oaipipe_project: PipelineProject, tmp_path: Path) -> None:
    one = _project(tmp_path / "one", workers=1)
    two = _project(tmp_path / "two", workers=2)
    first, second = one.run(), two.run()
    assert first.exit_code == 0 and second.exit_code == 0, second.err
    assert "workers" not in first.summary  # workers=1: in the driver, as before
    assert second.summary["workers"]["processes"] == 2  # the steps ran in the pool
    assert second.summary["records"]["done"] == 600
    assert _strip(two.records()) == _strip(one.records())
    assert [r["_id"] for r in two.records()] == [f"r{i}" for i in range(600)]


@pytest.mark.parametrize("safe", [True, False])
def test_a_worker_that_dies_mid_batch_has_its_records_redone_once(oaipipe_project: PipelineProject,
                                                                   tmp_path: Path, safe: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("OAIPIPE_TEST_DRIVER", str(os.getpid()))  # the analyzer never kills the test itself
    project = _project(tmp_path, plugins=["dying.py"], files={"dying.py": DYING.replace("{safe}", str(safe))},
                       steps=[{"type": "sentiment", "analyzer": "dying", "input": "{text}", "output": "mood"}])
    result = project.run()
    assert result.exit_code == 0, result.err
    ids = [r["_id"] for r in project.records()]
    assert ids == [f"r{i}" for i in range(600)]  # every record exactly once, in input order
    journal = Path(result.summary["journal"]).read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["id"] for line in journal) == sorted(ids)
    if safe:
        assert (tmp_path / "died").exists() and result.summary["workers"]["restarts"] >= 1
    else:  # a plugin that opts out runs in the driver (where the test's guard keeps it alive)
        assert "workers" not in result.summary and not (tmp_path / "died").exists()


def test_shard_partition_is_stable_and_complete() -> None:
    ids = [f"r{i}" for i in range(1000)]
    parts = [[i for i in ids if shard_of(i, 3) == k] for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids) and all(parts)
    assert [shard_of("r1", 3), shard_of("abc", 7), shard_of("r999", 2)] == [
        shard_of("r1", 3), shard_of("abc", 7), shard_of("r999", 2)]
    # the hash is BLAKE2b of the id: fixed values, the same on every machine and Python
    assert [shard_of(x, 1000) for x in ("r1", "abc", "")] == [_blake("r1"), _blake("abc"), _blake("")]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def _blake(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") % 1000


@pytest.mark.parametrize("sink", ["out/records.jsonl", "out/records.csv"])
def test_shards_merge_in_input_order(oaipipe_project: PipelineProject, tmp_path: Path, sink: str) -> None:
    kind = sink.rsplit(".", 1)[1]
    whole = _project(tmp_path / "whole", n=50, workers=1, sinks=[{"type": kind, "path": sink}])
    assert whole.run().exit_code == 0
    project = _project(tmp_path / "sharded", n=50, workers=1, sinks=[{"type": kind, "path": sink}])
    for index in range(3):
        result = project.run("--shard", f"{index}/3")
        assert result.exit_code == 0, result.err
        assert result.summary["run_dir"].split("/")[-2] == f"test.shard-{index}-of-3"
        shard_ids = [r.get("_id") or r.get("record_id") for r in _read(project.path / sink, index)]
        assert shard_ids and all(shard_of(i, 3) == index for i in shard_ids)
    merged = project.cli("merge", str(project.file), "--json")
    assert merged.exit_code == 0, merged.err
    assert json.loads(merged.out)["outputs"][0]["records"] == 50
    key = "_run" if kind == "jsonl" else "run_id"
    assert [{k: v for k, v in r.items() if k != key} for r in project.records()] == \
        [{k: v for k, v in r.items() if k != key} for r in whole.records()]


def test_a_dry_run_of_a_shard_counts_only_the_shards_records(tmp_path: Path) -> None:
    """`--dry-run --shard 0/2` estimated the whole input (and the tier planner planned for it)."""
    project = _project(tmp_path / "p", n=40, workers=1,
                       steps=[{"type": "ask", "prompt": "Reply to: {text}", "output": "reply"}])
    totals = []
    for index in range(2):
        result = project.run("--dry-run", "--shard", f"{index}/2")
        assert result.exit_code == 0 and result.summary is not None, result
        expected = sum(1 for i in range(40) if shard_of(f"r{i}", 2) == index)
        assert result.summary["records"]["total"] == expected
        assert result.summary["estimate"]["calls"] == expected
        totals.append(expected)
    assert sum(totals) == 40 and 0 < totals[0] < 40


def _read(target: Path, index: int) -> list[dict[str, Any]]:
    import csv

    path = target.with_name(f"{target.stem}.shard-{index}-of-3{target.suffix}")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_merge_refuses_missing_and_overlapping_shards(oaipipe_project: PipelineProject, tmp_path: Path) -> None:
    project = _project(tmp_path, n=20, workers=1)
    assert project.run("--shard", "0/2").exit_code == 0
    missing = project.cli("merge", str(project.file))
    assert missing.exit_code != 0 and "missing shard(s) 1/2" in missing.err and "--shard 1/2" in missing.err
    assert project.run("--shard", "1/2").exit_code == 0
    assert project.run("--shard", "2/3").exit_code == 0
    overlap = project.cli("merge", str(project.file))
    assert overlap.exit_code != 0 and "overlap" in overlap.err
    assert "test.shard-2-of-3" in overlap.err and "test.shard-0-of-2" in overlap.err
    assert not (project.path / "out/records.jsonl").exists()  # nothing merged


def test_the_driver_killed_mid_run_resumes_with_the_pool_exactly_once(oaipipe_project: PipelineProject,
                                                                       tmp_path: Path) -> None:
    import os
    import signal

    from oaipipe.testing import wait_until

    n = 4000
    project = _project(tmp_path, n=n)

    def journaled() -> int:
        files = list((tmp_path / "runs").glob("*/*/journal.jsonl"))
        return sum(1 for _ in files[0].open(encoding="utf-8")) if files else 0

    proc = project.start_cli("-q")
    wait_until(lambda: journaled() >= 256 or proc.poll() is not None, timeout=60, message="a batch journaled")
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    done_before = journaled()
    assert 256 <= done_before < n
    result = project.run_cli(timeout=120)
    assert result.exit_code == 0, result.err
    assert result.summary["status"] == "finished" and result.summary["workers"]["processes"] == 2
    assert result.summary["records"]["skipped"] >= done_before - 1  # a torn last journal line is redone
    assert [r["_id"] for r in project.records()] == [f"r{i}" for i in range(n)]


def test_ray_not_installed_is_said_at_validate_with_its_line_and_before_a_run_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray, `run.executor: ray` is refused at validate (file, line, the extra to install), and
    `--executor ray` before the run directory is made (not after "steps run in 2 Ray actors")."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    in_file = _project(tmp_path / "file", n=5)
    in_file.write(run={"workers": 2, "pool_min_records": 0, "executor": "ray"})
    checked = in_file.cli("validate", str(in_file.file))
    assert checked.exit_code == 2
    assert "run.executor: ray needs the Python package 'ray'" in checked.err
    assert f"{in_file.file}:" in checked.err and "pip install 'oaipipe[ray]'" in checked.err
    by_flag = _project(tmp_path / "flag", n=5)
    result = by_flag.run("--executor", "ray", as_json=False)
    assert result.exit_code == 2 and "--executor ray needs the Python package 'ray'" in result.err
    assert "Ray actors" not in result.out + result.err
    assert not (by_flag.path / "runs").exists()  # refused before any run directory was made
