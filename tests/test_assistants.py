"""Assistant presets: file formats, lookup order, unknown names, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oaipipe.assistants import find_registry, get_preset, load_presets, schema_response_format
from oaipipe.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_shipped_examples_load() -> None:
    presets = load_presets(REPO / "examples" / "assistants.yaml")
    assert {"support-agent", "product-photographer"} <= set(presets)
    photographer = presets["product-photographer"]
    rf = photographer.effective_response_format()
    assert rf and rf["type"] == "json_schema" and rf["json_schema"]["name"] == "product-photographer"
    assert presets["support-agent"].instructions


def test_json_list_format_like_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "assistants.json"
    path.write_text(json.dumps([{"name": "a", "id": "asst_old", "instructions": "Be brief.", "model": "gpt-4o"}]))
    presets = load_presets(path)
    assert presets["a"].instructions == "Be brief." and presets["a"].model == "gpt-4o"


def test_top_level_mapping_without_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "assistants.yaml"
    path.write_text("helper:\n  instructions: hi\n")
    assert list(load_presets(path)) == ["helper"]


def test_lookup_order(tmp_path: Path, _isolated_home: Path) -> None:
    pipeline_dir = tmp_path / "project"
    pipeline_dir.mkdir()
    assert find_registry(base_dir=pipeline_dir) is None
    home_file = _isolated_home / "assistants.yaml"
    home_file.write_text("assistants: {h: {instructions: home}}\n")
    assert find_registry(base_dir=pipeline_dir) == home_file
    local_file = pipeline_dir / "assistants.yaml"
    local_file.write_text("assistants: {l: {instructions: local}}\n")
    assert find_registry(base_dir=pipeline_dir) == local_file
    named = pipeline_dir / "presets" / "team.yaml"
    named.parent.mkdir()
    named.write_text("assistants: {t: {instructions: team}}\n")
    assert find_registry(pipeline_setting="presets/team.yaml", base_dir=pipeline_dir) == named
    explicit = tmp_path / "mine.json"
    explicit.write_text('{"assistants": {"m": {"instructions": "mine"}}}')
    assert find_registry(explicit, pipeline_setting="presets/team.yaml", base_dir=pipeline_dir) == explicit
    assert get_preset("h", base_dir=tmp_path / "elsewhere").instructions == "home"


def test_named_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_registry(pipeline_setting="nope.yaml", base_dir=tmp_path)
    assert str(tmp_path / "nope.yaml") in str(info.value)


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "assistants.yaml").write_text("assistants:\n  support-agent: {instructions: a}\n  writer: {}\n")
    with pytest.raises(ConfigError) as info:
        get_preset("suport-agent", base_dir=tmp_path)
    text = str(info.value)
    assert "unknown assistant preset 'suport-agent'" in text
    assert "did you mean 'support-agent'" in text and "writer" in text


def test_no_file_at_all(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no assistants file"):
        get_preset("x", base_dir=tmp_path)


def test_bad_preset_key(tmp_path: Path) -> None:
    path = tmp_path / "assistants.yaml"
    path.write_text("assistants:\n  a:\n    instruction: typo\n")
    with pytest.raises(ConfigError) as info:
        load_presets(path)
    assert "preset 'a'" in str(info.value) and "instruction" in str(info.value)
    assert str(path) in str(info.value)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "assistants.yaml"
    path.write_text("assistants:\n  a: {instructions: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_presets(path)
    assert f"{path}:" in str(info.value)


def test_schema_response_format_accepts_both_shapes() -> None:
    bare = {"type": "object", "properties": {}}
    assert schema_response_format(bare, default_name="my out")["json_schema"] == {
        "name": "my_out", "schema": bare, "strict": True}
    wrapped = {"name": "thing", "schema": bare, "strict": False}
    assert schema_response_format(wrapped)["json_schema"] == {"name": "thing", "schema": bare, "strict": False}
