"""The runner end to end on the local backend: records, failures, run directories, resume, order, hooks."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from oaipipe.cli import main
from oaipipe.errors import InputError, RunAborted, StorageError
from oaipipe.runner import RunOptions, run_pipeline_file
from oaipipe.testing import PipelineProject

REVIEWS = [
    ("1", "I love this mug, it is wonderful"),
    ("2", "Terrible service, the handle broke and I want a refund"),
    ("3", "The parcel arrived on Tuesday"),
    ("4", "Great value and fast delivery, thanks!"),
    ("5", "Awful. Never again."),
]


def make_csv(path: Path, rows: list[tuple[str, str]] = REVIEWS) -> Path:
    return PipelineProject(path.parent).write_file(path.name, [("id", "text"), *rows])


def make_pipeline(tmp_path: Path, extra: str = "", *, source: str = "{type: csv, path: r.csv, id_column: id}",
                  steps: str | None = None, name: str = "t") -> Path:
    """``p.yaml`` on the local backend over ``r.csv`` (:data:`REVIEWS` unless it exists): a thin wrapper over
    :class:`oaipipe.testing.PipelineProject` that keeps the YAML text these tests edit."""
    files = {} if (tmp_path / "r.csv").exists() else {"r.csv": [("id", "text"), *REVIEWS]}
    steps = steps or textwrap.dedent("""\
      - {type: sentiment, analyzer: vader, input: "{text}", output: review_sentiment}
      - {type: ask, system: "You are a helpful support agent.", prompt: "Reply to: {text}", output: reply}
      - {type: sentiment, analyzer: keyword, input: "{reply}", output: reply_sentiment}
    """)
    text = f"name: {name}\nbackend: {{type: local, concurrency: 4}}\nsource: {source}\nsteps:\n"
    text += textwrap.indent(steps, "  ")
    text += "sinks:\n  - {type: dialogue-jsonl, path: out/dialogue.jsonl}\n  - {type: jsonl, path: out/records.jsonl}\n"
    text += extra
    return PipelineProject(tmp_path, filename="p.yaml").write(text, files=files)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_record_gets_a_reply_and_sentiment(tmp_path: Path) -> None:
    summary = run_pipeline_file(make_pipeline(tmp_path))
    assert summary["status"] == "finished"
    assert summary["records"] == {"total": 5, "done": 5, "failed": 0, "skipped": 0}
    assert summary["calls"] == 5
    dialogue = read_jsonl(tmp_path / "out/dialogue.jsonl")
    assert sorted(d["record_id"] for d in dialogue) == ["1", "2", "3", "4", "5"]
    for line in dialogue:
        roles = [m["role"] for m in line["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert line["messages"][2]["content"]
        assert all(m["sentiment"]["label"] in {"positive", "negative", "neutral"} for m in line["messages"])
        assert line["backend"] == "local"
        assert line["model"].startswith("local:")
    records = read_jsonl(tmp_path / "out/records.jsonl")
    assert [r["_id"] for r in records] == ["1", "2", "3", "4", "5"]  # input order
    by_id = {r["_id"]: r for r in records}
    assert by_id["1"]["review_sentiment"] == "positive"
    assert by_id["2"]["review_sentiment"] == "negative"
    assert -1 <= by_id["2"]["review_sentiment_score"] < 0
    run_dir = Path(summary["run_dir"])
    assert {p.name for p in run_dir.iterdir()} >= {"journal.jsonl", "errors.jsonl", "summary.json", "pipeline.json"}
    assert json.loads((run_dir / "summary.json").read_text())["records"]["done"] == 5


def test_rerun_of_a_finished_run_does_nothing(tmp_path: Path) -> None:
    path = make_pipeline(tmp_path)
    first = run_pipeline_file(path)
    second = run_pipeline_file(path)
    assert second["status"] == "nothing-to-do"
    assert second["calls"] == 0
    assert second["run_id"] == first["run_id"]
    assert len(read_jsonl(tmp_path / "out/dialogue.jsonl")) == 5
    third = run_pipeline_file(path, fresh=True)
    assert third["run_id"] != first["run_id"]
    assert third["records"]["done"] == 5


def test_limit_makes_a_partial_run_that_the_next_run_finishes(tmp_path: Path) -> None:
    path = make_pipeline(tmp_path)
    first = run_pipeline_file(path, limit=2)
    assert first["status"] == "partial"
    assert first["records"]["done"] == 2
    second = run_pipeline_file(path)
    assert second["run_id"] == first["run_id"]
    assert second["records"]["skipped"] == 2
    assert second["records"]["done"] == 3
    assert second["status"] == "finished"
    ids = [d["record_id"] for d in read_jsonl(tmp_path / "out/dialogue.jsonl")]
    assert sorted(ids) == ["1", "2", "3", "4", "5"]  # each exactly once


def test_resume_drops_output_of_records_that_were_not_journaled(tmp_path: Path) -> None:
    path = make_pipeline(tmp_path)
    first = run_pipeline_file(path, limit=3)
    run_dir = Path(first["run_dir"])
    # simulate a crash after the sinks wrote record 3 but before the journal did
    lines = (run_dir / "journal.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "journal.jsonl").write_text("".join(lines[:2]) + lines[2][:20])  # torn last line
    run_pipeline_file(path)
    ids = [d["record_id"] for d in read_jsonl(tmp_path / "out/dialogue.jsonl")]
    assert sorted(ids) == ["1", "2", "3", "4", "5"]
    assert [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")] == ["1", "2", "3", "4", "5"]


def test_changed_pipeline_is_not_mixed_into_an_unfinished_run(tmp_path: Path) -> None:
    path = make_pipeline(tmp_path)
    run_pipeline_file(path, limit=2)
    path.write_text(path.read_text().replace("Reply to: {text}", "Answer: {text}"))
    with pytest.raises(RunAborted, match="changed"):
        run_pipeline_file(path)
    fresh = run_pipeline_file(path, fresh=True)
    assert fresh["records"]["done"] == 5


def test_one_bad_record_does_not_stop_the_run(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(
        '{"id": "a", "text": "I love it"}\n{not json\n{"id": "c", "txt": "typo field"}\n{"id": "d", "text": "bad"}\n'
    )
    path = make_pipeline(tmp_path, source="{type: jsonl, path: in.jsonl, id_field: id}")
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 2
    assert summary["records"]["failed"] == 2
    errors = read_jsonl(Path(summary["errors_file"]))
    assert len(errors) == 2
    joined = " ".join(e["error"] for e in errors)
    assert "line 2" in joined  # the bad JSON line
    assert "'text'" in joined and "lacks" in joined  # the missing template field, named
    assert {r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")} == {"a", "d"}


def test_exit_code_one_when_records_failed_and_zero_otherwise(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "fine"}\n{oops\n')
    bad = make_pipeline(tmp_path, source="{type: jsonl, path: in.jsonl, id_field: id}")
    assert main(["run", str(bad), "-q"]) == 1
    out = capsys.readouterr().out
    assert "1 done, 1 failed" in out and "errors:" in out
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    assert main(["run", str(make_pipeline(good_dir)), "-q"]) == 0


def test_max_failures_aborts_the_run(tmp_path: Path) -> None:
    lines = "".join(f'{{"id": "{i}", "txt": "no text field"}}\n' for i in range(6))
    (tmp_path / "in.jsonl").write_text(lines + '{"id": "ok", "text": "fine"}\n')
    path = make_pipeline(tmp_path, source="{type: jsonl, path: in.jsonl, id_field: id}")
    with pytest.raises(RunAborted, match="max-failures 2"):
        run_pipeline_file(path, max_failures=2)


def test_a_run_where_everything_fails_stops_early(tmp_path: Path) -> None:
    lines = "".join(f'{{"id": "{i}", "txt": "no text field"}}\n' for i in range(30))
    (tmp_path / "in.jsonl").write_text(lines)
    path = make_pipeline(tmp_path, source="{type: jsonl, path: in.jsonl, id_field: id}")
    with pytest.raises(RunAborted, match="first 10 records all failed"):
        run_pipeline_file(path)


def test_empty_input_gives_a_clean_summary(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("id,text\n")
    summary = run_pipeline_file(make_pipeline(tmp_path))
    assert summary["status"] == "finished"
    assert summary["records"]["done"] == 0 and summary["records"]["failed"] == 0
    assert summary["calls"] == 0


def test_csv_without_the_named_column(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "r.csv").write_text("key,text\n1,hi\n")
    path = make_pipeline(tmp_path)
    with pytest.raises(InputError) as info:
        run_pipeline_file(path)
    assert "id" in str(info.value) and "key" in str(info.value)
    assert main(["run", str(path), "-q"]) == 3
    assert "r.csv" in capsys.readouterr().err


def test_order_is_input_order_even_when_replies_finish_out_of_order(tmp_path: Path) -> None:
    plugin = tmp_path / "slowpoke.py"
    plugin.write_text(textwrap.dedent('''
        import asyncio
        from oaipipe import Step, StepOptions, hookimpl

        class Slow(Step):
            """Sleeps longer for earlier records."""
            class Options(StepOptions):
                pass
            async def run(self, fields, ctx):
                await asyncio.sleep(0.05 * (10 - int(ctx.record.id)))
                return {self.options.output: "slept"}

        @hookimpl
        def register_steps(register):
            register("slow", Slow)
    '''))
    make_csv(tmp_path / "r.csv", [(str(i), f"text {i}") for i in range(10)])
    path = make_pipeline(tmp_path, steps="- {type: slow, output: z}\n")
    text = "plugins: [slowpoke.py]\n" + path.read_text().replace("concurrency: 4", "concurrency: 10")
    path.write_text(text)
    run_pipeline_file(path)
    assert [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")] == [str(i) for i in range(10)]


def test_sync_analyzers_run_off_the_event_loop_concurrently(tmp_path: Path) -> None:
    plugin = tmp_path / "sleepy.py"
    plugin.write_text(textwrap.dedent('''
        import threading, time
        from oaipipe import Analyzer, Sentiment, hookimpl

        STATE = {"now": 0, "max": 0}
        LOCK = threading.Lock()

        class Sleepy(Analyzer):
            """Blocks for a while, like a slow model would."""
            def analyze(self, text):
                with LOCK:
                    STATE["now"] += 1
                    STATE["max"] = max(STATE["max"], STATE["now"])
                time.sleep(0.1)
                with LOCK:
                    STATE["now"] -= 1
                return Sentiment("neutral", 0.0, "sleepy")

        @hookimpl
        def register_analyzers(register):
            register("sleepy", Sleepy)

        @hookimpl
        def oaipipe_run_finish(run, summary):
            summary["max_parallel_analyzers"] = STATE["max"]
    '''))
    make_csv(tmp_path / "r.csv", [(str(i), f"text {i}") for i in range(8)])
    path = make_pipeline(tmp_path, steps='- {type: sentiment, analyzer: sleepy, input: "{text}", output: s}\n')
    path.write_text("plugins: [sleepy.py]\n" + path.read_text())
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 8
    assert summary["max_parallel_analyzers"] > 1


def test_lifecycle_hooks_see_the_run(tmp_path: Path) -> None:
    plugin = tmp_path / "observer.py"
    plugin.write_text(textwrap.dedent('''
        import json, pathlib
        from oaipipe import hookimpl

        LOG = []

        @hookimpl
        def oaipipe_run_start(run):
            LOG.append(("start", run.pipeline_name, run.resumed))

        @hookimpl
        def oaipipe_record_done(run, result):
            LOG.append(("record", result.record.id, result.error is None))

        @hookimpl
        def oaipipe_run_finish(run, summary):
            LOG.append(("finish", summary["status"]))
            pathlib.Path(run.run_dir, "observed.json").write_text(json.dumps(LOG))
    '''))
    path = make_pipeline(tmp_path)
    path.write_text("plugins: [observer.py]\n" + path.read_text())
    summary = run_pipeline_file(path)
    log = json.loads((Path(summary["run_dir"]) / "observed.json").read_text())
    assert log[0] == ["start", "t", False]
    assert [e[1] for e in log if e[0] == "record"] == ["1", "2", "3", "4", "5"]
    assert log[-1] == ["finish", "finished"]


def test_library_api_returns_summary_without_printing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import oaipipe

    summary = oaipipe.run(str(make_pipeline(tmp_path)), options=RunOptions())
    assert summary["records"]["done"] == 5
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_an_analyzer_breaking_its_contract_fails_the_record_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "bad_analyzer.py").write_text(textwrap.dedent('''
        from oaipipe import Analyzer, Sentiment, hookimpl

        class Happy(Analyzer):
            """Returns a label that does not exist."""
            def analyze(self, text):
                return Sentiment("happy", 7.5, "happy")

        @hookimpl
        def register_analyzers(register):
            register("happy", Happy)
    '''))
    path = make_pipeline(tmp_path, steps='- {type: sentiment, analyzer: happy, input: "{text}", output: s}\n')
    path.write_text("plugins: [bad_analyzer.py]\n" + path.read_text())
    summary = run_pipeline_file(path)
    assert summary["records"]["failed"] == 5
    errors = read_jsonl(Path(summary["errors_file"]))
    assert "analyzer 'happy'" in errors[0]["error"] and "'happy'" in errors[0]["error"]


def test_a_plugin_failing_in_a_lifecycle_hook_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "boom.py").write_text(textwrap.dedent('''
        from oaipipe import hookimpl

        @hookimpl
        def oaipipe_record_done(run, result):
            raise RuntimeError("observer boom")
    '''))
    path = make_pipeline(tmp_path)
    path.write_text("plugins: [boom.py]\n" + path.read_text())
    assert main(["run", str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "plugin 'boom'" in err and "oaipipe_record_done" in err and "observer boom" in err


def test_a_misspelled_hook_name_fails_loudly_with_a_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "typo.py").write_text(
        "from oaipipe import hookimpl\n\n@hookimpl\ndef register_analysers(register):\n    pass\n")
    path = make_pipeline(tmp_path)
    path.write_text("plugins: [typo.py]\n" + path.read_text())
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "register_analysers" in err and "did you mean 'register_analyzers'" in err


def test_two_sinks_writing_one_file_are_refused(tmp_path: Path) -> None:
    from oaipipe.errors import ConfigError
    from oaipipe.pipeline import load_pipeline

    path = make_pipeline(tmp_path)
    path.write_text(path.read_text() + "  - {type: csv, path: ./out/records.jsonl}\n")
    with pytest.raises(ConfigError, match="both write"):
        load_pipeline(path)


def test_set_values_may_use_env_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oaipipe.pipeline import load_pipeline

    monkeypatch.setenv("MY_SERVER_KEY", "sk-from-env-123")
    pipeline = load_pipeline(make_pipeline(tmp_path), ["backend.api_key=${env:MY_SERVER_KEY}"])
    assert pipeline.backend.options.api_key.get_secret_value() == "sk-from-env-123"


def test_an_unfinished_run_may_resume_against_another_server(tmp_path: Path) -> None:
    from oaipipe.testing import running_server

    path = make_pipeline(tmp_path)
    with running_server() as first:
        partial = run_pipeline_file(path, ["backend.type=openai", f"backend.base_url={first.base_url}"], limit=2)
    assert partial["status"] == "partial"
    with running_server() as second:
        rest = run_pipeline_file(path, ["backend.type=requests", f"backend.base_url={second.base_url}"])
        assert rest["run_id"] == partial["run_id"] and rest["records"]["done"] == 3
        # the same server through another transport: the run is done
        again = run_pipeline_file(path, ["backend.type=openai", "backend.base_url=" + second.base_url + "/"])
        assert again["status"] == "nothing-to-do"
    with running_server() as third:
        # a finished run against one server is not "done" for another server: that is a new run
        other = run_pipeline_file(path, ["backend.type=openai", f"backend.base_url={third.base_url}"])
        assert other["run_id"] != partial["run_id"] and other["records"]["done"] == 5


def test_retry_failed_needs_an_earlier_run_and_no_fresh(tmp_path: Path) -> None:
    path = make_pipeline(tmp_path)
    with pytest.raises(RunAborted, match="no earlier run"):
        run_pipeline_file(path, retry_failed=True)
    run_pipeline_file(path)
    with pytest.raises(RunAborted, match="contradict"):
        run_pipeline_file(path, retry_failed=True, fresh=True)


def test_a_server_that_is_down_stops_the_run_as_a_backend_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = [(str(i), f"text {i}") for i in range(12)]
    make_csv(tmp_path / "r.csv", rows)
    path = make_pipeline(tmp_path)
    code = main(["run", str(path), "-q", "--no-cache", "--set", "backend.type=openai",
                 "--set", f"backend.base_url=http://127.0.0.1:{port}/v1", "--set", "backend.max_retries=0"])
    assert code == 4
    err = capsys.readouterr().err
    assert "first 10 records all failed" in err and "errors.jsonl" in err


def test_a_completely_empty_csv_is_zero_records_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("")
    summary = run_pipeline_file(make_pipeline(tmp_path))
    assert summary["status"] == "finished"
    assert summary["records"]["done"] == 0 and summary["calls"] == 0


def test_no_secret_reaches_the_run_directory_or_the_headline(tmp_path: Path, monkeypatch, capsys) -> None:
    # a proxy password in base_url, a key in api_key, and the OpenAI key pasted into a plugin-ish option
    monkeypatch.setenv("OPENAI_API_KEY", "sk-proj-verysecretkeyvalue1")
    monkeypatch.setenv("PROXY_KEY", "pr0xy-tok3n-value")
    make_csv(tmp_path / "r.csv")
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""\
        name: t
        backend: {type: local, base_url: "http://alice:hunter2pw@127.0.0.1:9/v1", api_key: "${env:PROXY_KEY}"}
        source: {type: csv, path: r.csv, id_column: id}
        steps:
          - {type: ask, system: "never say ${env:OPENAI_API_KEY}", prompt: "Reply to: {text}", output: reply}
        sinks: []
        """), encoding="utf-8")
    assert main(["run", str(tmp_path / "p.yaml")]) == 0
    out = capsys.readouterr()
    written = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "runs").glob("*/*/pipeline.json"))
    for secret in ("hunter2pw", "pr0xy-tok3n-value", "verysecretkeyvalue1"):
        assert secret not in written and secret not in out.out + out.err, secret
    assert "alice:***@127.0.0.1:9" in written


def test_retry_failed_does_not_redo_a_record_whose_duplicate_id_failed(tmp_path: Path) -> None:
    make_csv(tmp_path / "r.csv", [("1", "a"), ("2", "b"), ("2", "again"), ("3", "c")])
    path = make_pipeline(tmp_path, "run: {max_failures: 10}\n")
    first = run_pipeline_file(path)
    assert first["records"]["done"] == 3 and first["records"]["failed"] == 1
    second = run_pipeline_file(path, retry_failed=True)
    # record 2 was done; only a duplicate of its id failed: record 2 is not called (and paid) again
    assert second["calls"] == 0 and second["records"]["done"] == 0
    assert sorted(r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")) == ["1", "2", "3"]


def test_early_abort_blames_the_server_only_when_every_failure_was_the_servers(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # half the lines are broken JSON (input errors), half reach the dead server (connection errors)
    lines = "".join(f'{{"id": "{i}", "text": "t"}}\n' if i % 2 else "{broken\n" for i in range(12))
    (tmp_path / "in.jsonl").write_text(lines)
    path = make_pipeline(tmp_path, source="{type: jsonl, path: in.jsonl, id_field: id}")
    with pytest.raises(RunAborted, match="first 10 records all failed"):
        run_pipeline_file(path, ["backend.type=openai", f"backend.base_url=http://127.0.0.1:{port}/v1",
                                 "backend.max_retries=0"], use_cache=False)


def test_run_ids_sort_in_creation_order_even_within_one_second(tmp_path: Path) -> None:
    from oaipipe.rundir import find_runs, new_run_id

    ids = [new_run_id() for _ in range(30)]
    assert sorted(ids) == ids and len(set(ids)) == 30
    for run_id in ids:  # the latest run is the last one found: resume picks it, not a random other
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "pipeline.json").write_text("{}")
    assert find_runs(tmp_path)[-1].run_id == ids[-1]


def test_a_sink_that_fails_to_write_stops_the_run_naming_the_sink(tmp_path: Path) -> None:
    (tmp_path / "brokensink.py").write_text(textwrap.dedent("""\
        from oaipipe import hookimpl
        from oaipipe.base import Sink

        class Broken(Sink):
            def write(self, result):
                if result.record.id == "3":
                    raise OSError(28, "No space left on device")

        @hookimpl
        def register_sinks(register):
            register("broken", Broken)
        """), encoding="utf-8")
    path = make_pipeline(tmp_path)
    path.write_text("plugins: [brokensink.py]\n" + path.read_text().replace("sinks:\n", "sinks:\n  - {type: broken}\n"))
    # an I/O problem (here a full disk) is a StorageError (exit 9), not a plugin error
    with pytest.raises(StorageError, match="sink broken failed to write record 3: .*No space left") as info:
        run_pipeline_file(path)
    assert "rerun" in str(info.value) and info.value.exit_code == 9
    summary = json.loads(next((tmp_path / "runs").glob("*/*/summary.json")).read_text())
    assert summary["status"] == "aborted" and summary["records"]["done"] == 2  # the next run resumes at record 3


def test_a_sync_backend_runs_as_many_calls_at_once_as_its_concurrency(tmp_path: Path) -> None:
    # 10 blocking calls must be in flight together (a barrier of 10): the shared default thread pool
    # (6 threads on 2 cores) would hold the rest back and break the barrier
    (tmp_path / "blocking.py").write_text(textwrap.dedent("""\
        import threading
        from oaipipe import hookimpl
        from oaipipe.base import SyncBackend
        from oaipipe.types import ChatResponse, Usage

        BARRIER = threading.Barrier(10, timeout=10)

        class Blocking(SyncBackend):
            def chat_sync(self, request):
                BARRIER.wait()
                return ChatResponse(text="ok", model="m", backend="blocking", usage=Usage(1, 1, 2))

        @hookimpl
        def register_backends(register):
            register("blocking", Blocking)
        """), encoding="utf-8")
    make_csv(tmp_path / "r.csv", [(str(i), f"t{i}") for i in range(10)])
    path = make_pipeline(tmp_path, steps='- {type: ask, prompt: "{text}", output: reply}\n')
    text = path.read_text().replace("backend: {type: local, concurrency: 4}", "backend: {type: blocking, concurrency: 10}")
    path.write_text("plugins: [blocking.py]\n" + text)
    assert "type: blocking" in path.read_text()
    summary = run_pipeline_file(path, use_cache=False)
    assert summary["records"]["done"] == 10, summary


CLOSING_SINK = '''
import json
from pathlib import Path

from oaipipe import Sink, hookimpl


class WrittenAtClose(Sink):
    """Collects the ids and writes its file only at close (as the Parquet sink does); fails while a
    `fail-close` file sits next to the pipeline."""

    def open(self, run, done_ids=None):
        self.ids = []

    def write(self, result):
        self.ids.append(result.record.id)

    def close(self):
        if self.context.path("fail-close").exists():
            raise RuntimeError("the disk went away")
        with open(self.context.path("at-close.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(self.ids) + "\\n")


@hookimpl
def register_sinks(register):
    register("at-close", WrittenAtClose)
'''


def test_a_sink_that_fails_to_close_leaves_the_run_unfinished_and_the_rerun_finishes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "closing_sink.py").write_text(CLOSING_SINK, encoding="utf-8")
    path = make_pipeline(tmp_path, "plugins: [closing_sink.py]\n")
    path.write_text(path.read_text(encoding="utf-8").replace(
        "sinks:\n", "sinks:\n  - {type: at-close}\n"), encoding="utf-8")
    (tmp_path / "fail-close").write_text("", encoding="utf-8")
    assert main(["run", str(path)]) == 2  # the sink is named, the run is not "finished"
    err = capsys.readouterr().err
    assert "at-close failed to close" in err and "rerun the same command" in err
    summary = json.loads(next((tmp_path / "runs" / "t").glob("*/summary.json")).read_text(encoding="utf-8"))
    assert summary["status"] == "aborted"
    assert not (tmp_path / "at-close.jsonl").exists()
    (tmp_path / "fail-close").unlink()
    assert main(["run", str(path)]) == 0  # resumes the unfinished run: the sink closes now
    assert (tmp_path / "at-close.jsonl").exists()
    assert main(["run", str(path)]) == 0  # and the run is finished: nothing to do
    assert "nothing to do" in capsys.readouterr().out


# --- found by the mutation run (docs/mutation.md) ------------------------------------------------------


def test_max_failures_allows_that_many_failures_and_its_abort_names_the_errors_file(tmp_path: Path) -> None:
    lines = "".join(f'{{"id": "{i}", "txt": "no text field"}}\n' for i in range(2))
    (tmp_path / "in.jsonl").write_text(lines + '{"id": "ok", "text": "fine"}\n')
    path = make_pipeline(tmp_path, source="{type: jsonl, path: in.jsonl, id_field: id}")
    summary = run_pipeline_file(path, max_failures=2)  # two failures: allowed
    assert summary["status"] == "finished" and summary["records"]["failed"] == 2
    with pytest.raises(RunAborted) as err:
        run_pipeline_file(path, max_failures=1, fresh=True)  # the second failure is one too many
    hint = err.value.hint or ""
    assert hint.startswith("see ") and hint.endswith("; rerun the same command to continue after a fix"), hint
    errors_file = Path(hint.removeprefix("see ").split(";")[0])
    assert errors_file.name == "errors.jsonl" and errors_file.is_file()


def test_the_early_abort_says_how_to_go_on(tmp_path: Path) -> None:
    lines = "".join(f'{{"id": "{i}", "txt": "no text field"}}\n' for i in range(12))
    (tmp_path / "in.jsonl").write_text(lines)
    path = make_pipeline(tmp_path, source="{type: jsonl, path: in.jsonl, id_field: id}")
    with pytest.raises(RunAborted) as err:
        run_pipeline_file(path)
    assert (err.value.hint or "").endswith(
        "errors.jsonl; fix the cause and rerun (finished records are kept), or pass --max-failures N to go on")


def test_each_call_is_counted_under_its_step_and_priced_as_the_model_it_asked_for(tmp_path: Path, server) -> None:
    from _scale_util import write_pipeline

    from oaipipe.pricing import PriceTable

    steps = ('- {type: ask, prompt: "Reply to: {text}", output: a}\n'
             '- {type: ask, prompt: "Summarise: {text}", output: b}\n')
    path = write_pipeline(tmp_path, f"{{type: openai, base_url: '{server.base_url}', model: gpt-6-luna}}", n=3,
                          steps=steps)
    summary = run_pipeline_file(path)
    rows = {row["step"]: row for row in summary["by_step"]}
    assert set(rows) == {"ask:a", "ask:b"} and all(row["calls"] == 3 for row in rows.values())
    price = PriceTable().lookup("gpt-6-luna")  # serve answers as local:gpt-6-luna: priced as what was asked
    for row in rows.values():
        assert row["model"] == "local:gpt-6-luna" and row["priced"] is True
        want = (row["prompt_tokens"] * price.input + row["completion_tokens"] * price.output) / 1_000_000
        assert row["cost_usd"] == pytest.approx(want, abs=1e-6) and want > 0  # rows are rounded to 1e-6
