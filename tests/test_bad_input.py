"""One bad record fails that record alone, with its line; bad inputs a user can give are refused clearly.

Each bad line below sits on line 6 of a 12-record file: through a real run, that record alone is in
``errors.jsonl`` (naming line 6, and the byte offset of an undecodable byte) and the 11 others are done.
Then: paths that are not regular files, an alias bomb in the pipeline file, a sink writing the source,
a ``name`` escaping ``run.dir``, and a step raising anything at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oaipipe.cli import main
from oaipipe.errors import ConfigError, InputError
from oaipipe.runner import run_pipeline_file

BAD_LINE = 6  # the physical line of the bad record in every file below


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_pipeline(tmp_path: Path, source: str, *, steps: str | None = None, name: str = "bad") -> Path:
    steps = steps or '- {type: sentiment, analyzer: keyword, input: "{text}", output: s}'
    path = tmp_path / "p.yaml"
    path.write_text(f"name: {name}\nbackend: {{type: local, concurrency: 4}}\nsource: {source}\nsteps:\n"
                    + textwrap.indent(steps, "  ") + "\n"
                    "sinks:\n  - {type: jsonl, path: out/records.jsonl}\n", encoding="utf-8")
    return path


def errors_of(summary: dict) -> list[dict]:
    return read_jsonl(Path(summary["errors_file"]))


# --- one bad line, JSONL ------------------------------------------------------------------------------

GOOD_JSONL = [json.dumps({"id": f"r{i}", "text": f"review {i} is good"}).encode() for i in range(11)]

JSONL_CASES = {
    "nested-200k-deep": (b'{"id": "deep", "text": "x", "n": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                         "nested too deeply"),
    "nested-300-deep": (b'{"id": "deep", "text": "x", "n": ' + b"[" * 300 + b"]" * 300 + b"}",
                        "nested more than 256 levels"),
    "id-of-5001-digits": (b'{"id": ' + b"1" * 5001 + b', "text": "x"}', "4300"),
    "value-of-5001-digits": (b'{"id": "big", "text": "x", "n": ' + b"7" * 5001 + b"}", "4300"),
    "invalid-utf8": (b'{"id": "u", "text": "caf\xe9 au lait"}', "byte offset"),
    "unterminated-string": (b'{"id": "q", "text": "no end}', "invalid JSON"),
    "nul-byte": (b'{"id": "n", "text": "a\x00b"}', "invalid JSON"),
    "bom-mid-file": (b'\xef\xbb\xbf{"id": "b", "text": "x"}', "byte-order mark"),
}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_one_bad_jsonl_line_fails_that_record_alone(tmp_path: Path, case: str) -> None:
    bad, expected = JSONL_CASES[case]
    lines = [*GOOD_JSONL[:BAD_LINE - 1], bad, *GOOD_JSONL[BAD_LINE - 1:]]
    content = b"\n".join(lines) + b"\n"
    (tmp_path / "in.jsonl").write_bytes(content)
    summary = run_pipeline_file(write_pipeline(tmp_path, "{type: jsonl, path: in.jsonl, id_field: id}"))
    assert summary["records"]["done"] == 11 and summary["records"]["failed"] == 1
    [error] = errors_of(summary)
    assert error["where"] == f"in.jsonl line {BAD_LINE}"
    assert error["error"].startswith(f"in.jsonl line {BAD_LINE}: ") and expected in error["error"]
    if b"\xe9" in bad:
        offset = content.index(b"\xe9")
        assert f"byte offset {offset} of the file" in error["error"]
    assert [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")] == [f"r{i}" for i in range(11)]


# --- one bad row, CSV -------------------------------------------------------------------------------

GOOD_CSV = [f"r{i},review {i} is good".encode() for i in range(11)]

CSV_CASES = {
    "invalid-utf8": (b"u,caf\xe9 au lait", "cannot decode byte 0xe9 at byte offset"),
    "unterminated-quote": (b'q,"never closed', "quote opened on line 6 is never closed"),
    "short-row": (b"s", "expected 2 fields, saw 1"),
    "long-row": (b"l,a,b", "expected 2 fields, saw 3"),
    "nul-byte": (b"n,a\x00b", "NUL byte at byte offset"),
    "bom-mid-file": (b"\xef\xbb\xbfb,x", "byte-order mark"),
}


def csv_file(tmp_path: Path, bad: bytes, *, bom: bytes = b"") -> bytes:
    # the header is line 1: data rows 1-4 are lines 2-5, the bad row is line 6
    lines = [bom + b"id,text", *GOOD_CSV[:BAD_LINE - 2], bad, *GOOD_CSV[BAD_LINE - 2:]]
    content = b"\n".join(lines) + b"\n"
    (tmp_path / "in.csv").write_bytes(content)
    return content


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_one_bad_csv_row_fails_that_record_alone(tmp_path: Path, case: str) -> None:
    bad, expected = CSV_CASES[case]
    content = csv_file(tmp_path, bad)
    summary = run_pipeline_file(write_pipeline(tmp_path, "{type: csv, path: in.csv, id_column: id}"))
    assert summary["records"]["done"] == 11 and summary["records"]["failed"] == 1
    [error] = errors_of(summary)
    assert error["where"] == f"in.csv row 5 (line {BAD_LINE})"
    assert error["error"].startswith(f"in.csv row 5 (line {BAD_LINE}): ") and expected in error["error"]
    for byte in (b"\xe9", b"\x00"):
        if byte in bad:
            offset = content.index(byte)
            assert f"byte offset {offset} (line {BAD_LINE}" in error["error"]
    assert [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")] == [f"r{i}" for i in range(11)]


def test_csv_short_row_is_padded_only_when_asked(tmp_path: Path) -> None:
    csv_file(tmp_path, b"s")
    summary = run_pipeline_file(write_pipeline(tmp_path, "{type: csv, path: in.csv, id_column: id, "
                                                         "pad_short_rows: true}"))
    assert summary["records"] == {"total": 12, "done": 12, "failed": 0, "skipped": 0}
    padded = [r for r in read_jsonl(tmp_path / "out/records.jsonl") if r["_id"] == "s"]
    assert padded and padded[0]["text"] == ""


def test_csv_id_of_5001_digits_is_kept_as_written(tmp_path: Path) -> None:
    big = "1" * 5001
    csv_file(tmp_path, big.encode() + b",x")
    summary = run_pipeline_file(write_pipeline(tmp_path, "{type: csv, path: in.csv, id_column: id}"))
    assert summary["records"]["done"] == 12 and summary["records"]["failed"] == 0
    assert big in [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")]


def test_csv_unclosed_quote_mid_file_gives_back_the_lines_it_swallowed(tmp_path: Path, monkeypatch) -> None:
    """Without reaching the end of the file: the row is cut at the row limit and the rest is read again."""
    from oaipipe.builtin import source_csv

    monkeypatch.setattr(source_csv, "ROW_LIMIT", 60)
    csv_file(tmp_path, b'q,"never closed')
    summary = run_pipeline_file(write_pipeline(tmp_path, "{type: csv, path: in.csv, id_column: id}"))
    assert summary["records"]["done"] == 11 and summary["records"]["failed"] == 1
    [error] = errors_of(summary)
    assert "longer than 60 characters" in error["error"] and "quote opened on line 6" in error["error"]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_line_too_long_to_hold_fails_that_record_alone(tmp_path: Path, kind: str, monkeypatch) -> None:
    """A giant line (a file without line breaks, /dev/zero copied to disk) is skipped, not read into memory."""
    from oaipipe.kit import sources as _source_files

    monkeypatch.setattr(_source_files, "MAX_LINE_BYTES", 1000)
    if kind == "csv":
        csv_file(tmp_path, b"big," + b"x" * 5000)
        source, where = "{type: csv, path: in.csv, id_column: id}", f"in.csv row 5 (line {BAD_LINE})"
    else:
        lines = [*GOOD_JSONL[:5], b'{"id": "big", "text": "' + b"x" * 5000 + b'"}', *GOOD_JSONL[5:]]
        (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        source, where = "{type: jsonl, path: in.jsonl, id_field: id}", f"in.jsonl line {BAD_LINE}"
    summary = run_pipeline_file(write_pipeline(tmp_path, source))
    assert summary["records"]["done"] == 11 and summary["records"]["failed"] == 1
    [error] = errors_of(summary)
    assert error["where"] == where and "more than the 1,000 a record may have" in error["error"]
    assert [r["_id"] for r in read_jsonl(tmp_path / "out/records.jsonl")] == [f"r{i}" for i in range(11)]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_bom_opening_the_file_is_fine(tmp_path: Path, kind: str) -> None:
    if kind == "csv":
        csv_file(tmp_path, b"r_mid,fine", bom=b"\xef\xbb\xbf")
        source = "{type: csv, path: in.csv, id_column: id}"
    else:
        (tmp_path / "in.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(GOOD_JSONL) + b"\n")
        source = "{type: jsonl, path: in.jsonl, id_field: id}"
    summary = run_pipeline_file(write_pipeline(tmp_path, source))
    assert summary["records"]["failed"] == 0 and summary["records"]["done"] == (12 if kind == "csv" else 11)
    assert read_jsonl(tmp_path / "out/records.jsonl")[0]["_id"] == "r0"


def test_a_csv_header_that_cannot_be_decoded_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_bytes(b"\n" + b"id,t\xffxt\n" + b"1,a\n")
    with pytest.raises(InputError) as err:
        run_pipeline_file(write_pipeline(tmp_path, "{type: csv, path: in.csv}", steps="[]"))
    assert "in.csv line 2: the header row cannot be read" in str(err.value)
    assert "byte 0xff at byte offset 5" in str(err.value)


def test_the_cli_run_goes_on_past_bad_lines(tmp_path: Path) -> None:
    """The reported case end to end: a line nested 200k deep and an id of 5,001 digits among 12 records."""
    lines = [*GOOD_JSONL[:5], JSONL_CASES["nested-200k-deep"][0], *GOOD_JSONL[5:8],
             JSONL_CASES["id-of-5001-digits"][0], *GOOD_JSONL[8:]]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    pipeline = write_pipeline(tmp_path, "{type: jsonl, path: in.jsonl, id_field: id}")
    exe = Path(sys.executable).parent / "oaipipe"
    proc = subprocess.run([str(exe) if exe.exists() else "oaipipe", "run", str(pipeline)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # 1: the run finished, some records failed
    assert "bug" not in proc.stderr and "unexpected" not in proc.stderr
    assert "11 done, 2 failed" in proc.stdout + proc.stderr
    [errors] = list((tmp_path / "runs").glob("bad/*/errors.jsonl"))
    assert [e["where"] for e in read_jsonl(errors)] == ["in.jsonl line 6", "in.jsonl line 10"]


# --- paths that are not regular files ---------------------------------------------------------------


def _special(tmp_path: Path, what: str) -> str:
    if what == "dev-zero":
        if not Path("/dev/zero").exists():
            pytest.skip("no /dev/zero here")
        return "/dev/zero"
    if what == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        os.mkfifo(tmp_path / "pipe")
        return "pipe"
    (tmp_path / "folder").mkdir()
    return "folder"


@pytest.mark.timeout(20)  # opening a FIFO for reading would block forever
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("what", ["dev-zero", "fifo", "folder"])
def test_a_source_path_that_is_not_a_regular_file(tmp_path: Path, what: str, kind: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    path = _special(tmp_path, what)
    pipeline = write_pipeline(tmp_path, f"{{type: {kind}, path: {path}}}",
                              steps='- {type: ask, prompt: "x", output: reply}')
    with pytest.raises(InputError) as err:
        run_pipeline_file(pipeline)
    message = str(err.value)
    assert "not a regular file" in message and "not found" not in message
    assert path in message
    assert main(["validate", str(pipeline)]) == InputError.exit_code  # validate says so too
    assert "not a regular file" in capsys.readouterr().err


# --- an input path that does not exist: the pipeline file's line of `path:` --------------------------

MISSING_PATH_PIPELINE = """\
name: missing
source:
  type: {kind}
  id_column: id
  path: nothere{ext}
steps:
  - {{type: sentiment, analyzer: keyword, input: "{{filename}}", output: s}}
"""


@pytest.mark.parametrize(("kind", "ext"), [("csv", ".csv"), ("jsonl", ".jsonl"), ("images", "")])
def test_a_missing_source_path_names_the_line_of_path(tmp_path: Path, kind: str, ext: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    text = MISSING_PATH_PIPELINE.format(kind=kind, ext=ext)
    text = text.replace("id_column", "id_field") if kind == "jsonl" else text
    if kind == "images":
        text = text.replace("  id_column: id\n", "")
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    line = 5 if kind != "images" else 4
    for command in (["validate"], ["run"]):
        assert main([*command, str(path)]) == InputError.exit_code
        err = capsys.readouterr().err
        assert f"{path}:{line}:3: source.path: " in err, err  # the file, the line of `path:`, the key
        assert "not found" in err and str(tmp_path / f"nothere{ext}") in err  # what was looked for
        assert f"hint: paths in {path} are relative to the folder it is in" in err  # the fix, naming the file
    assert main(["validate", "--json", str(path)]) == InputError.exit_code
    [problem] = json.loads(capsys.readouterr().out)["problems"]
    assert (problem["file"], problem["line"], problem["column"], problem["key"]) == (str(path), line, 3,
                                                                                     "source.path")
    with pytest.raises(InputError) as raised:  # the Python API says where too
        run_pipeline_file(path)
    assert str(raised.value).startswith(f"{path}:{line}:3: source.path: ")


def test_a_missing_source_column_names_the_line_of_its_option(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    csv_file(tmp_path, b"r_mid,fine")
    path = tmp_path / "p.yaml"
    path.write_text("name: col\nsource:\n  type: csv\n  path: in.csv\n  id_column: idd\n", encoding="utf-8")
    assert main(["validate", str(path)]) == InputError.exit_code
    err = capsys.readouterr().err
    assert f"{path}:5:3: source.id_column: " in err and "did you mean 'id'" in err


# --- the pipeline file --------------------------------------------------------------------------------

BOMB = """\
name: bomb
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
source: {type: csv, path: in.csv}
"""


@pytest.mark.timeout(10)
def test_an_alias_bomb_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB, encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:7:" in err and "alias" in err  # f: is where the expansion passes the cap


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("text", "line", "expected"), [
    ("name: x\na: &a [1, *a]\nsource: {type: csv, path: in.csv}\n", 2, "loop"),
    ("name: x\nsource: {type: csv, path: in.csv}\nx: " + "[" * 5000 + "]" * 5000 + "\n", 3, "nested too deeply"),
])
def test_alias_loops_and_deep_nesting_in_the_pipeline_file(tmp_path: Path, text: str, line: int,
                                                           expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        run_pipeline_file(path)
    assert err.value.line == line and expected in str(err.value) and str(path) in str(err.value)


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    csv_file(tmp_path, b"r_mid,fine")
    path = tmp_path / "p.yaml"
    path.write_text("name: aliases\nsource: &src {type: csv, path: in.csv, id_column: id}\n"
                    "steps: [{type: sentiment, analyzer: keyword, input: &in '{text}', output: s},\n"
                    "        {type: sentiment, analyzer: keyword, input: *in, output: s2}]\n"
                    "sinks: [{type: jsonl, path: out/r.jsonl}]\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 0


@pytest.mark.parametrize("sink_path", ["in.csv", "./link.csv", "p.yaml"])
def test_validate_refuses_a_sink_that_writes_the_input(tmp_path: Path, sink_path: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    csv_file(tmp_path, b"r_mid,fine")
    (tmp_path / "link.csv").symlink_to(tmp_path / "in.csv")
    path = tmp_path / "p.yaml"
    path.write_text("name: same\nsource: {type: csv, path: in.csv, id_column: id}\nsinks:\n"
                    "  - {type: jsonl, path: out/ok.jsonl}\n"
                    f"  - {{type: jsonl, path: {sink_path}}}\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:5:" in err and "sinks.1.path" in err and "overwritten" in err
    assert (tmp_path / "in.csv").read_bytes().startswith(b"id,text")


@pytest.mark.parametrize("name", ["..", ".", "../elsewhere", "/tmp/abs", "a/b", "a\\\\b"])
def test_validate_refuses_a_name_that_escapes_run_dir(tmp_path: Path, name: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    csv_file(tmp_path, b"r_mid,fine")
    path = tmp_path / "p.yaml"
    path.write_text(f'source: {{type: csv, path: in.csv}}\nname: "{name}"\n', encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:" in err and "run.dir" in err
    with pytest.raises(ConfigError):
        run_pipeline_file(path)
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "elsewhere").exists()


# --- a step that raises anything ----------------------------------------------------------------------


@pytest.mark.parametrize("raised", ["RecursionError()", "MemoryError()", "ValueError('bad value')",
                                    "int('9' * 5001)", "KeyError('k')"])
def test_a_step_raising_anything_fails_that_record_alone(tmp_path: Path, raised: str) -> None:
    (tmp_path / "boom.py").write_text(textwrap.dedent(f'''
        from oaipipe import Step, StepOptions, hookimpl

        class Boom(Step):
            """Raises for the record r5 only."""
            class Options(StepOptions):
                pass
            async def run(self, fields, ctx):
                if ctx.record.id == "r5":
                    value = {raised}
                    raise value
                return {{self.options.output: "ok"}}

        @hookimpl
        def register_steps(register):
            register("boom", Boom)
    '''), encoding="utf-8")
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(GOOD_JSONL) + b"\n")
    pipeline = write_pipeline(tmp_path, "{type: jsonl, path: in.jsonl, id_field: id}",
                              steps="- {type: boom, output: z}")
    pipeline.write_text("plugins: [boom.py]\n" + pipeline.read_text())
    summary = run_pipeline_file(pipeline)
    assert summary["records"]["done"] == 10 and summary["records"]["failed"] == 1
    [error] = errors_of(summary)
    assert error["id"] == "r5" and "step boom:z" in error["error"]


def test_every_message_names_the_pipeline_file_as_the_user_gave_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The checks across blocks (two sinks on one file) and the model checks (a shutdown date) named the file
    by its absolute path, the per-block checks by the name given; a folder given for its pipeline.yaml was
    named as the bare folder (``proj:2:21: source.path``). Each now says what the user typed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OAIPIPE_TODAY", "2026-11-30")  # gpt-4o-mini shuts down on 2027-01-14: a warning
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-sent")  # validate calls nothing
    (tmp_path / "in.csv").write_text("id,text\nr1,hello\n", encoding="utf-8")
    (tmp_path / "other.yaml").write_text(textwrap.dedent("""\
        name: other
        backend: {type: openai, model: gpt-4o-mini}
        source: {type: csv, path: in.csv, id_column: id}
        steps: [{type: sentiment, analyzer: keyword, input: "{text}", output: s}]
        sinks:
          - {type: jsonl, path: out.jsonl}
          - {type: jsonl, path: out.jsonl}
        """), encoding="utf-8")
    assert main(["validate", "other.yaml"]) == 2
    err = capsys.readouterr().err
    assert "error: other.yaml:7:" in err and "sinks 0 and 1 both write out.jsonl" in err, err
    assert str(tmp_path) not in err
    (tmp_path / "other.yaml").write_text((tmp_path / "other.yaml").read_text().replace("  - {type: jsonl, path: "
                                                                                       "out.jsonl}\n", "", 1))
    assert main(["validate", "other.yaml"]) == 0
    err = "".join(capsys.readouterr())  # the warnings follow the "ok" line
    assert "warning: other.yaml:2: model gpt-4o-mini shuts down on 2027-01-14" in err, err
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "pipeline.yaml").write_text("name: p\nsource: {type: csv, path: nothere.csv}\nsteps: []\n",
                                                     encoding="utf-8")
    assert main(["validate", "proj"]) == 3
    err = capsys.readouterr().err
    assert f"error: {Path('proj', 'pipeline.yaml')}:2:21: source.path: CSV file not found: nothere.csv" in err, err


@pytest.mark.parametrize(("hook", "said"), [
    ("def register_backends():\n    pass\n", "register_backends() takes no `register` argument"),
    ("def register_backends(register):\n    return {'mine': object}\n",
     "register_backends() returned dict instead of calling register()"),
])
def test_a_register_hook_written_wrong_is_named_once_with_the_fix(tmp_path: Path, hook: str, said: str) -> None:
    # pluggy hands a hook only the arguments it names: a register hook without `register`, or one that returns
    # what it means to register, registers nothing; the plugin is named, once, with the right shape
    from oaipipe.testing import PipelineProject

    project = PipelineProject(tmp_path)
    project.write(plugins=["mine.py"], files={"mine.py": "from oaipipe import hookimpl\n\n@hookimpl\n" + hook})
    result = project.cli("validate", project.file)
    assert result.exit_code == 2
    assert result.err.count(said) == 1 and "plugin 'mine'" in result.err
    assert 'def register_backends(register): register("NAME", YourClass)' in result.err or \
        'call register("NAME", YourClass)' in result.err
    assert "unexpected" not in result.err
