"""`oaipipe sentiment eval`: the metrics, the table for three analyzers, label mapping; the llm analyzer
asks the backend with a strict JSON schema, through the cache and the cost accounting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

from oaipipe.evaluate import metrics
from oaipipe.runner import run_pipeline_file

GOLD = REPO / "examples" / "data" / "sentiment_gold.csv"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from oaipipe.cli import main

    def call(*args: str, cwd: Path = REPO) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def test_metrics_match_their_definitions() -> None:
    gold = ["positive"] * 4 + ["neutral"] * 2 + ["negative"] * 3
    pred = ["positive", "positive", "positive", "negative", "neutral", "positive", "negative", "negative", "neutral"]
    m = metrics(gold, pred)
    assert m["confusion"] == {"labels": ["positive", "neutral", "negative"],
                              "matrix": [[3, 0, 1], [1, 1, 0], [0, 1, 2]]}
    assert m["accuracy"] == pytest.approx(6 / 9)
    pos, neu, neg = (m["per_class"][k] for k in ("positive", "neutral", "negative"))
    assert (pos["precision"], pos["recall"]) == (pytest.approx(3 / 4), pytest.approx(3 / 4))
    assert (neu["precision"], neu["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert (neg["precision"], neg["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert m["macro_f1"] == pytest.approx((3 / 4 + 1 / 2 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 / 4 * 4 + 1 / 2 * 2 + 2 / 3 * 3) / 9)
    # a class never predicted has precision 0 (scikit-learn's zero_division=0), not a division error
    assert metrics(["neutral", "positive"], ["positive", "positive"])["per_class"]["neutral"]["precision"] == 0


def test_eval_prints_the_table_for_three_analyzers(cli: Any, tmp_path: Path) -> None:
    code, out, err = cli("sentiment", "eval", str(GOLD), "--label-column", "gold", "-a", "vader", "-a", "keyword",
                         "--plugin", str(REPO / "plugins" / "shouty_sentiment.py"), "-a", "shouty",
                         "-o", str(tmp_path / "eval.json"), cwd=tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("analyzer"))
    assert lines[header].split()[1:5] == ["accuracy", "macro", "F1", "weighted"]
    assert [line.split()[0] for line in lines[header + 1:header + 4]] == ["vader", "keyword", "shouty"]
    assert "confusion (rows: gold, columns: predicted):" in out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["n"] == 30
    for name in ("vader", "keyword", "shouty"):
        r = result["analyzers"][name]
        again = metrics(result["gold"], r["predictions"])  # the table agrees with the predictions it saw
        assert r["accuracy"] == again["accuracy"] and r["confusion"] == again["confusion"]
        assert f"{r['accuracy']:.3f}" in next(line for line in lines if line.startswith(name))


def test_eval_gold_labels_must_be_labels_or_mapped(cli: Any, tmp_path: Path) -> None:
    data = tmp_path / "stars.jsonl"
    data.write_text("\n".join(json.dumps({"review": t, "stars": s}) for t, s in
                              [("I love it", "5"), ("awful", "1"), ("it is a box", "3")]) + "\n")
    code, _, err = cli("sentiment", "eval", str(data), "--label-column", "stars", "--text-column", "review",
                       cwd=tmp_path)
    assert code == 3 and "stars.jsonl line 1: gold label '5'" in err and "--label-map 5=positive" in err
    code, out, err = cli("sentiment", "eval", str(data), "--label-column", "stars", "--text-column", "review",
                         "--label-map", "5=positive", "--label-map", "1=negative", "--label-map", "3=neutral",
                         "-a", "vader", "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["analyzers"]["vader"]["accuracy"] == 1.0


def test_sentiment_score_texts_and_stdin(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = cli("sentiment", "I love this mug", "-a", "keyword")
    assert code == 0 and out.startswith("positive\t+1.0000\tI love this mug")
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("great\nterrible, broken\n"))
    code, out, _ = cli("sentiment", "score", "--json")
    assert code == 0 and [json.loads(x)["label"] for x in out.splitlines()] == ["positive", "negative"]


def llm_pipeline(tmp_path: Path, base_url: str) -> Path:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in
                                               enumerate(["I love it", "Broken and awful", "It is blue"])))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "name": "llm-sentiment", "backend": {"type": "openai", "base_url": base_url, "model": "gpt-4o-mini"},
        "source": {"type": "jsonl", "path": "in.jsonl", "id_field": "id"},
        "steps": [{"type": "sentiment", "analyzer": "llm", "input": "{text}", "output": "mood"}],
        "sinks": [{"type": "jsonl", "path": "out/records.jsonl"}],
        # the embedded server answers as local:<model>, unpriced unless named: price it to see the cost counted
        "prices": {"local:gpt-4o-mini": {"input": 1000, "output": 4000}}}))
    return path


def test_llm_analyzer_asks_the_backend_cached_and_costed(tmp_path: Path, server: Any) -> None:
    path = llm_pipeline(tmp_path, server.base_url)
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 3
    (row,) = summary["by_step"]
    assert row["step"] == "analyzer:llm" and row["calls"] == 3 and row["cached"] == 0 and row["cost_usd"] > 0
    records = [json.loads(x) for x in (tmp_path / "out/records.jsonl").read_text().splitlines()]
    assert all(r["mood"] in ("positive", "negative", "neutral") and -1 <= r["mood_score"] <= 1 for r in records)
    sent = server.stats()["by_path"].get("/v1/chat/completions", 0)
    assert sent == 3
    again = run_pipeline_file(path, fresh=True)  # the same calls again: answered by the response cache
    (row,) = again["by_step"]
    assert row["cached"] == 3 and again["cost_usd"] == 0
    assert server.stats()["by_path"].get("/v1/chat/completions", 0) == sent


def test_llm_analyzer_in_eval_reports_its_calls(cli: Any, tmp_path: Path, server: Any) -> None:
    path = llm_pipeline(tmp_path, server.base_url)
    code, out, err = cli("sentiment", "eval", str(GOLD), "--label-column", "gold", "-a", "vader", "-a", "llm",
                         "--pipeline", str(path), "--limit", "6", "--json", cwd=tmp_path)
    assert code == 0, err
    llm = json.loads(out)["analyzers"]["llm"]
    assert llm["calls"]["calls"] == 6 and llm["errors"] == 0 and llm["n"] == 6 and llm["calls"]["cost_usd"] > 0
    assert server.stats()["by_path"].get("/v1/chat/completions", 0) == 6
    body = json.loads(out)
    assert "calls" not in body["analyzers"]["vader"]
