"""`oaipipe serve` streams for real: incremental Server-Sent Events on chat completions and Responses, over
real HTTP, read with the official openai SDK (and raw HTTP for the wire format)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import openai
import pytest
from openai import OpenAI

from oaipipe.testing import running_server

PROMPT = "Thanks a lot, the new mug is great and keeps my coffee hot!"


def client(srv: Any) -> OpenAI:
    return OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def raw_stream(srv: Any, path: str, body: dict[str, Any]) -> tuple[Any, list[str]]:
    """(the HTTP response, its body's lines) of a streamed call, read with the standard library."""
    req = urllib.request.Request(srv.base_url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer test"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp, resp.read().decode().split("\n")


def test_chat_stream_arrives_while_the_server_is_still_producing() -> None:
    with running_server() as srv:
        c = client(srv)
        full = c.chat.completions.create(model="gpt-4o-mini", messages=user(PROMPT))
        srv.set_faults(latency=0.8)  # spread over the words: a client that reads as they come gets the first early
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=user(PROMPT), stream=True,
                                           stream_options={"include_usage": True})
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert stream.response.headers["cache-control"] == "no-cache"
        assert stream.response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in stream.response.headers
        chunks, at_first_delta = [], None
        for chunk in stream:
            if at_first_delta is None and chunk.choices and chunk.choices[0].delta.content:
                at_first_delta = srv.stats()["streams"]  # the server's count when the client holds one word
            chunks.append(chunk)
        done = srv.stats()["streams"]
    # the first word reached the client before the server had written the stream's last event
    assert at_first_delta is not None and at_first_delta["completed"] == 0
    assert at_first_delta["events"] < done["events"] == len(chunks) + 1  # + the [DONE] line
    deltas = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(deltas) > 5 and "".join(deltas) == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert all(ch.usage is None for ch in chunks[:-1]) and chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert {ch.id for ch in chunks} == {chunks[0].id} and all(ch.object == "chat.completion.chunk" for ch in chunks)


def test_chat_stream_wire_format_ends_with_done(server: Any) -> None:
    resp, lines = raw_stream(server, "/chat/completions", {"model": "gpt-4o-mini", "messages": user(PROMPT),
                                                           "stream": True})
    events = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in events[:-1])  # no include_usage: no usage key
    assert server.stats()["streams"]["completed"] == 1


def test_responses_stream_has_the_typed_events_in_order() -> None:
    with running_server() as srv:
        c = client(srv)
        full = c.responses.create(model="gpt-5-mini", input=PROMPT, reasoning={"effort": "low"})
        srv.set_faults(latency=0.8)
        events, at_first_delta = [], None
        for event in c.responses.create(model="gpt-5-mini", input=PROMPT, reasoning={"effort": "low"},
                                        stream=True):
            if at_first_delta is None and event.type == "response.output_text.delta":
                at_first_delta = srv.stats()["streams"]
            events.append(event)
        done = srv.stats()["streams"]
    assert at_first_delta is not None and at_first_delta["completed"] == 0
    assert at_first_delta["events"] < done["events"] == len(events)
    kinds = [e.type for e in events]
    n = kinds.count("response.output_text.delta")
    assert n > 5 and kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.output_item.done",  # the reasoning item
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * n,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[2].item.type == "reasoning" and events[4].item.type == "message"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == full.output_text == events[-4].text
    final = events[-1].response
    assert final.status == "completed" and final.output_text == text
    assert final.usage.model_dump() == full.usage.model_dump()
    assert final.usage.output_tokens_details.reasoning_tokens > 0 and final.reasoning.effort == "low"


def test_responses_stream_helper_and_wire_format(server: Any) -> None:
    c = client(server)
    full = c.responses.create(model="gpt-4o-mini", input=PROMPT)
    with c.responses.stream(model="gpt-4o-mini", input=PROMPT) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == full.output_text and final.usage.total_tokens == full.usage.total_tokens
    resp, lines = raw_stream(server, "/responses", {"model": "gpt-4o-mini", "input": PROMPT, "stream": True})
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    names = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in data] and "[DONE]" not in "\n".join(lines)


def test_a_stream_cut_by_max_output_tokens_ends_incomplete(server: Any) -> None:
    kinds = [e.type for e in client(server).responses.create(model="gpt-4o-mini", input=PROMPT,
                                                             max_output_tokens=3, stream=True)]
    assert kinds[-1] == "response.incomplete" and 1 <= kinds.count("response.output_text.delta") <= 3


def test_an_injected_drop_cuts_the_stream_in_the_middle() -> None:
    with running_server(drop_rate=1.0, seed=3) as srv:
        c = client(srv)
        srv.set_faults(drop_rate=0.0)
        full = c.chat.completions.create(model="gpt-4o-mini", messages=user(PROMPT)).choices[0].message.content
        srv.set_faults(drop_rate=1.0)
        received: list[str] = []
        with pytest.raises(openai.APIConnectionError):
            for chunk in c.chat.completions.create(model="gpt-4o-mini", messages=user(PROMPT), stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
        # part of the reply arrived (the client saw a stream start, then break), not all of it
        assert received and full.startswith("".join(received)) and "".join(received) != full
        kinds: list[str] = []
        with pytest.raises(openai.APIConnectionError):
            for event in c.responses.create(model="gpt-4o-mini", input=PROMPT, stream=True):
                kinds.append(event.type)
        assert "response.output_text.delta" in kinds and "response.completed" not in kinds
        stats = srv.stats()
        with pytest.raises(openai.BadRequestError):  # a refused request is answered, not cut: no drop counted
            c.responses.create(model="gpt-4o-mini", input="hi", stream=True, previous_response_id="resp_1")
        assert srv.stats()["injected"]["drop"] == 2
    assert stats["streams"]["dropped"] == 2 and stats["streams"]["completed"] == 0
    assert stats["injected"]["drop"] == 2 and stats["by_status"]["200"] == 3


def test_an_injected_error_comes_before_the_stream_starts() -> None:
    with running_server(error_rates={429: 1.0}, retry_after=0.01) as srv:
        with pytest.raises(openai.RateLimitError):
            list(client(srv).chat.completions.create(model="gpt-4o-mini", messages=user("hi"), stream=True))
        assert srv.stats()["streams"]["started"] == 0


def test_a_refused_streamed_request_is_an_error_not_a_stream(server: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model="gpt-4o-mini", messages=user("hi"), stream=True,
                                               tools=[{"type": "function", "function": {"name": "f"}}])
    assert err.value.code == "unsupported_parameter" and server.stats()["streams"]["started"] == 0
    with pytest.raises(openai.BadRequestError) as err:
        client(server).responses.create(model="gpt-4o-mini", input="hi", extra_body={"stream": "yes"})
    assert err.value.param == "stream" and err.value.code == "invalid_type"
