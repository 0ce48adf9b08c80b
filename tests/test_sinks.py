"""Built-in sinks: dialogue-jsonl, dialogue-json, jsonl, csv: format, sentiment, exactly-once on resume."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from oaipipe.base import Context, Sink
from oaipipe.errors import StorageError
from oaipipe.plugins import PluginHost
from oaipipe.types import Exchange, Record, RecordResult, RunInfo, Sentiment, Usage

DATA_URL = "data:image/png;base64," + "iVBORw0KGgo" * 200


def build(host: PluginHost, tmp_path: Path, **block: Any) -> Sink:
    sink = host.build("sink", block, Context(base_dir=tmp_path, host=host))
    assert isinstance(sink, Sink)
    return sink


def write_run(host: PluginHost, tmp_path: Path, results: Iterable[RecordResult], *, run_id: str = "R1",
              **block: Any) -> Sink:
    """Build a sink from ``block``, open it for a new run ``run_id``, write ``results`` and close it."""
    sink = build(host, tmp_path, **block)
    sink.open(run_info(run_id), None)
    for res in results:
        sink.write(res)
    sink.close()
    return sink


def run_info(run_id: str = "R1") -> RunInfo:
    return RunInfo(pipeline_name="demo", run_id=run_id, run_dir="/tmp/runs/" + run_id, backend="local",
                   model="local-chat")


def result(rid: str, *, reply: str = "Thanks, glad you like it!", error: str | None = None,
           sentiments: dict[str, Sentiment] | None = None, exchanges: int = 1) -> RecordResult:
    record = Record(rid, {"id": rid, "text": f"review {rid}"}, where=f"reviews.csv row {rid}")
    exs = [
        Exchange(
            record_id=rid,
            step=f"ask:reply{n}" if n else "ask:reply",
            messages=[
                {"role": "system", "content": "You are a helpful support agent.", "sentiment": None},
                {"role": "user", "content": f"Reply to: review {rid}", "sentiment": None},
                {"role": "assistant", "content": reply, "sentiment": None},
            ],
            model="local-chat",
            backend="local",
            usage=Usage(10, 5, 15),
            latency=0.01234,
            request_id=f"req-{rid}",
        )
        for n in range(exchanges)
    ]
    fields = {"id": rid, "text": f"review {rid}", "reply": reply, "meta": {"n": 1}, "tags": ["a", "b"]}
    return RecordResult(record, fields, exchanges=[] if error else exs, sentiments=sentiments or {}, error=error)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- dialogue-jsonl ---------------------------------------------------------------------------------


def test_dialogue_jsonl_format(host: PluginHost, tmp_path: Path) -> None:
    sink = write_run(host, tmp_path, [result("a", reply="Réponse: très bien 😀")],
                     type="dialogue-jsonl", path="out/deep/dialogue.jsonl")
    sink.close()  # idempotent
    path = tmp_path / "out" / "deep" / "dialogue.jsonl"
    assert "très bien 😀" in path.read_text(encoding="utf-8")  # ensure_ascii=False
    [entry] = lines(path)
    assert set(entry) == {"run_id", "record_id", "step", "time", "model", "backend", "usage", "latency",
                          "request_id", "cached", "messages"}
    assert entry["run_id"] == "R1" and entry["record_id"] == "a" and entry["step"] == "ask:reply"
    assert entry["time"].endswith("Z") and entry["time"].startswith("20")
    assert entry["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert entry["model"] == "local-chat" and entry["backend"] == "local" and entry["request_id"] == "req-a"
    assert entry["cached"] is False
    assert [m["role"] for m in entry["messages"]] == ["system", "user", "assistant"]
    for m in entry["messages"]:  # system messages get a sentiment too
        assert m["sentiment"]["analyzer"] == "vader"
        assert m["sentiment"]["label"] in {"positive", "negative", "neutral"}


def test_dialogue_sentiment_from_step_else_analyzer(host: PluginHost, tmp_path: Path) -> None:
    reply = "Thanks, glad you like it!"
    given = Sentiment("negative", -0.5, analyzer="keyword")  # deliberately not what vader would say
    write_run(host, tmp_path, [result("a", reply=reply, sentiments={reply: given})],
              type="dialogue-jsonl", path="d.jsonl")
    [entry] = lines(tmp_path / "d.jsonl")
    assistant = entry["messages"][2]
    assert assistant["sentiment"] == {"label": "negative", "score": -0.5, "analyzer": "keyword"}
    assert entry["messages"][1]["sentiment"]["analyzer"] == "vader"


def test_dialogue_analyzer_option(host: PluginHost, tmp_path: Path) -> None:
    write_run(host, tmp_path, [result("a")], type="dialogue-jsonl", path="off.jsonl", analyzer=None)
    assert all(m["sentiment"] is None for m in lines(tmp_path / "off.jsonl")[0]["messages"])
    write_run(host, tmp_path, [result("a", reply="great, thanks")],
              type="dialogue-jsonl", path="kw.jsonl", analyzer="keyword")
    assistant = lines(tmp_path / "kw.jsonl")[0]["messages"][2]
    assert assistant["sentiment"] == {"label": "positive", "score": 1.0, "analyzer": "keyword"}


def test_dialogue_jsonl_skips_failed_records_and_appends(host: PluginHost, tmp_path: Path) -> None:
    write_run(host, tmp_path, [result("a", exchanges=2), result("b", error="TemplateError: no field 'x'")],
              type="dialogue-jsonl", path="d.jsonl")
    write_run(host, tmp_path, [result("c")], run_id="R2", type="dialogue-jsonl", path="d.jsonl")
    got = [(e["run_id"], e["record_id"], e["step"]) for e in lines(tmp_path / "d.jsonl")]
    assert got == [("R1", "a", "ask:reply"), ("R1", "a", "ask:reply1"), ("R2", "c", "ask:reply")]


def test_dialogue_jsonl_exactly_once_on_resume(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    old = build(host, tmp_path, type="dialogue-jsonl", path="d.jsonl")
    old.open(run_info("R0"), None)
    old.write(result("c"))  # an earlier run's line for the same id: must stay
    old.close()
    write_run(host, tmp_path, map(result, "abc"), type="dialogue-jsonl", path="d.jsonl")
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"run_id": "R1", "record_id": "d", "mess')  # crash mid-write
    resumed = build(host, tmp_path, type="dialogue-jsonl", path="d.jsonl")
    resumed.open(run_info("R1"), {"a", "b"})
    assert [(e["run_id"], e["record_id"]) for e in lines(path)] == [("R0", "c"), ("R1", "a"), ("R1", "b")]
    resumed.write(result("c"))
    resumed.write(result("d"))
    resumed.close()
    got = [(e["run_id"], e["record_id"]) for e in lines(path)]
    assert got == [("R0", "c"), ("R1", "a"), ("R1", "b"), ("R1", "c"), ("R1", "d")]
    assert not list(tmp_path.glob(".d.jsonl.*"))  # no temp files left behind


def test_dialogue_jsonl_truncated_tail_dropped_on_fresh_run(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"run_id": "R0", "record_id": "x"}\n{"run_id": "R0", "rec', encoding="utf-8")
    write_run(host, tmp_path, [result("a")], type="dialogue-jsonl", path="d.jsonl")
    assert [e["record_id"] for e in lines(path)] == ["x", "a"]


def test_dialogue_never_writes_image_data_urls(host: PluginHost, tmp_path: Path) -> None:
    rec = result("a")
    rec.exchanges[0].messages[1]["content"] = [
        {"type": "text", "text": "What's in this image?"},
        {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "low"}},
    ]
    for kind, name in (("dialogue-jsonl", "d.jsonl"), ("dialogue-json", "d.json")):
        write_run(host, tmp_path, [rec], type=kind, path=name)
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert "iVBORw0KGgo" not in text
        assert "What's in this image?" in text and "data:image/png;base64,..." in text
    # the step's own objects are not modified
    assert rec.exchanges[0].messages[1]["content"][1]["image_url"]["url"] == DATA_URL


# --- dialogue-json ----------------------------------------------------------------------------------


def test_dialogue_json_format_and_valid_after_every_record(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "dialogue.json"
    sink = build(host, tmp_path, type="dialogue-json", path="logs/dialogue.json")
    sink.open(run_info(), None)
    assert json.loads(path.read_text(encoding="utf-8")) == []
    for n, rid in enumerate("abc", 1):
        sink.write(result(rid))
        entries = json.loads(path.read_text(encoding="utf-8"))  # valid JSON after each record
        assert len(entries) == 3 * n
    sink.close()
    sink.close()
    text = path.read_text(encoding="utf-8")
    entries = json.loads(text)
    assert text == json.dumps(entries, indent=2, ensure_ascii=False) + "\n"  # laid out as json.dump would
    first = entries[0]
    assert set(first) == {"role", "content", "sentiment", "record_id", "run_id", "step", "time"}
    assert (first["role"], first["record_id"], first["run_id"], first["step"]) == ("system", "a", "R1", "ask:reply")
    assert first["sentiment"]["analyzer"] == "vader"
    assert not list(path.parent.glob(".dialogue.json.*"))


def test_dialogue_json_entries_name_their_step(host: PluginHost, tmp_path: Path) -> None:
    write_run(host, tmp_path, [result("a", exchanges=2)], type="dialogue-json", path="d.json")
    entries = json.loads((tmp_path / "d.json").read_text(encoding="utf-8"))
    assert [e["step"] for e in entries] == ["ask:reply"] * 3 + ["ask:reply1"] * 3


def test_dialogue_json_keeps_old_entries_and_resumes_exactly_once(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    seed_entry = {"role": "user", "content": "from the old module", "sentiment": "positive"}
    path.write_text(json.dumps([seed_entry]), encoding="utf-8")
    write_run(host, tmp_path, map(result, "abc"), type="dialogue-json", path="d.json")
    assert len(json.loads(path.read_text(encoding="utf-8"))) == 10
    resumed = build(host, tmp_path, type="dialogue-json", path="d.json")
    resumed.open(run_info("R1"), {"a", "b"})
    entries = json.loads(path.read_text(encoding="utf-8"))  # rewritten at once
    assert entries[0] == seed_entry
    assert [e["record_id"] for e in entries[1:]] == ["a"] * 3 + ["b"] * 3
    resumed.write(result("c"))
    resumed.write(result("x", error="boom"))
    resumed.close()
    entries = json.loads(path.read_text(encoding="utf-8"))
    assert [e.get("record_id") for e in entries[1:]] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def killed(sink: Sink) -> None:
    """What SIGKILL leaves of an open dialogue-json sink: its file closed by the OS, nothing else done."""
    sink._log._fh.close()  # type: ignore[attr-defined]


def test_dialogue_json_crash_after_writing_before_journaling_loses_nothing(host: PluginHost,
                                                                            tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    crashed = build(host, tmp_path, type="dialogue-json", path="d.json")
    crashed.open(run_info("R1"), None)
    for rid in "abc":
        crashed.write(result(rid))
    killed(crashed)  # SIGKILL after writing c, before the runner journaled it
    resumed = build(host, tmp_path, type="dialogue-json", path="d.json")
    resumed.open(run_info("R1"), {"a", "b"})  # the runner journaled a and b only
    entries = json.loads(path.read_text(encoding="utf-8"))
    assert [e["record_id"] for e in entries] == ["a"] * 3 + ["b"] * 3
    resumed.write(result("c"))
    resumed.close()
    entries = json.loads(path.read_text(encoding="utf-8"))
    assert [e["record_id"] for e in entries] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert not list(tmp_path.glob(".d.json.*"))


def test_dialogue_json_adopts_the_side_file_of_an_older_version_once(host: PluginHost, tmp_path: Path) -> None:
    # oaipipe before tail appends kept records between two rewrites in a side file, merged by the next open
    write_run(host, tmp_path, [result("a")], type="dialogue-json", path="d.json")
    side = tmp_path / ".d.json.pending.jsonl"
    side.write_text("".join(json.dumps({"run_id": "R1", "record_id": rid, "entries": [{"role": "user", "record_id": rid,
                                                                                   "run_id": "R1"}]}) + "\n"
                            for rid in "abc") + '{"run_id": "R1", "record_id": "d", "entr', encoding="utf-8")
    again = build(host, tmp_path, type="dialogue-json", path="d.json")
    again.open(run_info("R1"), {"a", "b"})  # a is in the document already, c was not journaled, d cut short
    again.close()
    entries = json.loads((tmp_path / "d.json").read_text(encoding="utf-8"))
    assert [e["record_id"] for e in entries] == ["a"] * 3 + ["b"]
    assert not side.exists()


@pytest.mark.parametrize("content", ["[{\"role\": \"user\",", "{\"role\": \"user\"}"])
def test_dialogue_json_corrupt_file_is_never_overwritten(host: PluginHost, tmp_path: Path, content: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(content, encoding="utf-8")
    sink = build(host, tmp_path, type="dialogue-json", path="d.json")
    with pytest.raises(StorageError) as err:
        sink.open(run_info(), None)
    assert str(path) in str(err.value) and "move it away" in str(err.value)
    sink.close()
    assert path.read_text(encoding="utf-8") == content


def test_dialogue_json_zero_records_writes_empty_array(host: PluginHost, tmp_path: Path) -> None:
    sink = build(host, tmp_path, type="dialogue-json", path="d.json")
    sink.open(run_info(), None)
    sink.close()
    assert json.loads((tmp_path / "d.json").read_text(encoding="utf-8")) == []


# --- records: jsonl ---------------------------------------------------------------------------------


def test_records_jsonl_format_and_failed(host: PluginHost, tmp_path: Path) -> None:
    write_run(host, tmp_path, [result("a"), result("b", error="boom")],
              type="jsonl", path="out/records.jsonl")
    [row] = lines(tmp_path / "out" / "records.jsonl")
    assert row == {"_id": "a", "_run": "R1", "id": "a", "text": "review a", "reply": "Thanks, glad you like it!",
                   "meta": {"n": 1}, "tags": ["a", "b"]}
    write_run(host, tmp_path, [result("b", error="TemplateError: no field 'x'")],
              type="jsonl", path="f.jsonl", include_failed=True)
    [row] = lines(tmp_path / "f.jsonl")
    assert row["_id"] == "b" and row["_error"] == "TemplateError: no field 'x'"


def test_records_jsonl_exactly_once_on_resume(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    write_run(host, tmp_path, map(result, "abc"), type="jsonl", path="r.jsonl")
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"_id": "d", "_run": "R1", "te')
    resumed = build(host, tmp_path, type="jsonl", path="r.jsonl")
    resumed.open(run_info("R1"), {"a", "b"})
    assert [r["_id"] for r in lines(path)] == ["a", "b"]
    resumed.write(result("c"))
    resumed.close()
    assert [r["_id"] for r in lines(path)] == ["a", "b", "c"]


# --- records: csv -----------------------------------------------------------------------------------


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def test_records_csv_format(host: PluginHost, tmp_path: Path) -> None:
    sink = build(host, tmp_path, type="csv", path="out/records.csv")
    sink.open(run_info(), None)
    sink.write(result("a", reply="multi\nline, \"quoted\""))
    later = result("b")
    later.fields["extra"] = "ignored"
    del later.fields["tags"]
    sink.write(later)
    sink.write(result("x", error="boom"))
    sink.close()
    rows = read_csv(tmp_path / "out" / "records.csv")
    assert rows[0] == ["record_id", "id", "text", "reply", "meta", "tags", "run_id"]
    assert rows[1] == ["a", "a", "review a", "multi\nline, \"quoted\"", '{"n": 1}', '["a", "b"]', "R1"]
    assert rows[2] == ["b", "b", "review b", "Thanks, glad you like it!", '{"n": 1}', "", "R1"]
    assert len(rows) == 3


def test_records_csv_columns_option_and_append(host: PluginHost, tmp_path: Path) -> None:
    for run in ("R1", "R2"):
        write_run(host, tmp_path, [result("a" if run == "R1" else "b")],
                  run_id=run, type="csv", path="r.csv", columns=["reply", "text"], mode="append")
    rows = read_csv(tmp_path / "r.csv")
    assert rows == [
        ["record_id", "reply", "text", "run_id"],
        ["a", "Thanks, glad you like it!", "review a", "R1"],
        ["b", "Thanks, glad you like it!", "review b", "R2"],
    ]
    other = build(host, tmp_path, type="csv", path="r.csv", columns=["text"], mode="append")
    with pytest.raises(StorageError, match="columns"):
        other.open(run_info("R3"), None)


def test_records_csv_exactly_once_on_resume(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    first = build(host, tmp_path, type="csv", path="r.csv")
    first.open(run_info("R1"), None)
    for rid in "abc":
        first.write(result(rid, reply=f"reply\nfor {rid}"))
    first.close()
    with path.open("a", encoding="utf-8") as fh:
        fh.write('d,d,review d,"cut sho')  # crash mid-row
    resumed = build(host, tmp_path, type="csv", path="r.csv")
    resumed.open(run_info("R1"), {"a", "b"})
    assert [r[0] for r in read_csv(path)] == ["record_id", "a", "b"]
    resumed.write(result("c"))
    resumed.close()
    rows = read_csv(path)
    assert [r[0] for r in rows] == ["record_id", "a", "b", "c"]
    assert rows[1][3] == "reply\nfor a"


def test_records_csv_refuses_foreign_file(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("name,age\nx,1\n", encoding="utf-8")
    sink = build(host, tmp_path, type="csv", path="r.csv")
    with pytest.raises(StorageError, match="move it away"):
        sink.open(run_info(), None)
    assert (tmp_path / "r.csv").read_text(encoding="utf-8") == "name,age\nx,1\n"


def test_records_jsonl_own_keys_win_over_record_fields(host: PluginHost, tmp_path: Path) -> None:
    rec = result("a")
    rec.fields["_id"] = "spoofed"
    rec.fields["_run"] = "other"
    write_run(host, tmp_path, [rec], type="jsonl", path="r.jsonl")
    [row] = lines(tmp_path / "r.jsonl")
    assert (row["_id"], row["_run"]) == ("a", "R1")


def test_reconcile_jsonl_helper_at_its_documented_import_path(tmp_path: Path) -> None:
    from oaipipe.builtin.sink_dialogue import reconcile_jsonl  # as docs/plugins.md shows it

    path = tmp_path / "r.jsonl"
    path.write_text('{"_run": "R1", "_id": "a"}\n{"_run": "R1", "_id": "b"}\n{"_run": "R0", "_id": "b"}\n{"_ru',
                    encoding="utf-8")
    assert reconcile_jsonl(path, run_id="R1", done_ids={"a"}, run_key="_run", id_key="_id") == 2
    assert [(r["_run"], r["_id"]) for r in lines(path)] == [("R1", "a"), ("R0", "b")]
    assert reconcile_jsonl(path, run_id="R1", done_ids={"a"}, run_key="_run", id_key="_id") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


@pytest.mark.parametrize("kind,path", [("csv", "r.csv"), ("jsonl", "r.jsonl")])
def test_records_sinks_start_over_on_a_new_run_by_default(host: PluginHost, tmp_path: Path, kind: str,
                                                          path: str) -> None:
    write_run(host, tmp_path, [result("a"), result("b")], run_id="R1", type=kind, path=path)
    write_run(host, tmp_path, [result("a"), result("b")], run_id="R2", type=kind, path=path)
    text = (tmp_path / path).read_text(encoding="utf-8")
    assert "R1" not in text and text.count("R2") == 2


def test_dialogue_log_keeps_every_run_unless_told_otherwise(host: PluginHost, tmp_path: Path) -> None:
    for run_id in ("R1", "R2"):
        write_run(host, tmp_path, [result("a")], run_id=run_id, type="dialogue-jsonl", path="d.jsonl")
    runs = [json.loads(x)["run_id"] for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert set(runs) == {"R1", "R2"}
    for run_id in ("R3", "R4"):
        write_run(host, tmp_path, [result("a")], run_id=run_id, type="dialogue-json", path="d.json",
                  mode="overwrite")
    entries = json.loads((tmp_path / "d.json").read_text())
    assert {e["run_id"] for e in entries} == {"R4"}


@pytest.mark.parametrize("kind,path", [("csv", "r.csv"), ("jsonl", "r.jsonl"), ("dialogue-jsonl", "r.jsonl"),
                                       ("dialogue-json", "r.json")])
def test_overwrite_never_removes_a_file_oaipipe_did_not_write(host: PluginHost, tmp_path: Path, kind: str,
                                                              path: str) -> None:
    (tmp_path / path).write_text("my own notes\n", encoding="utf-8")
    sink = build(host, tmp_path, type=kind, path=path, mode="overwrite")
    with pytest.raises(StorageError, match="not overwritten|move it away"):
        sink.open(run_info(), None)
    assert (tmp_path / path).read_text(encoding="utf-8") == "my own notes\n"


@pytest.mark.parametrize(("kind", "name", "content"), [
    ("jsonl", "records.jsonl", b"my own notes\n"),
    ("csv", "records.csv", b"name,age\nx,1\n"),
    ("dialogue-jsonl, mode: overwrite", "dialogue.jsonl", b"my own notes\n"),  # append adds to any JSONL log
    ("dialogue-json", "dialogue.json", b'{"mine": true}'),
    ("parquet", "records.parquet", b"PAR1 not ours PAR1"),
])
def test_a_run_whose_sink_finds_a_file_it_did_not_write_exits_9_naming_it_and_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture, kind: str, name: str, content: bytes) -> None:
    """A file at a sink's path that the sink did not write is left as it is, and the run stops: an output
    problem, exit 9 (IO_ERROR: "an output ... cannot be written", the message names the path), not 3 (an
    input that cannot be read, which it was). The message names the file; the hint says how to get past it."""
    from oaipipe.cli import main

    (tmp_path / "in.csv").write_text("id,text\n1,hello\n", encoding="utf-8")
    out = tmp_path / "out" / name
    out.parent.mkdir()
    out.write_bytes(content)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"backend: {{type: local}}\nsource: {{type: csv, path: in.csv, id_column: id}}\n"
                        f"steps:\n  - {{type: ask, prompt: '{{text}}', output: reply}}\n"
                        f"sinks:\n  - {{type: {kind}, path: out/{name}}}\n", encoding="utf-8")
    assert main(["run", str(pipeline)]) == 9
    err = capsys.readouterr().err
    assert "error: " in err and str(out) in err, err
    assert "hint: move it away" in err and "`path:`" in err and "rerun the same command" in err, err
    assert out.read_bytes() == content  # left as it is


def test_a_run_whose_sqlite_sink_finds_a_table_it_did_not_write_exits_9(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An SQLite table the sink did not write (no ``_id``/``_run`` columns) is not changed, and the run stops
    with exit 9 naming the database, the table and the fix (it was 3, an input error)."""
    import sqlite3

    from oaipipe.cli import main

    (tmp_path / "in.csv").write_text("id,text\n1,hello\n", encoding="utf-8")
    db = tmp_path / "mine.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE records (name TEXT)")
        conn.execute("INSERT INTO records VALUES ('mine')")
    conn.close()
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("backend: {type: local}\nsource: {type: csv, path: in.csv, id_column: id}\n"
                        "sinks:\n  - {type: sqlite, path: mine.db}\n", encoding="utf-8")
    assert main(["run", str(pipeline)]) == 9
    err = capsys.readouterr().err
    assert f"{db}: table 'records' exists and was not written by this sink" in err, err
    assert "hint: name another `table:`" in err and "rerun the same command" in err, err
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT * FROM records").fetchall() == [("mine",)]
    conn.close()
