"""Parquet, Hugging Face datasets on disk, SQLite tables and Excel: sources and sinks through real runs."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from oaipipe.errors import ConfigError, InputError, StorageError
from oaipipe.runner import run_pipeline_file

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = ["I love this mug, it is great!", "Terrible, it broke on day one.", "It holds 350 ml.",
         "Wonderful service, thank you", "The worst purchase ever"]


def pipeline(tmp_path: Path, source: dict[str, Any], sinks: list[dict[str, Any]], **extra: Any) -> Path:
    data = {"name": "formats", "backend": {"type": "local"}, "source": source,
            "steps": [{"type": "sentiment", "analyzer": "vader", "input": "{text}", "output": "mood"}],
            "sinks": sinks, **extra}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def typed_table() -> Any:
    n = len(TEXTS)
    return pa.table({
        "id": pa.array([f"r{i}" for i in range(n)]),
        "text": pa.array(TEXTS),
        "count": pa.array(list(range(n)), pa.int64()),
        "price": pa.array([1.5 * i for i in range(n)], pa.float64()),
        "ok": pa.array([i % 2 == 0 for i in range(n)]),
        "when": pa.array([dt.datetime(2026, 1, 1 + i, 12, 30) for i in range(n)], pa.timestamp("us")),
        "day": pa.array([dt.date(2026, 2, 1 + i) for i in range(n)], pa.date32()),
        "tags": pa.array([["a", "b"][: i % 3] for i in range(n)], pa.list_(pa.string())),
        "meta": pa.array([{"k": i, "s": f"v{i}"} for i in range(n)]),
        "maybe": pa.array([None if i % 2 else i for i in range(n)], pa.int64()),
    })


def check_round_trip(source: Any, out: Any) -> None:
    """Every source column is in the output, with its type and values, after _id/_run; mood added."""
    assert out.column_names[:2] == ["_id", "_run"]
    for name in source.column_names:
        assert out.schema.field(name).type == source.schema.field(name).type, name
        assert out.column(name).to_pylist() == source.column(name).to_pylist(), name
    assert out.column("_id").to_pylist() == source.column("id").to_pylist()
    assert out.column("mood").to_pylist()[:2] == ["positive", "negative"]
    assert out.schema.field("mood_score").type == pa.float64()


def test_parquet_round_trip_keeps_every_column_and_type(tmp_path: Path) -> None:
    table = typed_table()
    pq.write_table(table, tmp_path / "in.parquet")
    path = pipeline(tmp_path, {"type": "parquet", "path": "in.parquet", "id_column": "id", "batch_size": 2},
                    [{"type": "parquet", "path": "out/records.parquet"}])
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == len(TEXTS) and summary["records"]["total"] == len(TEXTS)
    check_round_trip(table, pq.read_table(tmp_path / "out/records.parquet"))


def test_hf_dataset_round_trip_keeps_every_column_and_type(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    table = typed_table()
    datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(tmp_path / "in_ds"))
    path = pipeline(tmp_path, {"type": "hf-dataset", "path": "in_ds", "id_column": "id", "batch_size": 2},
                    [{"type": "hf-dataset", "path": "out/ds"}])
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == len(TEXTS)
    out = datasets.load_from_disk(str(tmp_path / "out/ds"))
    check_round_trip(table, out.data.table)


def test_hf_dataset_dict_needs_a_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "text": ["good", "bad"]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    path = pipeline(tmp_path, {"type": "hf-dataset", "path": "dd", "id_column": "id"},
                    [{"type": "jsonl", "path": "out/r.jsonl"}])
    with pytest.raises(InputError, match="split"):
        run_pipeline_file(path)
    path = pipeline(tmp_path, {"type": "hf-dataset", "path": "dd", "id_column": "id", "split": "test"},
                    [{"type": "jsonl", "path": "out/r.jsonl"}])
    assert run_pipeline_file(path)["records"]["done"] == 2


def test_parquet_sink_exactly_once_after_a_kill_before_close(tmp_path: Path) -> None:
    """A run killed before close() leaves the Parquet file as it was but the row log complete: the resumed
    run writes every record exactly once."""
    from oaipipe.base import Context
    from oaipipe.builtin.format_parquet import ParquetSink
    from oaipipe.types import Record, RecordResult, RunInfo

    ctx = Context(base_dir=tmp_path)
    run = RunInfo("p", "R1", str(tmp_path), "local", "m")

    def res(i: int) -> RecordResult:
        return RecordResult(Record(f"r{i}", {}), {"n": i})

    sink = ParquetSink(ParquetSink.Options(path="out.parquet"), ctx)
    sink.open(run, None)
    for i in range(3):
        sink.write(res(i))
    sink._fh.close()  # killed: no close(), no Parquet file yet; r2 was written but never journaled
    sink._fh = None
    assert not (tmp_path / "out.parquet").exists()
    again = ParquetSink(ParquetSink.Options(path="out.parquet"), ctx)
    again.open(run, {"r0", "r1"})
    for i in (2, 3):
        again.write(res(i))
    again.close()
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("_id").to_pylist() == ["r0", "r1", "r2", "r3"]
    assert table.column("n").to_pylist() == [0, 1, 2, 3]


def test_parquet_sink_refuses_a_file_it_did_not_write(tmp_path: Path) -> None:
    pq.write_table(typed_table(), tmp_path / "in.parquet")
    pq.write_table(typed_table(), tmp_path / "theirs.parquet")
    path = pipeline(tmp_path, {"type": "parquet", "path": "in.parquet", "id_column": "id"},
                    [{"type": "parquet", "path": "theirs.parquet"}])
    with pytest.raises(StorageError, match="not written by this sink"):
        run_pipeline_file(path)
    assert pq.read_table(tmp_path / "theirs.parquet").equals(typed_table())


def test_parquet_duplicate_id_fails_that_row_alone(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": ["a", "b", "a"], "text": ["good", "bad", "fine"]}), tmp_path / "in.parquet")
    path = pipeline(tmp_path, {"type": "parquet", "path": "in.parquet", "id_column": "id"},
                    [{"type": "jsonl", "path": "out/r.jsonl"}])
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 2 and summary["records"]["failed"] == 1
    errors = (Path(summary["errors_file"])).read_text()
    assert "in.parquet row 3" in errors and "duplicate id 'a'" in errors


def test_sqlite_table_round_trip_and_resume_rows(tmp_path: Path) -> None:
    db = tmp_path / "in.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE reviews (id TEXT, text TEXT, stars INTEGER, weight REAL, raw BLOB)")
        conn.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?, ?)",
                         [(f"r{i}", t, i, i / 2, bytes([i])) for i, t in enumerate(TEXTS)])
    path = pipeline(tmp_path, {"type": "sqlite", "path": "in.db", "table": "reviews", "id_column": "id",
                               "batch_size": 2},
                    [{"type": "sqlite", "path": "out/out.db", "table": "scored"}])
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == len(TEXTS) and summary["records"]["total"] == len(TEXTS)
    with sqlite3.connect(tmp_path / "out/out.db") as conn:
        rows = conn.execute("SELECT _id, id, text, stars, weight, raw, mood FROM scored ORDER BY _id").fetchall()
    assert rows[0] == ("r0", "r0", TEXTS[0], 0, 0.0, b"\x00", "positive")
    assert [r[3] for r in rows] == list(range(len(TEXTS)))
    # a second run in overwrite mode starts the table over: still one row per record
    run_pipeline_file(path, fresh=True)
    with sqlite3.connect(tmp_path / "out/out.db") as conn:
        assert conn.execute("SELECT count(*) FROM scored").fetchone()[0] == len(TEXTS)


def test_sqlite_source_query_and_unknown_table(tmp_path: Path) -> None:
    db = tmp_path / "in.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE reviews (id TEXT, text TEXT)")
        conn.executemany("INSERT INTO reviews VALUES (?, ?)", [("a", "good"), ("b", "bad")])
    path = pipeline(tmp_path, {"type": "sqlite", "path": "in.db", "table": "review", "id_column": "id"},
                    [{"type": "jsonl", "path": "out/r.jsonl"}])
    with pytest.raises(InputError, match="no table 'review' \\(did you mean 'reviews'\\?\\)"):
        run_pipeline_file(path)
    path = pipeline(tmp_path, {"type": "sqlite", "path": "in.db", "query": "SELECT * FROM reviews WHERE id = 'b'",
                               "id_column": "id"}, [{"type": "jsonl", "path": "out/r.jsonl"}])
    assert run_pipeline_file(path)["records"]["done"] == 1


def test_excel_source_streams_typed_rows(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = "Reviews"
    ws.append([])  # a blank first row: the header is the first non-empty one
    ws.append(["id", "text", "stars", "when"])
    for i, text in enumerate(TEXTS):
        ws.append([f"r{i}", text, i, dt.datetime(2026, 3, 1 + i)])
    ws.append(["r0", "dup", 1, None])
    book.save(tmp_path / "in.xlsx")
    path = pipeline(tmp_path, {"type": "excel", "path": "in.xlsx", "sheet": "Reviews", "id_column": "id"},
                    [{"type": "parquet", "path": "out/r.parquet"}])
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == len(TEXTS) and summary["records"]["failed"] == 1
    assert "in.xlsx sheet 'Reviews' row 8" in Path(summary["errors_file"]).read_text()
    out = pq.read_table(tmp_path / "out/r.parquet")
    assert out.column("stars").to_pylist() == list(range(len(TEXTS)))
    assert out.column("when").to_pylist()[1] == dt.datetime(2026, 3, 2)


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_openpyxl(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "openpyxl":
            raise ImportError("No module named 'openpyxl'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openpyxl)
    monkeypatch.delitem(__import__("sys").modules, "openpyxl", raising=False)
    from oaipipe.extras import require

    with pytest.raises(ConfigError) as err:
        require("openpyxl", extra="excel", feature="the excel source")
    assert "pip install 'oaipipe[excel]'" in str(err.value)
