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
