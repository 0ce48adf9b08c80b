"""The model a pipeline without ``model:`` calls (issue 11.4): the model table's substitute for gpt-4o-mini,
with no shutdown announced, so such a pipeline validates without a shutdown warning; the ``llm``
analyzer sends a temperature (and its 60-token cap) only to models that take them; the embedded engine
lists the default; fine-tuning keeps a fine-tunable default instead of inheriting the chat default."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from _scale_util import write_pipeline

from oaipipe.base import BackendOptions
from oaipipe.models_table import DEFAULT_FINE_TUNE_MODEL, DEFAULT_MODEL, MODELS, model_info
from oaipipe.runner import run_pipeline_file

TODAY = "2026-11-30"  # the day issue 11 was written: gpt-4o-mini was then 45 days from its shutdown


def test_the_default_is_the_tables_substitute_for_gpt_4o_mini_and_has_no_shutdown_date() -> None:
    from oaipipe import tokens
    from oaipipe.client import Client
    from oaipipe.engine.models import BASE_MODELS

    assert BackendOptions().model == DEFAULT_MODEL == MODELS["gpt-4o-mini"].substitute
    info = model_info(DEFAULT_MODEL)
    assert info is not None and info.shutdown is None  # it cannot be a model on its way out
    for fn in (tokens.tokenizer_name, tokens.count_tokens, tokens.count_message_tokens):
        assert inspect.signature(fn).parameters["model"].default == DEFAULT_MODEL, fn.__name__
    assert DEFAULT_MODEL in BASE_MODELS
    # fine-tuning needs a model that takes it: the chat default does not
    assert not info.fine_tunable
    ft = model_info(DEFAULT_FINE_TUNE_MODEL)
    assert ft is not None and ft.fine_tunable
    assert inspect.signature(Client.train).parameters["model"].default == DEFAULT_FINE_TUNE_MODEL


def _validate(path: Path, monkeypatch: pytest.MonkeyPatch, today: str | None) -> tuple[int, str]:
    from oaipipe.cli import main

    if today is None:
        monkeypatch.delenv("OAIPIPE_TODAY", raising=False)
    else:
        monkeypatch.setenv("OAIPIPE_TODAY", today)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-sent")  # nothing is called: validate only
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["validate", str(path)])
    return int(code), out.getvalue()


@pytest.mark.parametrize("today", [TODAY, None], ids=["issue-day", "machine-today"])
def test_a_pipeline_without_model_validates_with_no_shutdown_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, today: str | None) -> None:
    steps = '- {type: ask, prompt: "Reply to: {text}", output: reply}\n'
    path = write_pipeline(tmp_path, "{type: openai}", n=2, steps=steps, sinks="- {type: jsonl, path: out/r.jsonl}\n")
    code, output = _validate(path, monkeypatch, today)
    assert code == 0, output
    assert "shut" not in output, output
    # the control: naming gpt-4o-mini on the same day still warns (the check itself is on)
    named = write_pipeline(tmp_path, "{type: openai, model: gpt-4o-mini}", n=2, steps=steps,
                           sinks="- {type: jsonl, path: out/r.jsonl}\n")
    code, output = _validate(named, monkeypatch, TODAY)
    assert code == 0 and "gpt-4o-mini shuts down on 2027-01-14" in output, output


def test_a_pipeline_without_model_runs_on_the_engine_as_the_default(tmp_path: Path, server: Any) -> None:
    import openai

    path = write_pipeline(tmp_path, "{type: local}", n=2)
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 2
    models = {json.loads(x)["model"] for x in (tmp_path / "out/dialogue.jsonl").read_text().splitlines()}
    assert models == {f"local:{DEFAULT_MODEL}"}
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    assert client.models.retrieve(DEFAULT_MODEL).id == DEFAULT_MODEL
    assert DEFAULT_MODEL in {m.id for m in client.models.list()}


# --- the llm analyzer -------------------------------------------------------------------------------


def _analyzer(**options: Any) -> Any:
    from oaipipe.builtin.analyzer_llm import LlmAnalyzer

    return LlmAnalyzer(LlmAnalyzer.Options(**options))


def test_llm_analyzer_sends_temperature_only_to_models_that_take_it() -> None:
    from oaipipe.errors import PluginError

    reasoning = _analyzer().request("I love it", DEFAULT_MODEL)
    assert reasoning.temperature is None and reasoning.max_tokens is None
    plain = _analyzer().request("I love it", "gpt-4.1-mini")
    assert plain.temperature == 0.0 and plain.max_tokens == 60
    own = _analyzer(temperature=0.3, max_tokens=200).request("I love it", "gpt-4.1-mini")
    assert own.temperature == 0.3 and own.max_tokens == 200
    assert _analyzer(max_tokens=2000).request("x", DEFAULT_MODEL).max_tokens == 2000
    with pytest.raises(PluginError) as err:
        _analyzer(temperature=0.0).request("I love it", "gpt-5-mini")
    assert "gpt-5-mini is a reasoning model" in str(err.value) and "remove `temperature`" in str(err.value.hint)


def test_llm_analyzer_on_a_reasoning_backend_model_is_answered(tmp_path: Path, server: Any) -> None:
    """Over HTTP: the server refuses a temperature for a reasoning model (as OpenAI does) and counts its
    reasoning tokens against the output cap; with the backend's reasoning model and no analyzer options
    every text is scored."""
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in
                                               enumerate(["I love it", "Broken and awful", "It is blue"])))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "name": "llm-reasoning", "backend": {"type": "openai", "base_url": server.base_url, "model": "gpt-5-mini"},
        "source": {"type": "jsonl", "path": "in.jsonl", "id_field": "id"},
        "steps": [{"type": "sentiment", "analyzer": "llm", "input": "{text}", "output": "mood"}],
        "sinks": [{"type": "jsonl", "path": "out/records.jsonl"}]}))
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 3, summary
    records = [json.loads(x) for x in (tmp_path / "out/records.jsonl").read_text().splitlines()]
    assert all(r["mood"] in ("positive", "negative", "neutral") for r in records)


# --- fine-tuning -------------------------------------------------------------------------------------


def test_train_block_inherits_the_backends_model_only_when_the_pipeline_names_one(host: Any) -> None:
    from oaipipe.base import Context
    from oaipipe.training.pipeline import build_train_block

    ctx = Context(host=host)
    _, block = build_train_block({"type": "local"}, host=host, context=ctx, backend_options=BackendOptions())
    assert "model" not in block  # the chat default takes no fine-tuning: the trainer's default applies
    named = BackendOptions(model="gpt-4.1-mini")
    _, block = build_train_block({"type": "local"}, host=host, context=ctx, backend_options=named)
    assert block["model"] == "gpt-4.1-mini"


def test_the_engine_names_the_default_model_as_the_example_when_none_is_given(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from oaipipe.cli import main
    from oaipipe.engine.chat import complete
    from oaipipe.engine.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as err:
        complete([{"role": "user", "content": "hi"}], "")
    assert f"e.g. {DEFAULT_MODEL}." in str(err.value) and "gpt-4o-mini" not in str(err.value)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the embedded engine answers
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["ask", "-m", "", "hi"]) != 0
    assert f"No model given; name one, e.g. {DEFAULT_MODEL}." in capsys.readouterr().err
