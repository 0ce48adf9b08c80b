"""Built-in sources: csv, jsonl, images: ids, where, streaming, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oaipipe.base import Context, Source
from oaipipe.errors import InputError
from oaipipe.plugins import PluginHost


def build(host: PluginHost, tmp_path: Path, **block: Any) -> Source:
    src = host.build("source", block, Context(base_dir=tmp_path, host=host))
    assert isinstance(src, Source)
    return src


# --- csv --------------------------------------------------------------------------------------------


def test_csv_ids_where_and_values_kept_as_written(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "reviews.csv").write_text('id,text,stars\nA7,"Great, really",005\nB2,,NA\n', encoding="utf-8")
    src = build(host, tmp_path, type="csv", path="reviews.csv", id_column="id")
    recs = list(src.records())
    assert [r.id for r in recs] == ["A7", "B2"]
    assert recs[0].data == {"id": "A7", "text": "Great, really", "stars": "005"}
    assert recs[1].data == {"id": "B2", "text": "", "stars": "NA"}  # no NaN guessing
    assert recs[0].where == "reviews.csv row 1 (line 2)"
    assert recs[1].where == "reviews.csv row 2 (line 3)"
    assert all(r.error is None for r in recs)
    assert src.fields() == ["id", "text", "stars"]
    assert src.count() == 2


def test_csv_without_id_column_numbers_rows(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text\nx\ny\nz\n", encoding="utf-8")
    src = build(host, tmp_path, type="csv", path="d.csv")
    assert [r.id for r in src.records()] == ["row-1", "row-2", "row-3"]


def test_csv_line_numbers_follow_multiline_values(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text('id,text\n1,"two\nlines"\n2,after\n', encoding="utf-8")
    recs = list(build(host, tmp_path, type="csv", path="m.csv", id_column="id").records())
    assert recs[0].data["text"] == "two\nlines"
    assert recs[1].where == "m.csv row 2 (line 4)"


def test_csv_columns_subset_keeps_id_and_order(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,id,b,c\n1,x,2,3\n", encoding="utf-8")
    src = build(host, tmp_path, type="csv", path="d.csv", id_column="id", columns=["c", "a"])
    assert src.fields() == ["id", "c", "a"]
    [rec] = list(src.records())
    assert rec.data == {"id": "x", "c": "3", "a": "1"}


def test_csv_delimiter_and_encoding(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_bytes("id;text\n1;caf\xe9\n".encode("latin-1"))
    src = build(host, tmp_path, type="csv", path="d.csv", id_column="id", delimiter=";", encoding="latin-1")
    assert [r.data["text"] for r in src.records()] == ["caf\u00e9"]


def test_csv_wrong_encoding_fails_the_row_naming_line_and_byte_offset(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_bytes("id,text\n1,caf\xe9\n2,ok\n".encode("latin-1"))
    src = build(host, tmp_path, type="csv", path="d.csv")
    recs = list(src.records())
    assert [r.error is None for r in recs] == [False, True]
    error = recs[0].error or ""
    assert error.startswith("d.csv row 1 (line 2):")
    assert "byte 0xe9 at byte offset 13" in error and "encoding" in error  # 8 header bytes + "1,caf"


def test_csv_streams_row_by_row(host: PluginHost, tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as fh:
        fh.write("id,text\n")
        for i in range(20_000):
            fh.write(f"r{i},text number {i} " + "x" * 100 + "\n")
    src = build(host, tmp_path, type="csv", path="big.csv")
    gen = src.records()
    assert next(gen).data["id"] == "r0"
    tracemalloc.start()
    try:
        last = None
        for last in gen:  # noqa: B007 - only the last one is kept
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert last is not None and last.id == "row-20000"
    assert peak < path.stat().st_size // 10  # the 2.5 MB file is never held whole
    assert src.count() == 20_000


def test_csv_missing_file_names_path_and_folder(host: PluginHost, tmp_path: Path) -> None:
    src = build(host, tmp_path, type="csv", path="data/nope.csv")
    with pytest.raises(InputError) as err:
        list(src.records())
    msg = str(err.value)
    assert "data/nope.csv" in msg and str(tmp_path) in msg
    assert err.value.exit_code == 3


def test_csv_folder_instead_of_file(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError, match="folder, not a file"):
        list(build(host, tmp_path, type="csv", path="data").records())


def test_csv_missing_id_column_lists_columns_and_did_you_mean(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "reviews.csv").write_text("review_id,text\n1,x\n", encoding="utf-8")
    src = build(host, tmp_path, type="csv", path="reviews.csv", id_column="reviewid")
    with pytest.raises(InputError) as err:
        list(src.records())
    msg = str(err.value)
    assert "reviews.csv" in msg and "'reviewid'" in msg
    assert "did you mean 'review_id'" in msg
    assert "review_id, text" in msg
    with pytest.raises(InputError):
        src.fields()


def test_csv_missing_entry_of_columns(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("id,Text\n1,x\n", encoding="utf-8")
    src = build(host, tmp_path, type="csv", path="d.csv", columns=["text"])
    with pytest.raises(InputError) as err:
        list(src.records())
    assert "did you mean 'Text'" in str(err.value) and "source.columns" in str(err.value)


def test_csv_wrong_delimiter_hint(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("id;text\n1;x\n", encoding="utf-8")
    src = build(host, tmp_path, type="csv", path="d.csv", id_column="id")
    with pytest.raises(InputError) as err:
        list(src.records())
    assert "delimiter: ';'" in str(err.value)


def test_csv_empty_file_and_header_only_give_zero_records(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    (tmp_path / "header.csv").write_text("id,text\n", encoding="utf-8")
    empty = build(host, tmp_path, type="csv", path="empty.csv")
    assert list(empty.records()) == []
    assert empty.fields() is None  # nothing to check templates against
    assert empty.count() == 0
    header = build(host, tmp_path, type="csv", path="header.csv", id_column="id")
    assert list(header.records()) == []
    assert header.fields() == ["id", "text"]
    assert header.count() == 0


def test_csv_duplicate_and_empty_ids_become_error_records(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("id,text\na,1\nb,2\na,3\n,4\n", encoding="utf-8")
    recs = list(build(host, tmp_path, type="csv", path="d.csv", id_column="id").records())
    assert [r.id for r in recs] == ["a", "b", "a", "row-4"]
    assert recs[0].error is None and recs[1].error is None
    assert recs[2].error is not None
    assert "duplicate id 'a'" in recs[2].error and "also at row 1" in recs[2].error
    assert "row 3" in recs[2].error
    assert recs[3].error is not None and "empty id" in recs[3].error


def test_csv_unknown_option_is_a_config_error(host: PluginHost, tmp_path: Path) -> None:
    from oaipipe.errors import ConfigError

    with pytest.raises(ConfigError):
        build(host, tmp_path, type="csv", path="d.csv", id_colum="id")


# --- jsonl ------------------------------------------------------------------------------------------


def test_jsonl_records_ids_and_bad_lines(host: PluginHost, tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "q1", "text": "hello"}),
        "",
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"id": 7, "text": "int id"}),
        json.dumps({"text": "no id"}),
        json.dumps({"id": "q1", "text": "again"}),
    ]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    src = build(host, tmp_path, type="jsonl", path="q.jsonl", id_field="id")
    recs = list(src.records())
    assert len(recs) == 6  # the blank line is skipped
    assert recs[0].id == "q1" and recs[0].data == {"id": "q1", "text": "hello"} and recs[0].error is None
    assert recs[0].where == "q.jsonl line 1"
    assert recs[1].error is not None and "line 3" in recs[1].error and "invalid JSON" in recs[1].error
    assert recs[1].id == "line-3"
    assert recs[2].error is not None and "line 4" in recs[2].error and "object" in recs[2].error
    assert recs[3].id == "7" and recs[3].error is None
    assert recs[4].error is not None and "no 'id'" in recs[4].error and "text" in recs[4].error
    assert recs[5].error is not None and "duplicate id 'q1'" in recs[5].error and "line 1" in recs[5].error


def test_jsonl_without_id_field_uses_line_numbers(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text('{"a": 1}\n\n{"a": 2}', encoding="utf-8")
    src = build(host, tmp_path, type="jsonl", path="q.jsonl")
    assert [(r.id, r.data) for r in src.records()] == [("line-1", {"a": 1}), ("line-3", {"a": 2})]


def test_jsonl_bad_utf8_line_is_one_error_record(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_bytes(b'{"a": 1}\n{"a": "\xff"}\n{"a": 3}\n')
    recs = list(build(host, tmp_path, type="jsonl", path="q.jsonl").records())
    assert [r.error is None for r in recs] == [True, False, True]
    assert "line 2" in (recs[1].error or "")


def test_jsonl_missing_and_empty_file(host: PluginHost, tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        list(build(host, tmp_path, type="jsonl", path="nope.jsonl").records())
    assert "nope.jsonl" in str(err.value)
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    assert list(build(host, tmp_path, type="jsonl", path="empty.jsonl").records()) == []


# --- images -----------------------------------------------------------------------------------------


def _img(path: Path, color: str = "red") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def test_images_sorted_ids_and_fields(host: PluginHost, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _img(folder / "b.png")
    _img(folder / "a.JPG")
    _img(folder / "sub" / "c.png")
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    src = build(host, tmp_path, type="images", path="imgs")
    recs = list(src.records())
    assert [r.id for r in recs] == ["a.JPG", "b.png"]
    assert recs[0].data == {"id": "a.JPG", "image": str((folder / "a.JPG").resolve()), "filename": "a.JPG"}
    assert recs[0].where == "imgs/a.JPG"
    assert src.count() == 2
    assert src.fields() == ["id", "image", "filename"]
    deep = build(host, tmp_path, type="images", path="imgs", recursive=True)
    assert [r.id for r in deep.records()] == ["a.JPG", "b.png", "sub/c.png"]


def test_images_pattern_and_extensions(host: PluginHost, tmp_path: Path) -> None:
    _img(tmp_path / "imgs" / "mug.png")
    _img(tmp_path / "imgs" / "lamp.png")
    _img(tmp_path / "imgs" / "mug.jpg")
    src = build(host, tmp_path, type="images", path="imgs", pattern="mug*", extensions=[".PNG"])
    assert [r.id for r in src.records()] == ["mug.png"]


def test_images_missing_folder_and_file_instead(host: PluginHost, tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        list(build(host, tmp_path, type="images", path="pics").records())
    assert "pics" in str(err.value) and str(tmp_path) in str(err.value)
    _img(tmp_path / "one.png")
    with pytest.raises(InputError, match="not a folder"):
        list(build(host, tmp_path, type="images", path="one.png").records())


def test_images_empty_folder_is_zero_records(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    assert list(build(host, tmp_path, type="images", path="pics").records()) == []


# --- the shipped example data -------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_shipped_reviews_csv_reads_and_every_image_exists(host: PluginHost) -> None:
    src = build(host, REPO, type="csv", path="examples/data/reviews.csv", id_column="id")
    assert src.fields() == ["id", "text", "image"]
    recs = list(src.records())
    assert 15 <= len(recs) <= 30
    assert all(r.error is None and r.data["text"] for r in recs)
    images = {r.data["image"] for r in recs}
    assert len(images) == 5
    for rel in images:
        path = REPO / rel
        assert path.is_file(), rel
        assert path.stat().st_size < 30_000
        with Image.open(path) as im:
            im.verify()
    labels = {host.analyzer("vader").analyze(r.data["text"]).label for r in recs}
    assert labels == {"positive", "negative", "neutral"}


def test_shipped_images_folder_and_exif_portrait(host: PluginHost) -> None:
    from PIL import ImageOps

    src = build(host, REPO, type="images", path="examples/images")
    names = [r.id for r in src.records()]
    assert names == sorted(names) and "yellow_lamp.jpg" in names and len(names) == 5
    with Image.open(REPO / "examples/images/yellow_lamp.jpg") as im:
        assert im.getexif().get(0x0112) == 6
        assert im.width > im.height  # stored sideways ...
        upright = ImageOps.exif_transpose(im)
        assert upright.height > upright.width  # ... displayed in portrait


def test_shipped_jsonl_and_qa_files(host: PluginHost) -> None:
    recs = list(build(host, REPO, type="jsonl", path="examples/data/questions.jsonl", id_field="id").records())
    assert recs and all(r.error is None and r.data["text"] for r in recs)
    qa = list(build(host, REPO, type="csv", path="examples/data/qa.csv").records())
    assert len(qa) >= 10 and all(r.data["prompt"] and r.data["completion"] for r in qa)


@pytest.mark.parametrize("chunksize", [2, 1000])
def test_csv_row_with_the_wrong_number_of_fields_fails_alone(host, tmp_path: Path, chunksize: int) -> None:
    (tmp_path / "bad.csv").write_text('id,text\n1,ok\n2,a,b,c\n3,fine\n4,"multi\nline"\n5,x,y\n6,end\n',
                                      encoding="utf-8")
    src = host.build("source", {"type": "csv", "path": "bad.csv", "id_column": "id", "chunksize": chunksize},
                     Context(base_dir=tmp_path, host=host))
    records = list(src.records())
    assert [r.id for r in records if r.error is None] == ["1", "3", "4", "6"]
    failed = [r for r in records if r.error is not None]
    assert [r.where for r in failed] == ["bad.csv row 2 (line 3)", "bad.csv row 5 (line 7)"]
    assert "expected 2 fields, saw 4" in failed[0].error
    assert [r.id for r in records] == ["1", "line-3", "3", "4", "line-7", "6"]  # input order kept
    assert records[3].where == "bad.csv row 4 (line 5)"  # line numbers stay honest after a skipped line
