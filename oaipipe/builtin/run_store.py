"""Built-in plugin ``run_store``: keeps ``<run.dir>/runs.db`` (:mod:`oaipipe.store`) up to date as a run goes.

It follows the run through the lifecycle hooks: at the start it adds the run (status ``running``), after
finished records it reads the journal lines written since (at most once a second, or every 256 records,
in one transaction), and at the end it reads the rest and the summary. The journal stays the record of
what happened: a run killed between two commits loses nothing, the next ``oaipipe runs``/``logs``/``report``
(or the next run) reads the lines the store has not seen.

The store is an index, never in the way of a run: if it cannot be opened or written (a read-only folder,
a locked file), the run goes on without it and a warning says so. ``--disable-plugin run_store`` (or
``disable_plugins: [run_store]``) switches it off.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OaipipeError
from ..hookspecs import hookimpl
from ..store import RunStore, store_path
from ..types import RecordResult, RunInfo

_log = logging.getLogger("oaipipe.store")

#: read the journal into the store after this many finished records, or this many seconds
FLUSH_RECORDS = 256
FLUSH_SECONDS = 1.0


@dataclass
class _Live:
    store: RunStore
    run_dir: Path
    pending: int = 0
    last: float = field(default_factory=time.monotonic)


_live: dict[str, _Live] = {}


def _give_up(run: RunInfo, exc: BaseException) -> None:
    live = _live.pop(run.run_id, None)
    if live is not None:
        live.store.close()
    _log.warning("oaipipe: the run store %s is not updated during this run (%s); it catches up from the run "
                 "directory the next time it is read", store_path(Path(run.run_dir).parent.parent), exc)


def _sync(run: RunInfo, live: _Live, status: str | None = "running") -> None:
    try:
        live.store.sync_run(live.run_dir, status=status)
    except (sqlite3.Error, OSError, OaipipeError) as exc:
        _give_up(run, exc)
    live.pending = 0
    live.last = time.monotonic()


@hookimpl
def oaipipe_run_start(run: RunInfo) -> None:
    run_dir = Path(run.run_dir)
    old = _live.pop(run.run_id, None)
    if old is not None:
        old.store.close()
    try:
        store = RunStore(store_path(run_dir.parent.parent), timeout=5.0)
    except (sqlite3.Error, OSError, OaipipeError) as exc:
        _give_up(run, exc)
        return
    live = _live[run.run_id] = _Live(store, run_dir)
    _sync(run, live)


@hookimpl
def oaipipe_record_done(run: RunInfo, result: RecordResult) -> None:
    live = _live.get(run.run_id)
    if live is None:
        return
    live.pending += 1
    if live.pending >= FLUSH_RECORDS or time.monotonic() - live.last >= FLUSH_SECONDS:
        _sync(run, live)


@hookimpl
def oaipipe_run_finish(run: RunInfo, summary: dict[str, Any]) -> None:
    live = _live.pop(run.run_id, None)
    if live is None:
        return
    try:
        _sync(run, live, status=None)
    finally:
        live.store.close()
