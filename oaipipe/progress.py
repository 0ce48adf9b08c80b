"""Progress reporting for ``oaipipe run``: a live ``rich`` bar on a terminal, plain lines otherwise.

A reporter gets ``start``, then ``update`` after each record, then ``finish``. The runner never prints
on its own: library callers pass :class:`SilentReporter` (the default) and get a summary dict back.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from .errors import redact
from .stats import RunStats

__all__ = ["PlainReporter", "Reporter", "RichReporter", "SilentReporter", "make_reporter", "retries_text",
           "status_line", "verbose_logging"]


class Reporter:
    def start(self, headline: str, notes: list[str], total: int | None) -> None: ...

    def update(self, stats: RunStats) -> None: ...

    def note(self, text: str) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


class SilentReporter(Reporter):
    pass


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def status_line(stats: RunStats) -> str:
    total = f"/{stats.total}" if stats.total is not None else ""
    parts = [
        f"{stats.processed + stats.skipped}{total} records",
        f"{stats.done} done",
        f"{stats.failed} failed",
        f"{stats.cached} cached",
        f"{stats.rate():.1f}/s",
        f"ETA {_fmt_eta(stats.eta())}",
        f"{stats.prompt_tokens + stats.completion_tokens} tokens",
        f"${stats.cost_usd:.4f}",
    ]
    retries = stats.retries.retries if stats.retries is not None else 0
    if retries:
        parts.insert(4, f"{retries} retries")
    return " | ".join(parts)


def retries_text(summary: dict[str, Any]) -> str:
    """The retries of a run in words, e.g. ``19 retries (429 ×13, 503 ×6), waited 9.2s; rate limits: waited
    3.1s, 2 cool-downs``; empty when there were none."""
    retries = summary.get("retries") or {}
    rate = summary.get("rate_limit") or {}
    parts = []
    if retries.get("total"):
        causes = ", ".join(f"{cause} ×{n}" for cause, n in (retries.get("by_status") or {}).items())
        parts.append(f"{retries['total']} retries ({causes}), waited {retries.get('waited_s', 0):.1f}s"
                     + (f", {retries['gave_up']} calls given up" if retries.get("gave_up") else ""))
    if rate.get("waited_s") or rate.get("cooldowns"):
        learned = rate.get("learned") or {}
        limits = ", ".join(f"{v} {k.split('_')[0]}/min" for k, v in learned.items())
        parts.append(f"rate limits{f' (learnt: {limits})' if limits else ''}: waited {rate.get('waited_s', 0):.1f}s"
                     + (f", {rate['cooldowns']} cool-downs" if rate.get("cooldowns") else ""))
    return "; ".join(parts)


class PlainReporter(Reporter):
    """Prints to a stream: on a terminal one line rewritten in place, elsewhere a line every few seconds."""

    def __init__(self, stream: TextIO | None = None, *, interval: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self._last = 0.0
        self._dirty = False

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, headline: str, notes: list[str], total: int | None) -> None:
        self._last = time.monotonic()  # the first progress line after one interval, not at record 1
        self._print(headline)
        for n in notes:
            self._print(n)

    def note(self, text: str) -> None:
        if self._dirty:
            self.stream.write("\n")
            self._dirty = False
        self._print(text)

    def update(self, stats: RunStats) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        line = status_line(stats)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()
            self._dirty = True
        else:
            self._print(line)

    def finish(self, summary: dict[str, Any]) -> None:
        if self._dirty:
            self.stream.write("\n")
            self._dirty = False


def _info(stats: RunStats) -> str:
    retries = stats.retries.retries if stats.retries is not None else 0
    return (f"{stats.done} done · {stats.failed} failed · {stats.cached} cached · {stats.rate():.1f}/s · "
            + (f"{retries} retries · " if retries else "")
            + f"{stats.prompt_tokens + stats.completion_tokens} tokens · ${stats.cost_usd:.4f}")


class RichReporter(Reporter):
    """A live ``rich`` progress bar: done/total, failed, cached, rate, ETA, tokens and spend.

    Notes are printed above the bar. Updates are throttled (``interval`` seconds) so the bar costs
    nothing measurable on fast runs.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = 0.1, force_terminal: bool | None = None,
                 width: int | None = None) -> None:
        from rich.console import Console

        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream, force_terminal=force_terminal, highlight=False, width=width)
        self.interval = interval
        self._progress: Any = None
        self._task: Any = None
        self._last = 0.0
        self._stats: RunStats | None = None

    def start(self, headline: str, notes: list[str], total: int | None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class TwoLines(Progress):
            """The bar on one line, the figures on the next (fits an 80-column terminal)."""

            def get_renderables(self):  # type: ignore[no-untyped-def]
                yield self.make_tasks_table(self.tasks)
                for task in self.tasks:
                    yield Text("  " + str(task.fields.get("info", "")))

        self.console.print(headline, markup=False)
        for n in notes:
            self.console.print(n, markup=False)
        self._progress = TwoLines(
            TextColumn("[bold]records"), BarColumn(bar_width=None), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False, refresh_per_second=8, expand=False,
        )
        self._task = self._progress.add_task("run", total=total, info="")
        self._progress.start()

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False)
        else:
            self.console.print(text, markup=False)

    def _push(self, stats: RunStats) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, completed=stats.processed + stats.skipped, total=stats.total,
                              info=_info(stats))

    def update(self, stats: RunStats) -> None:
        self._stats = stats
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        self._push(stats)

    def finish(self, summary: dict[str, Any]) -> None:
        if self._progress is None:
            return
        if self._stats is not None:
            self._push(self._stats)
        self._progress.stop()
        self._progress = None


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def make_reporter(*, quiet: bool = False, stream: TextIO | None = None) -> Reporter:
    """Silent when ``quiet``; a live rich bar when ``stream`` (default stderr) is a terminal; plain lines else."""
    if quiet:
        return SilentReporter()
    stream = stream or sys.stderr
    if _is_tty(stream):
        return RichReporter(stream)
    return PlainReporter(stream)


class ReporterLogHandler(logging.Handler):
    """Log records as notes of a reporter (above a live bar), or lines on ``stream`` when the reporter
    shows nothing (``--json``, ``-q``). Every line goes through :func:`oaipipe.errors.redact`."""

    def __init__(self, reporter: Reporter, stream: TextIO | None = None) -> None:
        super().__init__()
        self.reporter = reporter
        self.stream = stream or sys.stderr
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact(self.format(record))
            if isinstance(self.reporter, PlainReporter | RichReporter):
                self.reporter.note(text)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break a run
            self.handleError(record)


@contextmanager
def verbose_logging(reporter: Reporter, *, stream: TextIO | None = None,
                    level: int = logging.INFO) -> Iterator[logging.Handler]:
    """While inside: the ``oaipipe`` loggers (``oaipipe.retry``, ``oaipipe.ratelimit``, ...) print at
    ``level`` through ``reporter`` (``oaipipe run -v``)."""
    logger = logging.getLogger("oaipipe")
    handler = ReporterLogHandler(reporter, stream)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
