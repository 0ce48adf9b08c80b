"""``oaipipe dataset export`` (issue 11, point 5): a run's training dataset in the formats other trainers take.

Each test makes a real run on the embedded engine (two ask steps answering the same user message, a
``train:`` block selecting the positive reviews), exports it, and reads the file back with the reader the
target trainer uses (Hugging Face ``datasets``' json / parquet loaders, pyarrow), checking content and order
against the run's journal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oaipipe.errors import ExitCode
from oaipipe.testing import PipelineProject

#: a test analyzer: the label depends on the text alone (so the expected pairs can be worked out from the journal)
PARITY_PLUGIN = '''
from oaipipe import Analyzer, Sentiment, hookimpl


class Parity(Analyzer):
    def analyze(self, text):
        return Sentiment("positive" if len(text) % 2 == 0 else "negative", 0.0, analyzer=self.name)


@hookimpl
def register_analyzers(register):
    register("parity", Parity)
'''

SYSTEM = "You are a helpful support agent."


def _steps(draft_system: str) -> list[dict[str, Any]]:
    return [
        {"type": "sentiment", "analyzer": "vader", "input": "{text}", "output": "review_sentiment"},
        # gpt-4o-mini named: the engine's replies for it differ from gpt-4.1-nano's on every record (the
        # pairs and the --all count below need two different replies per record)
        {"type": "ask", "system": SYSTEM, "prompt": "Reply to: {text}", "output": "reply", "model": "gpt-4o-mini"},
        {"type": "ask", "system": draft_system, "prompt": "Reply to: {text}", "output": "draft",
         "model": "gpt-4.1-nano"},
        {"type": "sentiment", "analyzer": "parity", "input": "{reply}", "output": "reply_parity"},
        {"type": "sentiment", "analyzer": "parity", "input": "{draft}", "output": "draft_parity"},
    ]


def _project(path: Path, *, draft_system: str = SYSTEM, train: dict[str, Any] | None = None) -> PipelineProject:
    project = PipelineProject(path)
    project.write(plugins=["parity.py"], files={"parity.py": PARITY_PLUGIN}, steps=_steps(draft_system),
                  train=train if train is not None else
                  {"type": "local", "select": {"review_sentiment": "positive"}, "step": "reply", "wait": False})
    result = project.run()
    assert result.exit_code == 0, result
    return project


@pytest.fixture
def project(tmp_path: Path) -> PipelineProject:
    return _project(tmp_path / "p")


def _exchange(record: dict[str, Any], output: str) -> list[dict[str, Any]]:
    found = next(e for e in record["exchanges"] if e["step"].endswith(f":{output}"))
    return [{"role": m["role"], "content": m["content"]} for m in found["messages"]]


def _export(project: PipelineProject, *args: str) -> Any:
    result = project.cli("dataset", "export", "--pipeline", str(project.file), *args, "--json")
    assert result.exit_code == 0, result
    return json.loads(result.out)


def _hf(path: Path, loader: str, cache: Path) -> list[dict[str, Any]]:
    import datasets

    ds = (datasets.Dataset.from_json if loader == "json" else datasets.Dataset.from_parquet)(
        str(path), cache_dir=str(cache))
    return list(ds)


def test_hf_jsonl_and_parquet_hold_the_exchanges_train_select_keeps_in_input_order(
        project: PipelineProject, tmp_path: Path) -> None:
    journal = project.journal()
    positive = [r for r in journal if r["fields"]["review_sentiment"] == "positive"]
    assert 0 < len(positive) < len(journal)  # the selection keeps some records, not all
    expected = [{"messages": _exchange(r, "reply")} for r in positive]
    for fmt, name, loader in (("hf-jsonl", "sft.jsonl", "json"), ("hf-parquet", "sft.parquet", "parquet")):
        out = tmp_path / "export" / name
        info = _export(project, "--format", fmt, "-o", str(out))
        assert info["rows"] == len(expected) and info["select"] == {"review_sentiment": "positive"}
        assert info["step"] == "reply" and info["format"] == fmt
        assert _hf(out, loader, tmp_path / "hf-cache") == expected
    lines = (tmp_path / "export" / "sft.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == expected

    import pyarrow.parquet as pq

    schema = pq.read_schema(tmp_path / "export" / "sft.parquet")
    assert schema.names == ["messages"] and str(schema.field("messages").type) == \
        "list<element: struct<role: string, content: string>>"


def test_all_exports_every_exchange_of_every_step(project: PipelineProject, tmp_path: Path) -> None:
    expected = [{"messages": _exchange(r, out)} for r in project.journal() for out in ("reply", "draft")]
    out = tmp_path / "all.jsonl"
    info = _export(project, "--format", "hf-jsonl", "--all", "-o", str(out))
    assert info["rows"] == len(expected) == 10 and info["select"] == {} and info["step"] is None
    assert _hf(out, "json", tmp_path / "hf-cache") == expected


def test_openai_jsonl_is_what_dataset_build_writes(project: PipelineProject, tmp_path: Path) -> None:
    out = tmp_path / "openai.jsonl"
    _export(project, "--format", "openai-jsonl", "-o", str(out))
    built = tmp_path / "built.jsonl"
    journal = project.run_dir() / "journal.jsonl"
    assert project.cli("dataset", "build", str(journal), "-o", str(built), "--step", "reply",
                       "--select", "review_sentiment=positive").exit_code in (0, 6)  # 6: fewer than 10
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"messages": _exchange(r, "reply")} for r in project.journal()
                    if r["fields"]["review_sentiment"] == "positive"]


def test_dpo_pairs_two_steps_replies_per_record(project: PipelineProject, tmp_path: Path) -> None:
    journal = project.journal()
    for fmt, name, loader in (("dpo-jsonl", "dpo.jsonl", "json"), ("dpo-parquet", "dpo.parquet", "parquet")):
        out = tmp_path / name
        info = _export(project, "--format", fmt, "--all", "--chosen", "reply", "--rejected", "draft", "-o", str(out))
        assert info["pairing"] == "step reply over step draft in each record"
        rows = _hf(out, loader, tmp_path / "hf-cache")
        assert rows == [{"prompt": _exchange(r, "reply")[:-1],
                         "chosen": [{"role": "assistant", "content": r["fields"]["reply"]}],
                         "rejected": [{"role": "assistant", "content": r["fields"]["draft"]}]} for r in journal]
        assert all(row["prompt"][-1]["role"] == "user" and row["prompt"][0]["content"] == SYSTEM for row in rows)
    # without --all, the run's train.select picks the records that are paired
    info = _export(project, "--format", "dpo-jsonl", "--chosen", "reply", "--rejected", "draft",
                   "-o", str(tmp_path / "selected.jsonl"))
    assert info["rows"] == sum(r["fields"]["review_sentiment"] == "positive" for r in journal)


def test_dpo_pairs_a_positive_and_a_negative_reply_to_the_same_prompt(project: PipelineProject,
                                                                      tmp_path: Path) -> None:
    expected = []
    for r in project.journal():
        reply, draft = r["fields"]["reply"], r["fields"]["draft"]
        labels = {r["fields"]["reply_parity"]: reply, r["fields"]["draft_parity"]: draft}
        if set(labels) == {"positive", "negative"} and reply != draft:
            expected.append({"prompt": _exchange(r, "reply")[:-1],
                             "chosen": [{"role": "assistant", "content": labels["positive"]}],
                             "rejected": [{"role": "assistant", "content": labels["negative"]}]})
    assert expected  # the data has pairs (a check of the test itself)
    out = tmp_path / "pairs.jsonl"
    # the run's train.step (reply) alone has no two replies to one prompt: it is named in the refusal
    refused = project.cli("dataset", "export", "--pipeline", str(project.file), "--format", "dpo-jsonl",
                          "--select", "sentiment=positive", "-o", str(out))
    assert refused.exit_code == ExitCode.DATASET_ERROR and "of step 'reply' only" in refused.err
    info = _export(project, "--format", "dpo-jsonl", "--select", "sentiment=positive", "--step", "ask",
                   "-o", str(out))
    assert info["pairing"] == "sentiment=positive over the opposite label, same prompt"
    assert _hf(out, "json", tmp_path / "hf-cache") == expected


# --- bad inputs ------------------------------------------------------------------------------------------


def test_unknown_run_is_a_usage_error_listing_the_runs(project: PipelineProject, tmp_path: Path) -> None:
    result = project.cli("dataset", "export", "nope", "--pipeline", str(project.file), "--format", "hf-jsonl",
                         "-o", str(tmp_path / "x.jsonl"))
    assert result.exit_code == ExitCode.USAGE_ERROR
    assert "no run 'nope'" in result.err and "oaipipe runs" in result.err
    assert not (tmp_path / "x.jsonl").exists()


def test_an_empty_selection_exits_6_naming_the_selection_and_the_fix(project: PipelineProject,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    result = project.cli("dataset", "export", "--pipeline", str(project.file), "--format", "hf-jsonl",
                         "--select", "review_sentiment=ecstatic", "-o", str(out))
    assert result.exit_code == ExitCode.DATASET_ERROR
    assert "none of its" in result.err and "--select {'review_sentiment': 'ecstatic'}" in result.err
    assert "--all" in result.err and not out.exists()


def test_nothing_to_pair_exits_6_and_says_how_to_give_pairs(tmp_path: Path) -> None:
    # the draft step has its own system prompt: no two replies share a prompt, and the parity labels are
    # not asked for by the default rule's key either
    project = _project(tmp_path / "p", draft_system="You are terse.")
    out = tmp_path / "pairs.jsonl"
    result = project.cli("dataset", "export", str(project.file), "--format", "dpo-jsonl", "--all", "-o", str(out))
    assert result.exit_code == ExitCode.DATASET_ERROR
    assert "nothing to pair for DPO" in result.err and "without a partner" in result.err
    assert "--chosen STEP --rejected STEP" in result.err and not out.exists()
    # two steps that answer different user messages are not a pair either
    result = project.cli("dataset", "export", str(project.file), "--format", "dpo-jsonl", "--all",
                         "--chosen", "reply", "--rejected", "review_sentiment", "-o", str(out))
    assert result.exit_code == ExitCode.DATASET_ERROR and "nothing to pair" in result.err


def test_the_runs_own_files_are_never_overwritten(project: PipelineProject) -> None:
    journal = project.run_dir() / "journal.jsonl"
    before = journal.read_bytes()
    result = project.cli("dataset", "export", str(project.run_dir()), "--format", "hf-jsonl", "-o", str(journal))
    assert result.exit_code == ExitCode.DATASET_ERROR
    assert "is a file of run" in result.err and "write the export elsewhere" in result.err
    assert journal.read_bytes() == before


@pytest.mark.parametrize("victim", ["pipeline", "source", "sink", "index"])
def test_the_runs_pipeline_source_sinks_and_index_are_never_overwritten(project: PipelineProject,
                                                                          victim: str) -> None:
    # `-o reviews.csv` / `-o pipeline.yaml` / `-o out/records.jsonl` / `-o runs/runs.db` once replaced them
    path = {"pipeline": project.file, "source": project.path / "reviews.csv", "sink": project.sink_path(0),
            "index": project.path / "runs" / "runs.db"}[victim]
    before = path.read_bytes()
    result = project.cli("dataset", "export", str(project.run_dir()), "--format", "hf-jsonl", "-o", str(path))
    assert result.exit_code == ExitCode.DATASET_ERROR, result
    assert f"{path} is the " in result.err and "write the export elsewhere" in result.err
    assert path.read_bytes() == before


def test_another_runs_files_are_never_overwritten(project: PipelineProject) -> None:
    first = project.run_dir()
    assert project.run("--fresh").exit_code == 0
    second = project.run_dir()
    assert second != first
    journal = first / "journal.jsonl"
    before = journal.read_bytes()
    result = project.cli("dataset", "export", str(second), "--format", "hf-jsonl", "-o", str(journal))
    assert result.exit_code == ExitCode.DATASET_ERROR, result
    assert f"is a file of run {first.name}" in result.err and journal.read_bytes() == before


@pytest.mark.parametrize("data", ["journal", "csv"])
def test_dataset_build_never_writes_over_its_input(project: PipelineProject, data: str) -> None:
    """`oaipipe dataset build runs/.../journal.jsonl -o runs/.../journal.jsonl` (or `qa.csv -o qa.csv`) replaced
    the input with the dataset."""
    source = project.run_dir() / "journal.jsonl" if data == "journal" else project.path / "qa.csv"
    if data == "csv":
        source.write_text("prompt,completion\nHi,Hello there\n", encoding="utf-8")
    before = source.read_bytes()
    result = project.cli("dataset", "build", str(source), "-o", str(source))
    assert result.exit_code == ExitCode.DATASET_ERROR, result
    assert "the dataset is never written over it" in result.err and source.read_bytes() == before
    errors = project.run_dir() / "errors.jsonl"
    result = project.cli("dataset", "build", str(project.run_dir() / "journal.jsonl"), "-o", str(errors))
    assert result.exit_code == ExitCode.DATASET_ERROR and f"a file of run {project.run_dir().name}" in result.err


def test_a_fifo_as_the_output_is_an_io_error_and_stays_a_fifo(project: PipelineProject, tmp_path: Path) -> None:
    import os
    import stat

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = project.cli("dataset", "export", str(project.run_dir()), "--format", "hf-jsonl", "-o", str(fifo))
    assert result.exit_code == ExitCode.IO_ERROR, result
    assert str(fifo) in result.err and "not a regular file" in result.err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_an_unfinished_run_is_exported_with_a_warning_saying_so(project: PipelineProject, tmp_path: Path) -> None:
    """A run that is still going or was killed has no summary.json (an interrupted one says so in it): its
    export holds only the records finished so far, and the user is told, not left with a silent part."""
    run_dir = project.run_dir()
    finished = project.cli("dataset", "export", str(run_dir), "--format", "hf-jsonl", "-o", str(tmp_path / "a.jsonl"))
    assert finished.exit_code == 0 and "warning" not in finished.err, finished
    (run_dir / "summary.json").unlink()  # what a SIGKILLed (or still running) run leaves
    killed = project.cli("dataset", "export", str(run_dir), "--format", "hf-jsonl", "-o", str(tmp_path / "b.jsonl"))
    assert killed.exit_code == 0, killed
    assert f"warning: run {run_dir.name} has not finished" in killed.err and "still running, or was killed" in \
        killed.err and "then export again" in killed.err
    data = _export(project, str(run_dir), "--format", "hf-jsonl", "-o", str(tmp_path / "c.jsonl"))
    assert data["run_complete"] is False and data["run_status"] is None


def test_a_run_without_exchanges_is_not_told_to_use_all(project: PipelineProject, tmp_path: Path) -> None:
    """--all on a run whose records all failed once said "none of its 0 exchange(s) matches train.select {}"
    with the hint to use --all."""
    (project.run_dir() / "journal.jsonl").write_text("", encoding="utf-8")  # every record failed
    result = project.cli("dataset", "export", str(project.run_dir()), "--format", "hf-jsonl", "--all",
                         "-o", str(tmp_path / "x.jsonl"))
    assert result.exit_code == ExitCode.DATASET_ERROR, result
    assert "none of its 0 exchange(s) can be exported" in result.err and "errors.jsonl" in result.err
    assert "--all" not in result.err and not (tmp_path / "x.jsonl").exists()


def test_flags_that_do_not_go_together_are_usage_errors(project: PipelineProject, tmp_path: Path) -> None:
    out = str(tmp_path / "x.jsonl")
    cases = [(["--format", "dpo-jsonl", "--chosen", "reply"], "--chosen and --rejected go together"),
             (["--format", "hf-jsonl", "--chosen", "reply", "--rejected", "draft"], "has no pairs"),
             (["--format", "hf-jsonl", "--all", "--select", "a=b"], "--all and --select")]
    for args, message in cases:
        result = project.cli("dataset", "export", "--pipeline", str(project.file), *args, "-o", out)
        assert result.exit_code == ExitCode.USAGE_ERROR and message in result.err, result


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    from oaipipe.cli import main
    from oaipipe.errors import DatasetError
    from oaipipe.training.export import export_run

    with pytest.raises(DatasetError, match="no journal.jsonl"):
        export_run(tmp_path, "hf-jsonl", tmp_path / "x.jsonl")
    assert main(["dataset", "export", str(tmp_path), "--format", "hf-jsonl", "-o", str(tmp_path / "x.jsonl")]) \
        == ExitCode.DATASET_ERROR


def test_openai_jsonl_of_a_dpo_run_is_openais_preference_rows(tmp_path: Path) -> None:
    project = _project(tmp_path / "p", train={"type": "local", "method": "dpo", "select": {"sentiment": "positive"},
                                              "step": "ask", "wait": False})
    out = tmp_path / "openai-dpo.jsonl"
    info = _export(project, "--format", "openai-jsonl", "-o", str(out))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows and len(rows) == info["rows"] and info["pairing"].startswith("sentiment=positive")
    trl = _export(project, "--format", "dpo-jsonl", "-o", str(tmp_path / "trl.jsonl"))
    trl_rows = [json.loads(line) for line in (tmp_path / "trl.jsonl").read_text(encoding="utf-8").splitlines()]
    assert trl["rows"] == len(rows)
    for openai_row, trl_row in zip(rows, trl_rows, strict=True):  # the same pairs, in OpenAI's shape
        assert set(openai_row) == {"input", "preferred_output", "non_preferred_output"}
        assert openai_row["input"]["messages"] == trl_row["prompt"]
        assert openai_row["preferred_output"] == trl_row["chosen"]
        assert openai_row["non_preferred_output"] == trl_row["rejected"]


def test_rows_of_the_wrong_shape_are_refused_naming_the_row() -> None:
    from oaipipe.errors import DatasetError
    from oaipipe.training.export import check_rows

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    check_rows([good], "sft")
    with pytest.raises(DatasetError, match=r"row 2 messages: the last message is from user, not assistant"):
        check_rows([good, {"messages": good["messages"][:1]}], "sft")
    with pytest.raises(DatasetError, match=r"row 1 chosen: not a non-empty list"):
        check_rows([{"prompt": good["messages"][:1], "chosen": [], "rejected": good["messages"][1:]}], "dpo")
    with pytest.raises(DatasetError, match=r"row 1 messages: not a non-empty list .* text content"):
        check_rows([{"messages": [{"role": "assistant", "content": "  "}]}], "sft")
