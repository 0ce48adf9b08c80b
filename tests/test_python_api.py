"""oaipipe from Python (issue 12): ``oaipipe.Pipeline`` built in code or from a file, ``run()`` anywhere
(scripts, a running event loop, threads), records in memory (lists, DataFrames, iterators), ``RunResult``,
and the README's and docs/python.md's Python examples run as written."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import oaipipe
from oaipipe.errors import ConfigError, ExitCode, OaipipeError, RunAborted

REPO = Path(__file__).resolve().parent.parent
REPLY = {"type": "ask", "prompt": "Reply to: {text}", "output": "reply"}
MOOD = {"type": "sentiment", "analyzer": "keyword", "input": "{text}", "output": "mood"}


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def demo_dir(tmp_path: Path) -> Path:
    """A folder holding the demo the docs' examples run in (pipeline.yaml, plugins/, examples/)."""
    where = tmp_path / "demo"
    where.mkdir()
    shutil.copy(REPO / "pipeline.yaml", where)
    shutil.copytree(REPO / "plugins", where / "plugins")
    shutil.copytree(REPO / "examples", where / "examples")
    return where


# --- a pipeline built in code ------------------------------------------------------------------------------


def test_dict_pipeline_is_validated_like_a_file_with_key_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        oaipipe.Pipeline({"steps": [REPLY, {"type": "ask", "prompt": "S {nope}", "output": "b", "bogus": 1}]})
    assert "steps.1.bogus: unknown key 'bogus'" in str(info.value)
    assert info.value.problems[0].line is None and info.value.problems[0].key == "steps.1.bogus"
    with pytest.raises(ConfigError, match=r"steps\.1\.prompt: template names field 'nope'"):
        oaipipe.Pipeline(steps=[REPLY, {"type": "ask", "prompt": "S {nope}", "output": "b"}]).run(
            records=[{"text": "x"}])
    (tmp_path / "p.yaml").write_text("source: {type: records}\n")
    with pytest.raises(OaipipeError, match="a pipeline file has none"):  # `oaipipe validate` says so too
        oaipipe.Pipeline.from_yaml(tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="unknown pipeline block"):
        oaipipe.Pipeline(stepz=[])
    with pytest.raises(ConfigError, match="source: this pipeline has no source and no records were given"):
        oaipipe.Pipeline(steps=[REPLY]).run()


def test_run_records_list_returns_a_run_result(tmp_path: Path) -> None:
    pipeline = oaipipe.Pipeline(name="mem", steps=[MOOD, REPLY], base_dir=tmp_path)
    result = pipeline.run(records=[{"key": "a", "text": "I love it"}, {"key": "b", "text": "awful"}, "oops"],
                          id_field="key")
    assert isinstance(result, oaipipe.RunResult)
    assert result.summary["records"]["done"] == 2 and result.summary["records"]["failed"] == 1
    assert result.run_dir is not None and result.run_dir.parent == tmp_path / "runs" / "mem"
    records = list(result.records)
    assert [r["id"] for r in records] == ["a", "b", "2"]
    assert records[0]["fields"]["mood"] == "positive" and records[0]["fields"]["reply"]
    assert len(result.errors) == 1 and "must be a dict" in result.errors[0]["error"]
    assert {e["step"] for e in result.exchanges} == {"ask:reply"}
    assert result.exit_code == ExitCode.RECORDS_FAILED


def test_run_works_in_a_script_a_running_loop_and_threads(tmp_path: Path) -> None:
    def make(name: str) -> oaipipe.Pipeline:
        return oaipipe.Pipeline(name=name, steps=[REPLY], base_dir=tmp_path)

    async def inside_a_loop() -> tuple[str, str]:
        pipeline = make("loop")
        blocking = pipeline.run(records=[{"text": "one"}])  # asyncio.run() would raise here
        awaited = await make("loop-async").arun(records=[{"text": "two"}])
        return blocking.status, awaited.status

    assert asyncio.run(inside_a_loop()) == ("finished", "finished")
    statuses: list[str] = []
    threads = [threading.Thread(target=lambda n=n: statuses.append(make(f"t{n}").run(records=[{"text": "x"}]).status))
               for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == ["finished"] * 3


def test_an_endless_iterator_is_streamed_not_materialized(tmp_path: Path) -> None:
    pulled = itertools.count()

    def endless() -> Iterator[dict[str, str]]:
        for n in pulled:
            yield {"text": f"message {n}"}

    result = oaipipe.Pipeline(name="endless", steps=[MOOD], base_dir=tmp_path).run(records=endless(), limit=50)
    assert result.summary["records"]["done"] == 50 and result.status == "partial"
    assert next(pulled) < 1000  # only a batch or so ahead of the run


def test_resume_in_memory_records(tmp_path: Path) -> None:
    rows = [{"text": f"row {n}"} for n in range(6)]
    pipeline = oaipipe.Pipeline(name="resume", steps=[MOOD], base_dir=tmp_path)
    assert pipeline.run(records=rows, limit=2).status == "partial"
    again = pipeline.run(records=rows)  # the same list: recognized by its content, resumed
    assert again.summary["records"]["skipped"] == 2 and again.summary["records"]["done"] == 4
    assert len(list(again.records)) == 6

    stream = oaipipe.Pipeline(name="stream", steps=[MOOD], base_dir=tmp_path)
    assert stream.run(records=iter(rows), limit=2).status == "partial"
    with pytest.raises(RunAborted, match="did not finish"):
        stream.run(records=iter(rows))  # an unnamed iterator cannot be recognized: not mixed in
    assert stream.run(records=iter(rows), fresh=True, input_key="rows-v1", limit=3).status == "partial"
    resumed = stream.run(records=iter(rows), input_key="rows-v1")
    assert resumed.summary["records"]["skipped"] == 3 and resumed.summary["records"]["done"] == 3


def test_dataframe_of_10000_rows_round_trips(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    n = 10_000
    frame = pd.DataFrame({"text": ["I love it" if i % 2 else "awful service" for i in range(n)],
                          "number": range(n), "ratio": [i / 7 for i in range(n)],
                          "flag": [i % 3 == 0 for i in range(n)], "maybe": [None if i % 5 else "x" for i in range(n)]})
    out = oaipipe.Pipeline(name="frame", steps=[MOOD], base_dir=tmp_path).run(records=frame).to_pandas()
    assert len(out) == n
    assert list(out.columns) == [*frame.columns, "mood", "mood_score"]
    for column in frame.columns:
        assert list(out[column].where(out[column].notna(), None)) == list(frame[column]), column
    assert list(out.index[:3]) == ["0", "1", "2"] and out["mood"].iloc[1] == "positive"


def test_from_yaml_runs_like_the_cli_and_records_replace_its_source(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "p.yaml").write_text("name: y\nsource: {type: jsonl, path: in.jsonl}\nsteps:\n"
                                     "  - {type: ask, prompt: 'Reply to: {text}', output: reply}\n")
    pipeline = oaipipe.Pipeline.from_yaml(tmp_path / "p.yaml")
    assert pipeline.run().summary["records"]["done"] == 1
    assert pipeline.run().status == "nothing-to-do"  # finished already, as `oaipipe run` says
    other = pipeline.run(records=[{"text": "a"}, {"text": "b"}])
    assert other.summary["records"]["done"] == 2 and other.run_dir.parent == tmp_path / "runs" / "y"
    (tmp_path / "bad.yaml").write_text("source: {type: jsonl, path: in.jsonl}\nsteps:\n  - {type: ask, prompt: hi, output: r, bogus: 1}\n")
    with pytest.raises(ConfigError) as info:
        oaipipe.Pipeline.from_yaml(tmp_path / "bad.yaml")
    assert info.value.problems[0].line == 3


def test_oaipipe_run_stays_a_thin_alias_inside_a_loop(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "p.yaml").write_text("source: {type: jsonl, path: in.jsonl}\nsteps:\n"
                                     "  - {type: ask, prompt: 'Reply to: {text}', output: reply}\n")

    async def main() -> dict:
        return oaipipe.run(str(tmp_path / "p.yaml"))

    assert asyncio.run(main())["records"]["done"] == 1


# --- the docs' examples, as written ------------------------------------------------------------------------


def _run_examples(where: Path, code: str, *, in_loop: bool) -> subprocess.CompletedProcess[str]:
    if in_loop:  # the same code executed while an event loop runs in the thread (an async handler)
        code = ("import asyncio\n_CODE = " + repr(code) + "\n"
                "async def _main():\n    exec(compile(_CODE, 'examples', 'exec'), {'__name__': '__main__'})\n"
                "asyncio.run(_main())\n")
    (where / "examples_run.py").write_text(code, encoding="utf-8")
    return subprocess.run([sys.executable, "examples_run.py"], cwd=where, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.parametrize("in_loop", [False, True], ids=["script", "running-loop"])
def test_readme_and_python_doc_examples_run_as_written(tmp_path: Path, in_loop: bool) -> None:
    where = demo_dir(tmp_path)
    readme = [b for b in python_blocks(REPO / "README.md") if "import oaipipe" in b]
    assert readme, "the README shows oaipipe from Python"
    code = "\n\n".join(readme + python_blocks(REPO / "docs" / "python.md"))
    done = _run_examples(where, code, in_loop=in_loop)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "RunResult(status='finished'" in done.stdout
    assert "jobs in the registry" in done.stdout
    if not in_loop:
        check_old_class_table(where)


def check_old_class_table(where: Path) -> None:
    """Every method of the old ``OpenAIModel`` class has a row in docs/python.md, and the command of each row
    runs (in the folder where the Python examples ran, whose files some of them use)."""
    text = (REPO / "docs" / "python.md").read_text(encoding="utf-8")
    table = text[text.index("| `OpenAIModel` |"):].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("| `")]
    names = [re.match(r"\| `(\w+)", row).group(1) for row in rows]  # type: ignore[union-attr]
    assert sorted(set(names)) == sorted({"ask", "describe_image", "describe_image_by_requests", "list_models",
                                         "list_assistants", "set_assistant", "determine_sentiment", "dynamic_train",
                                         "train", "save_job_id"})
    assert {"data=...", "data_dir=...", "data_file=...", "positive=True"} <= set(re.findall(r"train\((\S+?)\)", table))
    for row in rows:
        command = row.rstrip(" |").rsplit("| `", 1)[1].rstrip("`")
        assert command.startswith("oaipipe ")
        ran = subprocess.run([str(Path(sys.executable).parent / "oaipipe"), *shlex.split(command)[1:]], cwd=where,
                             capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, f"{command}: {ran.stderr[-1500:]}"


def test_the_docs_walk_through_has_no_stale_json(tmp_path: Path) -> None:
    """``RunResult.summary`` is what summary.json of the run directory says."""
    result = oaipipe.Pipeline(name="s", steps=[MOOD], base_dir=tmp_path).run(records=[{"text": "ok"}])
    assert result.run_dir is not None
    on_disk = json.loads((result.run_dir / "summary.json").read_text())
    assert on_disk["run_id"] == result.summary["run_id"] and on_disk["status"] == result.summary["status"]
    assert textwrap.dedent(repr(result)).startswith("RunResult(status='finished'")
