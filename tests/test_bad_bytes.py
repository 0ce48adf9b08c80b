"""Bad bytes in the text files a user writes (the pipeline file, an assistants file): a clear error naming
the file, line and column, with a fix, and the exit code of a usage error; never "unexpected ... bug"."""
from __future__ import annotations

from pathlib import Path

import pytest

from oaipipe.cli import main

PIPELINE = "name: x\nbackend: {type: local, model: gpt-4o-mini}\nsource: {type: jsonl, path: in.jsonl}\n"


@pytest.mark.parametrize(("bad", "expected"), [
    (b"\xff", "byte 0xff at byte offset"),   # not UTF-8
    (b"\x00", "U+0000"),                     # UTF-8, but a character YAML refuses
    (b"\x07", "U+0007"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_bytes_in_the_pipeline_file_name_its_line_and_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture, bad: bytes, expected: str, command: str) -> None:
    path = tmp_path / "p.yaml"
    lines = PIPELINE.encode().split(b"\n")
    lines[2] = lines[2].replace(b"in.jsonl", b"in" + bad + b".jsonl")
    path.write_bytes(b"\n".join(lines))
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert "bug in oaipipe" not in err and "error: unexpected" not in err
    assert f"{path}:3:" in err and expected in err
    assert "hint:" in err


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("bad", [b"\xff", b"\x00"])
def test_bad_bytes_in_an_assistants_file_name_its_line_and_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture, suffix: str, bad: bytes) -> None:
    path = tmp_path / f"assistants{suffix}"
    if suffix == ".json":
        path.write_bytes(b'{"helper":\n {"instructions": "hi' + bad + b'"}}\n')
    else:
        path.write_bytes(b"helper:\n  instructions: hi" + bad + b"\n")
    assert main(["assistants", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bug in oaipipe" not in err and "error: unexpected" not in err
    assert f"{path}:2:" in err and "hint:" in err


@pytest.mark.parametrize("bad", [b'[{"role": "user", "content": "caf\xc3', b'[{"role": "user", \xff}]'])
def test_a_dialogue_json_file_with_bad_bytes_is_named_and_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture, bad: bytes) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "hello"}\n', encoding="utf-8")
    doc = tmp_path / "out" / "dialogue.json"
    doc.parent.mkdir()
    doc.write_bytes(bad)
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE + "steps:\n  - {type: ask, prompt: '{text}', output: reply}\n"
                    "sinks:\n  - {type: dialogue-json, path: out/dialogue.json}\n", encoding="utf-8")
    assert main(["run", str(path)]) == 9  # an output it will not write (IO_ERROR), not an input error
    err = capsys.readouterr().err
    assert "bug in oaipipe" not in err and "error: unexpected" not in err
    # named with where it stops being a JSON array (bad bytes included) and how to get past it
    assert str(doc) in err and "will not be overwritten" in err and "hint:" in err
    assert doc.read_bytes() == bad  # not overwritten


def test_a_csv_sink_torn_inside_a_utf8_character_by_a_kill_is_repaired_on_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "café"}\n{"id": "b", "text": "naïve"}\n'
                                       '{"id": "c", "text": "plain"}\n', encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE + "steps: []\nsinks:\n  - {type: csv, path: out/records.csv}\n", encoding="utf-8")
    assert main(["run", str(path), "--limit", "1"]) == 0
    sink = tmp_path / "out" / "records.csv"
    sink.write_bytes(sink.read_bytes() + b"b,na\xc3")  # a SIGKILL in the middle of writing "naïve"
    assert main(["run", str(path)]) == 0
    text = sink.read_text(encoding="utf-8")
    ids = [line.split(",")[0] for line in text.splitlines()[1:]]
    assert len(ids) == 3 == len(set(ids))  # each record once, the torn row gone
    assert "café" in text and "naïve" in text
