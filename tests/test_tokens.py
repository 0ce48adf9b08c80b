"""Offline token counting (bpe-openai), the cookbook message rule and the image tile rule."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from oaipipe import tokens


def test_encoding_names_follow_the_model_family() -> None:
    assert tokens.encoding_name_for_model("gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_name_for_model("gpt-4.1-nano") == "o200k_base"
    assert tokens.encoding_name_for_model("o3-mini") == "o200k_base"
    assert tokens.encoding_name_for_model("gpt-5") == "o200k_base"
    assert tokens.encoding_name_for_model("ft:gpt-4o-mini:local:x:1234") == "o200k_base"
    assert tokens.encoding_name_for_model("local:gpt-4o") == "o200k_base"
    assert tokens.encoding_name_for_model("gpt-3.5-turbo") == "cl100k_base"
    assert tokens.encoding_name_for_model("gpt-4") == "cl100k_base"
    assert tokens.encoding_name_for_model("ft:gpt-3.5-turbo-0125:org::abc") == "cl100k_base"
    assert tokens.encoding_name_for_model("some-unknown-model") == "o200k_base"


def test_counts_are_exact_offline() -> None:
    assert tokens.tokenizer_name() == "bpe-openai"
    assert tokens.count_tokens("hello world") == 2
    assert tokens.count_tokens("") == 0
    long = "The quick brown fox jumps over the lazy dog. " * 20
    assert 150 <= tokens.count_tokens(long) <= 250


def test_message_rule_adds_per_message_name_and_priming() -> None:
    text = "hello world"
    one = tokens.count_message_tokens([{"role": "user", "content": text}])
    # 3 priming + 3 per message + content + the role string
    assert one == 3 + 3 + tokens.count_tokens(text) + tokens.count_tokens("user")
    named = tokens.count_message_tokens([{"role": "user", "content": text, "name": "bob"}])
    assert named == one + 1 + tokens.count_tokens("bob")
    parts = tokens.count_message_tokens([{"role": "user", "content": [{"type": "text", "text": text}]}])
    assert parts == one


def test_image_tile_rule() -> None:
    assert tokens.image_tokens(4000, 3000, "low") == 85
    assert tokens.image_tokens(512, 512, "high") == 170 + 85
    assert tokens.image_tokens(1024, 1024, "high") == 4 * 170 + 85  # 1024 → 768: 2x2 tiles
    assert tokens.image_tokens(2048, 4096, "high") == 6 * 170 + 85  # → 1024x2048 → 768x1536: 2x3 tiles


def test_image_parts_are_counted_by_their_real_size() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1024, 1024), (0, 0, 255)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    base = tokens.count_message_tokens([{"role": "user", "content": [{"type": "text", "text": "what?"}]}])
    with_image = tokens.count_message_tokens([{"role": "user", "content": [
        {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": url, "detail": "high"}}]}])
    assert with_image - base == 765
    low = tokens.count_message_tokens([{"role": "user", "content": [
        {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}])
    assert low - base == 85


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-3.5-turbo"])
def test_count_tokens_per_model(model: str) -> None:
    assert tokens.count_tokens("Tokenization differs between vocabularies.", model) > 0


def test_image_tokens_without_a_model_keep_the_gpt_4o_rule() -> None:
    assert tokens.image_tokens(1024, 1024, "high") == tokens.image_tokens(1024, 1024, "high", model="gpt-4o") == 765
    assert tokens.image_tokens(1024, 1024, "high", model="gpt-4.1") == 765
    assert tokens.image_tokens(1024, 1024, "high", model="gpt-5") == 765
    assert tokens.image_tokens(1024, 1024, "high", model="o3") == 765


def test_gpt_4o_mini_bills_2833_plus_5667_per_tile() -> None:
    for model in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "local:gpt-4o-mini"):
        assert tokens.image_tokens(4000, 3000, "low", model=model) == 2833
        assert tokens.image_tokens(512, 512, "high", model=model) == 2833 + 5667
        assert tokens.image_tokens(1024, 1024, "auto", model=model) == 2833 + 4 * 5667
        assert tokens.image_tokens(2048, 4096, "high", model=model) == 2833 + 6 * 5667


@pytest.mark.parametrize(("model", "multiplier"), [("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46),
                                                   ("o4-mini", 1.72), ("gpt-5-mini", 1.62), ("gpt-5-nano", 2.46)])
def test_patch_rule_models(model: str, multiplier: float) -> None:
    assert tokens.image_rule(model) == ("patch", (multiplier,))
    assert tokens.image_tokens(1024, 1024, model=model) == round(1024 * multiplier)  # 32x32 patches
    assert tokens.image_tokens(1024, 1024, "low", model=model) == round(1024 * multiplier)  # detail: no effect
    assert tokens.image_tokens(1800, 2400, model=model) == round(1452 * multiplier)  # OpenAI's example: 33x44


def test_image_patches_cap_and_edges() -> None:
    assert tokens.image_patches(1024, 1024) == 1024
    assert tokens.image_patches(1800, 2400) == 1452  # 4275 raw patches, scaled down to 1056x1408
    assert tokens.image_patches(10000, 10000) <= tokens.PATCH_BUDGET
    assert tokens.image_patches(1, 49152) == 1536
    assert 0 < tokens.image_patches(1, 100000) <= tokens.PATCH_BUDGET  # extreme aspect: never 0
    assert tokens.image_patches(0, 0) == 1


def test_count_message_tokens_uses_the_image_model_only_when_asked() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (512, 512), (0, 0, 255)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url, "detail": "high"}}]}]
    text_only = tokens.count_message_tokens([{"role": "user", "content": []}], "gpt-4o-mini")
    assert tokens.count_message_tokens(messages, "gpt-4o-mini") - text_only == 255
    assert tokens.count_message_tokens(messages, "gpt-4o-mini", image_model="gpt-4o-mini") - text_only == 2833 + 5667
