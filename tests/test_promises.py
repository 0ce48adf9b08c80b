"""Tests that pin promises the rest of the suite let slip: each one kills a mutation of the core that
every other test passed with (written down in its docstring).

* a dry run on the ``batch`` backend is priced at the Batch discount;
* an analyzer's score must lie in [-1, 1] and its result must be a ``Sentiment``, each checked on its own;
* fewer than 10 training examples are refused, 10 are accepted, whichever way a dataset is checked;
* the response cache's key covers a request's ``extra`` parameters;
* a plain rerun of an interrupted run does not redo its failed records; ``--retry-failed`` does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from oaipipe.testing import PipelineProject

# --- a dry run on batch is priced at the Batch discount -------------------------------------------


def test_a_dry_run_on_batch_is_priced_at_the_batch_discount(oaipipe_project: PipelineProject) -> None:
    """Mutation killed: ``oaipipe/dryrun.py`` pricing the batch backend at full price (``batch=False``).

    No other test dry-runs ``batch``. The server is never contacted: a dry run calls nothing."""
    from oaipipe.pricing import BATCH_DISCOUNT

    never_called = "http://127.0.0.1:9/v1"  # the discard port: a call would fail the test
    estimates = {}
    for kind in ("openai", "batch"):
        # gpt-4o-mini named: dear enough that costs rounded to 6 decimals still compare within rel 1e-3
        oaipipe_project.write(backend={"type": kind, "base_url": never_called, "api_key": "sk-test-not-used",
                                       "model": "gpt-4o-mini"})
        result = oaipipe_project.run("--dry-run")
        assert result.exit_code == 0, result
        assert result.summary["backend"] == kind  # not the offline fallback
        estimates[kind] = result.summary["estimate"]
    full, batch = estimates["openai"], estimates["batch"]
    assert batch["calls"] == full["calls"] == 5
    assert (batch["prompt_tokens"], batch["completion_tokens"]) == (full["prompt_tokens"], full["completion_tokens"])
    assert full["cost_usd"] > 0
    assert batch["cost_usd"] == pytest.approx(full["cost_usd"] * BATCH_DISCOUNT, rel=1e-3)
    assert [r["cost_usd"] for r in batch["by_step"]] == pytest.approx(
        [r["cost_usd"] * BATCH_DISCOUNT for r in full["by_step"]], rel=1e-3)


# --- the analyzer contract: label, score and type, each on its own --------------------------------

ANALYZER = '''
from oaipipe import Analyzer, Sentiment, hookimpl

RESULT = {result}


class Fixed(Analyzer):
    """Returns the same thing for every text."""

    def analyze(self, text):
        return RESULT


@hookimpl
def register_analyzers(register):
    register("fixed", Fixed)
'''


def _analyze_with(project: PipelineProject, result: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    project.write(plugins=["fixed.py"], files={"fixed.py": ANALYZER.format(result=result)},
                  steps=[{"type": "sentiment", "analyzer": "fixed", "input": "{text}", "output": "mood"}])
    run = project.run("--fresh", "--max-failures", "100")
    assert run.summary is not None, run
    return run.summary, project.errors()


@pytest.mark.parametrize(("result", "said"), [
    ('Sentiment("positive", 7.5, "fixed")', "score 7.5"),
    ('Sentiment("negative", -1.0001, "fixed")', "score -1.0001"),
    ('Sentiment("neutral", float("nan"), "fixed")', "score nan"),
])
def test_an_analyzer_score_outside_minus_one_to_one_fails_the_record(oaipipe_project: PipelineProject,
                                                                     result: str, said: str) -> None:
    """Mutation killed: ``check_sentiment`` (oaipipe/builtin/step_sentiment.py) checking the label only.

    The label is valid here: only the score breaks the contract (the suite's one contract test broke both)."""
    summary, errors = _analyze_with(oaipipe_project, result)
    assert summary["records"]["failed"] == 5 and summary["records"]["done"] == 0
    assert len(errors) == 5
    for error in errors:
        assert "PluginError: analyzer 'fixed' returned label" in error["error"] and said in error["error"], error
        assert "scores lie in [-1, 1]" in error["error"]  # the hint says how to fix it


def test_an_analyzer_returning_a_tuple_fails_the_record_saying_so(oaipipe_project: PipelineProject) -> None:
    """Mutation killed: ``check_sentiment`` without its ``isinstance(sentiment, Sentiment)`` check (the
    record then fails anyway, with an AttributeError that does not say what the analyzer did wrong)."""
    summary, errors = _analyze_with(oaipipe_project, '("positive", 0.5)')
    assert summary["records"]["failed"] == 5
    for error in errors:
        assert "PluginError: analyzer 'fixed' returned tuple, not an oaipipe.Sentiment" in error["error"], error


@pytest.mark.parametrize("score", [-1.0, 1.0, 0.0])
def test_an_analyzer_score_at_the_bounds_is_accepted(oaipipe_project: PipelineProject, score: float) -> None:
    summary, errors = _analyze_with(oaipipe_project, f'Sentiment("positive", {score!r}, "fixed")')
    assert errors == [] and summary["records"]["done"] == 5
    assert {r["mood_score"] for r in oaipipe_project.records()} == {score}
    assert not any(math.isnan(r["mood_score"]) for r in oaipipe_project.records())


# --- at least 10 training examples ----------------------------------------------------------------


def _qa_rows(n: int) -> list[tuple[str, str]]:
    return [("prompt", "completion")] + [(f"Where is order {i}?", f"Order {i} ships on Monday.") for i in range(n)]


def _chat_lines(n: int) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"Where is order {i}?"},
                          {"role": "assistant", "content": f"Order {i} ships on Monday."}]} for i in range(n)]


@pytest.mark.parametrize(("n", "ok"), [(9, False), (10, True)])
def test_ten_examples_is_the_minimum_when_a_dataset_is_validated(oaipipe_project: PipelineProject,
                                                                 n: int, ok: bool) -> None:
    """Mutation killed: ``oaipipe/training/validate.py`` accepting 9 examples (``MIN_EXAMPLES = 9``, or
    ``<`` turned into ``< min_examples - 1``); the suite only tried datasets far below the minimum."""
    from oaipipe.training.validate import validate_file

    path = oaipipe_project.write_file("data.jsonl", _chat_lines(n))
    report = validate_file(path)
    assert ("too_few_examples" not in report.errors) is ok, report.errors
    result = oaipipe_project.cli("dataset", "validate", str(path))
    assert (result.exit_code == 0) is ok, result
    if not ok:
        assert result.exit_code == 6 and "at least 10" in result.out + result.err


@pytest.mark.parametrize(("n", "ok"), [(9, False), (10, True)])
def test_ten_examples_is_the_minimum_when_a_job_is_launched(oaipipe_project: PipelineProject, n: int,
                                                            ok: bool) -> None:
    """Mutation killed: the trainers' own ``min_examples`` default (``Trainer.Options``, which ``oaipipe
    train`` and ``train:`` use instead of validate.py's constant) lowered to 9."""
    from oaipipe.jobs import JobRegistry

    path = oaipipe_project.write_file("qa.csv", _qa_rows(n))
    result = oaipipe_project.cli("train", str(path), "--wait")
    assert (result.exit_code == 0) is ok, result
    assert len(JobRegistry().list()) == (1 if ok else 0)  # refused before anything was launched
    if not ok:
        assert result.exit_code == 6 and "too_few_examples" in result.err


@pytest.mark.parametrize(("n", "status"), [(9, "skipped"), (10, "succeeded")])
def test_ten_examples_is_the_minimum_for_a_pipelines_train_block(oaipipe_project: PipelineProject, n: int,
                                                                 status: str) -> None:
    """Mutation killed: the ``min_examples`` default of ``Trainer.Options`` (oaipipe/base.py), which a
    pipeline's ``train:`` block uses, lowered to 9 (``oaipipe train`` and ``dataset validate`` have their own)."""
    from oaipipe.jobs import JobRegistry

    oaipipe_project.write(
        files={"reviews.csv": [("id", "text")] + [(str(i), f"Review {i}: it arrived on time.") for i in range(n)]},
        steps=[{"type": "ask", "prompt": "Reply to: {text}", "output": "reply"}], train={"type": "local"})
    result = oaipipe_project.run()
    assert result.exit_code == 0, result
    train = result.summary["train"]
    assert train["status"] == status, train
    assert len(JobRegistry().list()) == (1 if status == "succeeded" else 0)
    if status == "skipped":
        assert "at least 10" in train["reason"], train


# --- the cache key covers a request's extra parameters ---------------------------------------------


def test_the_cache_key_covers_extra_parameters(tmp_path: Path) -> None:
    """Mutation killed: the cache key (``ChatRequest.cache_key`` / ``ResponseCache.key_for``) leaving out
    ``extra``: a call with other pass-through parameters (``seed``, ``top_p``, ...) would get another call's
    answer."""
    from oaipipe.cache import ResponseCache
    from oaipipe.types import ChatRequest, ChatResponse

    def request(extra: dict[str, Any]) -> ChatRequest:
        return ChatRequest(messages=[{"role": "user", "content": "hi"}], model="gpt-4o-mini", extra=extra)

    for namespace in ("", "openai http://127.0.0.1:1/v1"):
        cache = ResponseCache(tmp_path / f"c{len(namespace)}", namespace=namespace)
        cache.put(request({"seed": 1}), ChatResponse(text="one", model="gpt-4o-mini", backend="openai"))
        assert cache.get(request({"seed": 2})) is None
        assert cache.get(request({})) is None
        assert cache.get(request({"seed": 1, "top_p": 0.5})) is None
        hit = cache.get(request({"seed": 1}))
        assert hit is not None and hit.text == "one"


EXTRA_PLUGIN = '''
from oaipipe import Backend, ChatRequest, ChatResponse, Step, StepOptions, Usage, hookimpl


class EchoExtra(Backend):
    """Answers with the extra parameters it was sent."""

    async def chat(self, request):
        return ChatResponse(text=f"extra={sorted(request.extra.items())}", model=request.model,
                            backend=self.name, usage=Usage(1, 1, 2))


class Seeded(Step):
    """The same prompt, sent with the record's seed as an extra parameter."""

    class Options(StepOptions):
        pass

    async def run(self, fields, ctx):
        request = ChatRequest(messages=[{"role": "user", "content": "the same prompt"}], model="gpt-4o-mini",
                              extra={"seed": int(fields["id"])}, step=self.label)
        return {self.options.output: (await ctx.chat(request)).text}


@hookimpl
def register_backends(register):
    register("echo-extra", EchoExtra)


@hookimpl
def register_steps(register):
    register("seeded", Seeded)
'''


def test_calls_differing_only_in_extra_are_not_answered_from_each_others_cache(
        oaipipe_project: PipelineProject) -> None:
    """The same promise through a run: five records send the same prompt with five seeds."""
    oaipipe_project.write(plugins=["extra_plugin.py"], files={"extra_plugin.py": EXTRA_PLUGIN},
                          backend={"type": "echo-extra"}, steps=[{"type": "seeded", "output": "reply"}])
    first = oaipipe_project.run()
    assert first.exit_code == 0, first
    assert first.summary["calls"] == 5 and first.summary["cached"] == 0
    replies = {r["_id"]: r["reply"] for r in oaipipe_project.records()}
    assert replies == {i: f"extra=[('seed', {i})]" for i in ("1", "2", "3", "4", "5")}
    again = oaipipe_project.run("--fresh")
    assert again.summary["cached"] == 5  # the same calls again: all from the cache
    assert {r["_id"]: r["reply"] for r in oaipipe_project.records()} == replies


# --- a plain rerun does not redo failed records ---------------------------------------------------

FLAKY_PLUGIN = '''
import os
from pathlib import Path

from oaipipe import RecordError, Step, StepOptions, hookimpl


class Flaky(Step):
    """Fails record 2 while the file `broken` exists; logs every record it runs to `calls.txt`."""

    class Options(StepOptions):
        pass

    async def run(self, fields, ctx):
        with open(self.context.path("calls.txt"), "a", encoding="utf-8") as fh:
            fh.write(ctx.record.id + "\\n")
        if ctx.record.id == "2" and self.context.path("broken").exists():
            raise RecordError("record 2 is broken while the file `broken` exists")
        return {self.options.output: "ok " + ctx.record.id}


@hookimpl
def register_steps(register):
    register("flaky", Flaky)
'''


def _calls(project: PipelineProject) -> list[str]:
    path = project.path / "calls.txt"
    calls = path.read_text(encoding="utf-8").split() if path.exists() else []
    path.unlink(missing_ok=True)
    return calls


@pytest.mark.parametrize("interrupted", [True, False], ids=["unfinished-run", "finished-run"])
def test_a_plain_rerun_does_not_redo_failed_records_and_retry_failed_does(oaipipe_project: PipelineProject,
                                                                         interrupted: bool) -> None:
    """Mutation killed: ``Runner._select_run`` resuming an unfinished run with only its *done* records
    skipped (``s == "done"``), so that a plain rerun redoes the failed ones: only ``--retry-failed`` may."""
    project = oaipipe_project
    project.write(plugins=["flaky.py"], files={"flaky.py": FLAKY_PLUGIN, "broken": ""},
                  steps=[{"type": "flaky", "output": "out"}])
    first = project.run(*(["--limit", "3"] if interrupted else []))
    assert first.summary["records"]["failed"] == 1
    assert first.summary["status"] == ("partial" if interrupted else "finished")
    assert sorted(_calls(project)) == (["1", "2", "3"] if interrupted else ["1", "2", "3", "4", "5"])
    (project.path / "broken").unlink()  # record 2 would now succeed: a redo would show

    plain = project.run()
    assert plain.exit_code in (0, 1), plain
    assert _calls(project) == (["4", "5"] if interrupted else [])  # record 2 is not redone
    assert plain.summary["run_id"] == first.summary["run_id"]
    statuses = {e["id"]: e["status"] for e in project.journal()}
    assert statuses["2"] == "failed"
    assert [e["id"] for e in project.errors()] == ["2"]

    retry = project.run("--retry-failed")
    assert retry.exit_code == 0, retry
    assert _calls(project) == ["2"]  # only the failed record, and now it succeeds
    assert retry.summary["records"]["done"] == 1 and retry.summary["records"]["failed"] == 0
    assert sorted(r["_id"] for r in project.records()) == ["1", "2", "3", "4", "5"]
    assert {r["_id"]: r["out"] for r in project.records()}["2"] == "ok 2"
