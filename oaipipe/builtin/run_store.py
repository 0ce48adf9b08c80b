"""Built-in plugin ``run_store``: keeps ``<run.dir>/runs.db`` (:mod:`oaipipe.store`) up to date as a run goes.

It follows the run through the lifecycle hooks: at the start it adds the run (status ``running``); after
finished records a thread of its own reads the journal lines written since (at most once a second, or
every 256 records, each batch one transaction), so the run's event loop only counts; at the end it reads
the rest and the summary. The journal stays the record of what happened: a run killed between two commits
loses nothing, the next ``oaipipe runs``/``logs``/``report`` (or the next run) reads the lines the store has
not seen.

The store is an index, never in the way of a run: if it cannot be opened or written (a read-only folder,
a locked file), the run goes on without it and a warning says so. ``--disable-plugin run_store`` (or
``disable_plugins: [run_store]``) switches it off.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
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

_STORE_ERRORS = (sqlite3.Error, OSError, OaipipeError)


class _Live:
    """The store of one running run and the thread that feeds it from the journal."""

    def __init__(self, run: RunInfo, store: RunStore) -> None:
        self.run = run
        self.store = store
        self.run_dir = Path(run.run_dir)
        self.pending = 0
        self.last = time.monotonic()
        self.wake = threading.Event()
        self.stop = False
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._feed, name="oaipipe-run-store", daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        while True:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            if self.stop:
                return
            try:
                self.store.sync_run(self.run_dir, status="running")
            except _STORE_ERRORS as exc:
                self.failed = exc
                return

    def record_done(self) -> None:
        self.pending += 1
        if self.pending >= FLUSH_RECORDS:
            self.pending = 0
            self.wake.set()

    def finish(self) -> None:
        """Stop the thread, then read what is left (and the summary) in this thread."""
        self.stop = True
        self.wake.set()
        self.thread.join()
        try:
            if self.failed is None:
                self.store.sync_run(self.run_dir)
        except _STORE_ERRORS as exc:
            self.failed = exc
        finally:
            self.store.close()
        if self.failed is not None:
            _warn(self.run, self.failed)


_live: dict[str, _Live] = {}


def _warn(run: RunInfo, exc: BaseException) -> None:
    _log.warning("oaipipe: the run store %s was not updated during this run (%s); it catches up from the run "
                 "directory the next time it is read", store_path(Path(run.run_dir).parent.parent), exc)


@hookimpl
def oaipipe_run_start(run: RunInfo) -> None:
    old = _live.pop(run.run_id, None)
    if old is not None:
        old.finish()
    store = None
    try:
        store = RunStore(store_path(Path(run.run_dir).parent.parent), timeout=5.0)
        store.sync_run(run.run_dir, status="running")
    except _STORE_ERRORS as exc:
        if store is not None:
            store.close()
        _warn(run, exc)
        return
    _live[run.run_id] = _Live(run, store)


@hookimpl
def oaipipe_record_done(run: RunInfo, result: RecordResult) -> None:
    live = _live.get(run.run_id)
    if live is not None:
        live.record_done()


@hookimpl
def oaipipe_run_finish(run: RunInfo, summary: dict[str, Any]) -> None:
    live = _live.pop(run.run_id, None)
    if live is not None:
        live.finish()
