"""The core commands through the real entry point: run, validate, schema, plugins, and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from oaipipe.cli import main
from oaipipe.models_table import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent


def oaipipe_exe() -> str:
    exe = Path(sys.executable).parent / "oaipipe"
    return str(exe) if exe.exists() else (shutil.which("oaipipe") or "oaipipe")


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    (tmp_path / "r.csv").write_text("id,text\n1,I love it\n2,I hate it\n", encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: cli\n"
        "backend: {type: local}\n"
        "source: {type: csv, path: r.csv, id_column: id}\n"
        "steps:\n"
        '  - {type: sentiment, analyzer: vader, input: "{text}", output: s}\n'
        '  - {type: ask, prompt: "Reply to: {text}", output: reply}\n'
        "sinks:\n"
        "  - {type: jsonl, path: out.jsonl}\n",
        encoding="utf-8",
    )
    return path


def test_validate_ok(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(pipeline)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok:")
    assert "2 steps" in out and "backend local" in out


def test_validate_points_at_the_broken_line(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    text = pipeline.read_text().replace("output: reply}", "output: reply, temprature: 0.2}")
    pipeline.write_text(text)
    assert main(["validate", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert f"{pipeline}:6" in err
    assert "temprature" in err and "did you mean 'temperature'" in err


def test_validate_malformed_yaml(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    pipeline.write_text(pipeline.read_text().replace("steps:\n", "steps:\n  - [unclosed\n"))
    assert main(["validate", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert "malformed YAML" in err and str(pipeline) in err


def test_run_json_summary(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(pipeline), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"]["done"] == 2
    assert summary["backend"] == "local"
    assert (pipeline.parent / "out.jsonl").exists()


def test_run_set_override_changes_the_run(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(pipeline), "--json", "--set", "steps.1.prompt=Say hi to {text}",
                 "--set", "sinks.0.path=other.jsonl"]) == 0
    assert (pipeline.parent / "other.jsonl").exists()
    records = [json.loads(x) for x in (pipeline.parent / "other.jsonl").read_text().splitlines()]
    assert len(records) == 2


def test_run_unknown_plugin_exit_code_and_message(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(pipeline), "--set", "source.type=xlsx"]) == 2
    err = capsys.readouterr().err
    assert "unknown source 'xlsx'" in err and "csv" in err


def test_run_missing_pipeline_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_schema_includes_every_plugins_options(capsys: pytest.CaptureFixture) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    sources = {v["properties"]["type"]["const"]: v for v in schema["properties"]["source"]["oneOf"]}
    assert {"csv", "jsonl", "images"} <= set(sources)
    assert "id_column" in sources["csv"]["properties"]
    steps = {v["properties"]["type"]["const"] for v in schema["properties"]["steps"]["items"]["oneOf"]}
    assert {"sentiment", "ask"} <= steps
    sentiment = next(v for v in schema["properties"]["steps"]["items"]["oneOf"]
                     if v["properties"]["type"]["const"] == "sentiment")
    analyzer = sentiment["properties"]["analyzer"]["anyOf"]
    assert {"keyword", "vader"} <= set(analyzer[0]["enum"])
    vader = next(v for v in analyzer[1]["oneOf"] if v["properties"]["type"]["const"] == "vader")
    assert "positive_threshold" in vader["properties"]
    assert schema["additionalProperties"] is False


def test_plugins_lists_builtins_and_a_pipelines_own(tmp_path: Path, pipeline: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "mine.py").write_text(
        "from oaipipe import Analyzer, Sentiment, hookimpl\n"
        "class Mine(Analyzer):\n"
        "    def analyze(self, text):\n"
        "        return Sentiment('neutral', 0.0, 'mine')\n"
        "@hookimpl\n"
        "def register_analyzers(register):\n"
        "    register('mine', Mine)\n"
    )
    pipeline.write_text("plugins: [mine.py]\n" + pipeline.read_text())
    assert main(["plugins", "--json", "--pipeline", str(pipeline)]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["analyzer_vader"]["origin"] == "builtin"
    assert "analyzer:vader" in listed["analyzer_vader"]["registers"]
    assert "command:run" in listed["commands_core"]["registers"]
    assert listed["mine"]["registers"] == ["analyzer:mine"]
    assert "mine.py" in listed["mine"]["origin"]


def test_disable_plugin_by_name(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(pipeline), "--disable-plugin", "analyzer_vader"]) == 2
    assert "unknown analyzer 'vader'" in capsys.readouterr().err


def test_console_script_runs_as_a_real_process(pipeline: Path) -> None:
    proc = subprocess.run([oaipipe_exe(), "run", str(pipeline)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "backend local" in proc.stderr  # the one-line backend announcement
    assert "finished: 2 done, 0 failed" in proc.stdout


def test_disabling_a_plugin_that_does_not_exist_is_an_error(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(pipeline), "--disable-plugin", "no_such_plugin"]) == 2
    assert "no plugin has that name" in capsys.readouterr().err


def test_literal_braces_in_a_prompt_get_a_hint(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    text = pipeline.read_text().replace('"Reply to: {text}"', """'Answer like {"mood": "x"}: {text}'""")
    pipeline.write_text(text)
    assert main(["validate", str(pipeline)]) == 2
    assert "{{ and }}" in capsys.readouterr().err


def test_unpriced_models_are_pointed_out(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    from oaipipe.testing import running_server

    with running_server() as srv:
        assert main(["run", str(pipeline), "-q", "--set", "backend.type=openai", "--set",
                     f"backend.base_url={srv.base_url}", "--set", "backend.model=my-own-model"]) == 0
    out = capsys.readouterr().out
    assert "no price known for local:my-own-model" in out


def test_sigterm_stops_a_run_like_ctrl_c_and_it_resumes(tmp_path: Path) -> None:
    import signal
    import time

    rows = "".join(f"{i},text number {i}\n" for i in range(40))
    (tmp_path / "r.csv").write_text("id,text\n" + rows, encoding="utf-8")
    path = tmp_path / "slow.yaml"
    path.write_text(
        "name: slow\nbackend: {type: local, latency: 0.2, concurrency: 2}\n"
        "source: {type: csv, path: r.csv, id_column: id}\n"
        'steps:\n  - {type: ask, prompt: "Reply to: {text}", output: reply}\n'
        "sinks:\n  - {type: jsonl, path: out.jsonl}\n", encoding="utf-8")
    proc = subprocess.Popen([oaipipe_exe(), "run", str(path), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    journal = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list((tmp_path / "runs" / "slow").glob("*/journal.jsonl"))
        if found and found[0].read_text().count("\n") >= 2:
            journal = found[0]
            break
        time.sleep(0.05)
    assert journal is not None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "rerun the same command" in err
    summary = json.loads((journal.parent / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert main(["run", str(path), "-q"]) == 0
    ids = [json.loads(x)["_id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(ids, key=int) == [str(i) for i in range(40)]


def test_reaching_max_cost_exits_8_and_a_rerun_goes_on(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    rows = "".join(f"{i},text {i}\n" for i in range(3, 12))
    pipeline.parent.joinpath("r.csv").write_text("id,text\n1,I love it\n2,I hate it\n" + rows, encoding="utf-8")
    pipeline.write_text(pipeline.read_text().replace("backend: {type: local}", "backend: {type: local, concurrency: 1}")
                        + f'prices: {{"local:{DEFAULT_MODEL}": {{input: 1000, output: 4000}}}}\n')
    assert main(["run", str(pipeline), "-q", "--max-cost", "0.05"]) == 8
    out = capsys.readouterr().out
    assert out.startswith("budget-reached")
    assert main(["run", str(pipeline), "-q"]) == 0  # no budget this time: the run is finished
    assert "finished" in capsys.readouterr().out


def test_a_failed_fine_tuning_after_the_run_exits_7(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    rows = "".join(f"{i},I love this product number {i}\n" for i in range(3, 15))
    pipeline.parent.joinpath("r.csv").write_text("id,text\n1,I love it\n2,I hate it\n" + rows, encoding="utf-8")
    pipeline.write_text(pipeline.read_text() + "train: {type: openai}\n")  # no key, no base_url: cannot launch
    assert main(["run", str(pipeline), "-q"]) == 7
    assert "train:" in capsys.readouterr().out


def test_the_schema_accepts_the_shipped_pipeline_and_rejects_mistakes() -> None:
    import jsonschema
    import yaml

    from oaipipe.schema import pipeline_schema

    schema = pipeline_schema(str(REPO / "pipeline.yaml"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    doc = yaml.safe_load((REPO / "pipeline.yaml").read_text(encoding="utf-8"))
    assert not list(validator.iter_errors(doc))
    doc["backend"]["concurrency"] = "${env:CONCURRENCY}"  # env references are allowed anywhere
    assert not list(validator.iter_errors(doc))
    doc["backend"]["concurrency"] = "lots"
    assert list(validator.iter_errors(doc))
    doc["backend"]["concurrency"] = 8
    doc["sinks"][0]["pth"] = "x"
    assert list(validator.iter_errors(doc))
