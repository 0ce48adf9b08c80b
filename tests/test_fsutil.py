from __future__ import annotations

import json

import pytest

from oaipipe.fsutil import atomic_file, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_writes_replace_and_leave_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_json_atomic(target, {"b": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"b": "é"}
    write_text_atomic(target, "x\r\n")
    assert target.read_bytes() == b"x\r\n"
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_discard_and_error_keep_the_old_content(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old", encoding="utf-8")
    with atomic_file(target) as out:
        out.fh.write("new")
        out.discard()
    assert target.read_text(encoding="utf-8") == "old"
    with pytest.raises(RuntimeError), atomic_file(target) as out:
        out.fh.write("new")
        raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
