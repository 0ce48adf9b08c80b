"""One run per run root, one writer per output file, and a job registry whose lock dies with its holder.

Real `oaipipe` processes against the embedded server over HTTP: two runs of one pipeline started at once
must not both write (the issue: 300 records gave 600 lines in every sink and both exited 0).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _scale_util import chat_requests, read_csv_ids, read_jsonl, write_pipeline

from oaipipe.cli import main
from oaipipe.jobs import Job, JobRegistry
from oaipipe.testing import running_server

OAIPIPE = str(Path(sys.executable).parent / "oaipipe")
N = 30


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _assert_each_record_once(tmp_path: Path, n: int) -> None:
    want = [str(i) for i in range(1, n + 1)]
    journals = list((tmp_path / "runs").glob("*/*/journal.jsonl"))
    assert len(journals) == 1, journals  # one run directory: the second run never made one
    found = {
        "jsonl": [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")],
        "dialogue-jsonl": [d["record_id"] for d in read_jsonl(tmp_path / "out/dialogue.jsonl")],
        "csv": read_csv_ids(tmp_path / "out/records.csv"),
        "journal": [e["id"] for e in read_jsonl(journals[0])],
    }
    for name, ids in found.items():
        assert sorted(ids, key=int) == want, f"{name}: {Counter(ids).most_common(3)} / {len(ids)} lines"


def test_two_runs_started_at_once_one_runs_the_other_exits_10_naming_it(tmp_path: Path) -> None:
    # the server is slow until the loser has given up, so that the two runs overlap whatever the start-up times
    with running_server(latency=0.3) as srv:
        path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}', concurrency: 4}}", n=N)
        procs = [subprocess.Popen([OAIPIPE, "run", str(path), "-q"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            _wait_for(lambda: any(p.poll() is not None for p in procs), "one of the two runs to stop", 60)
            loser = next(p for p in procs if p.poll() is not None)
            winner = next(p for p in procs if p is not loser)
            still_running = winner.poll() is None  # the loser stopped at once, not after waiting its turn
            srv.set_faults(latency=0.0)
            out, err = loser.communicate(timeout=30)
            w_out, w_err = winner.communicate(timeout=60)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        assert loser.returncode == 10, (loser.returncode, out, err)
        assert still_running
        assert winner.returncode == 0, w_err
        # the loser names the holder and what to do
        assert f"pid {winner.pid}" in err and f"host {socket.gethostname()}" in err and " since " in err
        assert "another run of pipeline 't'" in err and "wait for it to finish" in err
        _assert_each_record_once(tmp_path, N)
        assert chat_requests(srv) == N  # every call made once, by the run that ran


def test_a_held_run_lock_refuses_at_once_and_a_released_one_lets_the_run_go(tmp_path: Path, capsys) -> None:
    from oaipipe.runlock import lock_run_root

    path = write_pipeline(tmp_path, "{type: local}", n=4)
    with lock_run_root(tmp_path / "runs" / "t", pipeline="t"):
        assert main(["run", str(path), "-q"]) == 10
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "kill" in err and "nothing to delete" in err
        assert not (tmp_path / "out").exists()  # refused before any sink was touched
    assert main(["run", str(path), "-q"]) == 0
    assert not list((tmp_path / "runs" / "t").glob(".*lock"))  # the lock file goes with its holder


def test_two_pipelines_writing_one_output_file_do_not_interleave(tmp_path: Path, capsys) -> None:
    # pipeline 't' (another pipeline) is writing out/records.jsonl: pipeline 'other' must not write it too
    from oaipipe.home import home_dir
    from oaipipe.runlock import lock_outputs

    path = write_pipeline(tmp_path, "{type: local}", n=4, name="other")
    shared = tmp_path / "out" / "records.jsonl"
    shared.parent.mkdir()
    shared.write_text("", encoding="utf-8")
    locks = lock_outputs([("jsonl", shared)], home_dir() / "locks", pipeline="t", run_id="r1")
    try:
        assert main(["run", str(path), "-q"]) == 10
        err = capsys.readouterr().err
        assert "sink jsonl" in err and str(shared) in err and "pipeline 't'" in err
        assert f"pid {os.getpid()}" in err and "point this sink's `path:` elsewhere" in err
        assert shared.read_text(encoding="utf-8") == ""
    finally:
        for lock in locks:
            lock.release()
    assert main(["run", str(path), "-q"]) == 0
    assert len(read_jsonl(shared)) == 4


HOLD_REGISTRY = """
import sys, time
from oaipipe.jobs import JobRegistry
with JobRegistry(sys.argv[1])._locked():
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_while_holding_the_registry_lock_delays_nobody(tmp_path: Path) -> None:
    registry = tmp_path / "jobs.json"
    JobRegistry(registry).add(Job(id="ftjob-local-1", trainer="local", base_model="gpt-4o-mini", status="running"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_REGISTRY, str(registry)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    # --refresh writes the registry (it takes the lock): with a lock that outlived its holder this waited 30 s
    # and failed; the generous timeout only keeps a broken lock from hanging the suite
    proc = subprocess.run([OAIPIPE, "jobs", "list", "--refresh", "--registry", str(registry), "--json"],
                          capture_output=True, text=True, timeout=25)
    assert proc.returncode == 0, proc.stderr
    assert [j["id"] for j in json.loads(proc.stdout)] == ["ftjob-local-1"]
    assert JobRegistry(registry).get("ftjob-local-1").updated_at  # written under the lock
    assert not list(tmp_path.glob(".jobs.json.*"))


def test_a_busy_registry_lock_is_run_locked_exit_10_naming_the_holder(tmp_path: Path) -> None:
    """Another process holding the job registry's lock is what RUN_LOCKED means (exit 10), not a failed
    fine-tuning job (7)."""
    from oaipipe.errors import ExitCode, RunLockedError

    registry = tmp_path / "jobs.json"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_REGISTRY, str(registry)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as err, JobRegistry(registry)._locked(timeout=0.2):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert err.value.exit_code == ExitCode.RUN_LOCKED == 10
    assert f"the job registry {registry} is locked by pid {holder.pid}" in str(err.value)
    assert err.value.holder["pid"] == holder.pid and err.value.path == str(registry) + ".lock"
    assert "nothing to delete" in str(err.value)


def test_lock_holder_note_is_readable_while_held(tmp_path: Path) -> None:
    from oaipipe.runlock import LockBusy, acquire, read_holder

    lock_path = tmp_path / "x.lock"
    with acquire(lock_path, pipeline="p", run_id="r") as held:
        assert read_holder(lock_path)["run_id"] == "r"
        with pytest.raises(LockBusy) as busy:
            acquire(lock_path)
        assert busy.value.holder["pid"] == os.getpid() and held.held
    assert not lock_path.exists()
    assert acquire(lock_path).held  # free again
