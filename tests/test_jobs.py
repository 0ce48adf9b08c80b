"""The job registry: atomic writes under a lock, lookups, the same-dataset rule, no secrets."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from oaipipe.errors import RunLockedError, StorageError, TrainingError, register_secret
from oaipipe.jobs import Job, JobRegistry, default_registry_path


def job(i: int, **kw: object) -> Job:
    base = {"id": f"ftjob-{i:04d}", "trainer": "local", "base_model": "gpt-4o-mini", "dataset": f"/d/{i}.jsonl",
            "dataset_sha256": f"sha{i}", "status": "succeeded"}
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_default_path_is_in_oaipipe_home(_isolated_home: Path) -> None:
    assert default_registry_path() == _isolated_home / "jobs.json"
    reg = JobRegistry()
    reg.add(job(1))
    data = json.loads((_isolated_home / "jobs.json").read_text())
    assert data["version"] == 1 and data["jobs"][0]["id"] == "ftjob-0001"


def test_add_get_update_list(tmp_path: Path) -> None:
    reg = JobRegistry(tmp_path / "jobs.json")
    assert reg.list() == []
    reg.add(job(1, status="running"))
    reg.add(job(2))
    got = reg.get("ftjob-0001")
    assert got.status == "running" and got.trainer == "local"
    got.status, got.fine_tuned_model = "succeeded", "ft:gpt-4o-mini:local:x:1"
    reg.update(got)
    assert reg.get("ftjob-0001").fine_tuned_model == "ft:gpt-4o-mini:local:x:1"
    assert [j.id for j in reg.list()] == ["ftjob-0001", "ftjob-0002"]
    assert reg.get("ftjob-0002").id == "ftjob-0002"
    assert not list(tmp_path.glob(".jobs.*")) and not (tmp_path / "jobs.json.lock").exists()


def test_unknown_id_names_the_registry_and_the_fix(tmp_path: Path) -> None:
    reg = JobRegistry(tmp_path / "jobs.json")
    reg.add(job(1))
    with pytest.raises(TrainingError) as err:
        reg.get("ftjob-nope")
    assert "ftjob-nope" in str(err.value) and "oaipipe jobs list" in str(err.value)
    assert "ftjob-0001" in str(err.value)
    assert err.value.exit_code == 7


def test_unique_prefix_finds_a_job(tmp_path: Path) -> None:
    reg = JobRegistry(tmp_path / "jobs.json")
    reg.add(job(1, id="ftjob-local-abc123"))
    reg.add(job(2, id="ftjob-local-abd999"))
    assert reg.get("ftjob-local-abc").id == "ftjob-local-abc123"
    with pytest.raises(TrainingError) as err:
        reg.get("ftjob-local-ab")  # ambiguous
    message = str(err.value)
    assert "ambiguous" in message and "no job" not in message
    assert "ftjob-local-abc123" in message and "ftjob-local-abd999" in message


def test_find_same_ignores_failed_and_cancelled_and_other_keys(tmp_path: Path) -> None:
    reg = JobRegistry(tmp_path / "jobs.json")
    key = {"dataset_sha256": "abc", "trainer": "openai", "base_model": "gpt-4o-mini", "method": "supervised",
           "base_url": "http://127.0.0.1:1/v1"}
    assert reg.find_same(**key) is None
    reg.add(job(1, dataset_sha256="abc", trainer="openai", base_url="http://127.0.0.1:1/v1", status="failed"))
    assert reg.find_same(**key) is None
    reg.add(job(2, dataset_sha256="abc", trainer="openai", base_url="http://127.0.0.1:1/v1", status="running"))
    assert reg.find_same(**key).id == "ftjob-0002"  # type: ignore[union-attr]
    for other in ({"base_model": "gpt-4o"}, {"method": "dpo"}, {"base_url": None}, {"trainer": "local"},
                  {"dataset_sha256": "zzz"}):
        assert reg.find_same(**{**key, **other}) is None  # type: ignore[arg-type]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"

    def writer(start: int) -> None:
        reg = JobRegistry(path)
        for i in range(start, start + 10):
            reg.add(job(i))

    threads = [threading.Thread(target=writer, args=(n * 100,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {j.id for j in JobRegistry(path).list()}
    assert len(ids) == 40


def test_leftover_lock_file_is_no_lock_and_live_lock_times_out_naming_its_holder(tmp_path: Path) -> None:
    import os

    reg = JobRegistry(tmp_path / "jobs.json")
    lock = tmp_path / "jobs.json.lock"
    lock.write_text("123")  # a lock file nobody holds (an OS lock ends with its process): no waiting at all
    reg.add(job(1))
    # held (by another open of the file): a second writer waits, then names the holder
    with reg._locked(), pytest.raises(RunLockedError, match="locked") as err, reg._locked(timeout=0.1):  # exit 10
        pass
    assert f"pid {os.getpid()}" in str(err.value)
    reg.add(job(2))
    assert [j.id for j in reg.list()] == ["ftjob-0001", "ftjob-0002"]


def test_corrupt_registry_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text("{not json")
    with pytest.raises(StorageError) as err:  # exit 9, a state file (it was TrainingError, 7, before)
        JobRegistry(path).list()
    assert str(path) in str(err.value) and "move it away" in str(err.value)
    assert err.value.exit_code == 9


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    secret = "sk-test-secret-value-123456"
    register_secret(secret)
    reg = JobRegistry(tmp_path / "jobs.json")
    reg.add(job(1, status="failed", error={"code": "auth", "message": f"key {secret} refused"},
                description=f"using {secret}"))
    text = (tmp_path / "jobs.json").read_text()
    assert secret not in text and "***" in text


def test_events_tail_is_bounded_and_deduplicated() -> None:
    j = job(1)
    events = [{"id": f"e{i}", "message": f"m{i}", "created_at": i} for i in range(30)]
    assert len(j.add_events(events[:5])) == 5
    assert j.add_events(events[:5]) == []
    j.add_events(events)
    assert len(j.events) == 20 and j.events[-1]["id"] == "e29"


def test_round_trip_ignores_unknown_keys() -> None:
    data = job(1).to_dict() | {"from_the_future": 1}
    assert Job.from_dict(data).id == "ftjob-0001"


def test_unknown_id_hint_lists_recent_ids_newest_first(tmp_path: Path) -> None:
    reg = JobRegistry(tmp_path / "jobs.json")
    for i in range(1, 8):
        reg.add(job(i))
    with pytest.raises(TrainingError) as err:
        reg.get("nope")
    hint = str(err.value).split("recent ids: ", 1)[1]
    assert hint.startswith("ftjob-0007, ftjob-0006, ftjob-0005, ftjob-0004, ftjob-0003")
    assert "ftjob-0002" not in hint


@pytest.mark.parametrize("damage", [b'{"version": 1, "jobs": [{"id": "ftjob-1"', b"\xff\xfe", b"42"])
def test_an_unreadable_registry_is_an_io_error_naming_the_file(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str], damage: bytes) -> None:
    from oaipipe.cli import main

    path = tmp_path / "jobs.json"
    path.write_bytes(damage)
    with pytest.raises(StorageError) as err:
        JobRegistry(path).list()
    assert f"the job registry {path} cannot be read" in str(err.value) and "restore it" in str(err.value)
    assert main(["jobs", "list", "--registry", str(path)]) == 9  # ExitCode.IO_ERROR: a state file, not a job
    assert "cannot be read" in capsys.readouterr().err
