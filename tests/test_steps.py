"""The ``ask`` and ``describe_image`` steps with a fake record and the local backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from oaipipe.base import Backend, Context, Step, StepContext
from oaipipe.errors import BadRequestError, ConfigError, ImageError, TemplateError
from oaipipe.plugins import PluginHost
from oaipipe.types import ChatRequest, ChatResponse, Record

SCHEMA = {
    "type": "object",
    "properties": {"caption": {"type": "string"}, "main_color": {"type": "string"}},
    "required": ["caption", "main_color"],
    "additionalProperties": False,
}


def build(host: PluginHost, base_dir: Path, block: dict[str, Any], settings: dict[str, Any] | None = None) -> Step:
    step = host.build("step", block, Context(base_dir=base_dir, host=host, settings=settings or {}))
    assert isinstance(step, Step)
    step.prepare()
    return step


def run_step(host: PluginHost, step: Step, data: dict[str, Any], backend: Backend | None = None
             ) -> tuple[dict[str, Any], StepContext]:
    if backend is None:
        built = host.build("backend", {"type": "local"}, Context(host=host))
        assert isinstance(built, Backend)
        backend = built
    ctx = StepContext(record=Record("r1", data, where="reviews.csv row 2"), backend=backend, host=host)
    return asyncio.run(step.run(data, ctx)), ctx


class Recorder(Backend):
    """A backend that records requests and answers with a fixed reply."""

    def __init__(self, reply: str = "fine") -> None:
        super().__init__()
        self.requests: list[ChatRequest] = []
        self.reply = reply

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(text=self.reply, model=request.model, backend="recorder")


def test_ask_writes_reply_and_exchange(host: PluginHost, tmp_path: Path) -> None:
    step = build(host, tmp_path, {"type": "ask", "system": "You help {name}.", "prompt": "Reply to: {text}",
                                  "output": "reply"})
    out, ctx = run_step(host, step, {"text": "The mug broke", "name": "Ann"})
    assert list(out) == ["reply"] and out["reply"]
    [ex] = ctx.exchanges
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"]
    assert ex.messages[0]["content"] == "You help Ann."
    assert ex.messages[1]["content"] == "Reply to: The mug broke"
    assert ex.messages[2]["content"] == out["reply"]
    assert all(m["sentiment"] is None for m in ex.messages)
    assert ex.record_id == "r1" and ex.step == "ask:reply" and ex.backend == "local"
    assert ex.usage.total_tokens > 0 and ex.request_id


def test_ask_missing_field_names_it(host: PluginHost, tmp_path: Path) -> None:
    step = build(host, tmp_path, {"type": "ask", "prompt": "Reply to: {txt}", "output": "reply"})
    with pytest.raises(TemplateError) as info:
        run_step(host, step, {"text": "hello"})
    assert "'txt'" in str(info.value) and "{text}" in str(info.value)
    assert "reviews.csv row 2" in str(info.value)


def test_ask_parameters_and_defaults(host: PluginHost, tmp_path: Path) -> None:
    backend = Recorder()
    backend.options = backend.Options(model="gpt-4.1-mini", temperature=0.7, max_tokens=99)
    step = build(host, tmp_path, {"type": "ask", "prompt": "{text}", "output": "reply", "temperature": 0.1})
    run_step(host, step, {"text": "hi"}, backend)
    [request] = backend.requests
    assert request.model == "gpt-4.1-mini"  # backend default
    assert request.temperature == 0.1  # the step wins
    assert request.max_tokens == 99
    assert request.step == "ask:reply"
    assert request.messages == [{"role": "user", "content": "hi"}]


def test_ask_json_schema_flatten(host: PluginHost, tmp_path: Path) -> None:
    step = build(host, tmp_path, {"type": "ask", "prompt": "Describe: {text}", "output": "info",
                                  "json_schema": SCHEMA, "flatten": True})
    assert step.outputs() == ["info", "info_caption", "info_main_color"]
    out, ctx = run_step(host, step, {"text": "a red mug"})
    assert isinstance(out["info"], dict)
    assert out["info_caption"] == out["info"]["caption"]
    assert out["info_main_color"] == out["info"]["main_color"]
    assert json.loads(ctx.exchanges[0].messages[-1]["content"]) == out["info"]


def test_ask_schema_request_shape(host: PluginHost, tmp_path: Path) -> None:
    backend = Recorder(reply='{"caption": "x", "main_color": "red"}')
    step = build(host, tmp_path, {"type": "ask", "prompt": "{text}", "output": "info", "json_schema": SCHEMA})
    out, _ = run_step(host, step, {"text": "hi"}, backend)
    rf = backend.requests[0].response_format
    assert rf == {"type": "json_schema", "json_schema": {"name": "info", "schema": SCHEMA, "strict": True}}
    assert out == {"info": {"caption": "x", "main_color": "red"}}


def test_ask_invalid_json_reply_is_a_clear_error(host: PluginHost, tmp_path: Path) -> None:
    step = build(host, tmp_path, {"type": "ask", "prompt": "{text}", "output": "info", "json_schema": SCHEMA})
    with pytest.raises(BadRequestError, match="not valid JSON"):
        run_step(host, step, {"text": "hi"}, Recorder(reply="Sure! Here it is: caption"))


def test_flatten_without_schema_is_a_config_error(host: PluginHost, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="flatten"):
        build(host, tmp_path, {"type": "ask", "prompt": "{text}", "output": "x", "flatten": True})


def test_ask_uses_assistant_preset(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "assistants.yaml").write_text(
        "assistants:\n  helper:\n    instructions: You are terse.\n    model: gpt-4.1-nano\n    temperature: 0.2\n"
    )
    backend = Recorder()
    step = build(host, tmp_path, {"type": "ask", "prompt": "{text}", "output": "reply", "assistant": "helper"})
    _, ctx = run_step(host, step, {"text": "hi"}, backend)
    request = backend.requests[0]
    assert request.messages[0] == {"role": "system", "content": "You are terse."}
    assert request.model == "gpt-4.1-nano" and request.temperature == 0.2
    assert ctx.exchanges[0].messages[0]["content"] == "You are terse."


def test_ask_unknown_preset(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "assistants.yaml").write_text("assistants:\n  helper: {instructions: hi}\n")
    with pytest.raises(ConfigError) as info:
        build(host, tmp_path, {"type": "ask", "prompt": "{text}", "output": "r", "assistant": "helpr"})
    assert "helpr" in str(info.value) and "did you mean 'helper'" in str(info.value)


def test_ask_prompt_is_required(host: PluginHost, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prompt"):
        build(host, tmp_path, {"type": "ask", "output": "r"})


# --- describe_image -----------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (120, 80), (220, 20, 30)).save(tmp_path / "img" / "red.png")
    Image.new("RGB", (50, 100), (20, 40, 220)).save(tmp_path / "img" / "blue.jpg")
    return tmp_path


def test_describe_image_local_path(host: PluginHost, images: Path) -> None:
    step = build(host, images, {"type": "describe_image", "image": "{image}", "output": "desc", "detail": "low",
                                "model": "gpt-4o"})
    out, ctx = run_step(host, step, {"image": "img/red.png"})
    assert "red" in out["desc"].lower()
    assert out["desc_image_tokens"] == 85  # gpt-4o: 85 for a low-detail image
    [ex] = ctx.exchanges
    user = ex.messages[0]["content"]
    assert user == "What's in this image? [image: img/red.png]"
    assert "base64" not in json.dumps(ex.to_dict())


def test_describe_several_images_and_schema(host: PluginHost, images: Path) -> None:
    step = build(host, images, {"type": "describe_image", "image": ["{a}", "{b}"], "output": "desc",
                                "json_schema": SCHEMA, "flatten": True, "prompt": "Compare {name}",
                                "model": "gpt-4o"})
    out, ctx = run_step(host, step, {"a": "img/red.png", "b": "img/blue.jpg", "name": "these"})
    assert isinstance(out["desc"], dict) and "desc_caption" in out and "desc_main_color" in out
    assert out["desc_image_tokens"] == 2 * (170 + 85)
    user = ctx.exchanges[0].messages[0]["content"]
    assert user == "Compare these [image: img/red.png] [image: img/blue.jpg]"
    assert "base64" not in json.dumps(ctx.exchanges[0].to_dict())


def test_describe_field_with_a_list(host: PluginHost, images: Path) -> None:
    backend = Recorder()
    step = build(host, images, {"type": "describe_image", "image": "{photos}", "output": "desc"})
    run_step(host, step, {"photos": ["img/red.png", "img/blue.jpg"]}, backend)
    parts = backend.requests[0].messages[-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in parts[1:])


def test_describe_url_is_passed_through(host: PluginHost, images: Path) -> None:
    backend = Recorder()
    step = build(host, images, {"type": "describe_image", "image": "{url}", "output": "desc"})
    out, ctx = run_step(host, step, {"url": "https://example.com/a.png"}, backend)
    assert backend.requests[0].messages[-1]["content"][1]["image_url"]["url"] == "https://example.com/a.png"
    assert out["desc_image_tokens"] is None
    assert ctx.exchanges[0].messages[0]["content"].endswith("[image: https://example.com/a.png]")


def test_describe_missing_image_fails_the_record(host: PluginHost, images: Path) -> None:
    step = build(host, images, {"type": "describe_image", "image": "{image}", "output": "desc"})
    with pytest.raises(ImageError) as info:
        run_step(host, step, {"image": "img/nope.png"})
    assert str(images / "img" / "nope.png") in str(info.value)


def test_describe_corrupt_image_fails_the_record(host: PluginHost, images: Path) -> None:
    (images / "img" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    step = build(host, images, {"type": "describe_image", "image": "{image}", "output": "desc"})
    with pytest.raises(ImageError, match="bad.jpg"):
        run_step(host, step, {"image": "img/bad.jpg"})


def test_describe_missing_field(host: PluginHost, images: Path) -> None:
    step = build(host, images, {"type": "describe_image", "image": "{picture}", "output": "desc"})
    with pytest.raises(TemplateError, match="picture"):
        run_step(host, step, {"image": "img/red.png"})


def test_describe_empty_field(host: PluginHost, images: Path) -> None:
    step = build(host, images, {"type": "describe_image", "image": "{image}", "output": "desc"})
    with pytest.raises(ImageError, match="empty"):
        run_step(host, step, {"image": ""})


def test_describe_bad_detail_is_a_config_error(host: PluginHost, images: Path) -> None:
    with pytest.raises(ConfigError, match="detail"):
        build(host, images, {"type": "describe_image", "image": "{image}", "output": "d", "detail": "ultra"})


def test_template_fields_are_declared(host: PluginHost, images: Path) -> None:
    step = build(host, images, {"type": "describe_image", "image": ["{a}", "{b}"], "output": "d",
                                "prompt": "About {topic}"})
    assert step.template_fields() == {"image": ["a", "b"], "prompt": ["topic"]}
    ask = build(host, images, {"type": "ask", "prompt": "{text}", "system": "Hi {name}", "output": "r"})
    assert ask.template_fields() == {"prompt": ["text"], "system": ["name"]}


def test_a_bad_image_fails_its_record_and_the_run_goes_on(images: Path) -> None:
    import oaipipe

    (images / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rows = [{"id": "a", "image": "img/red.png"}, {"id": "b", "image": "img/broken.png"},
            {"id": "c", "image": "img/missing.png"}, {"id": "d", "image": "img/blue.jpg"}]
    (images / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (images / "p.yaml").write_text(
        "source: {type: jsonl, path: in.jsonl, id_field: id}\n"
        "steps:\n  - {type: describe_image, image: '{image}', output: desc}\n"
        "sinks:\n  - {type: jsonl, path: out.jsonl}\n"
    )
    summary = oaipipe.run(str(images / "p.yaml"))
    assert summary["records"]["done"] == 2 and summary["records"]["failed"] == 2
    errors = Path(summary["errors_file"]).read_text()
    assert "broken.png" in errors and "missing.png" in errors
    done = [json.loads(line) for line in (images / "out.jsonl").read_text().splitlines()]
    assert {r["id"] for r in done if r.get("desc")} == {"a", "d"}


def test_image_tokens_follow_the_models_own_rule(host: PluginHost, images: Path) -> None:
    step = build(host, images, {"type": "describe_image", "image": "{image}", "output": "desc", "detail": "low",
                                "model": "gpt-4o-mini"})
    out, _ = run_step(host, step, {"image": "img/red.png"})
    assert out["desc_image_tokens"] == 2833  # gpt-4o-mini bills images at 33x gpt-4o's token count
