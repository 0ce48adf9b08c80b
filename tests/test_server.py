"""`oaipipe serve` over real HTTP on loopback, driven by the official openai client."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from PIL import Image

from oaipipe.server.config import Faults, ServerConfig, parse_error_rate
from oaipipe.testing import running_server


def client(srv: Any, **kw: Any) -> OpenAI:
    return OpenAI(base_url=srv.base_url, api_key=kw.pop("api_key", "test"), max_retries=0, **kw)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def png_url(size: tuple[int, int], color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def training_rows(n: int = 10) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "system", "content": "You are the Acme bot."},
                          {"role": "user", "content": f"Which shelf holds part {i}?"},
                          {"role": "assistant", "content": f"Part {i} is on shelf {chr(65 + i)}."}]}
            for i in range(n)]


def wait_for(fetch: Any, done: tuple[str, ...], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    obj = fetch()
    while obj.status not in done:
        assert time.monotonic() < deadline, f"still {obj.status}"
        time.sleep(0.05)
        obj = fetch()
    return obj


# --- models and chat --------------------------------------------------------------------------


def test_models_list_and_retrieve(server: Any) -> None:
    c = client(server)
    ids = [m.id for m in c.models.list()]
    assert "gpt-4o-mini" in ids
    model = c.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("no-such-model")
    assert err.value.code == "model_not_found"


def test_chat_text_shape_and_request_id(server: Any) -> None:
    c = client(server)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=user("I love it!"))
    assert raw.headers.get("x-request-id", "").startswith("req_")
    resp = raw.parse()
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert resp.model == "local:gpt-4o-mini"
    choice = resp.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.refusal is None and choice.logprobs is None
    assert "thank" in choice.message.content.lower()
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens > 0
    again = c.chat.completions.create(model="gpt-4o-mini", messages=user("I love it!"))
    assert again.choices[0].message.content == choice.message.content  # deterministic


def test_chat_with_image_data_url(server: Any) -> None:
    c = client(server)
    resp = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Describe the image."},
        {"type": "image_url", "image_url": {"url": png_url((80, 40), (230, 10, 20)), "detail": "low"}}]}])
    text = resp.choices[0].message.content
    assert "80\u00d740" in text and "red" in text and "landscape" in text
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}])
    assert err.value.code == "invalid_image"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "cannot fetch" in err.value.message


@pytest.mark.parametrize("url", ["{path}", "file://{path}", "/dev/zero"])
def test_the_server_never_reads_a_local_file_named_by_a_client(server: Any, tmp_path: Path, url: str) -> None:
    # OpenAI takes data URLs and http(s) URLs only; a path would let any client read the server's files
    picture = tmp_path / "secret.png"
    Image.new("RGB", (30, 20), (0, 200, 0)).save(picture)
    for endpoint in ("chat", "responses"):
        with pytest.raises(openai.BadRequestError) as err:
            if endpoint == "chat":
                client(server).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url.format(path=picture)}}]}])
            else:
                client(server).responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": [
                    {"type": "input_image", "image_url": url.format(path=picture)}]}])
        assert err.value.code == "invalid_image_url" and "data:image/png;base64" in err.value.message


def test_chat_json_schema_and_sdk_parse(server: Any) -> None:
    from pydantic import BaseModel

    class Verdict(BaseModel):
        sentiment: str
        score: float
        reply: str
        tags: list[str]

    c = client(server)
    parsed = c.chat.completions.parse(model="gpt-4o-mini", messages=user("The lid cracked, awful."),
                                      response_format=Verdict)
    verdict = parsed.choices[0].message.parsed
    assert isinstance(verdict, Verdict)
    assert verdict.sentiment == "negative" and verdict.score < 0
    resp = c.chat.completions.create(model="gpt-4o-mini", messages=user("ok"),
                                     response_format={"type": "json_object"})
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_chat_max_tokens_and_streaming(server: Any) -> None:
    c = client(server)
    resp = c.chat.completions.create(model="gpt-4o-mini", messages=user("Thanks for the great help!"),
                                     max_completion_tokens=4)
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens <= 4
    full = c.chat.completions.create(model="gpt-4o-mini", messages=user("hello"))
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=user("hello"), stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_chat_bad_requests_have_openai_error_shape(server: Any) -> None:
    c = client(server)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=user("hi"), n=2)
    assert err.value.param == "n" and err.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="ft:gpt-4o-mini:local:ghost:00000000", messages=user("hi"))
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert err.value.param == "messages"
    # raw HTTP: invalid JSON, unknown path
    req = urllib.request.Request(server.base_url + "/chat/completions", data=b"{not json",
                                 headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(req, timeout=5)
    body = json.loads(http_err.value.read())
    assert http_err.value.code == 400
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == "invalid_json"
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(server.base_url + "/nope", timeout=5)
    assert http_err.value.code == 404 and "no such endpoint" in json.loads(http_err.value.read())["error"]["message"]


def test_responses_api_text_image_and_schema(server: Any) -> None:
    c = client(server)
    resp = c.responses.create(model="gpt-4o-mini", input="My order never arrived and nobody answers.",
                              instructions="You are a support agent.")
    assert resp.status == "completed" and resp.object == "response"
    assert resp.output[0].type == "message" and resp.output[0].content[0].type == "output_text"
    assert resp.output[0].content[0].annotations == []
    assert "sorry" in resp.output_text.lower() or "apologi" in resp.output_text.lower()
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    img = c.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What colour?"},
        {"type": "input_image", "image_url": png_url((20, 20), (20, 60, 220))}]}])
    assert "blue" in img.output_text and "square" in img.output_text
    schema = {"type": "object", "properties": {"width": {"type": "integer"}, "colors": {"type": "array",
              "items": {"type": "string"}}}, "required": ["width", "colors"], "additionalProperties": False}
    structured = c.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": png_url((20, 20), (20, 60, 220))}]}],
        text={"format": {"type": "json_schema", "name": "facts", "schema": schema, "strict": True}})
    assert json.loads(structured.output_text) == {"width": 20, "colors": ["blue"]}


# --- files, fine-tuning, batches ------------------------------------------------------------


def test_files_crud(server: Any) -> None:
    c = client(server)
    data = jsonl(training_rows(10))
    f = c.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert f.id.startswith("file-") and f.bytes == len(data) and f.purpose == "fine-tune"
    assert f.filename == "train.jsonl" and f.status == "processed"
    assert f.id in [x.id for x in c.files.list()]
    assert c.files.retrieve(f.id).filename == "train.jsonl"
    assert c.files.content(f.id).content == data
    assert c.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)
    with pytest.raises(openai.BadRequestError) as err:
        c.files.create(file=("x.jsonl", b"{}"), purpose="homework")  # type: ignore[arg-type]
    assert err.value.param == "purpose"
    with pytest.raises(openai.BadRequestError) as err:
        c.files.create(file=("notes.txt", b"hello"), purpose="fine-tune")
    assert "jsonl" in err.value.message


def test_fine_tuning_lifecycle_and_trained_model_answers(server: Any) -> None:
    c = client(server)
    f = c.files.create(file=("train.jsonl", jsonl(training_rows(10))), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini", suffix="acme",
                                    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.object == "fine_tuning.job"
    job = wait_for(lambda: c.fine_tuning.jobs.retrieve(job.id), ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("ft:gpt-4o-mini:local:acme:")
    assert job.trained_tokens and job.trained_tokens > 0 and job.hyperparameters.n_epochs == 2
    messages = [event.message for event in c.fine_tuning.jobs.list_events(job.id)]
    assert any("successfully completed" in m for m in messages)
    assert job.id in [j.id for j in c.fine_tuning.jobs.list(limit=5)]
    reply = c.chat.completions.create(model=job.fine_tuned_model, messages=[
        {"role": "system", "content": "You are the Acme bot."}, {"role": "user", "content": "Which shelf holds part 4?"}])
    assert reply.choices[0].message.content == "Part 4 is on shelf E."
    assert reply.model == job.fine_tuned_model
    assert job.fine_tuned_model in [m.id for m in c.models.list()]


def test_fine_tuning_bad_file_fails_with_error(server: Any) -> None:
    c = client(server)
    bad = training_rows(10)
    bad[3] = {"messages": [{"role": "user", "content": "no answer here"}]}
    f = c.files.create(file=("bad.jsonl", jsonl(bad)), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini")
    job = wait_for(lambda: c.fine_tuning.jobs.retrieve(job.id), ("succeeded", "failed", "cancelled"))
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.code == "invalid_training_file" and "line 4" in job.error.message
    assert job.error.param == "training_file"
    few = c.files.create(file=("few.jsonl", jsonl(training_rows(3))), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(training_file=few.id, model="gpt-4o-mini")
    job = wait_for(lambda: c.fine_tuning.jobs.retrieve(job.id), ("succeeded", "failed", "cancelled"))
    assert job.status == "failed" and "at least 10" in job.error.message
    with pytest.raises(openai.BadRequestError) as err:
        c.fine_tuning.jobs.create(training_file="file-doesnotexist", model="gpt-4o-mini")
    assert err.value.param == "training_file"
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.jobs.retrieve("ftjob-unknown")


def test_fine_tuning_cancel() -> None:
    with running_server(ft_seconds=5) as srv:
        c = client(srv)
        f = c.files.create(file=("train.jsonl", jsonl(training_rows(10))), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini")
        cancelled = c.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        time.sleep(0.3)
        assert c.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError):
            c.fine_tuning.jobs.cancel(job.id)


def test_dpo_fine_tuning() -> None:
    rows = [{"input": {"messages": [{"role": "user", "content": f"Greet customer {i}"}]},
             "preferred_output": [{"role": "assistant", "content": f"Hello customer {i}, welcome back!"}],
             "non_preferred_output": [{"role": "assistant", "content": "What."}]} for i in range(10)]
    with running_server(ft_seconds=0.1) as srv:
        c = client(srv)
        f = c.files.create(file=("dpo.jsonl", jsonl(rows)), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o-mini",
                                        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})
        job = wait_for(lambda: c.fine_tuning.jobs.retrieve(job.id), ("succeeded", "failed", "cancelled"))
        assert job.status == "succeeded", job.error
        reply = c.chat.completions.create(model=job.fine_tuned_model, messages=user("Greet customer 7"))
        assert reply.choices[0].message.content == "Hello customer 7, welcome back!"


def test_batch_lifecycle_with_output_and_error_files() -> None:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": user(f"Review {i}: I love it!")}} for i in range(3)]
    lines.append({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "gpt-4o-mini", "messages": "not a list"}})
    # faults must not touch batch lines
    with running_server(error_rates={500: 1.0}) as srv:
        c = client(srv)
        f = c.files.create(file=("batch.jsonl", jsonl(lines)), purpose="batch")
        batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert batch.status == "validating" and batch.id.startswith("batch_")
        batch = wait_for(lambda: c.batches.retrieve(batch.id), ("completed", "failed", "cancelled"))
        assert batch.status == "completed", batch.errors
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (4, 3, 1)
        outputs = {json.loads(line)["custom_id"]: json.loads(line)
                   for line in c.files.content(batch.output_file_id).text.splitlines()}
        assert set(outputs) == {"r0", "r1", "r2"}
        for line in outputs.values():
            assert line["response"]["status_code"] == 200 and line["error"] is None
            assert line["response"]["body"]["object"] == "chat.completion"
        errors = [json.loads(line) for line in c.files.content(batch.error_file_id).text.splitlines()]
        assert [e["custom_id"] for e in errors] == ["bad"]
        assert errors[0]["response"]["status_code"] == 400
        assert errors[0]["response"]["body"]["error"]["param"] == "messages"
        assert batch.id in [b.id for b in c.batches.list()]
        with pytest.raises(openai.BadRequestError):
            c.batches.cancel(batch.id)
        assert srv.stats()["injected"] == {}


def test_batch_malformed_file_fails_and_cancel() -> None:
    with running_server(batch_seconds=3) as srv:
        c = client(srv)
        f = c.files.create(file=("b.jsonl", b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", '
                                            b'"body": {}}\n'), purpose="batch")
        batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = c.batches.cancel(batch.id)
        assert batch.status in ("cancelling", "cancelled")
        batch = wait_for(lambda: c.batches.retrieve(batch.id), ("cancelled",))
        with pytest.raises(openai.BadRequestError) as err:
            c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
        assert err.value.param == "endpoint"
    with running_server() as srv:
        c = client(srv)
        f = c.files.create(file=("b.jsonl", b"not json\n"), purpose="batch")
        batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = wait_for(lambda: c.batches.retrieve(batch.id), ("completed", "failed", "cancelled"))
        assert batch.status == "failed" and "Line 1" in batch.errors.data[0].message


# --- switches -------------------------------------------------------------------------------


def test_api_key_required_and_never_echoed() -> None:
    with running_server(api_key="right-key-123") as srv:
        with pytest.raises(openai.AuthenticationError) as err:
            client(srv, api_key="wrong-key-456").models.list()
        assert err.value.code == "invalid_api_key"
        assert "wrong-key-456" not in str(err.value) and "wrong-key-456" not in err.value.response.text
        assert [m.id for m in client(srv, api_key="right-key-123").models.list()]
        keyed = urllib.request.Request(srv.url + "/_oaipipe/stats", headers={"Authorization": "Bearer right-key-123"})
        stats = urllib.request.urlopen(keyed, timeout=5)  # control paths need the key too (test_serve_hardening)
        assert json.loads(stats.read())["by_status"]["401"] == 1
        assert "right-key-123" not in repr(srv.config)  # a config printed in a log or traceback


def test_injected_429_carries_retry_after_headers() -> None:
    with running_server(error_rates={429: 1.0}, retry_after=2.5) as srv:
        with pytest.raises(openai.RateLimitError) as err:
            client(srv).chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
        headers = err.value.response.headers
        assert headers["retry-after"] == "2.5" and headers["retry-after-ms"] == "2500"
        assert err.value.code == "rate_limit_exceeded"
        assert client(srv).models.list().data  # models are not an inference endpoint: no faults
        srv.set_faults(error_rates={503: 1.0})
        with pytest.raises(openai.InternalServerError) as err5:
            client(srv).responses.create(model="gpt-4o-mini", input="hi")
        assert err5.value.status_code == 503
        srv.clear_faults()
        assert client(srv).chat.completions.create(model="gpt-4o-mini", messages=user("hi")).choices
        assert srv.stats()["injected"] == {"429": 1, "503": 1}


def test_injected_error_rate_is_seeded_and_partial() -> None:
    outcomes = []
    for _ in range(2):
        with running_server(error_rates={500: 0.5}, seed=7) as srv:
            c = client(srv)
            run = []
            for _ in range(20):
                try:
                    c.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
                    run.append(200)
                except openai.InternalServerError:
                    run.append(500)
            outcomes.append(run)
    assert outcomes[0] == outcomes[1]
    assert 0 < outcomes[0].count(500) < 20


def test_dropped_connection_raises_connection_error() -> None:
    with running_server(drop_rate=1.0) as srv:
        with pytest.raises(openai.APIConnectionError):
            client(srv).chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
        assert srv.stats()["by_status"].get("dropped") == 1


def test_timeout_rate_trips_client_timeout() -> None:
    with running_server(timeout_rate=1.0, timeout_seconds=2.0) as srv, pytest.raises(openai.APITimeoutError):
        client(srv, timeout=0.3).chat.completions.create(model="gpt-4o-mini", messages=user("hi"))


def test_stats_and_faults_over_http(server: Any) -> None:
    c = client(server)
    c.models.list()
    c.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")
    stats = server.stats()
    assert stats["by_path"]["/v1/chat/completions"] == 1 and stats["by_path"]["/v1/models/{model}"] == 1
    assert stats["by_status"] == {"200": 2, "404": 1} and stats["requests"] == 3
    req = urllib.request.Request(server.url + "/_oaipipe/faults", data=json.dumps(
        {"error_rates": {"429": 1.0}}).encode(), headers={"Content-Type": "application/json"}, method="POST")
    assert json.loads(urllib.request.urlopen(req, timeout=5).read())["error_rates"] == {"429": 1.0}
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    bad = urllib.request.Request(server.url + "/_oaipipe/faults", data=b'{"drop_rat": 1}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=5)
    assert "drop_rat" in json.loads(err.value.read())["error"]["message"]
    wrapped = urllib.request.Request(server.url + "/_oaipipe/faults", data=b'{"faults": {"drop_rate": 1}}',
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(wrapped, timeout=5)
    assert err.value.code == 400 and "not wrapped" in json.loads(err.value.read())["error"]["message"]
    server.reset_stats()
    assert server.stats()["requests"] == 0


def test_keep_alive_and_content_length(server: Any) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for _ in range(3):  # the same connection serves several requests
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(body)
        assert resp.headers["x-request-id"]
    conn.close()


def test_config_validation() -> None:
    assert parse_error_rate("429=0.25") == (429, 0.25)
    for bad in ("429", "abc=0.1", "429=2", "299=0.1"):
        with pytest.raises(ValueError):
            parse_error_rate(bad)
    with pytest.raises(ValueError, match="add up"):
        Faults(error_rates={429: 0.7}, drop_rate=0.5)
    with pytest.raises(TypeError, match="unknown server setting"):
        ServerConfig.from_kwargs(latncy=1)
    with pytest.raises(ValueError, match="unknown fault"):
        Faults().updated(nope=1)


# --- the command ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_as_a_subprocess(tmp_path: Path) -> None:
    port = _free_port()
    exe = Path(sys.executable).parent / "oaipipe"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "oaipipe.cli"]
    env = {**os.environ, "OAIPIPE_SERVE_API_KEY": "sub-key-1"}
    proc = subprocess.Popen([*cmd, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                             "--ft-seconds", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}/v1" in line and "backend.base_url=" in line
        c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sub-key-1", max_retries=0)
        resp = c.chat.completions.create(model="gpt-4o-mini", messages=user("Thanks, works great!"))
        assert resp.model == "local:gpt-4o-mini"
        c.files.create(file=("t.jsonl", jsonl(training_rows(10))), purpose="fine-tune")
        assert list((tmp_path / "data" / "files").glob("file-*.bin"))
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_serve_command_refuses_remote_host_and_bad_flags() -> None:
    import click
    from click.testing import CliRunner

    from oaipipe.builtin import commands_serve
    from oaipipe.commands import serve

    group = click.Group()
    commands_serve.register_commands(group)
    runner = CliRunner()
    result = runner.invoke(group, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code != 0 and "not a loopback address" in str(result.exception)
    result = runner.invoke(group, ["serve", "--error-rate", "429"])
    assert result.exit_code != 0 and "STATUS=RATE" in str(result.exception)
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1")
    assert serve.is_loopback("localhost") and not serve.is_loopback("10.0.0.1")


def test_batch_on_the_responses_endpoint_and_file_pagination(server: Any) -> None:
    c = client(server)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/responses",
              "body": {"model": "gpt-4o-mini", "input": f"Is item {i} in stock?"}} for i in range(2)]
    f = c.files.create(file=("r.jsonl", jsonl(lines)), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    batch = wait_for(lambda: c.batches.retrieve(batch.id), ("completed", "failed", "cancelled"))
    assert batch.status == "completed" and batch.error_file_id is None
    bodies = [json.loads(line)["response"]["body"] for line in c.files.content(batch.output_file_id).text.splitlines()]
    assert [b["object"] for b in bodies] == ["response", "response"]
    assert batch.usage.total_tokens == sum(b["usage"]["total_tokens"] for b in bodies)
    ids = [x.id for x in c.files.list(limit=1)]  # the SDK follows `after` cursors page by page
    assert set(ids) == {f.id, batch.output_file_id} and len(ids) == 2
    assert [x.id for x in c.files.list(purpose="batch")] == [f.id]
