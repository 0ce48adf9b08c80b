"""What a new user is told must work when followed."""
from __future__ import annotations

from pathlib import Path

import pytest

from oaipipe.cli import main
from oaipipe.jobs import JobRegistry

ROOT = Path(__file__).resolve().parent.parent


def test_the_already_trained_note_of_a_run_names_an_option_the_run_has(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"""name: again
backend: {{type: local, model: gpt-4o-mini}}
source: {{type: csv, path: {ROOT / 'examples/data/reviews.csv'}, id_column: id}}
steps:
  - {{type: ask, system: "You are a helpful support agent.", prompt: "Reply to: {{text}}", output: reply}}
sinks: []
train: {{type: local, method: supervised}}
""", encoding="utf-8")
    assert main(["run", str(pipeline)]) == 0
    assert len(JobRegistry().list()) == 1
    capsys.readouterr()
    assert main(["run", str(pipeline), "--fresh"]) == 0
    err = capsys.readouterr().err
    assert "already trained" in err and "force: true" in err  # `oaipipe run` has no --force option
    assert main(["run", str(pipeline), "--fresh", "--set", "train.force=true"]) == 0
    assert len(JobRegistry().list()) == 2


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_folder_without_pipeline_yaml_says_what_was_looked_for_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: str) -> None:
    """``oaipipe validate DIR/`` where DIR holds no pipeline.yaml: the error names what was looked for and
    the fix: the folder's own pipeline files by name, or how to write one (it said only "is a folder
    without a pipeline.yaml", with no hint)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main([command, "empty/"]) == 2
    err = capsys.readouterr().err
    assert "error: empty/ has no pipeline.yaml" in err and "empty/pipeline.yaml" in err, err
    assert "hint: " in err and "README" in err and "oaipipe schema" in err, err
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "p2.yaml").write_text("source: {type: csv, path: in.csv}\n", encoding="utf-8")
    assert main([command, "work"]) == 2
    err = capsys.readouterr().err
    assert "error: work/ has no pipeline.yaml" in err, err
    assert "hint: give the pipeline file's path instead of the folder: work/p2.yaml" in err, err


@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_hint_of_a_missing_input_names_the_pipeline_file_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: str) -> None:
    """The fix of a missing input file names the pipeline file as the user gave it (``p2.yaml``, a folder's
    ``work/pipeline.yaml``), not "pipeline.yaml" whatever the file is called; without a file (a pipeline
    built in code) it names the folder relative paths are resolved against."""
    import oaipipe
    from oaipipe.errors import InputError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p2.yaml").write_text("source: {type: csv, path: data.csv}\n", encoding="utf-8")
    assert main([command, "p2.yaml"]) == 3
    err = capsys.readouterr().err
    assert "error: p2.yaml:1:21: source.path: CSV file not found: data.csv" in err, err
    assert "hint: paths in p2.yaml are relative to the folder it is in" in err, err
    assert "pipeline.yaml" not in err, err
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "pipeline.yaml").write_text("source: {type: jsonl, path: data.jsonl}\n", encoding="utf-8")
    assert main([command, "work"]) == 3
    assert "hint: paths in work/pipeline.yaml are relative to the folder it is in" in capsys.readouterr().err
    with pytest.raises(InputError) as raised:
        oaipipe.Pipeline({"source": {"type": "csv", "path": "data.csv"}}, base_dir=tmp_path)
    assert raised.value.hint == f"relative paths are resolved against {tmp_path}; check the spelling or give an " \
                                "absolute path"


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(("override", "code", "said"), [
    ("source.path=missing.csv", 3, "source.path (from --set source.path=missing.csv): CSV file not found"),
    ("backend.concurrency=0", 2, "backend.concurrency (from --set backend.concurrency=0): Input should be"),
    ("backend.concurency=3", 2, "backend.concurency (from --set backend.concurency=3): unknown key 'concurency'"),
    ("sourc.path=in.csv", 2, "sourc (from --set sourc.path=in.csv): unknown key 'sourc'"),
    ("sinks.0.path=in.csv", 2, "sinks.0.path (from --set sinks.0.path=in.csv): sink 0 would write in.csv"),
    ("backend.api_key=[1, 2]", 2, "backend.api_key (from --set backend.api_key=***): Input should be a valid"),
])
def test_a_wrong_value_given_with_set_says_it_came_from_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: str,
        override: str, code: int, said: str) -> None:
    """A value given with ``--set`` that is wrong is reported naming the ``--set`` where a line of the file
    would be (``p2.yaml: source.path (from --set source.path=missing.csv): ...``); it said ``p2.yaml:
    source.path:``, as if the file had the key without a line. A secret's value is not shown."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n", encoding="utf-8")
    (tmp_path / "p2.yaml").write_text("backend: {type: local}\nsource: {type: csv, path: in.csv}\n"
                                      "sinks:\n  - {type: jsonl, path: out/records.jsonl}\n", encoding="utf-8")
    assert main([command, "p2.yaml", "--set", override]) == code
    err = capsys.readouterr().err
    assert f"error: p2.yaml: {said}" in err, err


def test_validate_json_gives_the_set_of_each_problem_and_lists_several(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``validate --json``: a problem of a ``--set`` value has ``origin`` (the ``--set``), one of the file its
    line and no origin; several problems of one block are each listed with their own ``--set``."""
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n", encoding="utf-8")
    (tmp_path / "p2.yaml").write_text("backend: {type: local, max_retries: -1}\nsource: {type: csv, path: in.csv}\n",
                                      encoding="utf-8")
    argv = ["p2.yaml", "--set", "backend.concurrency=0", "--set", "backend.timeout=-1"]
    assert main(["validate", *argv, "--json"]) == 2
    problems = {p["key"]: p for p in json.loads(capsys.readouterr().out)["problems"]}
    assert problems["backend.concurrency"]["origin"] == "--set backend.concurrency=0"
    assert problems["backend.timeout"]["origin"] == "--set backend.timeout=-1"
    assert problems["backend.max_retries"]["origin"] is None and problems["backend.max_retries"]["line"] == 1
    assert main(["validate", *argv]) == 2
    err = capsys.readouterr().err
    assert "p2.yaml: backend.timeout (from --set backend.timeout=-1): " in err, err
    assert "p2.yaml:1:" in err and "backend.max_retries: " in err, err


def test_a_warning_about_a_value_given_with_set_names_the_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Warnings name the ``--set`` that gave the value (they said ``p2.yaml (--set)``), and the fix of an unset
    variable is to drop that --set, not to "remove the line" the file does not have."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OAIPIPE_TEST_UNSET", raising=False)
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n", encoding="utf-8")
    (tmp_path / "p2.yaml").write_text("backend: {type: local}\nsource: {type: csv, path: in.csv}\n", encoding="utf-8")
    assert main(["validate", "p2.yaml", "--set", "backend.api_key=${env:OAIPIPE_TEST_UNSET}",
                 "--set", "backend.deadline=2h"]) == 0
    out = capsys.readouterr().out
    assert ("warning: p2.yaml (--set backend.api_key=***): backend.api_key is ${env:OAIPIPE_TEST_UNSET}, and "
            "OAIPIPE_TEST_UNSET is not set, so no key is sent; export OAIPIPE_TEST_UNSET=... or drop that --set") in out
    assert "warning: p2.yaml (--set backend.deadline=2h): backend.deadline: 2h has no effect" in out, out
