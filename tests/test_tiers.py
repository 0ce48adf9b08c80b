"""Service tiers and the tier planner: prices per tier, the plan (pure, exact figures), the dry run's table,
runs against ``oaipipe serve`` that follow the plan, the summary's savings, and bad deadlines at validate."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from oaipipe.pricing import PriceTable, tier_of
from oaipipe.testing import PipelineProject, running_server
from oaipipe.tiers import Workload, parse_deadline, plan_tiers, tier_costs

MINI = PriceTable().lookup("gpt-4o-mini")
ROWS = [{"model": "gpt-4o-mini", "prompt_tokens": 10_000, "completion_tokens": 20_000}]
#: 100 calls of 100 prompt + 200 completion tokens, 10 at once
WORK = Workload(calls=100, prompt_tokens=10_000, completion_tokens=20_000, concurrency=10)
ALL = ("standard", "flex", "priority", "batch")


# --- prices per tier ------------------------------------------------------------------------------------


def test_flex_is_billed_at_batch_rates_and_priority_at_its_own_prices() -> None:
    """gpt-4o-mini: standard 0.15/0.60, flex and batch half of it, priority 0.25/1.00 (USD per 1M)."""
    assert MINI.cost(10_000, 20_000) == pytest.approx(0.0135)
    assert MINI.cost(10_000, 20_000, tier="flex") == pytest.approx(0.00675)
    assert MINI.cost(10_000, 20_000, tier="batch") == pytest.approx(0.00675)
    assert MINI.cost(10_000, 20_000, tier="priority") == pytest.approx(0.0225)
    # cached tokens at the tier's cached price: 4000 of 10000 cached, flex: (6000*.075 + 4000*.0375 + 20000*.3)/1e6
    assert MINI.cost(10_000, 20_000, tier="flex", cached_tokens=4000) == pytest.approx(0.0066)
    luna = PriceTable().lookup("gpt-6-luna")
    assert not luna.tier_known("priority") and luna.tier_known("flex")  # no priority price published for it
    assert tier_costs([{"model": "gpt-6-luna", "prompt_tokens": 1, "completion_tokens": 1}], PriceTable(),
                      ["priority"]) == {"priority": None}


def test_a_run_bills_each_call_at_the_tier_the_server_reports() -> None:
    from oaipipe.stats import RunStats
    from oaipipe.types import ChatResponse, Usage

    stats = RunStats()
    for tier in ("flex", "default", "priority", None):
        stats.add_call("ask", ChatResponse(text="x", model="gpt-4o-mini", backend="openai",
                                           usage=Usage(10_000, 20_000, 30_000), service_tier=tier))
    assert stats.cost_usd == pytest.approx(0.00675 + 0.0135 + 0.0225 + 0.0135)
    tier = stats.to_dict()["tier"]
    assert tier["calls"] == {"flex": 1, "priority": 1, "standard": 2}
    assert tier["standard_cost_usd"] == pytest.approx(4 * 0.0135)
    assert tier["saved_usd"] == pytest.approx(0.00675 - 0.009)  # priority cost more than flex saved
    assert tier_of("default") == tier_of("auto") == "standard" and tier_of("flex", batch=True) == "batch"


# --- the planner: pure, exact figures --------------------------------------------------------------------


def _plan(deadline_s: float, work: Workload = WORK, offered: tuple[str, ...] = ALL) -> Any:
    return plan_tiers(work, tier_costs(ROWS, PriceTable(), offered), offered, deadline_s)


def test_the_plan_picks_flex_when_the_deadline_allows() -> None:
    plan = _plan(3600)
    assert plan.chosen == "flex" and plan.meets
    rows = {e.tier: e for e in plan.estimates}
    # latency per call: 0.5 s + 200 tokens / 50 per s (standard), 1 + 200/25 (flex), 0.5 + 200/80 (priority)
    assert {t: e.seconds for t, e in rows.items()} == {"standard": 45.0, "flex": 90.0, "priority": 30.0,
                                                       "batch": 86400.0}
    assert {t: round(e.cost_usd, 6) for t, e in rows.items()} == {"standard": 0.0135, "flex": 0.00675,
                                                                  "priority": 0.0225, "batch": 0.00675}
    assert plan.saving_usd == pytest.approx(0.00675)
    assert rows["batch"].note.startswith("misses the deadline") and rows["standard"].note == "dearer"
    assert "saves $0.0067 (50%) against standard" in plan.reason  # 0.00675 in float


def test_the_plan_picks_standard_when_the_deadline_is_tight() -> None:
    plan = _plan(60)  # flex takes 90 s; standard 45 s; priority 30 s but dearer
    assert plan.chosen == "standard" and plan.meets and plan.saving_usd == 0
    assert plan.estimate("flex").note.startswith("misses the deadline")  # type: ignore[union-attr]
    plan = _plan(40)  # only priority is quick enough
    assert plan.chosen == "priority" and plan.saving_usd == pytest.approx(-0.009)


def test_the_plan_picks_batch_when_only_it_meets_the_deadline_and_it_is_cheapest() -> None:
    slow = Workload(calls=100, prompt_tokens=10_000, completion_tokens=20_000, concurrency=10, tpm=10)
    plan = _plan(2 * 86400, slow)  # 30000 tokens at 10 tpm: 50 h online; the batch window is 24 h
    assert plan.chosen == "batch" and plan.meets
    assert plan.estimate("flex").seconds == 180_000  # type: ignore[union-attr]
    assert "tpm 10" in plan.estimate("standard").note  # type: ignore[union-attr]
    assert _plan(2 * 86400).chosen == "flex"  # same price as batch and quicker


def test_when_no_tier_meets_the_deadline_the_quickest_is_chosen_and_said() -> None:
    plan = _plan(10)
    assert plan.chosen == "priority" and not plan.meets
    assert "no offered tier meets the deadline" in plan.reason
    assert _plan(3600, offered=("standard",)).chosen == "standard"


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
                                               ("90s", 90), (45, 45)])
def test_deadline_durations(text: Any, seconds: float) -> None:
    assert parse_deadline(text).remaining() == seconds


def test_an_iso_deadline_counts_from_now() -> None:
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    assert parse_deadline("2026-12-01T18:00:00Z").remaining(now) == 6 * 3600
    assert parse_deadline("2026-12-01T18:00:00").remaining(now) == 6 * 3600  # no zone: UTC


# --- against oaipipe serve ---------------------------------------------------------------------------------

PRICES = {"local:gpt-4o-mini": {"input": 0.15, "output": 0.60, "priority_input": 0.25, "priority_output": 1.0}}


def _project(tmp_path: Path, backend: dict[str, Any], **extra: Any) -> PipelineProject:
    project = PipelineProject(tmp_path)
    project.write(backend={"model": "gpt-4o-mini", "concurrency": 4, **backend},
                  steps=[{"type": "ask", "prompt": "Reply to: {text}", "output": "reply", "max_tokens": 100}],
                  sinks=[{"type": "jsonl", "path": "out/records.jsonl"}], prices=PRICES, **extra)
    return project


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OAIPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return tmp_path / "home"


def test_the_dry_run_prints_the_tier_plan_with_prices(tmp_path: Path, server: Any, home: Path) -> None:
    project = _project(tmp_path, {"type": "openai", "base_url": server.base_url, "tier": "auto", "deadline": "2h"})
    result = project.run("--dry-run", as_json=False)
    assert result.exit_code == 0, result.err
    lines = result.out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("  tier plan (deadline 2h)"))
    assert lines[head + 1].split() == ["tier", "est.", "cost", "est.", "time", "meets", "deadline", "chosen"]
    table = {line.split()[0]: line.split() for line in lines[head + 2:head + 6]}
    assert list(table) == ["standard", "flex", "priority", "batch"]
    # 5 calls of 100 completion tokens: flex is half the standard price, priority dearer, batch misses 2 h
    standard, flex = float(table["standard"][1][1:]), float(table["flex"][1][1:])
    assert flex == pytest.approx(standard / 2, abs=1e-4) and flex > 0
    assert table["flex"][4:] == ["<-", "chosen"] and table["batch"][3] == "no"
    assert "saves $" in lines[head + 6] and "against standard" in lines[head + 6]
    summary = project.run("--dry-run").summary
    assert summary is not None and summary["tier_plan"]["chosen"] == "flex"
    assert summary["estimate"]["cost_usd"] == summary["tier_plan"]["tiers"][1]["cost_usd"]
    assert server.stats()["by_status"] == {}  # nothing was called


def _summary(project: PipelineProject) -> dict[str, Any]:
    result = project.run()
    assert result.exit_code == 0, result.err
    summary = result.summary
    assert summary is not None and summary["records"]["done"] == 5, summary
    return summary


def test_an_auto_run_goes_flex_and_the_summary_states_the_savings(tmp_path: Path, server: Any, home: Path) -> None:
    project = _project(tmp_path, {"type": "openai", "base_url": server.base_url, "tier": "auto", "deadline": "2h"})
    summary = _summary(project)
    tier = summary["tier"]
    assert tier["chosen"] == "flex" and tier["plan"]["chosen"] == "flex"
    assert tier["calls"] == {"flex": 5}  # the server served (and reported) flex
    assert tier["saved_usd"] == pytest.approx(tier["standard_cost_usd"] / 2) and tier["saved_usd"] > 0
    assert summary["cost_usd"] == pytest.approx(tier["standard_cost_usd"] / 2)
    shown = project.run("--fresh", "--no-cache", as_json=False).out
    assert "tier: flex, paid $" in shown and "at standard (saved $" in shown


def test_an_auto_run_goes_standard_when_the_deadline_is_tight(tmp_path: Path, server: Any, home: Path) -> None:
    # 5 calls, 4 at once, 10 s a call at flex: 12.5 s > 10 s; standard (5 s a call) takes 6.25 s
    project = _project(tmp_path, {"type": "openai", "base_url": server.base_url, "tier": "auto",
                                  "deadline": "10s", "tier_latency": {"flex": 10, "standard": 5}})
    tier = _summary(project)["tier"]
    assert tier["chosen"] == "standard" and tier["calls"] == {"standard": 5} and tier["saved_usd"] == 0


def _batch(server: Any, **options: Any) -> dict[str, Any]:
    return {"type": "batch", "base_url": server.base_url, "concurrency": 64, "poll_interval": 0.02,
            "flush_after": 0.05, "tier": "auto", **options}


def test_an_auto_run_goes_batch_when_the_deadline_allows_and_it_is_cheapest(tmp_path: Path, server: Any,
                                                                               home: Path) -> None:
    # the online tiers would take 5 x 5e6 s / 64 (> 2 d); the batch window (24 h) meets the deadline
    slow = {"flex": 5e6, "standard": 5e6, "priority": 5e6}
    project = _project(tmp_path, _batch(server, deadline="2d", tier_latency=slow))
    summary = _summary(project)
    assert summary["backend"] == "batch" and summary["tier"]["chosen"] == "batch"
    assert summary["tier"]["calls"] == {"batch": 5}
    assert summary["tier"]["saved_usd"] == pytest.approx(summary["tier"]["standard_cost_usd"] / 2)
    assert server.stats()["by_path"].get("/v1/batches") == 1


def test_a_batch_backend_switches_to_online_flex_when_the_deadline_is_short(tmp_path: Path, server: Any,
                                                                            home: Path) -> None:
    project = _project(tmp_path, _batch(server, deadline="1h"))
    summary = _summary(project)
    assert summary["backend"] == "openai" and summary["tier"]["chosen"] == "flex"  # switched by capability
    assert summary["tier"]["calls"] == {"flex": 5} and "/v1/batches" not in server.stats()["by_path"]


def test_flex_resource_unavailable_within_an_auto_run_falls_back_and_finishes(tmp_path: Path, home: Path) -> None:
    with running_server(flex_unavailable_rate=1.0) as srv:
        project = _project(tmp_path, {"type": "openai", "base_url": srv.base_url, "tier": "auto", "deadline": "1d"})
        summary = _summary(project)
        assert srv.stats()["by_status"].get("429") == 5
    tier = summary["tier"]
    assert tier["chosen"] == "flex" and tier["flex_fallbacks"] == 5
    assert tier["calls"] == {"standard": 5} and tier["saved_usd"] == 0  # billed at the tier that served them


def test_openai_switches_to_the_batch_backend_by_its_declared_capability(tmp_path: Path, home: Path) -> None:
    from oaipipe.pipeline import load_pipeline
    from oaipipe.tiers import offered_tiers, switch_backend

    project = _project(tmp_path, {"type": "requests", "base_url": "http://127.0.0.1:9/v1", "tier": "batch"})
    built = load_pipeline(project.file)
    assert offered_tiers(built.backend) == ["standard", "flex", "priority", "batch"]
    replaced = switch_backend(built, "batch")
    assert replaced is not None and replaced.name == "requests"
    assert built.backend.batched and built.backend.options.base_url == "http://127.0.0.1:9/v1"
    assert built.backend.options.concurrency == 4


# --- bad values at validate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "expected"), [
    ({"tier": "auto", "deadline": "soon"}, "neither a duration nor an ISO time"),
    ({"tier": "auto", "deadline": "0m"}, "longer than 0 seconds"),
    ({"tier": "auto", "deadline": "2020-01-01T00:00:00Z"}, "has passed"),
    ({"tier": "auto"}, "tier: auto needs a `deadline:`"),
    ({"tier": "fast"}, "'auto'"),
    ({"tier": "flex", "service_tier": "flex"}, "remove service_tier"),
    ({"tier": "auto", "deadline": "1h", "tier_latency": {"flex": -1}}, "finite number > 0"),
])
def test_bad_tier_settings_are_refused_at_validate_with_file_and_line(
        tmp_path: Path, home: Path, backend: dict[str, Any], expected: str) -> None:
    project = _project(tmp_path, {"type": "openai", "base_url": "http://127.0.0.1:9/v1", **backend})
    result = project.cli("validate", str(project.file), "--json")
    assert result.exit_code == 2, result.out
    problems = json.loads(result.out)["problems"]
    assert any(expected in p["message"] for p in problems), problems
    lines = project.file.read_text().splitlines()
    for problem in problems:
        assert problem["file"] == str(project.file) and problem["line"] is not None
        written = problem["key"].split(".")[1] if problem["key"].split(".")[1] in backend else "backend"
        assert lines[problem["line"] - 1].lstrip().startswith(written), (problem, lines)


def test_the_deadline_and_tier_do_not_change_what_a_run_is(tmp_path: Path, home: Path) -> None:
    """A changed deadline (or tier) resumes the unfinished run: they decide price and speed, not results."""
    from oaipipe.pipeline import load_pipeline
    from oaipipe.resume import fingerprint

    base = {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}
    first = fingerprint(load_pipeline(_project(tmp_path, {**base, "tier": "auto", "deadline": "2h"}).file))
    again = fingerprint(load_pipeline(_project(tmp_path, {**base, "tier": "flex"}).file))
    assert first == again


def test_the_schema_describes_tier_and_deadline(home: Path) -> None:
    project = PipelineProject(home)
    schema = json.loads(project.cli("schema").out)
    openai = next(v for v in schema["properties"]["backend"]["oneOf"] if v["properties"]["type"].get("const") == "openai")
    assert openai["properties"]["tier"]["anyOf"][0]["enum"] == ["auto", "standard", "flex", "priority", "batch"]
    assert "deadline" in openai["properties"]["tier"]["description"]
    assert "ISO time" in openai["properties"]["deadline"]["description"]


BAD_DATE_PIPELINE = """\
name: bad-date
backend:
  type: openai
  tier: auto
  deadline: {deadline}
source: {{type: csv, path: reviews.csv, id_column: id}}
steps:
  - {{type: ask, prompt: "Reply to: {{text}}", output: reply}}
sinks:
  - {{type: jsonl, path: out/records.jsonl}}
"""


@pytest.mark.parametrize(("deadline", "shown"), [
    ("2026-13-45T00:00:00", "'2026-13-45T00:00:00' is neither a duration nor an ISO time"),  # was a crash, exit 1
    ("2026-11-30T06:00:00+99:00", "is neither a duration nor an ISO time"),                  # idem
    ("2020-01-01", "has passed"),                                                            # a YAML date
])
def test_an_unquoted_date_that_is_not_one_is_a_config_error_with_its_line(
        tmp_path: Path, home: Path, deadline: str, shown: str) -> None:
    project = PipelineProject(tmp_path)
    project.write(BAD_DATE_PIPELINE.format(deadline=deadline))
    project.write_file("reviews.csv", "id,text\n1,Great mug\n")
    result = project.cli("validate", str(project.file), "--json")
    assert result.exit_code == 2, result
    problems = json.loads(result.out)["problems"]
    assert [(p["key"], p["line"]) for p in problems] == [("backend.deadline", 5)], problems
    assert shown in problems[0]["message"] and "datetime" not in problems[0]["message"], problems
    via_set = project.cli("validate", str(project.file), "--set", f"backend.deadline={deadline}")
    assert via_set.exit_code == 2 and shown in via_set.err and "unexpected" not in via_set.err, via_set


@pytest.mark.parametrize("backend", [{"tier": "flex", "deadline": "2h"}, {"deadline": "2h"}])
def test_a_deadline_without_tier_auto_is_warned_about_with_its_line(tmp_path: Path, home: Path,
                                                                    backend: dict[str, Any]) -> None:
    """Only `tier: auto` reads `deadline:`; with another tier (or none) it was ignored without a word."""
    project = _project(tmp_path, {"type": "openai", "base_url": "http://127.0.0.1:9/v1", **backend})
    result = project.cli("validate", str(project.file))
    assert result.exit_code == 0, result
    line = next(i for i, text in enumerate(project.file.read_text().splitlines(), 1) if "deadline" in text)
    said = result.out + result.err  # validate prints its warnings with its report
    assert f"warning: {project.file}:{line}: backend.deadline: 2h has no effect" in said, said
    assert "set `tier: auto`, or remove the deadline" in said
    auto = _project(tmp_path / "auto", {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "tier": "auto",
                                        "deadline": "2h"})
    checked = auto.cli("validate", str(auto.file))
    assert checked.exit_code == 0 and "has no effect" not in checked.out + checked.err


FLEXLESS = '''
from oaipipe import hookimpl
from oaipipe.base import Backend
from oaipipe.types import ChatResponse, Usage


class Flexless(Backend):
    tiers = ("standard", "flex")  # no priority

    async def chat(self, request):
        return ChatResponse(text="ok", model="gpt-4o-mini", backend="flexless", usage=Usage(1, 1, 2))


@hookimpl
def register_backends(register):
    register("flexless", Flexless)
'''


def test_a_tier_the_backend_does_not_offer_is_refused_at_its_line_or_its_set(tmp_path: Path, home: Path) -> None:
    project = PipelineProject(tmp_path)
    path = project.write(plugins=["flexless.py"], files={"flexless.py": FLEXLESS},
                         backend={"type": "flexless", "tier": "priority"})
    line = next(n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "tier:" in text)
    result = project.run(as_json=False)
    assert result.exit_code == 2
    assert f"{path}:{line}:" in result.err
    assert "backend.tier: backend flexless offers no tier priority (it offers standard, flex)" in result.err
    again = project.run("--set", "backend.tier=priority", "--fresh", as_json=False)
    assert again.exit_code == 2
    assert "backend.tier (from --set backend.tier=priority): backend flexless offers no tier" in again.err
