"""Resumable runs through the real console script: SIGKILL / Ctrl-C mid-run, then the same command again.

Every record must end up exactly once in every sink and the journal, and no call that completed before
the kill may be repeated (it is a cache hit on resume).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _scale_util import chat_requests, read_csv_ids, read_jsonl, write_pipeline

from oaipipe.cache import ResponseCache
from oaipipe.cli import main
from oaipipe.testing import running_server

OAIPIPE = str(Path(sys.executable).parent / "oaipipe")
N = 24


def _journal(tmp_path: Path) -> Path | None:
    found = list((tmp_path / "runs").glob("*/*/journal.jsonl"))
    return found[0] if found else None


def _journal_lines(tmp_path: Path) -> int:
    path = _journal(tmp_path)
    return len(path.read_text(encoding="utf-8").splitlines()) if path else 0


def _run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OAIPIPE, "run", str(path), *args], capture_output=True, text=True, timeout=60)


def _assert_exactly_once(tmp_path: Path) -> None:
    want = [str(i) for i in range(1, N + 1)]
    records = [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")]
    dialogue = [d["record_id"] for d in read_jsonl(tmp_path / "out/dialogue.jsonl")]
    csv_ids = read_csv_ids(tmp_path / "out/records.csv")
    journal = [e["id"] for e in read_jsonl(_journal(tmp_path))]
    for name, ids in (("jsonl", records), ("dialogue-jsonl", dialogue), ("csv", csv_ids), ("journal", journal)):
        assert sorted(ids, key=int) == want, f"{name}: {Counter(ids).most_common(3)} / {len(ids)} lines"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_exactly_once_without_repeating_calls(tmp_path: Path, sig: int, capsys) -> None:
    with running_server(latency=0.05) as srv:
        path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}', concurrency: 3}}", n=N)
        # a shell's background job inherits SIGINT ignored, and Python keeps it so: restore it in the child
        proc = subprocess.Popen([OAIPIPE, "run", str(path), "-q"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 30
        while _journal_lines(tmp_path) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
        os.kill(proc.pid, sig)
        proc.communicate(timeout=30)
        time.sleep(0.2)  # let the server finish answering calls that were in flight
        journaled = _journal_lines(tmp_path)
        assert 4 <= journaled < N
        completed_before = len(ResponseCache(tmp_path / ".oaipipe" / "cache"))
        assert completed_before >= journaled
        srv.reset_stats()

        if sig == signal.SIGKILL:
            _changed_pipeline_is_refused(tmp_path, path, srv, capsys)

        result = _run(path, "--json")
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["status"] == "finished"
        assert summary["records"]["skipped"] == journaled
        assert summary["records"]["done"] == N - journaled
        # calls made now == records whose call had not completed before the kill
        assert chat_requests(srv) == N - completed_before
        assert summary["cached"] == completed_before - journaled
        _assert_exactly_once(tmp_path)

        if sig == signal.SIGKILL:
            _finished_run_is_not_redone(path, srv, capsys)
            _assert_exactly_once(tmp_path)
            _fresh_run_uses_cache(path, srv, capsys)


def _changed_pipeline_is_refused(tmp_path: Path, path: Path, srv, capsys) -> None:
    # same name and run dir: the unfinished run is found, and refused rather than mixed
    changed_path = tmp_path / "changed.yaml"
    changed_path.write_text(path.read_text().replace("Reply to:", "Answer:"))
    capsys.readouterr()
    code = main(["run", str(changed_path), "-q"])
    out = capsys.readouterr()
    assert code != 0
    assert "did not finish, and the steps changed since" in out.err + out.out
    assert "--fresh" in out.err + out.out
    assert chat_requests(srv) == 0


def _finished_run_is_not_redone(path: Path, srv, capsys) -> None:
    srv.reset_stats()
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    assert "already finished: nothing to do" in capsys.readouterr().out
    assert chat_requests(srv) == 0


def _fresh_run_uses_cache(path: Path, srv, capsys) -> None:
    capsys.readouterr()
    assert main(["run", str(path), "--fresh", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "finished" and summary["records"]["done"] == N
    assert summary["cached"] == N
    assert chat_requests(srv) == 0
