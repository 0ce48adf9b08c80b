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
