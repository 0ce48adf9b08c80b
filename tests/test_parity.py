"""The same pipeline file through ``local``, and through ``openai`` (its default lean aiohttp transport and
``transport: sdk``) and ``requests`` against ``oaipipe serve``, gives the same replies, sentiments, structured
fields and dialogue messages."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from oaipipe.testing import PipelineProject, running_server, wait_until

PIPELINE = """
name: parity
backend: {type: local, model: gpt-4o-mini, concurrency: 4}
source: {type: csv, path: reviews.csv, id_column: id}
steps:
  - {type: sentiment, analyzer: vader, input: "{text}", output: review_sentiment}
  - {type: ask, system: "You are a helpful support agent.", prompt: "Reply to: {text}", output: reply}
  - {type: sentiment, analyzer: keyword, input: "{reply}", output: reply_sentiment}
  - type: describe_image
    image: "{image}"
    detail: low
    output: photo
    flatten: true
    json_schema:
      type: object
      properties: {caption: {type: string}, main_color: {type: string}}
      required: [caption, main_color]
      additionalProperties: false
sinks:
  - {type: dialogue-jsonl, path: out/dialogue.jsonl}
  - {type: jsonl, path: out/records.jsonl}
"""

ROWS = [
    ("r1", "I love this mug, the colour is gorgeous!", "img/red.png"),
    ("r2", "The lamp arrived broken. Terrible, I want a refund.", "img/yellow.jpg"),
    ("r3", "It is a plant pot. It holds a plant.", "img/green.png"),
    ("r4", "Fast delivery and great support, thank you so much.", "img/red.png"),
    ("r5", "Awful sneakers, the sole came off after a week.", "img/blue.png"),
    ("r6", "Does what it says.", "img/green.png"),
]


def image(size: tuple[int, int], color: tuple[int, ...], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA" if len(color) == 4 else "RGB", size, color).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def project(oaipipe_project: PipelineProject) -> PipelineProject:
    oaipipe_project.write(PIPELINE, files={
        "img/red.png": image((80, 60), (220, 20, 30)),
        "img/yellow.jpg": image((60, 90), (250, 220, 0), "JPEG"),
        "img/green.png": image((100, 100), (30, 160, 40)),
        "img/blue.png": image((120, 40), (20, 60, 220, 255)),
        "reviews.csv": [("id", "text", "image"), *ROWS],
    })
    return oaipipe_project


#: the remote transports compared: name -> backend settings (the ``backend`` field of the dialogue is the type)
REMOTE = {
    "openai": ["backend.type=openai"],  # transport auto: the lean aiohttp transport
    "openai-sdk": ["backend.type=openai", "backend.transport=sdk"],
    "openai-aiohttp": ["backend.type=openai", "backend.transport=aiohttp"],
    "requests": ["backend.type=requests"],
}


def run_with(project: PipelineProject, kind: str, base_url: str | None) -> tuple[dict[str, Any], list[dict], list[dict]]:
    overrides = [*REMOTE.get(kind, [f"backend.type={kind}"]), f"sinks.0.path=out_{kind}/dialogue.jsonl",
                 f"sinks.1.path=out_{kind}/records.jsonl", f"run.dir=runs_{kind}"]
    if base_url:
        overrides += [f"backend.base_url={base_url}", "backend.retry_base=0.01", "backend.max_retries=10"]
    result = project.run(*[arg for o in overrides for arg in ("--set", o)], "--no-cache", "--fresh")
    assert result.exit_code == 0, result
    return result.summary, project.records(f"out_{kind}/dialogue.jsonl"), project.records(f"out_{kind}/records.jsonl")


def comparable_records(records: list[dict]) -> list[dict]:
    # ``_run`` (and other ``_`` bookkeeping fields) name the run, not the result
    cleaned = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    return sorted(cleaned, key=lambda r: str(r.get("id")))


def comparable_dialogue(lines: list[dict]) -> list[tuple]:
    out = []
    for line in lines:
        messages = [(m["role"], m["content"], (m.get("sentiment") or {}).get("label")) for m in line["messages"]]
        out.append((line["record_id"], line["step"], json.dumps(messages, ensure_ascii=False)))
    return sorted(out)


def test_same_results_on_every_transport(project: PipelineProject) -> None:
    results = {}
    results["local"] = run_with(project, "local", None)
    with running_server(error_rates={429: 0.1, 500: 0.05, 503: 0.05}, retry_after=0.01, seed=11) as srv:
        for kind in REMOTE:
            results[kind] = run_with(project, kind, srv.base_url)
        stats = srv.stats()
    assert sum(stats["injected"].values()) > 0  # the remote runs went through injected errors

    local_summary, local_dialogue, local_records = results["local"]
    assert local_summary["records"]["done"] == len(ROWS) and local_summary["records"]["failed"] == 0
    assert len(local_dialogue) == 2 * len(ROWS)
    for kind in REMOTE:
        summary, dialogue, records = results[kind]
        assert summary["records"]["done"] == len(ROWS), (kind, summary)
        assert summary["records"]["failed"] == 0
        assert comparable_records(records) == comparable_records(local_records), kind
        assert comparable_dialogue(dialogue) == comparable_dialogue(local_dialogue), kind
        assert {line["backend"] for line in dialogue} == {kind.split("-")[0]}
        assert all(line["request_id"] for line in dialogue)
        assert "base64" not in json.dumps(dialogue)

    # structured image description arrived as fields in the record, through both transports
    for record in results["requests"][2]:
        assert record["photo_caption"] and record["photo_main_color"]
        assert record["photo_image_tokens"] == 2833  # gpt-4o-mini bills a low-detail image as 2833 tokens
    labels = {r["id"]: r["reply_sentiment"] for r in local_records}
    assert labels  # sentiments are part of the compared records


@pytest.mark.parametrize("kind", list(REMOTE))
def test_a_refused_key_stops_the_run_after_one_request(project: PipelineProject, kind: str) -> None:
    wrong = "sk-wrong-0123456789abcdef"
    with running_server(api_key="sk-right-0123456789abcdef") as srv:
        backend = [arg for o in REMOTE[kind] for arg in ("--set", o)]
        result = project.run(*backend, "--set", f"backend.base_url={srv.base_url}",
                             "--set", f"backend.api_key={wrong}", "--set", "backend.concurrency=1", "--fresh",
                             as_json=False)
        # the run is over and the server counts a request before it replies: the count is final once seen
        wait_until(lambda: srv.stats()["requests"] >= 1, message="the refused request to be counted")
        stats = srv.stats()
    assert result.exit_code == 5, result
    assert stats["requests"] == 1, stats
    assert "refused" in result.err
    assert wrong not in result.err + result.out
    for path in project.path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".csv", ".txt", ".log"):
            assert wrong not in path.read_text(errors="replace"), path
