"""CLI conventions (issue 10, item 8): every problem of a pipeline file in one pass, ``$schema`` accepted,
``-v``/``-q`` on every command, ``--json`` on every command that prints data, shell completion."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from PIL import Image

from oaipipe.cli import cli, main
from oaipipe.commands.common import add_verbosity_options
from oaipipe.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent
PROBLEM_KEYS = {"file", "line", "column", "key", "message", "hint", "origin"}


def oaipipe_exe() -> str:
    exe = Path(sys.executable).parent / "oaipipe"
    return str(exe) if exe.exists() else (shutil.which("oaipipe") or "oaipipe")


def command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command of `oaipipe`, as a user reaches it."""
    ctx = click.Context(cli)
    found: list[tuple[str, ...]] = []

    def walk(group: click.Group, prefix: tuple[str, ...]) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None
            found.append((*prefix, name))
            if isinstance(command, click.Group):
                walk(command, (*prefix, name))

    walk(cli, ())
    return found


def command_at(path: tuple[str, ...]) -> click.Command:
    ctx = click.Context(cli)
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(ctx, name)
        assert found is not None
        command = found
    return command


PATHS = command_paths()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "r.csv").write_text("id,text\n1,I love it\n2,I hate it\n", encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: conventions\n"
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


# --- validate: every problem in one pass ---------------------------------------------------------

FOUR_TYPOS = (
    "name: typos\n"
    "backend: {type: local, modle: gpt-4o-mini}\n"                          # line 2: unknown key
    "source: {type: csv, path: r.csv, id_colum: id}\n"                      # line 3: unknown key
    "steps:\n"
    '  - {type: sentimnt, analyzer: vader, input: "{text}", output: s}\n'   # line 5: unknown step
    "sinks:\n"
    "  - {type: jsonl, pth: out.jsonl}\n"                                   # line 7: unknown key
)


def test_validate_reports_all_four_typos_in_one_pass(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project.write_text(FOUR_TYPOS, encoding="utf-8")
    assert main(["validate", str(project)]) == ExitCode.USAGE_ERROR
    err = capsys.readouterr().err
    assert "4 problems" in err
    for line, text, fix in ((2, "backend.modle", "did you mean 'model'"),
                            (3, "source.id_colum", "did you mean 'id_column'"),
                            (5, "steps.0.type: unknown step 'sentimnt'", "did you mean 'sentiment'"),
                            (7, "sinks.0.pth", "did you mean 'path'")):
        assert f"{project}:{line}" in err and text in err and fix in err


def test_validate_json_lists_every_problem_with_its_place_and_fix(project: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    project.write_text(FOUR_TYPOS, encoding="utf-8")
    assert main(["validate", str(project), "--json"]) == 2
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [p["line"] for p in problems] == [2, 3, 5, 7]
    assert [p["key"] for p in problems] == ["backend.modle", "source.id_colum", "steps.0.type", "sinks.0.pth"]
    for problem in problems:
        assert set(problem) == PROBLEM_KEYS
        assert problem["file"] == str(project) and "did you mean" in (problem["hint"] + problem["message"])


def test_validate_json_of_a_valid_file_has_no_problems(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(project), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"problems": [], "warnings": []}


def test_top_level_keys_bad_values_and_a_missing_file_are_reported_together(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = project.read_text().replace("path: r.csv", "path: nowhere.csv") + "runn: {dir: x}\nrun: {max_failures: -1}\n"
    project.write_text(text.replace("sinks:\n  - {type: jsonl", "sinks:\n  - {type: jsonll"), encoding="utf-8")
    assert main(["validate", str(project), "--json"]) == 2
    problems = {p["key"]: p for p in json.loads(capsys.readouterr().out)["problems"]}
    assert set(problems) == {"runn", "run.max_failures", "source.path", "sinks.0.type"}
    # the line and column of `path:` in `source: {type: csv, path: nowhere.csv, ...}`
    assert "nowhere.csv" in problems["source.path"]["message"] and problems["source.path"]["line"] == 3
    assert problems["source.path"]["column"] == 21
    assert f"paths in {project} are relative to the folder it is in" in problems["source.path"]["hint"]
    assert problems["runn"]["line"] == 9 and "did you mean 'run'" in problems["runn"]["message"]


def test_every_missing_template_field_is_reported(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project.write_text(project.read_text().replace('input: "{text}"', 'input: "{txt}"')
                       .replace("Reply to: {text}", "Reply to: {tex}"), encoding="utf-8")
    assert main(["validate", str(project), "--json"]) == 2
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["key"], p["line"]) for p in problems] == [("steps.0.input", 5), ("steps.1.prompt", 6)]
    assert all("did you mean '{text}'" in p["hint"] for p in problems)


def test_run_reports_every_problem_too_and_one_problem_keeps_its_own_exit_code(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = project.read_text()
    project.write_text(FOUR_TYPOS, encoding="utf-8")
    assert main(["run", str(project)]) == 2
    assert "4 problems" in capsys.readouterr().err
    project.write_text(good.replace("path: r.csv", "path: nowhere.csv"), encoding="utf-8")
    assert main(["run", str(project)]) == ExitCode.INPUT_ERROR  # one problem: raised as it always was
    assert main(["validate", str(project), "--json"]) == ExitCode.INPUT_ERROR
    assert json.loads(capsys.readouterr().out)["problems"][0]["key"] == "source.path"


# --- $schema -------------------------------------------------------------------------------------


def test_a_top_level_schema_key_is_accepted_and_in_the_schema(project: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import jsonschema
    import yaml

    project.write_text("$schema: ./pipeline.schema.json\n" + project.read_text(), encoding="utf-8")
    assert main(["validate", str(project)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["schema", "--pipeline", str(project)]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "$schema" in schema["properties"]
    doc = yaml.safe_load(project.read_text())
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(doc))


# --- -v / -q ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_every_command_takes_verbose_and_quiet(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "-vv", "--quiet", "--help"]) == 0
    out = capsys.readouterr().out
    quiet = "--quiet" if path in Q_IS_QUERY else "-q, --quiet"
    assert "-v, --verbose" in out and quiet in out


def test_verbose_logs_info_and_debug_and_quiet_silences_notes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "hello"]) == 0
    err = capsys.readouterr().err
    assert "falls back to the embedded offline engine" in err and "oaipipe.oneoff:" not in err
    assert main(["ask", "hello", "-v"]) == 0
    err = capsys.readouterr().err
    assert "oaipipe.oneoff: backend local" in err and "oaipipe.oneoff: backend block" not in err  # info only
    assert main(["-v", "ask", "hello", "-v"]) == 0  # the group's and the command's add up: debug
    assert "oaipipe.oneoff: backend block: type" in capsys.readouterr().err
    assert main(["ask", "hello", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.strip()
    assert logging.getLogger("oaipipe").level == logging.NOTSET  # nothing left behind in this process


def test_quiet_silences_the_notes_of_validate_and_schema(project: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    project.write_text(project.read_text().replace("{type: local}", "{type: openai}"), encoding="utf-8")
    assert main(["validate", str(project)]) == 0
    assert "note: no OPENAI_API_KEY set" in capsys.readouterr().out
    assert main(["validate", str(project), "-q"]) == 0
    assert "note:" not in capsys.readouterr().out
    assert main(["schema", "-o", str(tmp_path / "s.json"), "-q"]) == 0
    assert capsys.readouterr().err == "" and json.loads((tmp_path / "s.json").read_text())


def test_schema_never_writes_over_the_pipeline_it_reads(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`oaipipe schema --pipeline pipeline.yaml -o pipeline.yaml` replaced the pipeline with the schema."""
    before = project.read_bytes()
    assert main(["schema", "--pipeline", str(project), "-o", str(project)]) == ExitCode.USAGE_ERROR
    err = capsys.readouterr().err
    assert "is the pipeline file --pipeline reads" in err and "pipeline.schema.json" in err, err
    assert project.read_bytes() == before


def test_a_plugin_commands_own_flags_are_left_alone() -> None:
    @click.group()
    def tool() -> None:
        pass

    @tool.command()
    @click.option("-v", "--version", "version", is_flag=True)
    def sub(version: bool) -> None:
        pass

    add_verbosity_options(tool)
    add_verbosity_options(tool)  # idempotent
    opts = [o for p in sub.params for o in p.opts]
    assert opts.count("-v") == 1 and opts.count("--verbose") == 1 and opts.count("-q") == 1
    version = next(p for p in sub.params if p.name == "version")
    assert version.opts == ["-v", "--version"]


# --- --json ----------------------------------------------------------------------------------------

#: commands that only hold sub-commands (and print no data of their own)
GROUPS_ONLY = {("dataset",), ("jobs",), ("sentiment",), ("cache",)}
#: `oaipipe logs -q TEXT` searches, as `llm logs -q` does; its quiet flag is `--quiet` alone
Q_IS_QUERY = {("logs",)}


def test_every_command_that_prints_data_has_json() -> None:
    missing = [" ".join(p) for p in PATHS if p not in GROUPS_ONLY
               and not any("--json" in param.opts for param in command_at(p).params)]
    assert missing == []


def _json_lines(text: str) -> list[object]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


#: a `--json` run of each command, {placeholders} filled in by the tests below
ONE_OFF_CASES: dict[tuple[str, ...], list[str]] = {
    ("run",): ["run", "{pipeline}"],
    ("validate",): ["validate", "{pipeline}"],
    ("schema",): ["schema"],
    ("plugins",): ["plugins"],
    ("models",): ["models"],
    ("ask",): ["ask", "hello"],
    ("describe",): ["describe", "{image}", "{image}"],  # JSON lines, one per image
    ("assistants",): ["assistants", "--file", "{presets}"],
    ("assistants", "show"): ["assistants", "--file", "{presets}", "show", "support-agent"],
    # these read the run that ("run",) made above
    ("runs",): ["runs", "--pipeline", "{pipeline}"],
    ("runs", "show"): ["runs", "show", "--pipeline", "{pipeline}"],
    ("logs",): ["logs", "--pipeline", "{pipeline}"],
    ("report",): ["report", "--pipeline", "{pipeline}", "-o", "{report}"],
    ("dataset", "export"): ["dataset", "export", "--pipeline", "{pipeline}", "--format", "hf-jsonl", "-o", "{export}"],
    ("sentiment", "score"): ["sentiment", "score", "I love it", "I hate it"],  # JSON lines, one per text
    ("cache", "stats"): ["cache", "stats", "{pipeline}"],
    ("cache", "clear"): ["cache", "clear", "{pipeline}"],
    ("sentiment", "eval"): ["sentiment", "eval", "{gold}", "--label-column", "gold", "--analyzer", "keyword"],
}
#: commands printing JSON lines (one object per item) rather than one document
JSON_LINES = {("describe",), ("sentiment", "score")}
#: in this order: each uses what the one before made
TRAINING_CASES: list[tuple[tuple[str, ...], list[str]]] = [
    (("dataset", "build"), ["dataset", "build", "{qa}", "-o", "{dataset}"]),
    (("dataset", "validate"), ["dataset", "validate", "{dataset}"]),
    (("train",), ["train", "{qa}", "--wait", "--registry", "{registry}"]),
    (("jobs", "list"), ["jobs", "list", "--registry", "{registry}"]),
    (("jobs", "show"), ["jobs", "show", "{job}", "--registry", "{registry}"]),
    (("jobs", "wait"), ["jobs", "wait", "{job}", "--registry", "{registry}"]),
    (("jobs", "cancel"), ["jobs", "cancel", "{job}", "--registry", "{registry}"]),
]


#: commands whose --json is parsed in their own test file (they need runs of their own first)
ELSEWHERE = {("merge",)}  # tests/test_scale_out.py::test_shards_merge_in_input_order


def test_every_json_command_has_a_parse_test() -> None:
    tested = {*ONE_OFF_CASES, *(path for path, _ in TRAINING_CASES), ("serve",), *ELSEWHERE}
    assert tested == set(PATHS) - GROUPS_ONLY


def test_json_of_the_pipeline_and_one_off_commands_parses(project: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "red.png"
    Image.new("RGB", (30, 20), (220, 20, 30)).save(image)
    values = {"pipeline": str(project), "image": str(image), "presets": str(REPO / "examples" / "assistants.yaml"),
              "report": str(tmp_path / "report.html"), "export": str(tmp_path / "export.jsonl"), "gold": str(REPO / "examples" / "data" / "sentiment_gold.csv")}
    for path, argv in ONE_OFF_CASES.items():
        assert main([*(a.format(**values) for a in argv), "--json"]) == 0, (path, capsys.readouterr().err)
        out = capsys.readouterr().out
        parsed = _json_lines(out) if path in JSON_LINES else [json.loads(out)]
        assert parsed and all(isinstance(item, dict | list) for item in parsed), path


def test_json_of_the_training_commands_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = {"qa": str(REPO / "examples" / "data" / "qa.csv"), "registry": str(tmp_path / "jobs.json"),
              "dataset": str(tmp_path / "ds.jsonl"), "job": ""}
    for path, argv in TRAINING_CASES:
        assert main([*(a.format(**values) for a in argv), "--json"]) == 0, (path, capsys.readouterr().err)
        data = json.loads(capsys.readouterr().out)
        if path == ("train",):
            values["job"] = data["job"]["id"]
        elif path == ("jobs", "list"):
            assert [job["id"] for job in data] == [values["job"]]
        elif path[0] == "jobs":
            assert data["id"] == values["job"]
    assert data["already_finished"] is True  # the last: cancelling a job that succeeded


def test_json_of_serve_is_one_line_with_the_base_url(tmp_path: Path) -> None:
    proc = subprocess.Popen([oaipipe_exe(), "serve", "--port", "0", "--json", "--data-dir", str(tmp_path / "d")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert ready["base_url"].startswith("http://127.0.0.1:") and ready["api_key_required"] is False


# --- shell completion ------------------------------------------------------------------------------


def test_shell_completion_script_and_completions() -> None:
    env = {**os.environ, "_OAIPIPE_COMPLETE": "bash_source"}
    script = subprocess.run([oaipipe_exe()], env=env, capture_output=True, text=True, timeout=60)
    assert script.returncode == 0, script.stderr
    assert "_oaipipe_completion()" in script.stdout and "complete -o nosort -F _oaipipe_completion oaipipe" \
        in script.stdout
    env = {**os.environ, "_OAIPIPE_COMPLETE": "bash_complete", "COMP_WORDS": "oaipipe jobs l", "COMP_CWORD": "2"}
    words = subprocess.run([oaipipe_exe()], env=env, capture_output=True, text=True, timeout=60)
    assert "plain,list" in words.stdout.split()
