"""The run store (runs.db), `oaipipe runs` / `runs show` / `logs`: written as runs go, rebuilt from the run
directories, safe against SIGKILL, and the demo's promises (`logs --sentiment negative -q mug`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

from oaipipe.runner import run_pipeline_file
from oaipipe.store import ExchangeQuery, open_store

OAIPIPE = str(Path(sys.executable).with_name("oaipipe"))


class Out:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = code, stdout, stderr


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``oaipipe ARGS`` in this process (exit code, stdout, stderr), from the folder ``cwd``."""
    from oaipipe.cli import main

    def call(*args: str, cwd: Path, check: bool = True) -> Out:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        if check:
            assert code == 0, captured.err
        return Out(code, captured.out, captured.err)

    return call


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pipeline, run once, offline, from a copy of the repository's files."""
    root = tmp_path_factory.mktemp("demo")
    for name in ("pipeline.yaml", "examples", "plugins"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    env = {**os.environ, "OAIPIPE_HOME": str(root / "home")}
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.run([OAIPIPE, "run", "pipeline.yaml", "-q"], cwd=root, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return root


def journal(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]


def only_run(root: Path) -> Path:
    (run_dir,) = [p.parent for p in (root / "runs").glob("*/*/pipeline.json")]
    return run_dir


def test_demo_run_is_listed_and_logs_find_negative_mug_exchanges(demo: Path, cli: Any) -> None:
    run_dir = only_run(demo)
    listed = cli("runs", cwd=demo).stdout
    assert run_dir.name in listed and "reviews-demo" in listed and "finished" in listed
    assert " 22 " in listed  # records done
    found = json.loads(cli("logs", "--sentiment", "negative", "-q", "mug", "--json", "-n", "0", cwd=demo).stdout)
    # what the journal says should match: exchanges mentioning "mug" whose input (the review, scored by the
    # first sentiment step, review_sentiment) or reply (reply_sentiment) is negative
    expected = set()
    for entry in journal(run_dir):
        for i, ex in enumerate(entry["exchanges"]):
            text = " ".join(str(m["content"]) for m in ex["messages"]).lower()
            sides = {entry["fields"]["review_sentiment"] if entry["fields"]["text"] in ex["messages"][-2]["content"]
                     else None, (ex["messages"][-1].get("sentiment") or {}).get("label")}
            if "mug" in text and "negative" in sides:
                expected.add((entry["id"], i))
    assert expected and {(row["record_id"], row["idx"]) for row in found} == expected
    assert all(row["step"] == "ask:reply" for row in found)
    assert "r02" in {row["record_id"] for row in found}
    text = cli("logs", "--sentiment", "negative", "-q", "mug", cwd=demo).stdout
    assert "## r02 · ask:reply" in text and "input [negative" in text


def test_runs_show_and_logs_filters(demo: Path, cli: Any) -> None:
    run_id = only_run(demo).name
    shown = cli("runs", "show", run_id[-4:], cwd=demo).stdout  # a unique part of the id
    assert f"run {run_id} of pipeline reviews-demo: finished" in shown and "22 done, 0 failed" in shown
    assert "describe_image:image_description" in shown
    data = json.loads(cli("runs", "show", "latest", "--json", cwd=demo).stdout)
    assert data["run_id"] == run_id and data["records_done"] == 22 and data["summary"]["calls"] == 44
    rows = json.loads(cli("logs", "-n", "3", "--step", "describe_image", "--json", cwd=demo).stdout)
    assert len(rows) == 3 and {r["step"] for r in rows} == {"describe_image:image_description"}
    assert json.loads(cli("logs", "--failed", "--json", cwd=demo).stdout) == []
    missing = cli("runs", "show", "nope", cwd=demo, check=False)
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


def write_pipeline(tmp_path: Path, rows: int, *, steps: list[dict[str, Any]] | None = None,
                   plugins: list[str] | None = None, **extra: Any) -> Path:
    with (tmp_path / "in.jsonl").open("w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": f"r{i}", "text": "great mug" if i % 3 else "broken mug, awful"}) + "\n")
    data = {"name": "store", "plugins": plugins or [], "backend": {"type": "local", "concurrency": 4},
            "source": {"type": "jsonl", "path": "in.jsonl", "id_field": "id"},
            "steps": steps or [{"type": "sentiment", "analyzer": "vader", "input": "{text}", "output": "mood"},
                               {"type": "ask", "prompt": "Reply to: {text}", "output": "reply"}],
            "sinks": [{"type": "jsonl", "path": "out/records.jsonl"}], **extra}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


PEEK = '''
import sqlite3
import time
from pathlib import Path
from oaipipe import hookimpl

SEEN = []

@hookimpl
def oaipipe_record_done(run, result):
    if result.record.id == "r300":  # a reader of runs.db while the run is going (this hook holds it)
        db = Path(run.run_dir).parent.parent / "runs.db"
        deadline = time.monotonic() + 30
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT status, records_done FROM runs").fetchone()
                if row[1] >= 256:
                    break
                time.sleep(0.02)
            SEEN.append(row)
            SEEN.append(conn.execute("SELECT count(*) FROM exchanges").fetchone()[0])
'''


def test_store_is_written_as_the_run_goes(tmp_path: Path) -> None:
    (tmp_path / "peek.py").write_text(PEEK)
    path = write_pipeline(tmp_path, 400, plugins=["peek.py"])
    summary = run_pipeline_file(path)
    assert summary["records"]["done"] == 400
    peek = sys.modules["oaipipe_user_plugin_peek"]
    (status, done), exchanges = peek.SEEN
    # committed before the run ended ("running"); the journal is written a group of records at a time, so the
    # hook of r300 may run after the records up to r399 are journaled (and fed to the store) too
    assert status == "running" and 256 <= done <= 400 and exchanges >= 256
    with open_store(tmp_path / "runs", sync=False) as store:  # and complete once it did, without a sync
        (run,) = store.runs()
        assert run["status"] == "finished" and run["records_done"] == 400
        assert store.query("SELECT count(*) FROM exchanges")[0][0] == 400
        moods = dict(store.query("SELECT label, count(*) FROM sentiments GROUP BY label"))
        assert moods == {"positive": 266, "negative": 134}


def test_store_is_rebuilt_from_run_directories(tmp_path: Path, cli: Any) -> None:
    """Runs made without the store (the plugin switched off, as before it existed) are listed; a deleted or
    corrupt runs.db comes back with the same rows."""
    path = write_pipeline(tmp_path, 30, disable_plugins=["run_store"])
    run_pipeline_file(path)
    db = tmp_path / "runs" / "runs.db"
    assert not db.exists()
    out = cli("runs", "--pipeline", str(path), cwd=tmp_path).stdout
    assert "store" in out and "finished" in out
    first = json.loads(cli("logs", "-n", "0", "--json", cwd=tmp_path, check=True).stdout)
    assert len(first) == 30
    db.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    again = cli("logs", "-n", "0", "--json", cwd=tmp_path)
    assert "moved to runs.db.corrupt-" in again.stderr
    assert [(r["record_id"], r["reply"]) for r in json.loads(again.stdout)] == \
        [(r["record_id"], r["reply"]) for r in first]


SLOW = '''
import time
from oaipipe import Step, StepOptions, hookimpl

class Slow(Step):
    async def run(self, fields, ctx):
        time.sleep(0.005)
        return {self.options.output: "ok"}

@hookimpl
def register_steps(register):
    register("slow", Slow)
'''


def test_store_after_sigkill_matches_the_journal(tmp_path: Path) -> None:
    """SIGKILL in the middle of a run: the store has no half-written rows, and the next read catches up
    with every complete journal line (once), the run shown as incomplete."""
    (tmp_path / "slow.py").write_text(SLOW)
    path = write_pipeline(tmp_path, 2000, plugins=["slow.py"],
                          steps=[{"type": "slow", "output": "x"},
                                 {"type": "ask", "prompt": "Reply to: {text}", "output": "reply"}])
    proc = subprocess.Popen([OAIPIPE, "run", str(path), "-q"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        journals = []
        while time.monotonic() < deadline:
            journals = list((tmp_path / "runs").glob("*/*/journal.jsonl"))
            if journals and journals[0].read_bytes().count(b"\n") >= 150:
                break
            time.sleep(0.05)
        assert journals, "the run did not start"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lines = [json.loads(x) for x in journals[0].read_bytes().split(b"\n") if x.strip() and x.endswith(b"}")]
    complete = journals[0].read_bytes().count(b"\n")
    assert 150 <= complete < 2000
    with sqlite3.connect(tmp_path / "runs" / "runs.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with open_store(tmp_path / "runs") as store:
        (run,) = store.runs()
        assert run["status"] == "incomplete" and run["records_done"] == complete
        ids = [r[0] for r in store.query("SELECT record_id FROM exchanges ORDER BY line")]
        assert ids == [entry["id"] for entry in lines[:complete]]
        assert store.exchanges(ExchangeQuery(query="awful", limit=None))


def test_fts_query_words_and_operators(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, 6)
    run_pipeline_file(path)
    with open_store(tmp_path / "runs") as store:
        assert len(store.exchanges(ExchangeQuery(query="broken awful", limit=None))) == 2
        assert len(store.exchanges(ExchangeQuery(query="broken OR great", limit=None))) == 6
        assert store.exchanges(ExchangeQuery(query="don't", limit=None)) == []  # no syntax error
        assert len(store.exchanges(ExchangeQuery(sentiment="negative", limit=None))) == 2


# --- the report -------------------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(not Path("/usr/bin/chromium").exists(),
                                    reason="/usr/bin/chromium is not installed (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def demo_report(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of the demo run next to a second run of it, with a sentiment evaluation of 3 analyzers."""
    pytest.importorskip("plotly")
    from oaipipe.cli import main

    out = tmp_path_factory.mktemp("report")
    cwd = os.getcwd()
    os.chdir(demo)
    try:
        first = only_run(demo).name
        # a second run: the same pipeline again from scratch, a failed record included
        with open(demo / "examples/data/reviews.csv", "a") as fh:
            fh.write('r23,"a row with one field too many",examples/images/red_mug.png,extra\n')
        assert main(["run", "pipeline.yaml", "--fresh", "-q"]) == 1
        assert main(["sentiment", "eval", "examples/data/sentiment_gold.csv", "--label-column", "gold",
                     "-a", "vader", "-a", "keyword", "--plugin", "plugins/shouty_sentiment.py", "-a", "shouty",
                     "-o", str(out / "eval.json")]) == 0
        assert main(["report", first, "--compare", "latest", "--eval", str(out / "eval.json"),
                     "-o", str(out / "report.html")]) == 0
    finally:
        os.chdir(cwd)
    return out / "report.html"


def test_report_is_one_offline_file(demo_report: Path, demo: Path) -> None:
    from oaipipe.report import CHARTS

    text = demo_report.read_text(encoding="utf-8")
    assert "default-src 'none'" in text  # the browser itself refuses any request the page might make
    assert "<script src" not in text and "<link" not in text and "@import" not in text
    assert text.count('data-chart="') == 2 * len(CHARTS) + 1 + 3  # both runs, metrics, 3 confusion matrices
    assert "TemplateError" not in text and "expected 3 fields, saw 4" in text  # the failed record, its reason
    from oaipipe.report.data import run_figures

    with open_store(demo / "runs") as store:
        figs = run_figures(store, store.resolve("latest"))
    assert len(figs.throughput[0]) >= 1 and sum(figs.throughput[1]) > 0  # journal entries carry their time
    assert figs.errors == {"RecordError": 1} and figs.failed[0]["id"] == "line-24"
    assert figs.sentiments["review_sentiment"] == ("vader", {"positive": 10, "neutral": 4, "negative": 8})


@needs_chromium
def test_report_draws_every_chart_in_headless_chromium_without_network(demo_report: Path, tmp_path: Path) -> None:
    from _chromium import CHART_MARKS, CHARTS_DRAWN, Browser

    expected = demo_report.read_text(encoding="utf-8").count('data-chart="')
    with Browser() as browser:
        browser.open(demo_report.as_uri(), height=1400)
        drawn = browser.wait_for(CHARTS_DRAWN, timeout=90)
        marks = browser.evaluate(CHART_MARKS)  # bars, heatmaps, lines, or the note of an empty figure
        browser.pump(0.5)
        png = browser.screenshot(tmp_path / "report.png", height=1400)
        errors = browser.console_errors()
        requests = browser.requests()
    assert drawn == expected and len(marks) == expected
    assert [key for key, n in marks if n == 0] == []
    assert dict(marks)["sentiment"] >= 9 and dict(marks)["latency"] >= 2  # real bars, not notes
    assert errors == []
    leaving = [u for u in requests if u != demo_report.as_uri() and not u.startswith(("data:", "blob:"))]
    assert leaving == []
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000


def test_report_without_plotly_names_the_extra(demo: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_plotly(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "plotly":
            raise ImportError("No module named 'plotly'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_plotly)
    for mod in [m for m in sys.modules if m.split(".")[0] == "plotly"]:
        monkeypatch.delitem(sys.modules, mod)
    out = cli("report", "-o", str(demo / "x.html"), cwd=demo, check=False)
    assert out.returncode == 2 and "pip install 'oaipipe[report]'" in out.stderr


def test_the_store_prices_each_exchange_as_the_run_summary_does(tmp_path: Path, server: Any) -> None:
    # serve answers as local:gpt-6-luna (priced as the gpt-6-luna asked for) and at the flex tier it was asked
    # for (billed at the Batch API's rates): the store's costs add up to the summary's, not to $0 or standard
    from _scale_util import write_pipeline as write_scale_pipeline

    from oaipipe.pricing import PriceTable

    path = write_scale_pipeline(
        tmp_path, f"{{type: openai, base_url: '{server.base_url}', model: gpt-6-luna, tier: flex}}", n=4)
    summary = run_pipeline_file(path)
    assert summary["cost_usd"] > 0
    with open_store(tmp_path / "runs") as store:
        rows = store.query("SELECT model, prompt_tokens, completion_tokens, cost_usd FROM exchanges")
    assert len(rows) == 4 and all(model == "local:gpt-6-luna" for model, *_ in rows)
    assert sum(cost for *_, cost in rows) == pytest.approx(summary["cost_usd"], abs=1e-6)
    luna = PriceTable().lookup("gpt-6-luna")
    for _, prompt, completion, cost in rows:
        assert cost == pytest.approx(luna.cost(prompt, completion, tier="flex"), abs=1e-8)
        assert cost < luna.cost(prompt, completion)  # not at the standard rate
