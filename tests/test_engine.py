"""The embedded engine: determinism, tone, JSON-schema output, vision facts, local fine-tuned models."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import pytest
from PIL import Image

from oaipipe.engine import chat, vision
from oaipipe.engine.errors import ImageURLNotSupported, InvalidImage, InvalidRequest, ModelNotFound
from oaipipe.engine.models import find_model, list_models
from oaipipe.engine.tuning import train_local_model

# --- helpers ------------------------------------------------------------------------------------


def png(size: tuple[int, int], color: tuple[int, int, int], fmt: str = "PNG", exif: Any = None) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    if exif is not None:
        img.save(buf, fmt, exif=exif)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def check(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$") -> None:
    """A small JSON-schema checker for what structured outputs use (jsonschema is not a dependency)."""
    root = root or schema
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return check(value, node, root, path)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return check(value, option, root, path)
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{path}: matches no anyOf option: {errors}")
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    types = schema.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    py = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if types:
        ok = False
        for t in types:
            if t in ("number", "integer"):
                ok = ok or (isinstance(value, int | float) and not isinstance(value, bool)
                            and (t == "number" or float(value).is_integer()))
            else:
                ok = ok or isinstance(value, py[t])
        assert ok, f"{path}: {value!r} is not {types}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing required {key}"
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(schema.get("properties", {})), f"{path}: extra keys"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check(value[key], sub, root, f"{path}.{key}")
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{path}: too few items"
        if "maxItems" in schema:
            assert len(value) <= schema["maxItems"], f"{path}: too many items"
        for i, item in enumerate(value):
            check(item, schema.get("items", {}), root, f"{path}[{i}]")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            assert value >= schema["minimum"], f"{path}: below minimum"
        if "maximum" in schema:
            assert value <= schema["maximum"], f"{path}: above maximum"
    return None


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}


# --- chat ---------------------------------------------------------------------------------------


def test_same_input_same_output_and_honest_model_label() -> None:
    a = chat.complete(user("My parcel arrived late and the box was crushed."), "gpt-4o-mini")
    b = chat.complete(user("My parcel arrived late and the box was crushed."), "gpt-4o-mini")
    assert a == b
    assert a.model == "local:gpt-4o-mini"
    assert a.finish_reason == "stop"
    assert a.usage.prompt_tokens > 0 and a.usage.completion_tokens > 0
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens


def test_tone_follows_the_customer() -> None:
    happy = chat.complete(user("I absolutely love this blender, it is fantastic!"), "gpt-4o-mini").text
    angry = chat.complete(user("The headphones broke after two days. Terrible quality, very disappointed."),
                          "gpt-4o-mini").text
    assert any(w in happy.lower() for w in ("thank", "appreciate"))
    assert "sorry" in angry.lower() or "apologise" in angry.lower()
    assert any(w in angry.lower() for w in ("refund", "replacement", "order number"))
    assert "headphones" in angry
    question = chat.complete(user("Does the charger work with the older model?"), "gpt-4o-mini").text
    assert "question" in question.lower() or "asking" in question.lower()


def test_usage_counts_with_the_offline_tokenizer() -> None:
    from oaipipe.tokens import count_message_tokens, count_tokens

    messages = [{"role": "system", "content": "You are a support agent."}, *user("Great service!")]
    reply = chat.complete(messages, "gpt-4o")
    assert reply.usage.prompt_tokens == count_message_tokens(messages, "gpt-4o")
    assert reply.usage.completion_tokens == count_tokens(reply.text, "gpt-4o")


def test_usage_counts_images_by_the_request_model() -> None:
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": data_url(png((600, 300), (200, 10, 10))), "detail": "high"}}]
    messages = [{"role": "user", "content": content}]
    text_only = chat.complete(user("What is this?"), "gpt-4o").usage.prompt_tokens
    assert chat.complete(messages, "gpt-4o").usage.prompt_tokens == text_only + 85 + 2 * 170
    mini_text = chat.complete(user("What is this?"), "gpt-4o-mini").usage.prompt_tokens
    assert chat.complete(messages, "gpt-4o-mini").usage.prompt_tokens == mini_text + 2833 + 2 * 5667


def test_max_tokens_truncates_with_finish_reason_length() -> None:
    reply = chat.complete(user("I love it, thanks a lot for the fast delivery!"), "gpt-4o-mini", max_tokens=5)
    assert reply.finish_reason == "length"
    assert reply.usage.completion_tokens <= 5
    with pytest.raises(InvalidRequest, match="max_tokens"):
        chat.complete(user("hi"), "gpt-4o-mini", max_tokens=0)


def test_json_schema_output_validates_and_is_filled_from_the_input() -> None:
    schema = {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "score": {"type": "number", "minimum": -1, "maximum": 1},
            "reply": {"type": "string"},
            "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
            "escalate": {"type": "boolean"},
            "customer": {"$ref": "#/$defs/Customer"},
            "note": {"type": ["string", "null"]},
        },
        "required": ["sentiment", "score", "reply", "keywords", "urgency", "escalate", "customer", "note"],
        "additionalProperties": False,
        "$defs": {"Customer": {"type": "object", "properties": {"name": {"type": "string"},
                                                                 "tier": {"enum": ["gold", "silver"]}},
                               "required": ["name", "tier"], "additionalProperties": False}},
    }
    reply = chat.complete(user("The blender broke on day one. Awful."), "gpt-4o-mini",
                          response_format=json_schema(schema))
    data = json.loads(reply.text)
    check(data, schema)
    assert data == reply.parsed
    assert data["sentiment"] == "negative"
    assert data["score"] < 0
    assert "sorry" in data["reply"].lower() or "apologi" in data["reply"].lower()


def test_json_object_and_bad_response_format() -> None:
    reply = chat.complete(user("Nice!"), "gpt-4o-mini", response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.text), dict)
    with pytest.raises(InvalidRequest, match="response_format"):
        chat.complete(user("Nice!"), "gpt-4o-mini", response_format={"type": "yaml"})
    with pytest.raises(InvalidRequest, match="schema"):
        chat.complete(user("Nice!"), "gpt-4o-mini", response_format={"type": "json_schema", "json_schema": {}})


def test_empty_messages_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="non-empty"):
        chat.complete([], "gpt-4o-mini")


# --- vision -------------------------------------------------------------------------------------


def test_vision_measures_size_format_and_colour() -> None:
    facts = vision.measure(png((64, 32), (230, 10, 20)))
    assert (facts.width, facts.height, facts.format, facts.orientation) == (64, 32, "PNG", "landscape")
    assert facts.dominant_colors[0].name == "red"
    assert facts.dominant_colors[0].share == pytest.approx(1.0)
    sentence = vision.describe(facts)
    assert "64\u00d732" in sentence and "red" in sentence and "landscape" in sentence


def test_vision_brightness_words() -> None:
    assert vision.measure(png((10, 10), (0, 0, 0))).brightness_word == "dark"
    white = vision.measure(png((10, 10), (255, 255, 255)))
    assert white.brightness == pytest.approx(1.0) and white.brightness_word == "very bright"
    assert white.orientation == "square"


def test_exif_rotated_jpeg_reports_portrait() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    facts = vision.measure(png((200, 100), (20, 60, 220), fmt="JPEG", exif=exif))
    assert facts.format == "JPEG"
    assert (facts.width, facts.height) == (100, 200)
    assert facts.orientation == "portrait" and facts.exif_rotated


def test_corrupt_image_is_a_clear_error() -> None:
    with pytest.raises(InvalidImage, match="cannot be read.*corrupt"):
        vision.measure(b"this is not an image")
    with pytest.raises(InvalidImage, match="empty"):
        vision.measure(b"")
    truncated = png((50, 50), (1, 2, 3))[:40]
    with pytest.raises(InvalidImage):
        vision.measure(truncated)


def test_chat_with_image_part_describes_the_measured_image() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                             {"type": "image_url", "image_url": {"url": data_url(png((30, 60), (0, 160, 30)))}}]}]
    reply = chat.complete(messages, "gpt-4o-mini")
    assert "30\u00d760" in reply.text and "portrait" in reply.text and "green" in reply.text
    schema = {"type": "object", "properties": {"width": {"type": "integer"}, "height": {"type": "integer"},
                                               "orientation": {"type": "string"},
                                               "dominant_colors": {"type": "array", "items": {"type": "string"}},
                                               "caption": {"type": "string"}, "brightness": {"type": "number"}},
              "required": ["width", "height", "orientation", "dominant_colors", "caption", "brightness"],
              "additionalProperties": False}
    data = json.loads(chat.complete(messages, "gpt-4o-mini", response_format=json_schema(schema)).text)
    check(data, schema)
    assert data["width"] == 30 and data["height"] == 60 and data["orientation"] == "portrait"
    assert data["dominant_colors"][0] == "green"


def test_image_urls_need_no_network_and_say_so() -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    with pytest.raises(ImageURLNotSupported, match="cannot fetch.*file path or a data URL"):
        chat.complete(messages, "gpt-4o-mini")


def test_image_from_file_path(tmp_path: Any) -> None:
    path = tmp_path / "blue.png"
    path.write_bytes(png((8, 8), (20, 60, 220)))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(path)}}]}]
    assert "blue" in chat.complete(messages, "gpt-4o-mini").text
    missing = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(tmp_path / "no.png")}}]}]
    with pytest.raises(InvalidImage, match="Cannot read image file"):
        chat.complete(missing, "gpt-4o-mini")


# --- fine-tuned models ------------------------------------------------------------------------


def test_ft_model_answers_with_the_trained_reply() -> None:
    rows = [{"messages": [{"role": "system", "content": "You are Ada."},
                          {"role": "user", "content": f"What is the code for room {i}?"},
                          {"role": "assistant", "content": f"The code for room {i} is {1000 + i}."}]}
            for i in range(5)]
    model_id = train_local_model(rows, base_model="gpt-4o-mini", suffix="ada")
    assert model_id.startswith("ft:gpt-4o-mini:local:ada:")
    reply = chat.complete([{"role": "system", "content": "You are Ada."},
                           {"role": "user", "content": "What is the code for room 3?"}], model_id)
    assert reply.text == "The code for room 3 is 1003."
    assert reply.model == model_id  # ft: ids are returned as they are
    assert find_model(model_id) is not None
    assert model_id in [m.id for m in list_models()]


def test_a_trained_model_is_read_once_and_again_when_its_file_changes() -> None:
    from oaipipe.engine.tuning import load_local_model, model_store

    rows = [{"messages": [{"role": "user", "content": "Opening hours?"},
                          {"role": "assistant", "content": "Nine to five."}]}]
    model_id = train_local_model(rows, base_model="gpt-4o-mini", suffix="hours")
    first = load_local_model(model_id)
    assert first is not None and load_local_model(model_id) is first  # no second read per chat call
    path = next(model_store().glob("*hours*.json"))
    data = json.loads(path.read_text())
    data["examples"][0]["reply"] = "Ten to six, every day."
    path.write_text(json.dumps(data))
    assert load_local_model(model_id).examples[0]["reply"] == "Ten to six, every day."
    path.write_text("{not json")
    with pytest.raises(ModelNotFound, match="damaged.*train it again"):
        chat.complete(user("Opening hours?"), model_id)
    assert find_model(model_id) is None
    path.unlink()
    assert load_local_model(model_id) is None


def test_unknown_ft_model_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        chat.complete(user("hi"), "ft:gpt-4o-mini:local:nope:00000000")
    assert find_model("ft:gpt-4o-mini:local:nope:00000000") is None


def test_model_list_has_base_models() -> None:
    ids = [m.id for m in list_models()]
    assert {"gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano"} <= set(ids)


# --- the local backend ------------------------------------------------------------------------


def test_local_backend_chat_and_error_mapping() -> None:
    from oaipipe.builtin.backend_local import LocalBackend
    from oaipipe.errors import BadRequestError, ImageError
    from oaipipe.types import ChatRequest

    backend = LocalBackend(LocalBackend.Options(latency=0.01))
    resp = asyncio.run(backend.chat(ChatRequest(messages=user("Love it!"), model="gpt-4o-mini")))
    assert resp.backend == "local" and resp.model == "local:gpt-4o-mini"
    assert resp.request_id and resp.request_id.startswith("local-")
    assert resp.latency >= 0.01
    again = asyncio.run(backend.chat(ChatRequest(messages=user("Love it!"), model="gpt-4o-mini")))
    assert again.text == resp.text and again.request_id == resp.request_id
    with pytest.raises(BadRequestError) as err:
        asyncio.run(backend.chat(ChatRequest(messages=user("hi"), model="ft:gpt-4o-mini:local:x:1")))
    assert "oaipipe models" in str(err.value)
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(ImageError, match="cannot be read"):
        asyncio.run(backend.chat(ChatRequest(messages=bad, model="gpt-4o-mini")))
    models = asyncio.run(backend.list_models())
    assert "gpt-4o-mini" in [m.id for m in models]


def test_local_backend_is_registered() -> None:
    from oaipipe.builtin.backend_local import LocalBackend
    from oaipipe.plugins import PluginHost

    host = PluginHost()
    assert "local" in host.names("backend")
    assert host.get("backend", "local").cls is LocalBackend


def test_transparent_pixels_count_as_white() -> None:
    buf = io.BytesIO()
    img = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    img.paste((230, 10, 20, 255), (0, 0, 5, 10))
    img.save(buf, "PNG")
    facts = vision.measure(buf.getvalue())
    names = [c.name for c in facts.dominant_colors]
    assert names[0] == "white" and "red" in names and "black" not in names


def test_reply_names_the_product_not_an_adjective() -> None:
    text = chat.complete(user("Ordered the red mug on Monday and it arrived cracked."), "gpt-4o-mini").text
    assert "the mug" in text


# the engine is a plain library (no plugin machinery): tests/test_meta.py checks it, with the server


def test_schema_fields_for_review_summaries() -> None:
    schema = {"type": "object", "properties": {"summary": {"type": "string"}, "product": {"type": "string"},
                                               "stars": {"type": "integer", "minimum": 1, "maximum": 5}},
              "required": ["summary", "product", "stars"], "additionalProperties": False}
    bad = json.loads(chat.complete(user("Summarize this review: The mug arrived cracked. Awful."), "gpt-4o-mini",
                                   response_format=json_schema(schema)).text)
    good = json.loads(chat.complete(user("Best lamp ever, I love it!"), "gpt-4o-mini",
                                    response_format=json_schema(schema)).text)
    check(bad, schema)
    check(good, schema)
    assert bad == {"summary": "The mug arrived cracked.", "product": "mug", "stars": bad["stars"]}
    assert bad["stars"] < good["stars"] == 5
    assert good["product"] == "lamp"


@pytest.mark.parametrize(("text", "label"), [("The kettle broke!", "complaint"), ("Love it!", "praise"),
                                              ("Does it come in blue?", "question")])
def test_enums_are_matched_by_meaning(text: str, label: str) -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["complaint", "praise", "question"]},
                                               "sentiment": {"type": "string", "enum": ["POSITIVE", "NEGATIVE", "NEUTRAL"]}},
              "required": ["label", "sentiment"], "additionalProperties": False}
    data = json.loads(chat.complete(user(text), "gpt-4o-mini", response_format=json_schema(schema)).text)
    check(data, schema)
    assert data["label"] == label
