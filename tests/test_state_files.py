"""State files under real conditions: a corrupt journal line, a run directory deleted mid-run, temp files
left by a writer killed mid-write, and output folders that cannot be written (exit 9, naming the path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _scale_util import read_csv_ids, read_jsonl, write_pipeline

from oaipipe.cli import main
from oaipipe.jobs import Job, JobRegistry
from oaipipe.testing import running_server

OAIPIPE = str(Path(sys.executable).parent / "oaipipe")


def _run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs").glob("*/*") if p.is_dir())


def _wait_for(condition: Any, what: str, proc: subprocess.Popen[str] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _assert_once(tmp_path: Path, n: int) -> None:
    want = [str(i) for i in range(1, n + 1)]
    for name, ids in (("jsonl", [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")]),
                      ("csv", read_csv_ids(tmp_path / "out/records.csv"))):
        assert sorted(ids, key=int) == want, f"{name}: {Counter(ids).most_common(3)}"


def test_a_journal_line_that_is_not_utf8_is_skipped_with_a_warning_and_its_record_redone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=6)
    assert main(["run", str(path), "-q", "--limit", "4"]) == 0  # a partial run: the next run resumes it
    (run,) = _run_dirs(tmp_path)
    lines = (run / "journal.jsonl").read_bytes().splitlines(keepends=True)
    assert json.loads(lines[1])["id"] == "2"
    lines[1] = lines[1][:20] + b"\xff\xfe" + lines[1][20:]  # a disk error in the middle of line 2
    (run / "journal.jsonl").write_bytes(b"".join(lines))
    capsys.readouterr()

    assert main(["run", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "finished"
    (warning,) = summary["warnings"]
    assert "journal.jsonl line 2 is not valid UTF-8" in warning and "processed again" in warning
    assert summary["records"]["skipped"] == 3 and summary["records"]["done"] == 3  # 2 (redone), 5, 6
    _assert_once(tmp_path, 6)
    journal = [e["id"] for e in read_jsonl(run / "journal.jsonl")]
    assert sorted(journal, key=int) == [str(i) for i in range(1, 7)]
    assert (run / "journal.rejected").read_bytes() == lines[1]  # kept for a look, out of the journal
    assert main(["run", str(path), "-q"]) == 0  # and the journal reads cleanly from now on


def test_a_run_directory_deleted_mid_run_stops_the_run_with_exit_9(tmp_path: Path) -> None:
    with running_server(latency=0.1) as srv:
        path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}', concurrency: 2}}", n=40)
        proc = subprocess.Popen([OAIPIPE, "run", str(path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            journal = lambda: next((tmp_path / "runs").glob("*/*/journal.jsonl"), None)  # noqa: E731
            _wait_for(lambda: journal() is not None and journal().stat().st_size > 0, "journaled records", proc)
            run = journal().parent
            shutil.rmtree(run)
            _wait_for(lambda: proc.poll() is not None, "the run to notice", timeout=60)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 9, err
    assert f"the run directory {run} was deleted" in err and "bug" not in err
    assert not run.exists()  # not brought back by the summary
    assert main(["run", str(path), "-q", "--set", "backend.type=local"]) == 0  # a new run
    _assert_once(tmp_path, 40)


WRITER = """
import sys, time
from pathlib import Path
from oaipipe.fsutil import atomic_file
with atomic_file(Path(sys.argv[1])) as out:
    out.fh.write("half of it")
    out.fh.flush()
    print("writing", flush=True)
    time.sleep(600)
"""


def _killed_mid_write(target: Path) -> None:
    """A real atomic write of ``target``, its writer SIGKILLed before the rename: a temp file is left."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    finally:
        writer.kill()
        writer.communicate()


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_temp_files_of_writers_killed_mid_write_are_cleaned_up(tmp_path: Path, _isolated_home: Path) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=6)
    assert main(["run", str(path), "-q", "--limit", "3"]) == 0
    (run,) = _run_dirs(tmp_path)
    _killed_mid_write(run / "summary.json")  # the run directory
    _killed_mid_write(tmp_path / "out" / "records.jsonl")  # a sink's rewrite
    registry = JobRegistry()
    registry.add(Job(id="ftjob-1", trainer="local", base_model="gpt-4o-mini"))
    _killed_mid_write(registry.path)  # the job registry
    assert len(_temps(run)) == len(_temps(tmp_path / "out")) == len(_temps(registry.path.parent)) == 1

    assert main(["run", str(path), "-q"]) == 0  # resumes: under its locks, what a dead writer left is removed
    assert _temps(run) == [] and _temps(tmp_path / "out") == []
    _assert_once(tmp_path, 6)
    registry.add(Job(id="ftjob-2", trainer="local", base_model="gpt-4o-mini"))
    assert _temps(registry.path.parent) == []
    assert [j.id for j in registry.list()] == ["ftjob-1", "ftjob-2"]


def _without_root_override() -> list[str]:
    """A command prefix under which file permissions apply (root's CAP_DAC_OVERRIDE ignores them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_a_read_only_output_folder_is_an_io_error_naming_the_path(tmp_path: Path) -> None:
    prefix = _without_root_override()
    path = write_pipeline(tmp_path, "{type: local}", n=3)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        proc = subprocess.run([*prefix, OAIPIPE, "run", str(path), "-q"], capture_output=True, text=True,
                              timeout=60)
    finally:
        out.chmod(0o755)
    assert proc.returncode == 9, proc.stderr
    assert f"cannot write {out}/" in proc.stderr and "Permission denied" in proc.stderr, proc.stderr
    assert "fix the permissions" in proc.stderr and "bug" not in proc.stderr


def test_an_output_path_through_a_file_is_an_io_error_naming_the_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=3)
    (tmp_path / "out").write_text("a file where the sinks want a folder", encoding="utf-8")
    assert main(["run", str(path), "-q"]) == 9
    err = capsys.readouterr().err
    assert str(tmp_path / "out") in err and "bug" not in err and "point the path elsewhere" in err


def test_only_temp_files_of_atomic_writes_are_taken_for_leftovers(tmp_path: Path) -> None:
    from oaipipe.fsutil import atomic_file, remove_stale_temps, remove_stale_temps_in

    target = tmp_path / "records.jsonl"
    keep = [".records.jsonl.backup", "notes.tmp", ".other.json.abcd1234.oaipipe.tmp", "records.jsonl.abcd1234.tmp",
            ".records.jsonl.abc.tmp"]
    for name in keep:
        (tmp_path / name).write_text("x", encoding="utf-8")
    with atomic_file(target) as out:  # the temp file of a write in progress is recognisable by its name
        assert Path(out.tmp).name.startswith(".records.jsonl.") and out.tmp.endswith(".oaipipe.tmp")
        left = Path(out.tmp)
        out.fh.write("x")
    (tmp_path / left.name).write_text("left by a crash", encoding="utf-8")
    (tmp_path / ".records.jsonl.zz99_abc.tmp").write_text("left by an older oaipipe", encoding="utf-8")
    removed = sorted(p.name for p in remove_stale_temps(target))
    assert removed == sorted([left.name, ".records.jsonl.zz99_abc.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "records.jsonl"])
    assert [p.name for p in remove_stale_temps_in(tmp_path)] == [".other.json.abcd1234.oaipipe.tmp"]
