"""Loading pipeline files: YAML errors with line numbers, keys, plugin names, ${env:...}, --set."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from oaipipe.config import apply_overrides, interpolate_env, load_config
from oaipipe.errors import ConfigError, UnknownPluginError
from oaipipe.pipeline import load_pipeline


def load_error(load: Callable[[Path], object], path: Path, kind: type[ConfigError] = ConfigError) -> ConfigError:
    """The error ``load(path)`` raises (it must raise ``kind``)."""
    with pytest.raises(kind) as info:
        load(path)
    return info.value


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "r.csv"
    path.write_text("id,text\n1,I love it\n2,I hate it\n", encoding="utf-8")
    return path


BASE = """\
name: t
backend: {type: local}
source: {type: csv, path: r.csv, id_column: id}
steps:
  - {type: sentiment, analyzer: vader, input: "{text}", output: s}
sinks:
  - {type: jsonl, path: out.jsonl}
"""


def test_malformed_yaml_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nsource:\n  type: csv\n   path: x.csv\n")
    err = load_error(load_config, path)
    assert err.file == str(path)
    assert err.line == 4
    assert err.column is not None
    assert "malformed YAML" in str(err)
    assert f"{path}:4:" in str(err)


def test_tab_indentation_is_reported_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nsource:\n\ttype: csv\n")
    err = load_error(load_config, path)
    assert err.line == 3
    assert "spaces, not tabs" in str(err)


def test_misspelled_top_level_key_suggests_the_right_one(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, BASE.replace("sinks:", "sinkz:"))
    err = load_error(load_config, path)
    text = str(err)
    assert "sinkz" in text
    assert "did you mean 'sinks'" in text
    assert err.line == 6


def test_misspelled_plugin_option_names_key_path_and_line(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, BASE.replace("id_column: id", "id_colum: id"))
    err = load_error(load_pipeline, path)
    text = str(err)
    assert "source.id_colum" in text
    assert "did you mean 'id_column'" in text
    assert err.line == 3


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nsteps: []\n")
    err = load_error(load_config, path)
    assert "source" in str(err)
    assert "required" in str(err)


def test_unknown_step_type_lists_available_names(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, BASE.replace("type: sentiment", "type: sentimint"))
    err = load_error(load_pipeline, path, UnknownPluginError)
    text = str(err)
    assert "unknown step 'sentimint'" in text
    assert "did you mean 'sentiment'" in text
    assert "ask" in text and "describe_image" in text
    assert err.line == 5


def test_unknown_analyzer_lists_analyzers(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, BASE.replace("analyzer: vader", "analyzer: vadr"))
    err = load_error(load_pipeline, path)
    text = str(err)
    assert "vadr" in text and "keyword" in text and "vader" in text


def test_unknown_backend_and_sink(tmp_path: Path, csv: Path) -> None:
    with pytest.raises(UnknownPluginError, match="unknown backend 'nope'"):
        load_pipeline(write(tmp_path, BASE.replace("type: local", "type: nope")))
    with pytest.raises(UnknownPluginError, match="unknown sink 'jsnl'"):
        load_pipeline(write(tmp_path, BASE.replace("type: jsonl", "type: jsnl")))


def test_plugins_path_that_does_not_exist(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, "plugins: [my_plugins/nothere.py]\n" + BASE)
    err = load_error(load_pipeline, path)
    text = str(err)
    assert "nothere.py" in text and "not found" in text
    assert err.line == 1


def test_plugins_file_that_fails_to_import(tmp_path: Path, csv: Path) -> None:
    (tmp_path / "broken.py").write_text("import not_a_real_module_xyz\n", encoding="utf-8")
    path = write(tmp_path, "plugins: [broken.py]\n" + BASE)
    err = load_error(load_pipeline, path)
    assert "broken.py" in str(err)
    assert "not_a_real_module_xyz" in str(err)


def test_plugins_dotted_name_that_does_not_exist(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, "plugins: [no_such_pkg.plugin]\n" + BASE)
    with pytest.raises(ConfigError, match="no_such_pkg.plugin"):
        load_pipeline(path)


def test_plugin_with_a_misspelled_hook_fails_loudly(tmp_path: Path, csv: Path) -> None:
    (tmp_path / "typo.py").write_text(
        "from oaipipe import hookimpl\n\n@hookimpl\ndef register_analyser(register):\n    pass\n", encoding="utf-8"
    )
    path = write(tmp_path, "plugins: [typo.py]\n" + BASE)
    with pytest.raises(Exception, match="register_analyser"):
        load_pipeline(path)


def test_template_naming_a_missing_column_points_at_the_step(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, BASE.replace('input: "{text}"', 'input: "{txt}"'))
    err = load_error(load_pipeline, path)
    text = str(err)
    assert "'txt'" in text and "did you mean '{text}'" in text
    assert err.line == 5


def test_template_may_use_an_earlier_steps_output(tmp_path: Path, csv: Path) -> None:
    text = BASE.replace(
        "sinks:", '  - {type: sentiment, analyzer: keyword, input: "{s} {text}", output: s2}\nsinks:'
    )
    pipeline = load_pipeline(write(tmp_path, text))
    assert [s.options.output for s in pipeline.steps] == ["s", "s2"]


def test_env_interpolation() -> None:
    env = {"KEY": "sk-abc", "HOST": "example"}
    data = {"a": "${env:KEY}", "b": "http://${env:HOST}:1/v1", "c": "${env:NOPE}", "d": "${env:NOPE:-dflt}"}
    out = interpolate_env(data, environ=env)
    assert out == {"a": "sk-abc", "b": "http://example:1/v1", "c": None, "d": "dflt"}
    missing: list[str] = []
    interpolate_env({"x": "pre-${env:NOPE}"}, environ=env, missing=missing)
    assert missing == ["x needs ${env:NOPE}"]


def test_missing_env_inside_a_longer_string_is_an_error(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, BASE.replace("type: local}", "type: local, base_url: 'http://${env:NOPE_HOST_X}/v1'}"))
    with pytest.raises(ConfigError, match="NOPE_HOST_X"):
        load_config(path, environ={})


def test_set_overrides_types_and_lists() -> None:
    data = {"backend": {"type": "local"}, "steps": [{"type": "ask", "prompt": "a"}]}
    apply_overrides(data, ["backend.base_url=http://127.0.0.1:8080/v1", "backend.concurrency=16",
                           "steps.0.prompt=hello: {text}", "run.max_failures=3", "backend.base_url=null"])
    assert data["backend"]["concurrency"] == 16
    assert data["backend"]["base_url"] is None
    assert data["steps"][0]["prompt"] == "hello: {text}"
    assert data["run"] == {"max_failures": 3}


def test_set_bad_override_says_how() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["backend.model"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides({"steps": []}, ["steps.x.prompt=1"])


def test_set_base_url_reaches_the_backend(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, BASE.replace("type: local", "type: openai"))
    pipeline = load_pipeline(path, ["backend.base_url=http://127.0.0.1:9/v1"])
    assert pipeline.backend.name == "openai"
    assert pipeline.backend.options.base_url == "http://127.0.0.1:9/v1"
    assert pipeline.backend_note is None


def test_openai_backend_without_key_falls_back_to_local_and_says_so(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, BASE.replace("type: local", "type: openai, api_key: '${env:OPENAI_API_KEY}'"))
    pipeline = load_pipeline(path)
    assert pipeline.backend.name == "local"
    assert pipeline.backend_note and "OPENAI_API_KEY" in pipeline.backend_note


def test_empty_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_duplicate_key_is_reported(tmp_path: Path) -> None:
    err = load_error(load_config, write(tmp_path, "name: a\nname: b\nsource: {type: csv}\n"))
    assert "twice" in str(err)
    assert err.line == 2


def test_train_block_keys_are_validated_with_their_line(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, BASE + "train: {type: local, selct: {s: positive}}\n")
    err = load_error(load_pipeline, path)
    assert "train.selct" in str(err) and "did you mean 'select'" in str(err)
    assert err.line == 8


def test_train_select_names_a_field_and_a_label_that_exist(tmp_path: Path, csv: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 's'"):
        load_pipeline(write(tmp_path, BASE + "train: {type: local, select: {ss: positive}}\n"))
    with pytest.raises(ConfigError, match="'postive' is not one"):
        load_pipeline(write(tmp_path, BASE + "train: {type: local, select: {s: postive}}\n"))
    assert load_pipeline(write(tmp_path, BASE + "train: {type: local, select: {s: positive}}\n")).train


def test_a_bad_set_value_is_not_blamed_on_a_line_of_the_file(tmp_path: Path, csv: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_pipeline(write(tmp_path, BASE), ["backend.concurrency=lots"])
    assert info.value.line is None
    assert "backend.concurrency" in str(info.value) and "'lots'" in str(info.value)


def test_a_plugin_file_named_like_a_builtin_plugin_is_refused_not_ignored(tmp_path: Path, csv: Path) -> None:
    (tmp_path / "source_csv.py").write_text(
        "from oaipipe import hookimpl\n\n@hookimpl\ndef register_sources(register):\n    pass\n", encoding="utf-8"
    )
    path = write(tmp_path, "plugins: [source_csv.py]\n" + BASE)
    err = load_error(load_pipeline, path)
    assert "source_csv" in str(err) and "rename" in str(err) and err.line == 1


def test_listing_a_builtin_plugin_module_under_plugins_is_harmless(tmp_path: Path, csv: Path) -> None:
    path = write(tmp_path, "plugins: [oaipipe.builtin.sink_records]\n" + BASE)
    assert [s.name for s in load_pipeline(path).sinks] == ["jsonl"]


def test_set_below_a_plain_value_says_it_is_not_a_mapping() -> None:
    for override in ("name.x.y=1", "name.x=1"):
        with pytest.raises(ConfigError, match="'name' is not a mapping"):
            apply_overrides({"name": "t"}, [override])


@pytest.mark.parametrize("sink", ["dialogue-jsonl", "dialogue-json"])
def test_a_dialogue_sinks_unknown_analyzer_fails_at_load_with_its_line(tmp_path: Path, csv: Path, sink: str) -> None:
    path = write(tmp_path, BASE.replace("sinks:\n", f"sinks:\n  - {{type: {sink}, path: d.out, analyzer: vadr}}\n"))
    err = load_error(load_pipeline, path)
    assert "unknown analyzer 'vadr'" in str(err) and "did you mean 'vader'" in str(err)
    assert err.key == "sinks.0" and err.line is not None


def test_an_unclosed_mapping_says_where_it_started(tmp_path: Path) -> None:
    path = write(tmp_path, 'name: x\nsource: {type: csv, path: r.csv}\nsteps:\n - {type: sentiment, output: s\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "starts at line 4" in str(info.value)
