"""Text that spells a tokenizer's special tokens (``<|endoftext|>``, ...) is counted as plain text.

A user's text is never a control token: OpenAI's API tokenizes ``<|endoftext|>`` in a message as the
characters it is. bpe-openai/tiktoken refuse such text by default (``ValueError: disallowed special
token``), which made every record containing it fail, and ``oaipipe serve`` answer 500. Very long texts
(over bpe-openai's 1M-character and 200k-token limits) are counted too.
"""

from __future__ import annotations

import csv
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _scale_util import read_jsonl

from oaipipe.cli import main
from oaipipe.tokens import count_message_tokens, count_tokens, special_tokens

#: every special token of o200k_base and cl100k_base (bpe-openai's and tiktoken's tables)
SPECIALS = ["<|endoftext|>", "<|endofprompt|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
MODELS = {"o200k_base": "gpt-4o-mini", "cl100k_base": "gpt-3.5-turbo"}


def test_the_list_covers_every_special_token_of_both_encodings() -> None:
    for encoding in MODELS:
        assert special_tokens(encoding) <= set(SPECIALS), encoding
    assert special_tokens("o200k_base") >= {"<|endoftext|>", "<|endofprompt|>"}


@pytest.mark.parametrize("model", MODELS.values())
@pytest.mark.parametrize("token", SPECIALS)
def test_a_special_token_string_counts_as_the_plain_text_it_is(model: str, token: str) -> None:
    alone = count_tokens(token, model)
    assert alone > 1  # several ordinary tokens ("<", "|", "endo", ...), never the one control token
    text = f"Great mug {token} would buy again"
    assert count_tokens(text, model) >= alone
    messages = [{"role": "system", "content": token}, {"role": "user", "content": [{"type": "text", "text": text}]}]
    assert count_message_tokens(messages, model) > 2 * alone


@pytest.mark.parametrize("model", MODELS.values())
def test_texts_past_the_tokenizer_limits_are_counted(model: str) -> None:
    phrase, n = "lorem ipsum dolor sit amet", 50_000
    words = phrase + f" {phrase}" * (n - 1)  # 1.35M characters, ~250k tokens: over both limits
    # the pre-tokenizer cuts before each " lorem", so the count is exactly the sum of the parts
    assert count_tokens(words, model) == count_tokens(phrase, model) + (n - 1) * count_tokens(f" {phrase}", model)
    assert count_tokens("x" * 1_200_000, model) > 1000  # no whitespace to split at


def _pipeline(tmp_path: Path, backend: str) -> Path:
    with (tmp_path / "r.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i, token in enumerate(SPECIALS, 1):
            writer.writerow([str(i), f"The lamp {token} is great"])
        writer.writerow([str(len(SPECIALS) + 1), "".join(SPECIALS)])
    path = tmp_path / "p.yaml"
    path.write_text(
        f"name: special\nbackend: {backend}\nsource: {{type: csv, path: r.csv, id_column: id}}\n"
        "steps:\n"
        "  - {type: sentiment, analyzer: keyword, input: '{text}', output: s}\n"
        "  - {type: ask, prompt: 'Reply to: {text}', output: reply}\n"
        "sinks:\n  - {type: jsonl, path: out/records.jsonl}\n", encoding="utf-8")
    return path


def _check_run(tmp_path: Path, path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(path), "-q", "--json"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"]["done"] == len(SPECIALS) + 1 and summary["records"]["failed"] == 0
    assert summary["tokens"]["prompt"] > 0
    records = read_jsonl(tmp_path / "out" / "records.jsonl")
    assert all(r["reply"] for r in records)


def test_a_pipeline_on_the_local_backend_does_every_record(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _check_run(tmp_path, _pipeline(tmp_path, "{type: local, model: gpt-4o-mini}"), capsys)


def test_a_pipeline_through_oaipipe_serve_does_every_record(tmp_path: Path, server: Any,
                                                            capsys: pytest.CaptureFixture) -> None:
    backend = f"{{type: requests, model: gpt-3.5-turbo, base_url: '{server.base_url}', max_retries: 0}}"
    _check_run(tmp_path, _pipeline(tmp_path, backend), capsys)
    assert server.stats()["by_status"].get("500", server.stats()["by_status"].get(500, 0)) == 0


@pytest.mark.parametrize("path", ["/chat/completions", "/responses"])
def test_oaipipe_serve_answers_special_token_text_over_http(server: Any, path: str) -> None:
    text = "Say it: " + " ".join(SPECIALS)
    body = ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]} if path == "/chat/completions"
            else {"model": "gpt-4o-mini", "input": text})
    req = urllib.request.Request(server.base_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        usage = json.loads(resp.read())["usage"]
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    assert prompt >= count_tokens(text, "gpt-4o-mini")
