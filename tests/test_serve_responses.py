"""`oaipipe serve` answers the late-2026 API shapes over real HTTP (official openai SDK): refusals of what it
does not implement, reasoning, structured output on Responses, service tiers and the flex fault, cached
tokens, batches on /v1/responses, and model shutdown dates."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from openai import OpenAI

from oaipipe.server.config import ServerConfig
from oaipipe.server.options import REASONING_TOKENS
from oaipipe.testing import running_server
from oaipipe.tokens import count_tokens

#: a system prompt of 1800 tokens: long enough for prompt caching (1024 tokens and more)
POLICY = " ".join(f"Rule {i}: parcels of kind {i} ship within {i % 7 + 1} days." for i in range(120))


def client(srv: Any, key: str = "test") -> OpenAI:
    return OpenAI(base_url=srv.base_url, api_key=key, max_retries=0)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def wait_for(fetch: Any, done: tuple[str, ...], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    obj = fetch()
    while obj.status not in done:
        assert time.monotonic() < deadline, f"still {obj.status}"
        time.sleep(0.05)
        obj = fetch()
    return obj


# --- what the engine cannot honour is refused, in OpenAI's error shape ------------------------------

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
RESPONSES_TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}


@pytest.mark.parametrize(("api", "param", "value"), [
    ("chat", "tools", [TOOL]),
    ("chat", "tool_choice", "required"),
    ("chat", "functions", [TOOL["function"]]),
    ("chat", "function_call", "auto"),
    ("chat", "logprobs", True),
    ("responses", "tools", [RESPONSES_TOOL]),
    ("responses", "tool_choice", "required"),
    ("responses", "previous_response_id", "resp_123"),
    ("responses", "conversation", "conv_123"),
    ("responses", "background", True),
])
def test_what_the_engine_cannot_honour_is_a_400_in_openai_shape(server: Any, api: str, param: str,
                                                                 value: Any) -> None:
    c = client(server)
    with pytest.raises(openai.BadRequestError) as err:
        if api == "chat":
            c.chat.completions.create(model="gpt-4o-mini", messages=user("What's the weather?"), **{param: value})
        else:
            c.responses.create(model="gpt-4o-mini", input="What's the weather?", **{param: value})
    body = err.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param
    assert body["error"]["code"] == "unsupported_parameter" and "does not implement" in body["error"]["message"]


def test_options_that_ask_for_nothing_are_accepted(server: Any) -> None:
    c = client(server)
    assert c.chat.completions.create(model="gpt-4o-mini", messages=user("hi"), tools=[], tool_choice="none",
                                     logprobs=False).choices[0].message.content
    assert c.responses.create(model="gpt-4o-mini", input="hi", tool_choice="auto", background=False).output_text


# --- reasoning --------------------------------------------------------------------------------


def test_reasoning_models_report_reasoning_and_its_tokens(server: Any) -> None:
    c = client(server)
    plain = c.responses.create(model="gpt-4o-mini", input="Is the mug dishwasher safe?")
    assert plain.reasoning.effort is None and plain.output[0].type == "message"
    assert plain.usage.output_tokens_details.reasoning_tokens == 0
    high = c.responses.create(model="gpt-5-mini", input="Is the mug dishwasher safe?",
                              reasoning={"effort": "high", "summary": "auto"})
    assert high.reasoning.effort == "high" and high.reasoning.summary == "auto"
    assert [item.type for item in high.output] == ["reasoning", "message"] and high.output[0].summary == []
    thinking = high.usage.output_tokens_details.reasoning_tokens
    assert thinking == REASONING_TOKENS["high"] > 0
    assert high.usage.output_tokens == count_tokens(high.output_text) + thinking  # billed as output
    assert high.usage.total_tokens == high.usage.input_tokens + high.usage.output_tokens
    default = c.responses.create(model="gpt-5-mini", input="Is the mug dishwasher safe?")
    assert default.reasoning.effort == "medium" and default.output_text == high.output_text
    chat = c.chat.completions.create(model="gpt-5-mini", messages=user("Is the mug dishwasher safe?"),
                                     reasoning_effort="low")
    assert chat.usage.completion_tokens_details.reasoning_tokens == REASONING_TOKENS["low"]
    assert chat.usage.completion_tokens == count_tokens(chat.choices[0].message.content) + REASONING_TOKENS["low"]


def test_reasoning_spends_the_output_budget_first(server: Any) -> None:
    c = client(server)
    starved = c.responses.create(model="gpt-5-mini", input="Is the mug dishwasher safe?",
                                 reasoning={"effort": "medium"}, max_output_tokens=REASONING_TOKENS["medium"])
    assert starved.status == "incomplete" and starved.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in starved.output] == ["reasoning"] and starved.output_text == ""
    assert starved.usage.output_tokens == starved.usage.output_tokens_details.reasoning_tokens == 64
    short = c.responses.create(model="gpt-5-mini", input="Is the mug dishwasher safe?",
                               reasoning={"effort": "low"}, max_output_tokens=REASONING_TOKENS["low"] + 3)
    assert short.status == "incomplete" and 1 <= count_tokens(short.output_text) <= 3
    assert short.usage.output_tokens <= REASONING_TOKENS["low"] + 3


@pytest.mark.parametrize(("model", "kwargs", "param", "code"), [
    ("gpt-4o-mini", {"reasoning": {"effort": "low"}}, "reasoning.effort", "unsupported_parameter"),
    ("gpt-5-mini", {"reasoning": {"effort": "enormous"}}, "reasoning.effort", "invalid_value"),
    ("gpt-5-mini", {"temperature": 0.2}, "temperature", "unsupported_value"),
])
def test_reasoning_options_openai_refuses_are_refused(server: Any, model: str, kwargs: dict[str, Any], param: str,
                                                       code: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(server).responses.create(model=model, input="hi", **kwargs)
    assert err.value.param == param and err.value.code == code


def test_chat_on_a_reasoning_model_refuses_max_tokens_and_reasoning_effort_elsewhere(server: Any) -> None:
    c = client(server)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt-5-mini", messages=user("hi"), max_tokens=50)
    assert err.value.param == "max_tokens" and "max_completion_tokens" in err.value.message
    assert c.chat.completions.create(model="gpt-5-mini", messages=user("hi"), max_completion_tokens=500)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=user("hi"), reasoning_effort="low")
    assert err.value.param == "reasoning_effort" and err.value.code == "unsupported_parameter"


# --- structured output through Responses ---------------------------------------------------------


def test_text_format_json_schema_strict_with_the_sdk_parse_helper(server: Any) -> None:
    from pydantic import BaseModel

    class Verdict(BaseModel):
        sentiment: str
        score: float
        reply: str

    c = client(server)
    parsed = c.responses.parse(model="gpt-5-mini", input="The lid cracked on day two. Awful.", text_format=Verdict)
    assert isinstance(parsed.output_parsed, Verdict)
    assert parsed.output_parsed.sentiment == "negative" and parsed.output_parsed.score < 0
    assert parsed.text.format.type == "json_schema" and parsed.text.format.strict is True
    chat = c.chat.completions.parse(model="gpt-4o-mini", messages=user("The lid cracked on day two. Awful."),
                                    response_format=Verdict)
    assert chat.choices[0].message.parsed.sentiment == parsed.output_parsed.sentiment
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model="gpt-4o-mini", input="hi", text={"format": {"type": "json_schema", "schema": {}}})
    assert err.value.param == "text.format.name"


# --- service tiers and the flex fault ------------------------------------------------------------


def test_service_tier_is_echoed_as_served(server: Any) -> None:
    c = client(server)
    assert c.responses.create(model="gpt-5-mini", input="hi").service_tier == "default"
    for asked, served in (("auto", "default"), ("default", "default"), ("flex", "flex"), ("priority", "priority")):
        assert c.responses.create(model="gpt-5-mini", input="hi", service_tier=asked).service_tier == served
        assert c.chat.completions.create(model="gpt-4o-mini", messages=user("hi"),
                                         service_tier=asked).service_tier == served
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model="gpt-5-mini", input="hi", service_tier="turbo")
    assert err.value.param == "service_tier"


def test_flex_resource_unavailable_lets_a_client_fall_back() -> None:
    with running_server(flex_unavailable_rate=1.0) as srv:
        c = client(srv)
        for call in (lambda tier: c.responses.create(model="gpt-5-mini", input="hi", service_tier=tier),
                     lambda tier: c.chat.completions.create(model="gpt-5-mini", messages=user("hi"),
                                                            service_tier=tier)):
            with pytest.raises(openai.RateLimitError) as err:
                call("flex")
            assert err.value.status_code == 429 and err.value.code == "resource_unavailable"
            assert err.value.response.json()["error"]["message"].startswith("Resource Unavailable")
            assert call("auto").service_tier == "default"  # the fallback the flex guide recommends
            assert call(None).service_tier == "default"
        assert srv.stats()["injected"] == {"flex_unavailable": 2}
        srv.set_faults(flex_unavailable_rate=0.0)
        assert c.responses.create(model="gpt-5-mini", input="hi", service_tier="flex").service_tier == "flex"


# --- prompt caching ---------------------------------------------------------------------------


def _ask(c: OpenAI, question: str, **kw: Any) -> Any:
    return c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "system", "content": POLICY},
                                                                    {"role": "user", "content": question}], **kw)


def test_a_repeated_long_prefix_reports_cached_tokens_in_128_token_steps(server: Any) -> None:
    c = client(server)
    first = _ask(c, "Which rule covers kind 5?")
    assert first.usage.prompt_tokens > 1024 and first.usage.prompt_tokens_details.cached_tokens == 0
    second = _ask(c, "Where is my parcel of kind 9?")
    # the shared prefix: the system message (3 + role + text) and the user message's 3 + role; the questions
    # differ from their first token
    shared = 3 + count_tokens("system") + count_tokens(POLICY) + 3 + count_tokens("user")
    assert second.usage.prompt_tokens_details.cached_tokens == shared // 128 * 128 >= 1024
    again = _ask(c, "Which rule covers kind 5?")
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens // 128 * 128
    # Responses shares the model's cache: instructions + input are the same two messages
    resp = c.responses.create(model="gpt-4o-mini", instructions=POLICY, input="Which rule covers kind 5?")
    assert resp.usage.input_tokens == first.usage.prompt_tokens
    assert resp.usage.input_tokens_details.cached_tokens == again.usage.prompt_tokens_details.cached_tokens
    # other namespaces start cold: another prompt_cache_key, another API key, another model
    assert _ask(c, "Which rule covers kind 5?", prompt_cache_key="tenant-b").usage.prompt_tokens_details \
        .cached_tokens == 0
    assert _ask(c, "Which rule covers kind 5?", prompt_cache_key="tenant-b").usage.prompt_tokens_details \
        .cached_tokens > 1024
    assert _ask(client(server, key="other-key"), "Which rule covers kind 5?").usage.prompt_tokens_details \
        .cached_tokens == 0
    assert c.responses.create(model="gpt-4.1-mini", instructions=POLICY, input="Which rule covers kind 5?") \
        .usage.input_tokens_details.cached_tokens == 0
    # a short prompt is never cached
    for _ in range(2):
        short = c.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    assert short.usage.prompt_tokens_details.cached_tokens == 0


def test_prompt_caching_can_be_turned_off_and_is_bounded() -> None:
    with running_server(prompt_cache_size=0) as srv:
        c = client(srv)
        _ask(c, "Which rule covers kind 5?")
        assert _ask(c, "Which rule covers kind 5?").usage.prompt_tokens_details.cached_tokens == 0
    with running_server(prompt_cache_size=4) as srv:
        c = client(srv)
        _ask(c, "Which rule covers kind 5?")
        _ask(c, "Which rule covers kind 5?")
        assert len(srv.server.prompt_cache) == 4  # the oldest blocks were forgotten


# --- batches on /v1/responses -------------------------------------------------------------------


def test_a_batch_on_v1_responses_round_trips_with_reasoning_and_cached_usage(server: Any) -> None:
    c = client(server)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/responses",
              "body": {"model": "gpt-5-mini", "instructions": POLICY, "input": f"Which rule covers kind {i}?",
                       "reasoning": {"effort": "low"}}} for i in range(3)]
    lines.append({"custom_id": "streamed", "method": "POST", "url": "/v1/responses",
                  "body": {"model": "gpt-5-mini", "input": "hi", "stream": True}})
    f = c.files.create(file=("r.jsonl", "\n".join(json.dumps(x) for x in lines).encode()), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    batch = wait_for(lambda: c.batches.retrieve(batch.id), ("completed", "failed", "cancelled"))
    assert batch.status == "completed" and batch.request_counts.completed == 3 and batch.request_counts.failed == 1
    out = [json.loads(line) for line in c.files.content(batch.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in out] == ["q0", "q1", "q2"]
    for line in out:
        assert set(line) == {"id", "custom_id", "response", "error"} and line["error"] is None
        assert line["id"].startswith("batch_req_") and line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_")
        body = line["response"]["body"]
        assert body["object"] == "response" and [o["type"] for o in body["output"]] == ["reasoning", "message"]
        assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == REASONING_TOKENS["low"]
    cached = [line["response"]["body"]["usage"]["input_tokens_details"]["cached_tokens"] for line in out]
    assert cached[0] == 0 and cached[1] >= 1024 and cached[2] >= 1024  # the shared instructions were cached
    assert batch.usage.input_tokens_details.cached_tokens == sum(cached)
    assert batch.usage.output_tokens_details.reasoning_tokens == 3 * REASONING_TOKENS["low"]
    assert batch.usage.total_tokens == sum(line["response"]["body"]["usage"]["total_tokens"] for line in out)
    (error,) = [json.loads(line) for line in c.files.content(batch.error_file_id).text.splitlines()]
    assert error["custom_id"] == "streamed" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "stream"


def test_batch_endpoints_openai_has_but_the_server_does_not_are_refused_clearly(server: Any) -> None:
    c = client(server)
    f = c.files.create(file=("e.jsonl", b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", '
                                        b'"body": {"model": "text-embedding-3-small", "input": "hi"}}\n'),
                       purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    assert err.value.param == "endpoint" and "does not implement /v1/embeddings" in err.value.message


# --- model lifecycle ----------------------------------------------------------------------------


def test_models_carry_shutdown_date_null_unless_the_server_is_told_one(server: Any) -> None:
    # OpenAI's /v1/models gives each model a shutdown_date: "YYYY-MM-DD", or null when none is announced
    listing = client(server).models.with_raw_response.list().http_response.json()["data"]
    assert listing and all("shutdown_date" in m and m["shutdown_date"] is None for m in listing)
    assert client(server).models.retrieve("gpt-4o-mini").shutdown_date is None


def test_declared_shutdown_dates_are_listed_and_a_past_one_retires_the_model() -> None:
    shutdowns = {"gpt-4o-mini": "2099-01-14", "gpt-4o": "2020-01-01", "gpt-3.5-turbo": "2098-06-30"}
    with running_server(model_shutdowns=shutdowns) as srv:
        c = client(srv)
        models = {m.id: m for m in c.models.list()}
        assert models["gpt-4o-mini"].shutdown_date == "2099-01-14"
        assert models["gpt-3.5-turbo"].shutdown_date == "2098-06-30"  # a declared model is listed
        assert "gpt-4o" not in models and models["gpt-4.1"].shutdown_date is None
        assert c.models.retrieve("gpt-4o-mini").shutdown_date == "2099-01-14"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("gpt-4o")
        for call in (lambda: c.chat.completions.create(model="gpt-4o", messages=user("hi")),
                     lambda: c.responses.create(model="gpt-4o", input="hi")):
            with pytest.raises(openai.NotFoundError) as err:
                call()
            assert err.value.code == "model_not_found" and "has been deprecated" in err.value.message
        assert c.chat.completions.create(model="gpt-4o-mini", messages=user("hi")).choices[0].message.content


def test_bad_shutdown_dates_are_refused_naming_the_model() -> None:
    with pytest.raises(ValueError, match="gpt-4o-mini.*YYYY-MM-DD"):
        ServerConfig(model_shutdowns={"gpt-4o-mini": "next January"})
    from click.testing import CliRunner

    from oaipipe.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--model-shutdown", "gpt-4o-mini"])
    assert result.exit_code != 0 and "MODEL=YYYY-MM-DD" in (result.output + str(result.exception))


def test_serve_and_the_client_model_table_agree_on_which_models_reason(server: Any) -> None:
    from oaipipe.models_table import MODELS, model_info
    from oaipipe.server.options import is_reasoning_model

    names = [n + ("4" if n in ("gpt-5.", "o") else "") for n in MODELS]  # "gpt-5." / "o" are prefixes
    assert {n: is_reasoning_model(n) for n in names} == {n: bool(model_info(n) and model_info(n).reasoning)
                                                          for n in names}
    luna = client(server).responses.create(model="gpt-6-luna", input="Is the mug dishwasher safe?")  # the default
    assert luna.reasoning.effort == "medium"
    assert luna.usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS["medium"]
