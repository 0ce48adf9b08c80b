"""``oaipipe.Client`` (one-off calls from Python) and ``oaipipe ask``/``oaipipe sentiment`` on the command
line: stdin, -m/-s, --sentiment, --log (issue 12 items 3 and 4)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import oaipipe
from oaipipe.cli import main

REPO = Path(__file__).resolve().parent.parent
OAIPIPE = str(Path(sys.executable).parent / "oaipipe")


def test_client_ask_offline_returns_reply_both_sentiments_and_a_dialogue_line(tmp_path: Path) -> None:
    log = tmp_path / "dialogue.jsonl"
    client = oaipipe.Client(system="Be kind.", dialogue=log, cache_dir=tmp_path / "cache")
    reply = client.ask("I love this product, it is wonderful!")
    assert reply.backend == "local" and reply.text
    assert reply.input_sentiment is not None and reply.input_sentiment.label == "positive"
    assert reply.sentiment is not None and reply.sentiment.label in ("positive", "neutral", "negative")
    assert reply.usage.total_tokens > 0 and reply.cost_usd == 0.0
    (line,) = log.read_text().splitlines()
    entry = json.loads(line)
    assert [m["role"] for m in entry["messages"]] == ["system", "user", "assistant"]
    assert entry["messages"][1]["sentiment"]["label"] == "positive"
    assert entry["messages"][2]["content"] == reply.text and entry["messages"][2]["sentiment"]
    assert {"run_id", "record_id", "step", "time", "model", "backend", "usage", "cached"} <= set(entry)
    # the dialogue log is training material, as the dialogue-jsonl sink's is
    from oaipipe.training import read_examples

    assert len(read_examples(log)) == 1


def test_client_calls_go_through_the_cache_and_are_counted(tmp_path: Path, server: Any) -> None:
    client = oaipipe.Client(backend="requests", base_url=server.base_url, analyzer=None,
                            cache_dir=tmp_path / "cache")
    first = client.ask("Where is my parcel?")
    second = client.ask("Where is my parcel?")
    assert first.backend == "requests" and not first.cached
    assert second.cached and second.text == first.text
    assert server.stats()["requests"] == 1  # the second answer came from the response cache
    assert first.sentiment is None and client.stats.calls == 2 and client.stats.cached == 1


def test_client_async_twins_and_inside_a_running_loop(tmp_path: Path) -> None:
    client = oaipipe.Client(analyzer="keyword", cache=False)

    async def main_() -> tuple[Any, ...]:
        blocking = client.ask("hello there")  # inside the running loop
        replies = await asyncio.gather(client.aask("I love it"), client.aask("awful"))
        models = await client.amodels()
        jobs = await client.ajobs()
        return blocking, replies, models, jobs

    blocking, replies, models, jobs = asyncio.run(main_())
    assert blocking.text and [r.input_sentiment.label for r in replies] == ["positive", "negative"]
    assert any(m.id == "gpt-4o-mini" for m in models) and jobs == []


def test_client_describe_image_models_assistants_train_jobs(tmp_path: Path) -> None:
    client = oaipipe.Client(assistants=REPO / "examples" / "assistants.yaml", cache=False)
    image = REPO / "examples" / "images" / "blue_sneaker.png"
    described = client.describe_image(image)
    assert "blue" in described.text
    parsed = client.describe_image(image, schema={"type": "object", "properties": {"summary": {"type": "string"}},
                                                  "required": ["summary"]}).parsed
    assert isinstance(parsed, dict) and parsed["summary"]
    assert "support-agent" in [a.name for a in client.assistants()]
    client.set_assistant("support-agent")
    assert client.preset is not None and client.preset.name == "support-agent"
    rows = [{"messages": [{"role": "user", "content": f"Q{n}?"}, {"role": "assistant", "content": f"A{n}."}]}
            for n in range(12)]
    job = client.train(data=rows)
    assert job.status == "succeeded" and job.fine_tuned_model.startswith("ft:")
    assert [j.id for j in client.jobs()] == [job.id]
    assert client.ask("Q3?", model=job.fine_tuned_model).text == "A3."


def test_client_with_an_unknown_preset_or_analyzer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(oaipipe.ConfigError, match="nobody"):
        oaipipe.Client(assistants=REPO / "examples" / "assistants.yaml", assistant="nobody")
    with pytest.raises(oaipipe.OaipipeError, match="nonesuch"):
        oaipipe.Client(analyzer="nonesuch", cache=False).ask("hi")


# --- the command line ---------------------------------------------------------------------------------------


def cli(*argv: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OAIPIPE, *argv], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60)


def test_ask_reads_stdin_takes_m_and_s_scores_and_logs(tmp_path: Path) -> None:
    piped = cli("ask", stdin="My parcel is late\n")
    dashed = cli("ask", "-", stdin="My parcel is late")
    argued = cli("ask", "My parcel is late")
    assert piped.returncode == dashed.returncode == argued.returncode == 0, piped.stderr
    assert piped.stdout == dashed.stdout == argued.stdout and piped.stdout.strip()
    short = cli("ask", "-m", "gpt-4.1-mini", "-s", "Be brief", "hi", "--json")
    assert short.returncode == 0 and "gpt-4.1-mini" in json.loads(short.stdout)["model"]
    log = tmp_path / "log.jsonl"
    scored = cli("ask", "--sentiment", "--log", str(log), stdin="I hate waiting so long")
    assert scored.returncode == 0, scored.stderr
    assert "sentiment: message negative" in scored.stdout
    entry = json.loads(log.read_text())
    assert entry["messages"][0]["role"] == "user" and entry["messages"][0]["sentiment"]["label"] == "negative"
    data = json.loads(cli("ask", "--sentiment", "--json", "I love it").stdout)
    assert data["input_sentiment"]["label"] == "positive" and data["sentiment"]["label"]
    empty = cli("ask", stdin="")
    assert empty.returncode == 3 and "empty" in empty.stderr


def test_sentiment_scores_arguments_and_stdin_lines_with_any_analyzer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sentiment", "I love it"]) == 0
    assert capsys.readouterr().out.startswith("positive")
    piped = cli("sentiment", stdin="good\nawful\n")
    assert piped.returncode == 0 and [ln.split("\t")[0] for ln in piped.stdout.splitlines()] == ["positive", "negative"]
    keyword = cli("sentiment", "-", "-a", "keyword", stdin="wonderful\n")
    assert keyword.returncode == 0 and "keyword" not in keyword.stderr and keyword.stdout.startswith("positive")
