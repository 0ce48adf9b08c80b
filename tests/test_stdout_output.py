"""``-o -`` means standard output on every command with ``-o/--output``, never a file named ``-``.

Each command whose output is one text stream writes it to stdout (its own messages go to stderr); each whose
output cannot be (a binary format, a file something reads back) refuses ``-o -`` with the reason and the fix.
Every test runs in a folder of its own and checks that no file named ``-`` appears there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from oaipipe.errors import ExitCode
from oaipipe.testing import CliResult, PipelineProject

GOLD = REPO / "examples" / "data" / "sentiment_gold.csv"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> PipelineProject:
    """A finished run of the default test pipeline (a vader sentiment and an ask step), in a folder of its own."""
    project = PipelineProject(tmp_path_factory.mktemp("stdout"))
    reviews = [(f"r{i}", f"Review number {i}: the mug is {'great' if i % 2 else 'fine'}") for i in range(12)]
    project.write(files={"reviews.csv": [("id", "text"), *reviews]})  # 12: `dataset build` wants 10
    result = project.run()
    assert result.exit_code == 0, result
    return project


@pytest.fixture
def cli(project: PipelineProject, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``oaipipe ARGV...`` in this process, run from an empty folder that must stay free of a file named ``-``."""
    monkeypatch.chdir(tmp_path)

    def call(*argv: str) -> CliResult:
        result = project.cli(*argv)
        assert not (tmp_path / "-").exists(), f"{argv} wrote a file named '-'"
        return result

    return call


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_schema_o_dash_prints_the_schema(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("schema", "-o", "-")
    assert result.exit_code == 0, result
    assert json.loads(result.out)["$schema"].startswith("http")


def test_report_o_dash_prints_the_html(cli, project: PipelineProject) -> None:  # type: ignore[no-untyped-def]
    result = cli("report", "--pipeline", str(project.file), "-o", "-")
    assert result.exit_code == 0, result
    assert result.out.lstrip().lower().startswith("<!doctype html") and result.out.rstrip().endswith("</html>")
    refused = cli("report", "--pipeline", str(project.file), "-o", "-", "--json")
    assert refused.exit_code == ExitCode.USAGE_ERROR and refused.out == ""
    assert "where --json would print too" in refused.err and "hint: drop --json" in refused.err


def test_sentiment_eval_o_dash_prints_the_json(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("sentiment", "eval", str(GOLD), "--label-column", "gold", "-a", "keyword", "-o", "-")
    assert result.exit_code == 0, result
    assert json.loads(result.out)["analyzers"]["keyword"]["n"] > 0  # the JSON alone: no table around it


def test_dataset_build_o_dash_prints_the_rows(cli, project: PipelineProject) -> None:  # type: ignore[no-untyped-def]
    journal = str(project.run_dir() / "journal.jsonl")
    result = cli("dataset", "build", journal, "-o", "-", "--step", "reply")
    assert result.exit_code == 0, result
    rows = _jsonl(result.out)
    assert len(rows) == 12 and all(row["messages"][-1]["role"] == "assistant" for row in rows)
    assert "wrote standard output" in result.err  # the messages went to stderr
    split = cli("dataset", "build", journal, "-o", "-", "--validation-fraction", "0.2")
    assert split.exit_code == ExitCode.USAGE_ERROR and split.out == ""
    assert "validation split is a second file" in split.err and "hint: give -o train.jsonl" in split.err


def test_dataset_export_o_dash_prints_jsonl_and_refuses_parquet(cli, project: PipelineProject) -> None:  # type: ignore[no-untyped-def]
    result = cli("dataset", "export", str(project.run_dir()), "--all", "--format", "hf-jsonl", "-o", "-")
    assert result.exit_code == 0, result
    rows = _jsonl(result.out)
    assert len(rows) == len(project.journal()) and all("messages" in row for row in rows)
    assert f"row(s) to standard output (hf-jsonl) from run {project.run_dir().name}" in result.err
    refused = cli("dataset", "export", str(project.run_dir()), "--all", "--format", "dpo-parquet", "-o", "-")
    assert refused.exit_code == ExitCode.USAGE_ERROR and refused.out == ""
    assert "dpo-parquet is a binary parquet file" in refused.err
    assert "give -o FILE.parquet, or use --format dpo-jsonl" in refused.err


def test_train_refuses_o_dash(cli, project: PipelineProject, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("train", str(project.run_dir() / "journal.jsonl"), "-o", "-", "--registry",
                 str(tmp_path / "jobs.json"))
    assert result.exit_code == ExitCode.USAGE_ERROR, result
    assert "the job is launched from the dataset file" in result.err and "oaipipe dataset build DATA -o -" in result.err
    assert not (tmp_path / "jobs.json").exists()  # nothing launched


def test_o_dash_reaches_the_real_standard_output(project: PipelineProject) -> None:
    """The console script, not an in-process capture: the rows are on the process's stdout."""
    result = project.cli_process("dataset", "export", str(project.run_dir()), "--all", "--format", "openai-jsonl",
                                 "-o", "-")
    assert result.exit_code == 0, result
    assert len(_jsonl(result.out)) == len(project.journal()) and "standard output" in result.err
    assert not (project.path / "-").exists()


def _many_examples(path: Path, n: int = 400) -> Path:
    """A training JSONL far larger than a pipe's buffer (64 KiB), so that writing it meets a closed pipe."""
    filler = "and the mug keeps it warm " * 20
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            messages = [{"role": "user", "content": f"Question {i}: {filler}"},
                        {"role": "assistant", "content": f"Answer {i}: {filler}"}]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """``oaipipe ... -o - | head -c 10``: the command stops at the closed pipe with exit 130 (INTERRUPTED, as
    for a SIGPIPE), saying nothing (no traceback, no "Exception ignored" at exit), and leaves no temporary
    file. It was a silent exit 1 (click's), which the README reads as failed records or a bug."""
    import os
    import subprocess

    from oaipipe.testing import oaipipe_command

    data = _many_examples(tmp_path / "examples.jsonl")
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen([*oaipipe_command(), "dataset", "build", str(data), "-o", "-"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(temp)})
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == b'{"messages'
    proc.stdout.close()  # the reader is gone: the rest of the rows meet a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err and "Exception ignored" not in err and "error" not in err, err
    assert list(temp.iterdir()) == []  # the temporary file behind -o - is gone
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["run", "--help"], ["-h"]])
def test_help_and_version_to_a_reader_that_went_away_end_quietly(tmp_path: Path, argv: list[str]) -> None:
    """``oaipipe --help | head -1``: the group's own ``--help`` and ``--version`` (written while click parses
    the command line, before any command runs) meet a closed pipe like any output: exit 130, nothing said.
    They exited 1 (click's silent exit on EPIPE), which the README reads as failed records or a bug. The pipe's
    reading end is closed before the command starts, so every write meets it closed."""
    import os
    import subprocess

    from oaipipe.testing import oaipipe_command

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    try:
        proc = subprocess.run([*oaipipe_command(), *argv], cwd=tmp_path, stdout=write_end, stderr=subprocess.PIPE,
                              timeout=60)
    finally:
        os.close(write_end)
    err = proc.stderr.decode()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert err == "", err  # no traceback, no "Exception ignored", no error line


def test_a_broken_pipe_that_is_not_the_output_is_an_error_not_silence(capsys: pytest.CaptureFixture[str]) -> None:
    """An EPIPE from anything but stdout/stderr (a socket, a subprocess's pipe) is reported like any other
    unexpected error (exit 1, one line); click ended every EPIPE with a bare exit 1."""
    import click

    from oaipipe.cli import cli, main

    @click.command("broken-socket")
    def broken_socket() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    cli.add_command(broken_socket)
    try:
        code = main(["broken-socket"])
    finally:
        cli.commands.pop("broken-socket")
    assert code == ExitCode.RECORDS_FAILED
    assert "error: unexpected BrokenPipeError: [Errno 32] Broken pipe" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [("ask", "--log", "-", "hello"), ("jobs", "list", "--registry", "-"),
                                  ("train", "data.jsonl", "--registry", "-")])
def test_a_file_option_that_cannot_be_a_stream_refuses_dash(cli, argv: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    """``--log -`` (a dialogue log appended to) and ``--registry -`` (a registry read back) are refused, exit 2,
    before anything is called: they wrote (or read) a file named ``-`` (the ``cli`` fixture checks none
    appears)."""
    result = cli(*argv)
    assert result.exit_code == ExitCode.USAGE_ERROR, result
    assert "'-' is not a file" in result.err and "give a path" in result.err
    assert result.out == ""


@pytest.mark.parametrize("command", ["schema -o -", "dataset build examples.jsonl -o -",
                                     f"sentiment eval {GOLD} --label-column gold -a keyword -o -"])
def test_o_dash_with_standard_output_closed_says_so(tmp_path: Path, command: str) -> None:
    """``-o -`` with stdout closed (``>&-``) is a clear error (exit 9, naming it) before any work: the rows
    went nowhere with exit 0 (schema, sentiment eval), or an unexpected AttributeError, exit 1 (dataset build)."""
    import shlex
    import subprocess

    from oaipipe.testing import oaipipe_command

    _many_examples(tmp_path / "examples.jsonl", n=12)
    line = " ".join(map(shlex.quote, oaipipe_command())) + f" {command} >&-"
    proc = subprocess.run(["sh", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == ExitCode.IO_ERROR, proc.stderr
    assert "error: cannot write standard output (-o -): it is closed" in proc.stderr
    assert "hint: give -o FILE" in proc.stderr and "unexpected" not in proc.stderr
