"""The shipped demo: pipeline.yaml on the example data, as a new user runs it (offline, no key)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from oaipipe.cli import main
from oaipipe.runner import run_pipeline_file

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A copy of the repository's demo (pipeline, examples, plugins) in a temporary folder."""
    shutil.copy(REPO / "pipeline.yaml", tmp_path / "pipeline.yaml")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    shutil.copytree(REPO / "plugins", tmp_path / "plugins")
    return tmp_path / "pipeline.yaml"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_demo_runs_offline_and_logs_every_record(demo: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(demo)]) == 0
    captured = capsys.readouterr()
    assert "falls back to the embedded offline engine" in captured.err
    with (demo.parent / "examples/data/reviews.csv").open(encoding="utf-8") as fh:
        ids = [row["id"] for row in csv.DictReader(fh)]
    dialogue = read_jsonl(demo.parent / "out/dialogue.jsonl")
    replies = {d["record_id"]: d for d in dialogue if d["step"].startswith("ask")}
    assert sorted(replies) == sorted(ids)
    for exchange in replies.values():
        assistant = exchange["messages"][-1]
        assert assistant["role"] == "assistant" and assistant["content"]
        assert assistant["sentiment"]["label"] in {"positive", "negative", "neutral"}
    records = read_jsonl(demo.parent / "out/records.jsonl")
    assert [r["_id"] for r in records] == ids
    for r in records:
        assert r["review_sentiment"] in {"positive", "negative", "neutral"}
        assert r["image_description"]
    seed_format = json.loads((demo.parent / "out/dialogue.json").read_text(encoding="utf-8"))
    assert {"role", "content", "sentiment"} <= set(seed_format[0])
    summary = json.loads(next((demo.parent / "runs/reviews-demo").glob("*/summary.json")).read_text())
    assert summary["train"]["status"] == "succeeded"
    assert summary["train"]["fine_tuned_model"].startswith("ft:gpt-6-luna:local:")


def test_demo_survives_a_corrupt_and_a_missing_image(demo: Path) -> None:
    data = demo.parent / "examples/data/reviews.csv"
    rows = list(csv.DictReader(data.open(encoding="utf-8")))
    (demo.parent / "examples/images/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    rows[1]["image"] = "examples/images/corrupt.png"
    rows[2]["image"] = "examples/images/missing.png"
    with data.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = run_pipeline_file(demo)
    assert summary["records"]["failed"] == 2
    assert summary["records"]["done"] == len(rows) - 2
    errors = {e["id"]: e["error"] for e in read_jsonl(Path(summary["errors_file"]))}
    assert "corrupt.png" in errors[rows[1]["id"]]
    assert "missing.png" in errors[rows[2]["id"]]
    done_ids = {r["_id"] for r in read_jsonl(demo.parent / "out/records.jsonl")}
    assert rows[1]["id"] not in done_ids and rows[3]["id"] in done_ids
