"""Progress reporting for ``oaipipe run``: a live line on a terminal, plain lines otherwise.

A reporter gets ``start``, then ``update`` after each record, then ``finish``. The runner never prints
on its own: library callers pass :class:`SilentReporter` (the default) and get a summary dict back.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from .stats import RunStats

__all__ = ["PlainReporter", "Reporter", "SilentReporter", "make_reporter"]


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
    return " | ".join(parts)


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


def make_reporter(*, quiet: bool = False, stream: TextIO | None = None) -> Reporter:
    if quiet:
        return SilentReporter()
    return PlainReporter(stream)
