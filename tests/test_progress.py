"""Progress: a live rich bar on a terminal, plain lines elsewhere, nothing with --json/-q."""

from __future__ import annotations

import io
import json
from pathlib import Path

from _scale_util import write_pipeline

from oaipipe.cli import main
from oaipipe.progress import PlainReporter, RichReporter, SilentReporter, make_reporter, status_line
from oaipipe.stats import RunStats
from oaipipe.types import ChatResponse, Usage


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _stats() -> RunStats:
    stats = RunStats(total=10)
    stats.done, stats.failed = 3, 1
    stats.add_call("ask:reply", ChatResponse(text="x", model="gpt-4o-mini", backend="openai", usage=Usage(100, 50, 150)))
    stats.add_call("ask:reply", ChatResponse(text="x", model="gpt-4o-mini", backend="openai", cached=True))
    return stats


def test_status_line_has_every_figure() -> None:
    line = status_line(_stats())
    for part in ("4/10 records", "3 done", "1 failed", "1 cached", "/s", "ETA", "150 tokens", "$0.0000"):
        assert part in line


def test_reporter_choice_follows_the_stream() -> None:
    assert isinstance(make_reporter(quiet=True), SilentReporter)
    assert type(make_reporter(stream=io.StringIO())) is PlainReporter
    assert isinstance(make_reporter(stream=FakeTTY()), RichReporter)


def test_rich_bar_shows_done_failed_cached_tokens_and_spend() -> None:
    stream = FakeTTY()
    reporter = RichReporter(stream, interval=0, force_terminal=True, width=160)
    reporter.start("oaipipe: t: backend openai", ["a note"], 10)
    reporter.update(_stats())
    reporter.note("budget reached")
    reporter.finish({})
    text = stream.getvalue()
    for part in ("oaipipe: t: backend openai", "a note", "budget reached", "4/10", "3 done", "1 failed",
                 "1 cached", "150 tok", "$0.0000"):
        assert part in text, part


def test_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    stream = io.StringIO()
    reporter = PlainReporter(stream, interval=0)
    reporter.start("headline", [], 10)
    reporter.update(_stats())
    reporter.update(_stats())
    lines = stream.getvalue().splitlines()
    assert lines[0] == "headline"
    assert len(lines) == 3 and "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_cli_progress_goes_to_stderr_and_json_to_stdout(tmp_path: Path, capsys) -> None:
    path = write_pipeline(tmp_path, "{type: local}", n=3)
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr()
    assert "backend local" in out.err
    assert out.out.startswith("finished: 3 done, 0 failed")
    assert main(["run", str(path), "--fresh", "--json"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["records"]["done"] == 3 and "tokens" in summary and "by_step" in summary
    assert out.err == ""
