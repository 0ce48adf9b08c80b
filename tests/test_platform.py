"""The platform as it is in late 2026 (issue 11): Responses by default for gpt-5-class models, batches on
/v1/responses, reasoning and cached-token usage, cached input billed at the cached price."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _scale_util import write_pipeline

from oaipipe.base import Backend, Context
from oaipipe.plugins import PluginHost
from oaipipe.pricing import PriceTable
from oaipipe.runner import run_pipeline_file
from oaipipe.stats import RunStats
from oaipipe.types import ChatRequest, ChatResponse, Usage

TRANSPORTS = ["openai", "requests"]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "review", "strict": True, "schema": {
    "type": "object", "properties": {"summary": {"type": "string"}, "stars": {"type": "integer"}},
    "required": ["summary", "stars"], "additionalProperties": False}}}


def _make(host: PluginHost, kind: str, **options: Any) -> Backend:
    backend = host.build("backend", {"type": kind, **options}, Context(host=host))
    assert isinstance(backend, Backend)
    return backend


def _ask(backend: Backend, *requests: ChatRequest) -> list[ChatResponse]:
    async def go() -> list[ChatResponse]:
        try:
            return [await backend.chat(r) for r in requests]
        finally:
            await backend.aclose()

    return asyncio.run(go())


def _req(model: str, **kw: Any) -> ChatRequest:
    return ChatRequest(messages=[{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Say hello to the platform."}], model=model, **kw)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_api_auto_sends_gpt5_to_responses_and_gpt4o_to_chat(host: PluginHost, server: Any, kind: str) -> None:
    backend = _make(host, kind, base_url=server.base_url)  # api: auto is the default
    five, four = _ask(backend, _req("gpt-5-mini"), _req("gpt-4o-mini"))
    paths = server.stats()["by_path"]
    assert paths.get("/v1/responses") == 1, paths
    assert paths.get("/v1/chat/completions") == 1, paths
    # the same record fields from either API
    assert five.text and four.text and five.finish_reason == four.finish_reason == "stop"
    assert five.usage.prompt_tokens > 0 and five.usage.completion_tokens > 0


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_api_models_overrides_the_table(host: PluginHost, server: Any, kind: str) -> None:
    backend = _make(host, kind, base_url=server.base_url, api_models={"gpt-4o": "responses", "gpt-5": "chat"})
    _ask(backend, _req("gpt-4o-mini"), _req("gpt-5-nano"))
    paths = server.stats()["by_path"]
    assert paths.get("/v1/responses") == 1 and paths.get("/v1/chat/completions") == 1, paths


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_structured_output_and_reasoning_on_responses(host: PluginHost, server: Any, kind: str) -> None:
    backend = _make(host, kind, base_url=server.base_url, reasoning_effort="low")
    (resp,) = _ask(backend, _req("gpt-5-mini", response_format=SCHEMA, max_tokens=400))
    assert isinstance(resp.parsed, dict) and set(resp.parsed) == {"summary", "stars"}
    assert server.stats()["by_path"].get("/v1/responses") == 1


def test_one_wire_shapes_both_apis() -> None:
    from oaipipe.openai_wire import api_call

    request = _req("gpt-5", response_format=SCHEMA, max_tokens=50, extra={"prompt_cache_key": "k-1"})
    path, body = api_call(request, "responses", reasoning_effort="high", service_tier="flex")
    assert path == "/responses"
    assert body["reasoning"] == {"effort": "high"} and body["max_output_tokens"] == 50
    assert body["text"]["format"]["type"] == "json_schema" and body["text"]["format"]["strict"] is True
    assert body["instructions"] == "Be brief." and body["service_tier"] == "flex"
    assert body["prompt_cache_key"] == "k-1"
    path, body = api_call(request, "chat", max_tokens_param="max_completion_tokens", reasoning_effort="high")
    assert path == "/chat/completions"
    assert body["reasoning_effort"] == "high" and body["max_completion_tokens"] == 50
    assert body["response_format"] == SCHEMA and "max_tokens" not in body


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OAIPIPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_batch_run_on_responses_round_trips(tmp_path: Path, server: Any, home: Path) -> None:
    backend = (f"{{type: batch, base_url: '{server.base_url}', model: gpt-5-mini, concurrency: 64, "
               "poll_interval: 0.02, flush_after: 0.05}")
    path = write_pipeline(tmp_path, backend, n=4)
    summary = run_pipeline_file(path)
    assert summary["status"] == "finished", summary.get("error")
    assert summary["records"]["done"] == 4
    with urllib.request.urlopen(f"{server.base_url}/batches?limit=10") as resp:
        batches = json.loads(resp.read())["data"]
    assert [b["endpoint"] for b in batches] == ["/v1/responses"]
    assert batches[0]["request_counts"]["completed"] == 4
    rows = [json.loads(line) for line in (tmp_path / "out/records.jsonl").read_text().splitlines()]
    assert all(r["reply"] for r in rows)


# --- prompt caching counted ------------------------------------------------------------------------


def test_cached_tokens_are_read_from_either_api(host: PluginHost, server: Any) -> None:
    """A long shared prefix: the second call reports cached tokens on chat and on Responses."""
    long_system = "You are a careful reviewer. " * 200
    for model in ("gpt-4o-mini", "gpt-5-mini"):
        backend = _make(host, "requests", base_url=server.base_url)
        requests = [ChatRequest(messages=[{"role": "system", "content": long_system},
                                          {"role": "user", "content": f"question {i}"}], model=model,
                                extra={"prompt_cache_key": "reviews"}) for i in range(2)]
        first, second = _ask(backend, *requests)
        assert first.usage.cached_tokens == 0
        assert 0 < second.usage.cached_tokens <= second.usage.prompt_tokens, (model, second.usage)


def test_cached_input_is_billed_at_the_cached_price() -> None:
    """A known usage block: 10,000 prompt tokens of which 8,000 cached, 1,000 out, on gpt-4.1-mini
    (input 0.40, cached 0.10, output 1.60 USD per 1M)."""
    stats = RunStats(prices=PriceTable())
    usage = Usage(prompt_tokens=10_000, completion_tokens=1_000, total_tokens=11_000, cached_tokens=8_000)
    cost = stats.add_call("ask", ChatResponse(text="x", model="gpt-4.1-mini", backend="openai", usage=usage))
    expected = (2_000 * 0.40 + 8_000 * 0.10 + 1_000 * 1.60) / 1_000_000
    assert cost == pytest.approx(expected, abs=1e-12)
    summary = stats.to_dict()
    assert summary["tokens"]["cached"] == 8_000
    assert summary["prompt_cache"]["hit_rate"] == pytest.approx(0.8)
    assert summary["prompt_cache"]["saved_usd"] == pytest.approx(8_000 * (0.40 - 0.10) / 1_000_000)
    # at the batch discount too
    batch_cost = stats.add_call("ask", ChatResponse(text="x", model="gpt-4.1-mini", backend="batch", usage=usage),
                                batch=True)
    assert batch_cost == pytest.approx(expected / 2, abs=1e-12)


def test_cached_price_comes_from_the_pipeline_prices(tmp_path: Path) -> None:
    table = PriceTable({"my-model": {"input": 2.0, "cached_input": 0.5, "output": 4.0}})
    price = table.lookup("my-model")
    assert price.cost(1_000_000, 0, cached_tokens=500_000) == pytest.approx(1.25)
    # a model without a cached price bills cached tokens at the input price
    plain = PriceTable({"plain": {"input": 2.0, "output": 4.0}}).lookup("plain")
    assert plain.cost(1_000_000, 0, cached_tokens=500_000) == pytest.approx(2.0)


# --- validate: lifecycle and the documented incompatibilities ----------------------------------------


def _pipeline(tmp_path: Path, backend: str, step_extra: str = "") -> Path:
    steps = f'- {{type: ask, prompt: "Reply to: {{text}}", output: reply{step_extra}}}\n'
    return write_pipeline(tmp_path, backend, n=2, steps=steps, sinks="- {type: jsonl, path: out/r.jsonl}\n")


class _Result:
    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code, self.output = exit_code, output


def _validate(path: Path, monkeypatch: pytest.MonkeyPatch, today: str = "2026-11-30", *args: str) -> _Result:
    from oaipipe.cli import main

    monkeypatch.setenv("OAIPIPE_TODAY", today)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-sent")  # nothing is called: validate only
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["validate", str(path), *args])
    return _Result(int(code), out.getvalue())


def test_validate_refuses_a_model_past_its_shutdown_with_line_and_substitute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path, "{type: openai, model: o4-mini}")
    result = _validate(path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert "o4-mini was shut down on 2026-10-23" in result.output
    assert f"{path}:2" in result.output or "line 2" in result.output, result.output


def test_validate_warns_within_60_days_of_shutdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path, "{type: openai, model: gpt-4o-mini}")
    result = _validate(path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "gpt-4o-mini shuts down on 2027-01-14, in 45 days" in result.output
    assert "use gpt-6-luna instead" in result.output
    far = _validate(path, monkeypatch, today="2026-06-01")
    assert far.exit_code == 0 and "shuts down" not in far.output
    gone = _validate(path, monkeypatch, today="2027-01-14")
    assert gone.exit_code == 2 and "was shut down on 2027-01-14" in gone.output


def test_validate_json_lists_the_warnings_the_text_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path, "{type: openai, model: gpt-4o-mini}")
    text = _validate(path, monkeypatch)
    result = _validate(path, monkeypatch, "2026-11-30", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)  # stdout and stderr together: the JSON is all there is
    assert data["problems"] == []
    [warning] = data["warnings"]
    assert warning.startswith(f"{path}:2: ") and "gpt-4o-mini shuts down on 2027-01-14, in 45 days" in warning
    assert f"warning: {warning}" in text.output  # the same line as the text output's
    far = _validate(path, monkeypatch, "2026-06-01", "--json")
    assert json.loads(far.output) == {"problems": [], "warnings": []}


def test_validate_refuses_temperature_on_a_reasoning_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pipeline(tmp_path, "{type: openai, model: gpt-6.1-sol}", ", temperature: 0.2")
    result = _validate(path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert "temperature is not supported by the reasoning model gpt-6.1-sol" in result.output
    assert "steps.0.temperature" in result.output
    chat = _pipeline(tmp_path, "{type: openai, model: gpt-6.1-sol, api: chat, max_tokens_param: max_tokens}")
    result = _validate(chat, monkeypatch)
    assert result.exit_code == 2 and "refuses `max_tokens` on Chat Completions" in result.output, result.output


def test_lifecycle_is_openais_schedule_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Any) -> None:
    """Another server (or the embedded engine) may serve an id OpenAI shut down: no refusal there."""
    path = _pipeline(tmp_path, f"{{type: openai, model: o4-mini, base_url: '{server.base_url}'}}")
    assert _validate(path, monkeypatch).exit_code == 0
    local = _pipeline(tmp_path, "{type: local, model: o4-mini}")
    assert _validate(local, monkeypatch).exit_code == 0


@pytest.mark.parametrize(("key", "hits"), [("reviews", True), ("{id}", False)])
def test_prompt_cache_key_is_a_step_template_and_the_run_bills_cached_tokens(
        tmp_path: Path, server: Any, key: str, hits: bool) -> None:
    """One key for every record shares the server's prompt cache (cached tokens after the first call); a
    key per record (``{id}``) never does. The summary's cost is exact for the reported usage."""
    long_system = "You are a careful reviewer of product reviews. " * 120
    steps = (f'- {{type: ask, system: "{long_system}", prompt: "Reply to: {{text}}", output: reply, '
             f'prompt_cache_key: "{key}"}}\n')
    backend = f"{{type: requests, base_url: '{server.base_url}', model: gpt-4.1-mini, concurrency: 1}}"
    prices = 'prices: {"local:gpt-4.1-mini": {input: 0.40, cached_input: 0.10, output: 1.60}}\n'  # serve's label
    path = write_pipeline(tmp_path, backend, n=3, steps=steps, sinks="- {type: jsonl, path: out/r.jsonl}\n",
                          extra=prices)
    summary = run_pipeline_file(path)
    assert summary["status"] == "finished", summary.get("error")
    tokens = summary["tokens"]
    assert (tokens["cached"] > 0) is hits, tokens
    expected = ((tokens["prompt"] - tokens["cached"]) * 0.40 + tokens["cached"] * 0.10
                + tokens["completion"] * 1.60) / 1_000_000
    assert summary["cost_usd"] == pytest.approx(expected, abs=2e-6)
    assert (summary["prompt_cache"]["saved_usd"] > 0) is hits
    from oaipipe.store import open_store

    with open_store(tmp_path / "runs", sync=False) as store:  # the run store prices exchanges the same way
        (stored,) = store.query("SELECT sum(cost_usd) FROM exchanges")[0]
    assert stored == pytest.approx(summary["cost_usd"], abs=2e-6)


# --- service tiers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_flex_resource_unavailable_falls_back_to_standard_and_finishes(host: PluginHost, kind: str) -> None:
    from oaipipe.testing import running_server

    with running_server(flex_unavailable_rate=1.0) as srv:
        backend = _make(host, kind, base_url=srv.base_url, service_tier="flex", max_retries=3)
        answers = _ask(backend, _req("gpt-5-mini"), _req("gpt-4o-mini"))
        stats = srv.stats()
    assert all(a.text for a in answers)
    assert backend.flex_fallbacks == 2  # type: ignore[attr-defined]
    assert stats["by_status"].get("429") == 2, stats["by_status"]  # one flex try each, no flex retries
    assert stats["by_status"].get("200") == 2


# --- the SDK's environment variables ----------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_openai_base_url_org_and_project_from_the_environment(
        host: PluginHost, server: Any, kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """OPENAI_BASE_URL points the backend at oaipipe serve; OPENAI_API_KEY is not sent there (not OpenAI);
    OPENAI_ORG_ID / OPENAI_PROJECT_ID go out as headers; the run's headline says where requests go."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-never-to-a-local-server")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-env")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-env")
    backend = _make(host, kind)
    assert backend.api_key is None  # type: ignore[attr-defined]
    headers = backend._extra_headers()  # type: ignore[attr-defined]
    assert headers["OpenAI-Organization"] == "org-env" and headers["OpenAI-Project"] == "proj-env"
    (answer,) = _ask(backend, _req("gpt-4o-mini"))
    assert answer.text and server.stats()["by_path"].get("/v1/chat/completions") == 1
    from oaipipe.pipeline import load_pipeline

    path = _pipeline(tmp_path, f"{{type: {kind}}}")
    built = load_pipeline(path)
    assert built.backend_note is None  # no offline fallback: OPENAI_BASE_URL names a server
    assert built.describe_backend().endswith(f"at {server.base_url} (from OPENAI_BASE_URL)")


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_models_warns_of_the_shutdown_date_the_server_gives(kind: str, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    import contextlib
    import io

    from oaipipe.cli import main
    from oaipipe.testing import running_server

    monkeypatch.setenv("OAIPIPE_TODAY", "2026-11-30")
    monkeypatch.chdir(tmp_path)
    with running_server(model_shutdowns={"gpt-4o-mini": "2027-01-14"}) as srv:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["models", "--backend", kind, "--base-url", srv.base_url, "--json"])
    assert code == 0, err.getvalue()
    report = json.loads(out.getvalue())
    listed = {m["id"]: m for m in report["models"]}
    assert listed["gpt-4o-mini"]["shutdown_date"] == "2027-01-14"
    (warning,) = report["lifecycle"]
    assert warning["model"] == "gpt-4o-mini" and warning["level"] == "warning"
    assert "shuts down on 2027-01-14, in 45 days" in warning["message"]


# --- fine-tuning after OpenAI's wind-down -----------------------------------------------------------


def test_openai_trainer_says_plainly_when_new_jobs_are_not_accepted(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from oaipipe.cli import main
    from oaipipe.server.errors import ApiError
    from oaipipe.server.finetune import FineTuningJobs
    from oaipipe.testing import running_server

    def refuse(self: Any, body: dict[str, Any]) -> dict[str, Any]:
        raise ApiError(403, "New fine-tuning jobs are no longer accepted for this organization.",
                       code="fine_tuning_unavailable", type="invalid_request_error")

    monkeypatch.setattr(FineTuningJobs, "create", refuse)
    qa = Path(__file__).resolve().parents[1] / "examples" / "data" / "qa.csv"
    with running_server() as srv:
        code = main(["train", str(qa), "--trainer", "openai", "--base-url", srv.base_url])
    err = capsys.readouterr().err
    assert code != 0
    assert "does not accept new fine-tuning jobs" in err
    assert "existing ft: models keep answering" in err and "type: local" in err
    assert "oaipipe dataset export RUN --format hf-jsonl|hf-parquet|dpo-jsonl" in err  # the export command


def test_an_ordinary_bad_request_is_not_taken_for_the_wind_down() -> None:
    from oaipipe.builtin.trainer_openai import jobs_not_accepted
    from oaipipe.errors import BadRequestError

    assert not jobs_not_accepted(BadRequestError("training_file: the file has fewer than 10 examples", status=400))
    assert jobs_not_accepted(BadRequestError("Fine-tuning is not available for your organization", status=403))
