from __future__ import annotations

import json
import os

import pytest

from oaipipe import fsutil
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


def test_atomic_writes_never_change_the_process_umask(tmp_path, monkeypatch):
    # os.umask is process-wide: setting it to 0 even for an instant lets a file another thread creates
    # meanwhile come out world-writable. The mode of a written file must not depend on it.
    import os
    import stat

    expected = 0o666 & ~fsutil._umask()

    def no_umask(mask):
        raise AssertionError("os.umask called during an atomic write")

    monkeypatch.setattr(os, "umask", no_umask)
    for i in range(3):
        fsutil.write_text_atomic(tmp_path / f"f{i}.txt", "x")
        assert stat.S_IMODE((tmp_path / f"f{i}.txt").stat().st_mode) == expected


def test_a_fifo_is_never_replaced_by_a_plain_file(tmp_path):
    # as root, `dataset export -o /dev/null` once replaced /dev/null with a regular file: a device, FIFO or
    # socket in the way is an OSError naming it, and stays what it was
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as caught:
        write_text_atomic(fifo, "x")
    assert caught.value.filename == str(fifo) and "not a regular file" in caught.value.strerror
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no temp file left


def test_a_temp_file_that_cannot_be_made_is_reported_under_the_targets_name(tmp_path, monkeypatch):
    # `dataset export -o /sys/x.jsonl` said "cannot access /sys/.x.jsonl.6g_jicsg.oaipipe.tmp"
    import errno
    import tempfile

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, ".x.jsonl.abc.oaipipe.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    target = tmp_path / "x.jsonl"
    with pytest.raises(PermissionError) as caught:
        write_text_atomic(target, "x")
    assert caught.value.filename == str(target) and caught.value.errno == errno.EACCES
