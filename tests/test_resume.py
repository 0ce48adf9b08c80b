"""Resumable runs through the real console script: SIGKILL / Ctrl-C mid-run, then the same command again.

Every record must end up exactly once in every sink and the journal, and no call that completed before
the kill may be repeated (it is a cache hit on resume).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest
from _scale_util import chat_requests, read_jsonl, write_pipeline

from oaipipe.cache import ResponseCache
from oaipipe.cli import main
from oaipipe.testing import PipelineProject, ServerHandle, running_server, wait_until

N = 24


def _assert_exactly_once(project: PipelineProject) -> None:
    want = [str(i) for i in range(1, N + 1)]
    records = [r["_id"] for r in project.records("jsonl")]
    dialogue = [d["record_id"] for d in project.records("dialogue-jsonl")]
    csv_ids = [row["record_id"] for row in project.records("csv")]
    journal = [e["id"] for e in project.journal()]
    for name, ids in (("jsonl", records), ("dialogue-jsonl", dialogue), ("csv", csv_ids), ("journal", journal)):
        assert sorted(ids, key=int) == want, f"{name}: {Counter(ids).most_common(3)} / {len(ids)} lines"


def _journaled(project: PipelineProject) -> int:
    return len(project.journal()) if project.run_dirs() else 0


def _server_idle(srv: ServerHandle) -> bool:
    """No request handler of ``srv`` is running: every request it received has been answered (and counted)."""
    handlers = [getattr(t, "_target", None) for t in threading.enumerate() if t.is_alive()]
    return not any(getattr(h, "__self__", None) is srv.server and getattr(h, "__name__", "") == "process_request_thread"
                   for h in handlers)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_exactly_once_without_repeating_calls(tmp_path: Path, sig: int, capsys) -> None:
    with running_server(latency=0.05) as srv:
        path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{srv.base_url}', concurrency: 3}}", n=N)
        project = PipelineProject(tmp_path, filename=path.name)
        proc = project.start_cli("-q")
        wait_until(lambda: _journaled(project) >= 4 or proc.poll() is not None, timeout=30,
                   message="4 records in the journal")
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
        os.kill(proc.pid, sig)
        proc.communicate(timeout=30)
        # calls in flight at the kill are still answered by the server: wait until it has answered them all
        wait_until(lambda: _server_idle(srv), message="the server to finish the killed run's requests")
        journaled = _journaled(project)
        assert 4 <= journaled < N
        completed_before = len(ResponseCache(tmp_path / ".oaipipe" / "cache"))
        assert completed_before >= journaled
        srv.reset_stats()

        if sig == signal.SIGKILL:
            _changed_pipeline_is_refused(tmp_path, path, srv, capsys)

        result = project.run_cli()
        assert result.exit_code == 0, result
        summary = result.summary
        assert summary["status"] == "finished"
        assert summary["records"]["skipped"] == journaled
        assert summary["records"]["done"] == N - journaled
        # calls made now == records whose call had not completed before the kill
        assert chat_requests(srv) == N - completed_before
        assert summary["cached"] == completed_before - journaled
        _assert_exactly_once(project)

        if sig == signal.SIGKILL:
            _finished_run_is_not_redone(path, srv, capsys)
            _assert_exactly_once(project)
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


@pytest.mark.parametrize("damage", [b"{\"pipeline\": \"t\", \"fingerp", b"\xff\xfe not text", b"[1, 2]"])
def test_an_unreadable_pipeline_json_is_reported_as_such_not_as_a_changed_pipeline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: bytes) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=3)
    assert main(["run", str(path), "-q"]) == 0
    (run,) = [p for p in (tmp_path / "runs" / "t").iterdir() if p.is_dir()]
    (run / "summary.json").unlink()  # the run is unfinished now (as after a kill)
    (run / "pipeline.json").write_bytes(damage)
    capsys.readouterr()
    code = main(["run", str(path), "-q"])
    err = capsys.readouterr().err
    assert code == 9, err
    assert f"{run / 'pipeline.json'} cannot be read: it " in err and "changed" not in err
    assert "restore the file" in err and "--fresh" in err
    assert main(["run", str(path), "-q", "--fresh"]) == 0  # the fix it names works


def test_a_finished_run_whose_input_grew_says_so_and_fresh_pays_only_the_new_rows(
        tmp_path: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}'}}", n=3)
    assert main(["run", str(path), "-q"]) == 0
    assert main(["run", str(path)]) == 0  # unchanged: nothing to do, and no word of a change
    out = capsys.readouterr().out
    assert "already finished: nothing to do" in out and "changed" not in out
    with (tmp_path / "r.csv").open("a", encoding="utf-8", newline="") as f:
        f.write("4,review number 4: it was fine\r\n5,review number 5: it was fine\r\n")
    server.reset_stats()
    assert main(["run", str(path)]) == 0  # the finished run stays finished (no call), and says why
    out = capsys.readouterr().out
    assert "already finished: nothing to do" in out and chat_requests(server) == 0
    assert "its source r.csv has changed since the run started (5 records now, 3 processed by that run)" in out
    assert "run again with --fresh" in out
    assert main(["run", str(path), "--json"]) == 0
    assert "r.csv has changed" in json.loads(capsys.readouterr().out)["source_changed"]
    assert main(["run", str(path), "--fresh", "-q"]) == 0  # what it says to do: the new rows are the only calls
    assert chat_requests(server) == 2
    assert sorted(r["_id"] for r in read_jsonl(tmp_path / "out" / "records.jsonl")) == ["1", "2", "3", "4", "5"]

# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def test_the_endpoint_of_a_backend_whose_options_name_no_server() -> None:
    from types import SimpleNamespace

    from oaipipe.keys import OPENAI_BASE_URL
    from oaipipe.resume import backend_endpoint

    def backend(options: object, needs_key: bool, name: str = "x") -> object:
        return SimpleNamespace(options=options, needs_api_key=needs_key, name=name)

    # options without a base_url field at all (a plugin's backend): its name, or OpenAI when it needs a key
    assert backend_endpoint(backend(SimpleNamespace(), False, "local")) == "backend:local"
    assert backend_endpoint(backend(SimpleNamespace(), True)) == OPENAI_BASE_URL
    assert backend_endpoint(backend(SimpleNamespace(base_url="http://h:1/v1/"), True)) == "http://h:1/v1"
    assert backend_endpoint(backend(SimpleNamespace(base_url="http://h:1/BOX/"), False)) == "http://h:1/BOX"


def _finished_run(tmp_path: Path, prompt: str = "Reply to: {text}") -> tuple[Path, Path]:
    """A local pipeline over three rows, run to the end: (its file, its run root)."""
    from oaipipe.runner import run_pipeline_file

    text = (f"name: t\nbackend: {{type: local}}\nsource: {{type: csv, path: r.csv, id_column: id}}\n"
            f"steps:\n  - {{type: ask, prompt: \"{prompt}\", output: reply}}\n"
            f"sinks:\n  - {{type: jsonl, path: out/records.jsonl}}\n")
    path = PipelineProject(tmp_path).write(text, files={"r.csv": [("id", "text"), ("1", "a"), ("2", "b"), ("3", "c")]})
    summary = run_pipeline_file(path)
    assert summary["status"] == "finished"
    return path, Path(summary["run_dir"]).parent


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data), encoding="utf-8")


def test_retry_failed_after_a_change_says_what_changed_and_how_to_go_on(tmp_path: Path) -> None:
    from oaipipe.errors import RunAborted
    from oaipipe.pipeline import load_pipeline
    from oaipipe.resume import select_run

    path, root = _finished_run(tmp_path)
    run_id = select_run(root, load_pipeline(path)).run.run_id
    _finished_run(tmp_path, prompt="Answer: {text}")  # the steps changed (and that run is the latest now)
    latest = select_run(root, load_pipeline(path)).run.run_id
    path.write_text(path.read_text(encoding="utf-8").replace("Answer: {text}", "Say: {text}"), encoding="utf-8")
    with pytest.raises(RunAborted) as raised:
        select_run(root, load_pipeline(path), retry_failed=True)
    assert latest != run_id
    assert raised.value.message == f"the steps changed since run {latest}; --retry-failed needs the same pipeline"
    assert raised.value.hint == "undo the change, or start over with --fresh"


def test_a_run_whose_summary_says_nothing_to_do_counts_as_finished(tmp_path: Path) -> None:
    from oaipipe.pipeline import load_pipeline
    from oaipipe.resume import select_run

    path, root = _finished_run(tmp_path)
    run = select_run(root, load_pipeline(path)).run
    _edit_json(run.summary_path, status="nothing-to-do")
    selection = select_run(root, load_pipeline(path))
    assert (selection.mode, selection.run.run_id) == ("done", run.run_id)


def test_a_run_stopped_while_training_is_continued_at_its_train_step(tmp_path: Path) -> None:
    from oaipipe.pipeline import load_pipeline
    from oaipipe.resume import select_run

    path, root = _finished_run(tmp_path)
    run = select_run(root, load_pipeline(path)).run
    _edit_json(run.summary_path, status="training")  # its records done, its train: step not
    selection = select_run(root, load_pipeline(path))
    assert (selection.mode, selection.run.run_id, selection.skip) == ("train", run.run_id, None)


def test_a_finished_run_that_recorded_no_endpoint_is_done_for_any_server(tmp_path: Path) -> None:
    # a run directory written before pipeline.json had its `endpoint` field: the run is still done
    from oaipipe.pipeline import load_pipeline
    from oaipipe.resume import select_run

    path, root = _finished_run(tmp_path)
    run = select_run(root, load_pipeline(path)).run
    _edit_json(run.meta_path, endpoint=None)
    selection = select_run(root, load_pipeline(path))
    assert (selection.mode, selection.run.run_id) == ("done", run.run_id)


def test_retry_failed_without_a_run_or_with_fresh_is_refused_with_the_fix(tmp_path: Path) -> None:
    from oaipipe.errors import RunAborted
    from oaipipe.pipeline import load_pipeline
    from oaipipe.resume import select_run

    path, root = _finished_run(tmp_path)
    with pytest.raises(RunAborted) as raised:
        select_run(root, load_pipeline(path), retry_failed=True, fresh=True)
    assert raised.value.message == "--retry-failed and --fresh contradict each other"
    assert raised.value.hint == ("--retry-failed redoes the failed records of the last run; "
                                 "--fresh starts a new one")
    with pytest.raises(RunAborted) as raised:
        select_run(tmp_path / "elsewhere", load_pipeline(path), retry_failed=True)
    assert raised.value.message == f"--retry-failed: this pipeline has no earlier run in {tmp_path / 'elsewhere'}"
    assert raised.value.hint == "run it once without --retry-failed"
