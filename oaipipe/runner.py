"""The runner: source → steps → sinks (→ trainer), as an async core with bounded concurrency.

How a run goes:

1. The run to work on is chosen (:mod:`oaipipe.resume`: a new one, or the unfinished one continued) and
   the run's call chain is built (:mod:`oaipipe.calls`: cache → rate limits → retries → transport).
2. The source is read in a worker thread, a batch at a time (the input is streamed, never loaded whole).
3. Up to ``backend.concurrency`` records are processed at once; each goes through every step in order.
   Sync plugin code (analyzers, blocking backends) runs in threads, off the event loop.
4. Finished records are handed to the sinks **in input order** (a bounded reorder window keeps memory
   flat), then journaled, a group at a time (:meth:`Runner._commit`: every sink written and flushed, then
   one write and flush of the journal). Each record is rendered to text first (:meth:`Runner.render`:
   secrets masked, journal line, each sink's text); with ``run.workers`` a worker process does that, and
   the driver only appends the bytes. A record that fails is logged to ``errors.jsonl``; the run goes on, unless
   ``--max-failures`` is passed or the first records all fail.
5. A summary is written to ``summary.json`` and returned; the ``train:`` step runs last.

Resuming: a run that did not finish (Ctrl-C, crash, SIGKILL) is continued by running the same command
again: journaled records are skipped and sinks drop any partial output of records not journaled, so
every record ends up exactly once in every sink. A finished run is not redone (``--fresh`` starts over).
The rules are :mod:`oaipipe.resume`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as _dt
import functools
import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import StepContext
from .calls import Call, CallChain
from .errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    OaipipeError,
    PluginError,
    RecordError,
    RunAborted,
    StorageError,
    is_storage_error,
    redact,
    redact_data,
)
from .fsutil import remove_stale_temps
from .home import home_dir
from .lifecycle import check_server_models
from .pipeline import BuiltPipeline, load_pipeline
from .pricing import PriceTable
from .progress import Reporter, SilentReporter
from .resume import Mode, Selection, prepare_run, select_run
from .rundir import RunDir, StateFile
from .runlock import HeldLock, lock_outputs, lock_run_root
from .scheduling import dispatch_gate
from .stats import RunStats
from .tiers import TierChoice
from .types import ChatRequest, ChatResponse, Exchange, Record, RecordResult, RunInfo

__all__ = ["RunOptions", "Runner", "run_pipeline", "run_pipeline_file"]

#: consecutive failures with no success at all before a run gives up (unless --max-failures says otherwise)
EARLY_ABORT_FAILURES = 10
_SOURCE_BATCH = 256
#: outcomes of the train: step after which the run is still not finished (a rerun resumes the step)
TRAIN_NOT_DONE = frozenset({"error", "interrupted"})

#: one of the caller's own layers (``RunOptions.call_wrappers``): a function from a call to a call
CallWrapper = Callable[[Call], Call]

#: the line a continued run starts with, by mode
_CONTINUED = {"resume": "resuming run {run}: {done} records already done",
              "retry": "retrying failed records of run {run}",
              "train": "run {run}: its records are done; resuming its train: step"}


@dataclass
class RunOptions:
    """Options of one run (the CLI's flags): plain settings, only read by the run."""

    fresh: bool = False
    limit: int | None = None
    dry_run: bool = False
    max_failures: int | None = None
    retry_failed: bool = False
    use_cache: bool = True
    max_cost: float | None = None
    #: the caller's own layers around the backend call (outermost first), inside the cache, the rate limits
    #: and the retry counting (see :mod:`oaipipe.calls`)
    call_wrappers: list[CallWrapper] = field(default_factory=list)
    #: build the call chain with the response cache, rate limits and retry counters (:mod:`oaipipe.calls`)
    scale: bool = True
    #: ``(I, N)``: process only shard I of N (a stable hash of the record id), as its own run whose run
    #: directory and sink files are named ``...shard-I-of-N`` (see :mod:`oaipipe.shards`)
    shard: tuple[int, int] | None = None
    #: where process-safe CPU-bound steps run: ``local`` (a process pool) or ``ray``; None = ``run.executor``
    executor: str | None = None
    #: the Ray cluster to join (``ray://host:10001`` or ``auto``); None = ``run.ray_address``, else a local Ray
    ray_address: str | None = None


@dataclass
class _Outputs:
    """What a run opened and closes at its end, however it ends: output locks, sinks, journal, error log."""

    locks: list[HeldLock] = field(default_factory=list)
    sinks: list[Any] = field(default_factory=list)
    journal: StateFile | None = None
    errors: StateFile | None = None


@dataclass(slots=True)
class Rendered:
    """A finished record's output as text, made where its steps ran (a worker process, or the driver) by
    :meth:`Runner.render`: the driver only appends it, in input order (:meth:`Runner._commit`)."""

    #: its journal line
    journal: str
    #: its ``errors.jsonl`` line, if it failed
    error: str | None
    #: per sink, in the pipeline's order: the text to append (``""``: nothing), or ``None``: the driver
    #: renders it, or hands the result to ``sink.write`` (a sink that does not render in a worker)
    sinks: list[str | None]


#: a finished record (secrets masked) and its output as text
Staged = tuple[RecordResult, Rendered]

#: the single-process path writes what finished every this many records, or this many seconds after the
#: first of them finished (the pool writes each batch as it comes back)
_GROUP = 256
_GROUP_SECONDS = 0.05
_JSON = json.JSONEncoder(ensure_ascii=False, default=str).encode  # json.dumps(.., ensure_ascii=False, default=str)


class _Group:
    """Finished records of the single-process path, rendered and not written yet: written as one group
    (:meth:`Runner._commit`) every :data:`_GROUP` records, :data:`_GROUP_SECONDS` after the first of them
    finished at the latest (also while the driver waits), and at once after a failure (so that it counts
    towards ``--max-failures`` at once)."""

    def __init__(self, runner: Runner, journal: Any, errors: Any, info: RunInfo) -> None:
        self.runner, self.journal, self.errors, self.info = runner, journal, errors, info
        self.staged: list[Staged] = []
        self.due = 0.0

    def add(self, result: RecordResult | None) -> None:
        if result is None:
            return
        if not self.staged:
            self.due = time.monotonic() + _GROUP_SECONDS
        self.staged.append(self.runner.render(result, self.info))
        if len(self.staged) >= _GROUP or result.error is not None or time.monotonic() >= self.due:
            self.commit()

    def commit(self) -> None:
        self.runner._commit(self.staged, self.journal, self.errors, self.info)

    def commit_if_due(self) -> None:
        if self.staged and time.monotonic() >= self.due:
            self.commit()

    async def take(self, pending: collections.deque[asyncio.Task[RecordResult | None]]) -> None:
        """Stage the oldest pending record (waits for it); what is staged is written when due meanwhile."""
        task = pending[0]
        if self.staged and not task.done():
            await asyncio.wait({task}, timeout=max(0.0, self.due - time.monotonic()))
            if not task.done():
                self.commit()
        result = await task
        pending.popleft()
        self.add(result)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Runner:
    def __init__(self, pipeline: BuiltPipeline, options: RunOptions | None = None,
                 reporter: Reporter | None = None) -> None:
        self.pipeline = pipeline
        self.options = options or RunOptions()
        self.reporter = reporter or SilentReporter()
        cfg = pipeline.loaded.config
        self.max_failures = self.options.max_failures if self.options.max_failures is not None else cfg.run.max_failures
        self.max_cost = self.options.max_cost if self.options.max_cost is not None else cfg.run.max_cost
        self.stats = RunStats(prices=PriceTable(cfg.prices, models=cfg.models), priced=pipeline.backend.priced)
        self.root = pipeline.context.path(cfg.run.dir) / _safe_name(pipeline.name)
        if self.options.shard is not None:
            from .shards import apply_shard

            self.root = self.root.with_name(apply_shard(pipeline, self.options.shard, self.root.name))
        #: True in a worker process of the pool (:mod:`oaipipe.executors`): steps may block the event loop
        self.inline = False
        #: the worker processes of this run, if its steps run in a pool (:mod:`oaipipe.executors`)
        self.pool_workers = 0
        self.pool_restarts = 0
        self.pool_executor = "local"
        #: what the pool's shared services did (on Ray: the whole cluster's ``rate_limit``)
        self.pool_summary: dict[str, Any] = {}
        #: the layers the run's calls go through (cache → rate limits → retries → transport)
        self.calls = CallChain.build(pipeline, self.options, notify=lambda text: self.reporter.note(text))
        self.stats.retries = self.calls.retries  # attempts and retries of this run's calls
        self._call: Call = self.calls
        self._abort: OaipipeError | None = None
        self._stop_scheduling = False
        self.errors_path: Path | None = None
        self._limited = False
        self._failure_kinds: collections.Counter[type] = collections.Counter()
        #: what the run found wrong but worked around (unreadable journal lines), for the summary
        self.warnings: list[str] = []
        #: the tier chosen at the start (``backend.tier``; :mod:`oaipipe.tiers`), or None
        self.tier_choice: TierChoice | None = None

    # --- the backend call -------------------------------------------------------------------------

    def _counted(self, call: Call) -> Call:
        """``call``, with each answer counted (calls, tokens, cost) and held to the cost budget."""

        async def counted(request: ChatRequest) -> ChatResponse:
            response = await call(request)
            self._count_call(request.step, response, request.model)
            return response

        return counted

    def _count_call(self, step: str, response: ChatResponse, requested: str | None = None) -> None:
        """Count one answered call (made here, or on a Ray actor) and hold the run to its cost budget.
        ``requested``: the model the call asked for (it prices a call whose reported model is unknown)."""
        self.stats.add_call(step, response, batch=self.pipeline.backend.batched, requested=requested)
        if self.max_cost is not None and self.stats.cost_usd >= self.max_cost and not self._stop_scheduling:
            self._stop_scheduling = True
            self.reporter.note(f"cost budget of ${self.max_cost:.4f} reached: no new records are started")

    # --- the run ----------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        pipeline = self.pipeline
        headline = f"oaipipe: {pipeline.name}: {pipeline.describe_backend()}"
        notes = [f"warning: {w}" for w in pipeline.warnings] + ([pipeline.backend_note] if pipeline.backend_note else [])
        if self.options.dry_run:  # estimates the whole input, whatever the state of earlier runs
            return await self._dry_run(headline, notes)
        if self.options.executor == "ray":  # --executor ray (the file's run.executor is checked at load)
            from .extras import missing

            if (error := missing("ray", extra="ray", feature="--executor ray")) is not None:
                raise error
        # one run per run root at a time: the lock ends with this process, however it ends
        lock = _storage(lambda: lock_run_root(self.root, pipeline=pipeline.name, file=pipeline.file), self.root)
        try:
            return await self._run_locked(lock, headline, notes)
        finally:
            lock.release()
            self.calls.close()

    async def _run_locked(self, lock: HeldLock, headline: str, notes: list[str]) -> dict[str, Any]:
        selection = select_run(self.root, self.pipeline, fresh=self.options.fresh,
                               retry_failed=self.options.retry_failed)
        run = selection.run
        if selection.mode == "done":
            return self._nothing_to_do(run, headline, notes, selection.note)
        # the server's shutdown dates (GET /models; run.shutdown_dates): a model past its date is refused here
        notes += [f"warning: {w}" for w in await check_server_models(self.pipeline)]
        self.warnings = prepare_run(selection, self.pipeline)
        notes.extend(self.warnings)
        if selection.mode != "new":
            notes.append(_CONTINUED[selection.mode].format(run=run.run_id, done=len(selection.skip or ())))
        lock.update(run_id=run.run_id)
        info = self._run_info(run, selection.mode)
        if selection.mode == "train":
            return await self._resume_training(run, info, headline, notes)
        headline = await self._choose_tier(headline, notes)
        self._start(headline, notes)
        summary, finish_error = await self._process_run(run, selection, info)
        if summary["status"] == "training":
            return await self._train_step(run, summary, info)
        if finish_error is not None:
            raise finish_error
        return summary

    async def _choose_tier(self, headline: str, notes: list[str]) -> str:
        """The tier ``backend.tier`` asks for (``auto``: the planner's choice over a dry run of the input,
        :mod:`oaipipe.tiers`), the backend switched to serve it and the call chain built anew for it when
        it changed. Returns the headline (naming the backend that serves the calls)."""
        from .tiers import choose_tier

        try:
            choice = await asyncio.to_thread(choose_tier, self.pipeline, self.options.limit, self.options.shard)
        except ValueError as exc:
            loaded = self.pipeline.loaded
            line, column = loaded.where("backend.tier")
            raise ConfigError(str(exc), file=self.pipeline.shown_file or None, line=line, column=column,
                              key="backend.tier", origin=loaded.origin("backend.tier"),
                              hint="set backend.tier to a tier the backend offers, or remove it") from None
        if choice is None:
            return headline
        self.tier_choice = choice
        if choice.note:
            notes.append(choice.note)
        if choice.replaced is None:
            return headline
        await choice.replaced.aclose()
        self.calls.close()
        self.stats.priced = self.pipeline.backend.priced
        self.calls = CallChain.build(self.pipeline, self.options, notify=lambda text: self.reporter.note(text))
        self.stats.retries = self.calls.retries
        self._call = self.calls
        return f"oaipipe: {self.pipeline.name}: {self.pipeline.describe_backend()}"

    def _nothing_to_do(self, run: RunDir, headline: str, notes: list[str], changed: str | None) -> dict[str, Any]:
        """The summary of a command that finds its run finished already: no call is made. ``changed``: the
        source changed since that run started (oaipipe.resume.source_change), said in the message."""
        previous = run.summary() or {}
        summary = {"pipeline": self.pipeline.name, "run_id": run.run_id, "run_dir": str(run.path),
                   "status": "nothing-to-do", "calls": 0, "records": previous.get("records", {}),
                   "previous": previous,
                   "message": f"run {run.run_id} already finished: nothing to do "
                              + ("(use --fresh to run again, --retry-failed to redo failed records)" if changed is None
                                 else f"\n  note: {changed}")}
        if changed is not None:
            summary["source_changed"] = changed
        self.reporter.start(headline, notes, None)
        self.reporter.finish(summary)
        return summary

    def _run_info(self, run: RunDir, mode: Mode) -> RunInfo:
        backend = self.pipeline.backend
        self.info = RunInfo(pipeline_name=self.pipeline.name, run_id=run.run_id, run_dir=str(run.path),
                            backend=backend.name, model=str(getattr(backend.options, "model", "")),
                            resumed=mode != "new")
        self.errors_path = run.errors_path
        return self.info

    async def _resume_training(self, run: RunDir, info: RunInfo, headline: str, notes: list[str]) -> dict[str, Any]:
        """A run whose records are done and whose ``train:`` step is not: only the step runs."""
        self.reporter.start(headline, notes, None)
        summary = {**(run.summary() or self._summary(run, "training", None)), "status": "training"}
        # the records, calls and cost in the summary are the run's totals (made by an earlier attempt)
        summary["this_attempt"] = {"only": "train", "records": {"done": 0, "failed": 0}, "calls": 0, "cost_usd": 0.0}
        self.pipeline.host.run_start(info)
        return await self._train_step(run, summary, info)

    def _start(self, headline: str, notes: list[str]) -> None:
        """Count the input (for the progress line) and point the steps at the counted call chain."""
        total = self.pipeline.source.count() if self.options.shard is None else None
        if total is not None and self.options.limit is not None:
            total = min(total, self.options.limit)
        self.stats.total = total
        self.reporter.start(headline, notes, total)
        self._call = self._counted(self.calls)

    async def _process_run(self, run: RunDir, selection: Selection,
                           info: RunInfo) -> tuple[dict[str, Any], PluginError | None]:
        """Process the records, from opening the outputs to the written summary, whatever happens (the
        exception, if any, goes on after the summary is written). Returns the summary and the error of a
        plugin's ``oaipipe_run_finish`` hook."""
        outputs = _Outputs()
        status = "finished"
        error: OaipipeError | None = None
        try:
            self._open_outputs(run, selection, info, outputs)
            self.pipeline.host.run_start(info)
            await self._process_all(selection.skip or set(), outputs.journal, outputs.errors, info)
            status = self._outcome()
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "interrupted"
            raise
        except OaipipeError as exc:
            status = "aborted"
            error = exc
            raise
        except Exception:
            status = "crashed"  # not "finished": the next run resumes
            raise
        finally:
            close_error = await self._close_outputs(outputs)
            if close_error is not None and error is None and status not in ("interrupted", "crashed"):
                # a sink that cannot finish its file (one written at close, say) leaves the run unfinished:
                # the rerun resumes it, and the sink writes its file then
                status, error = "aborted", close_error
            if status == "finished" and self.pipeline.train is not None:
                status = "training"  # a run is finished only when its train: step is
            summary = self._summary(run, status, error)
            self._save_summary(run, summary, error)
            finish_error = self._finish(info, summary) if status != "training" else None
        if close_error is not None and error is close_error:
            raise close_error
        return summary, finish_error

    def _outcome(self) -> str:
        """The status of a run whose records were processed (raises the error that aborted it)."""
        if self._abort is not None:
            raise self._abort
        if self._stop_scheduling:
            return "budget-reached"
        return "partial" if self._limited else "finished"

    def _open_outputs(self, run: RunDir, selection: Selection, info: RunInfo, outputs: _Outputs) -> None:
        """Lock and open every output (recorded in ``outputs`` as it goes, for :meth:`_close_outputs`)."""
        pipeline = self.pipeline
        # two runs (of any pipelines) never write one output file at once
        outputs.locks = _storage(lambda: lock_outputs(self._output_paths(), home_dir() / "locks",
                                                      pipeline=pipeline.name, run_id=run.run_id), None)
        for _, path in self._output_paths():
            remove_stale_temps(path)  # an atomic rewrite cut short by a crash; the lock makes us the writer
        # sinks keep what they wrote for the records this run skips, and drop the rest (partial output of
        # records not journaled; on --retry-failed also the failed records' lines, as they are redone)
        done_for_sinks = None if selection.mode == "new" else (selection.skip or set())
        for sink in pipeline.sinks:
            _storage(functools.partial(sink.open, info, done_for_sinks), _sink_path(pipeline, sink), "write")
            outputs.sinks.append(sink)
        outputs.journal = run.open_state_file(run.journal_path)
        outputs.errors = run.open_state_file(run.errors_path)

    async def _close_outputs(self, outputs: _Outputs) -> OaipipeError | None:
        """Close what :meth:`_open_outputs` opened, and the backend. Every sink is closed; the first one that
        fails is returned as the error that leaves the run unfinished (its output may be incomplete)."""
        for closer in (outputs.journal, outputs.errors):
            if closer is not None:
                with contextlib.suppress(OaipipeError):  # a deleted run directory is reported already
                    closer.close()
        failed: OaipipeError | None = None
        for sink in outputs.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others, then report the first
                self.reporter.note(f"sink {sink.name} failed to close: {redact(str(exc))}")
                failed = failed or _close_failure(sink, exc)
        for held in outputs.locks:
            held.release()
        with contextlib.suppress(Exception):
            await self.pipeline.backend.aclose()
        return failed

    def _output_paths(self) -> list[tuple[str, Path]]:
        """(sink name, file) of every sink that writes a file (``options.path``)."""
        return [(sink.name, path) for sink in self.pipeline.sinks
                if (path := _sink_path(self.pipeline, sink)) is not None]

    def _save_summary(self, run: RunDir, summary: dict[str, Any], error: BaseException | None) -> None:
        try:
            run.write_summary(summary)
        except StorageError:
            if isinstance(error, StorageError):
                return  # the run stopped on a storage problem already: that is the error to report
            raise

    def _finish(self, info: RunInfo, summary: dict[str, Any]) -> PluginError | None:
        """The end of a run: the plugins' hook, then the reporter. A plugin failing in the hook is returned."""
        finish_error = None
        try:
            self.pipeline.host.run_finish(info, summary)
        except PluginError as exc:
            finish_error = exc
        self.summary = summary
        self.reporter.finish(summary)
        return finish_error

    async def _train_step(self, run: RunDir, summary: dict[str, Any], info: RunInfo) -> dict[str, Any]:
        """The ``train:`` step of a run whose records are done. ``summary.json`` says ``training`` until the
        step has an outcome; a crash or Ctrl-C leaves it so, and the next run resumes the step (following
        the job launched already, never launching a second)."""
        try:
            if self.pipeline.train is None:  # the block was removed since the records were done
                train = {"status": "skipped", "reason": "the pipeline has no train: block (any more)"}
            else:
                train = await self._train(run)
        except (asyncio.CancelledError, KeyboardInterrupt):
            summary["train"] = {**(summary.get("train") or {}), "status": "interrupted",
                                "reason": "interrupted while training: a launched job keeps running; rerun the "
                                          "same command to follow it"}
            with contextlib.suppress(OaipipeError):
                self._save_summary(run, summary, None)
            self._finish(info, summary)
            raise
        summary["train"] = train
        if train.get("status") not in TRAIN_NOT_DONE:
            summary["status"] = "finished"
        summary["finished_at"] = _now()
        self._save_summary(run, summary, None)
        finish_error = self._finish(info, summary)
        if finish_error is not None:
            raise finish_error
        return summary

    def _summary(self, run: RunDir, status: str, error: OaipipeError | None) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "pipeline": self.pipeline.name,
            "run_id": run.run_id,
            "run_dir": str(run.path),
            "status": status,
            "backend": self.pipeline.backend.name,
            "model": str(getattr(self.pipeline.backend.options, "model", "")),
            "finished_at": _now(),
            **self.stats.to_dict(),
            "errors_file": str(run.errors_path),
            "journal": str(run.journal_path),
            "sinks": [_display_path(self.pipeline.context.path(s.options.path)) if getattr(s.options, "path", None)
                      else s.name for s in self.pipeline.sinks],
        }
        if error is not None:
            summary["error"] = str(error)
        if self.warnings:
            summary["warnings"] = list(self.warnings)
        summary.update(self.calls.summary())  # what the call chain installed: cache, rate limits
        if self.tier_choice is not None:
            summary["tier"].update(self.tier_choice.to_dict())
        summary["tier"]["flex_fallbacks"] = int(getattr(self.pipeline.backend, "flex_fallbacks", 0))
        summary.update(self.pool_summary)  # on Ray: the shared limiter's figures for the whole cluster
        if self.pool_workers:
            summary["workers"] = {"processes": self.pool_workers, "restarts": self.pool_restarts,
                                  "executor": self.pool_executor}
        if self.options.shard is not None:
            summary["shard"] = {"index": self.options.shard[0], "count": self.options.shard[1]}
        return summary

    async def _train(self, run: RunDir) -> dict[str, Any]:
        """Run the ``train:`` step in a worker thread. A cancellation (Ctrl-C, SIGTERM) stops the following of
        the job at once (the job keeps running at its provider); the thread ends at its next poll."""
        from .training import train_after_run  # the training package is imported only when a run trains

        stop = threading.Event()

        def train() -> dict[str, Any]:
            try:
                return train_after_run(self.pipeline.train or {}, records_path=run.journal_path,
                                       host=self.pipeline.host, context=self.pipeline.context,
                                       backend_options=self.pipeline.backend.options, progress=self.reporter.note,
                                       stop=stop)
            except OaipipeError as exc:
                if stop.is_set():
                    raise
                self.reporter.note(f"train: {exc}")
                return {"status": "error", "error": str(exc), "reason": f"{exc} (the same command again retries "
                                                                       f"the train: step)"}

        try:
            return await asyncio.to_thread(train)
        except BaseException:
            stop.set()
            raise

    # --- records ----------------------------------------------------------------------------------

    def _records(self) -> Iterator[list[Record]]:
        batch: list[Record] = []
        records = self.pipeline.source.records()
        if self.options.shard is not None:
            from .shards import in_shard

            records = in_shard(records, self.options.shard)
        for record in records:
            batch.append(record)
            if len(batch) >= _SOURCE_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _process_all(self, skip: set[str], journal: Any, errors: Any, info: RunInfo) -> None:
        from .executors import pool_plan

        cfg = self.pipeline.loaded.config.run
        executor = self.options.executor or cfg.executor
        workers, why = pool_plan(self.pipeline, executor)
        if workers:
            self.reporter.note(f"steps run in {why}")
            return await self._process_pooled(workers, skip, journal, errors, info)
        await self._process_in_driver(skip, journal, errors, info)

    async def _process_pooled(self, workers: int, skip: set[str], journal: Any, errors: Any, info: RunInfo) -> None:
        """The records in batches, each batch's steps in a worker process; written here, in input order."""
        from .executors import ProcessPool, RayPool

        cfg = self.pipeline.loaded.config.run
        if (self.options.executor or cfg.executor) == "ray":
            pool: ProcessPool = RayPool(self.pipeline, workers, self.options.ray_address or cfg.ray_address,
                                        chain=self.calls, on_call=self._count_call,
                                        stop=lambda: self._stop_scheduling, run=info,
                                        tier=self.tier_choice.tier if self.tier_choice else None)
        else:
            pool = ProcessPool(self.pipeline, workers, info)
        self.pool_workers = workers
        self.pool_executor = "ray" if isinstance(pool, RayPool) else "local"
        window = 2 * workers  # batches in flight: memory stays flat whatever the input's size
        batches = self._records()
        scheduled = 0
        limit = self.options.limit
        sentinel = object()

        async def emit_head() -> None:
            out = await pool.take()
            for kind, n in out.kinds.items():
                self._failure_kinds[kind] += n
            if out.rendered is not None:  # the worker rendered its records: only bytes to append here
                staged: list[Staged] = list(zip(out.results, out.rendered, strict=True))
            else:
                staged = [self.render(result, info) for result in out.results]
            self._commit(staged, journal, errors, info)  # one write and flush per file and batch

        try:
            while self._abort is None and not self._limited and not self._stop_scheduling:
                batch = await asyncio.to_thread(next, batches, sentinel)
                if not isinstance(batch, list):  # the sentinel: the source is exhausted
                    break
                todo: list[Record] = []
                for record in batch:
                    if record.id in skip:
                        self.stats.skipped += 1
                        continue
                    if limit is not None and scheduled >= limit:
                        self._limited = True  # a record is left over: the next run resumes it
                        break
                    todo.append(record)
                    scheduled += 1
                if todo:
                    while pool.in_flight >= window:
                        await emit_head()
                    pool.submit(todo)
                while pool.head_done() and self._abort is None:
                    await emit_head()
            while pool.in_flight and self._abort is None:
                await emit_head()
        finally:
            self.pool_restarts = pool.restarts
            await pool.close()
            self.pool_summary = pool.summary()
            with contextlib.suppress(Exception):
                batches.close()  # type: ignore[attr-defined]

    async def _process_in_driver(self, skip: set[str], journal: Any, errors: Any, info: RunInfo) -> None:
        concurrency = int(getattr(self.pipeline.backend.options, "concurrency", 8) or 8)
        gate = dispatch_gate(self.pipeline, concurrency)  # which waiting record goes next: oaipipe.scheduling
        window = max(4 * concurrency, 64)
        pending: collections.deque[asyncio.Task[RecordResult | None]] = collections.deque()
        batches = self._records()
        scheduled = 0
        limit = self.options.limit
        sentinel = object()

        async def worker(record: Record) -> RecordResult | None:
            async with gate.slot(record):
                if self._stop_scheduling:
                    return None  # budget reached while it waited: not started, the next run does it
                return await self._process(record)

        out = _Group(self, journal, errors, info)
        try:
            while not self._stop_scheduling and self._abort is None and not self._limited:
                out.commit_if_due()
                batch = await asyncio.to_thread(next, batches, sentinel)
                if batch is sentinel:
                    break
                assert isinstance(batch, list)
                for record in batch:
                    if record.id in skip:
                        self.stats.skipped += 1
                        continue
                    if limit is not None and scheduled >= limit:
                        # a record is left over: the run is partial, and the next run resumes it
                        self._limited = True
                        break
                    if self._stop_scheduling or self._abort:
                        break
                    while len(pending) >= window:
                        await out.take(pending)
                    pending.append(asyncio.create_task(worker(record)))
                    scheduled += 1
                    while pending and pending[0].done():
                        out.add(pending.popleft().result())
            while pending and self._abort is None:
                await out.take(pending)
            out.commit()
        except (asyncio.CancelledError, KeyboardInterrupt):
            with contextlib.suppress(Exception):
                out.commit()  # what finished is kept: a rerun does not do it again
            raise
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                batches.close()  # type: ignore[attr-defined]

    async def _process(self, record: Record) -> RecordResult:
        fields = dict(record.data)
        if record.error:
            self._failure_kinds[RecordError] += 1  # the source could not read it
            return RecordResult(record, fields, error=record.error)
        ctx = StepContext(record=record, backend=self.pipeline.backend, host=self.pipeline.host, call=self._call,
                          inline=self.inline)
        timeout = getattr(self.pipeline.backend.options, "record_timeout", None)
        step_label = ""
        try:
            async def all_steps() -> None:
                nonlocal step_label
                for step in self.pipeline.steps:
                    step_label = step.label
                    added = await step.run(fields, ctx)
                    if added:
                        fields.update(added)

            if timeout:
                await asyncio.wait_for(all_steps(), timeout)
            else:
                await all_steps()
        except AuthenticationError as exc:
            if self._abort is None:
                self._abort = exc
            return RecordResult(record, fields, ctx.exchanges, ctx.sentiments, error=f"{type(exc).__name__}: {exc}")
        except OaipipeError as exc:  # RecordError, BackendError, PluginError, ...: this record only
            self._failure_kinds[type(exc)] += 1
            return _failed(record, fields, ctx, step_label, exc)
        except TimeoutError:
            self._failure_kinds[RecordError] += 1
            exc2 = RecordError(f"record took longer than backend.record_timeout={timeout}s")
            return _failed(record, fields, ctx, step_label, exc2)
        except Exception as exc:  # noqa: BLE001 - a plugin bug fails this record, not the run
            self._failure_kinds[RecordError] += 1
            tb = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            at = f" at {Path(tb.filename).name}:{tb.lineno}" if tb else ""
            return _failed(record, fields, ctx, step_label,
                           RecordError(f"unexpected {type(exc).__name__} in step {step_label}{at}: {exc}"))
        return RecordResult(record, fields, ctx.exchanges, ctx.sentiments)

    def render(self, result: RecordResult, info: RunInfo) -> Staged:
        """``result`` with its secrets masked, and its output as text: its journal line, its error line,
        each sink's text. The same code in a worker process and in the driver: the files are the same."""
        result = redact_data(result)  # no secret (a ${env:...} value in a prompt, say) reaches sinks or files
        entry: dict[str, Any] = {
            "id": result.record.id,
            "status": "done" if result.error is None else "failed",
            "where": result.record.where,
            "fields": result.fields,
            "exchanges": [_exchange_dict(e, result) for e in result.exchanges],
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),  # when it finished (run store)
        }
        error = None
        if result.error is not None:
            entry["error"] = result.error
            error = _JSON({"id": result.record.id, "where": result.record.where, "error": result.error,
                           "time": _now()}) + "\n"
        return result, Rendered(_JSON(entry) + "\n", error, [_render_for(sink, result, info)
                                                            for sink in self.pipeline.sinks])

    def _commit(self, staged: list[Staged], journal: Any, errors: Any, info: RunInfo) -> None:
        """Write a group of finished records, in order: to every sink (each flushed), then to ``errors.jsonl``
        and the journal (flushed last: a journal line on disk means its record is in every sink). A sink
        that fails stops the run after the records before the failing one are journaled."""
        if not staged:
            return
        written, failure = self._write_sinks(staged, info)
        group = staged[:written]
        staged.clear()
        if group:
            failed = [out.error for _, out in group if out.error is not None]
            if failed:
                errors.write("".join(failed))
                errors.flush()
            journal.write("".join([out.journal for _, out in group]))
            journal.flush()
            for result, _ in group:
                if result.error is None:
                    self.stats.done += 1
                else:
                    self.stats.failed += 1
                self.pipeline.host.record_done(info, result)
                if result.error is not None:
                    self._check_failures(result)
            self.reporter.update(self.stats)
        if failure is not None:
            raise failure

    def _write_sinks(self, staged: list[Staged], info: RunInfo) -> tuple[int, OaipipeError | None]:
        """Hand each record to every sink, then flush them: (how many records every sink has, the error)."""
        written, failure, sink, record_id = 0, None, None, ""
        try:
            for result, out in staged:
                record_id = result.record.id
                for sink, text in zip(self.pipeline.sinks, out.sinks, strict=True):
                    if text is None and sink.renders_in_worker:
                        text = sink.render(result, info)  # what a worker could not know (a csv header)
                    if text is None:
                        sink.write(result)
                    elif text:
                        sink.write_rendered(text)
                written += 1
        except Exception as exc:  # a full disk, a plugin bug: stop, naming the sink (the record is redone)
            failure = self._sink_failure(sink, record_id, exc)
        try:
            for sink in self.pipeline.sinks:
                sink.flush()
        except Exception as exc:  # noqa: BLE001 - nothing of the group is journaled
            return 0, failure or self._sink_failure(sink, record_id, exc)
        return written, failure

    def _sink_failure(self, sink: Any, record_id: str, exc: Exception) -> OaipipeError:
        if isinstance(exc, OaipipeError):
            return exc
        failure = self._sink_error(sink, record_id, exc)
        failure.__cause__ = exc
        return failure

    def _sink_error(self, sink: Any, record_id: str, exc: Exception) -> OaipipeError:
        if is_storage_error(exc):  # permissions, a full or read-only disk: exit 9, naming the file
            err = StorageError.from_os_error(exc, _sink_path(self.pipeline, sink), doing="write")  # type: ignore[arg-type]
            err.message = f"sink {sink.name} failed to write record {record_id}: {err.message}"
            return err
        return PluginError(
            f"sink {sink.name} failed to write record {record_id}: {type(exc).__name__}: {exc}",
            hint="fix the cause (disk space, permissions, the sink's plugin) and rerun the same command: "
                 "finished records are kept, this one is written again",
        )

    def _check_failures(self, result: RecordResult) -> None:
        if self._abort is not None:
            return
        where = f"see {self.errors_path}" if self.errors_path else "see errors.jsonl in the run directory"
        if self.max_failures is not None and self.stats.failed > self.max_failures:
            self._abort = RunAborted(
                f"{self.stats.failed} record(s) failed, more than --max-failures {self.max_failures}; "
                f"last: {result.error}",
                hint=f"{where}; rerun the same command to continue after a fix",
            )
        elif self.max_failures is None and self.stats.done == 0 and self.stats.failed >= EARLY_ABORT_FAILURES:
            message = f"the first {self.stats.failed} records all failed; last: {result.error}"
            hint = f"{where}; fix the cause and rerun (finished records are kept), or pass --max-failures N to go on"
            kinds = list(self._failure_kinds)  # the kind of every failure so far
            if len(kinds) == 1 and issubclass(kinds[0], BackendError):
                # every record failed the same way at the backend (a server that is down, say): exit as that error
                self._abort = kinds[0](message, hint=hint)
            else:
                self._abort = RunAborted(message, hint=hint)

    async def _dry_run(self, headline: str, notes: list[str]) -> dict[str, Any]:
        from .dryrun import estimate  # the tokenizer is imported only for a dry run

        self.reporter.start(headline + " (dry run: nothing is called)", notes, None)
        summary: dict[str, Any] = {"pipeline": self.pipeline.name, "status": "dry-run", "calls": 0,
                                   "backend": self.pipeline.backend.name}
        summary.update(await asyncio.to_thread(estimate, self.pipeline, limit=self.options.limit,
                                               shard=self.options.shard))
        self.reporter.finish(summary)
        return summary


def _close_failure(sink: Any, exc: Exception) -> OaipipeError:
    """The error of a sink that failed to close: a storage problem names its path (exit 9), anything else
    the sink (exit 2); either way the run stays unfinished and the same command finishes it."""
    if isinstance(exc, OaipipeError):
        return exc
    if is_storage_error(exc):
        return StorageError.from_os_error(exc, getattr(sink, "file", None), doing="write")  # type: ignore[arg-type]
    return PluginError(f"sink {sink.name} failed to close its output: {type(exc).__name__}: {exc}",
                       hint="fix the cause and rerun the same command: the run resumes and the sink writes "
                            "its output then")


def _render_for(sink: Any, result: RecordResult, info: RunInfo) -> str | None:
    """The sink's text for ``result``, if it renders (``None``: the driver writes it; a sink that fails to
    render fails in the driver's ``write``, with the error naming it)."""
    if not sink.renders_in_worker:
        return None
    try:
        return sink.render(result, info)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - the driver's write() reports it
        return None


def _exchange_dict(exchange: Any, result: RecordResult) -> dict[str, Any]:
    if isinstance(exchange, Exchange):
        # hot path (one per call): a shallow build is several times cheaper than dataclasses.asdict
        usage = exchange.usage
        data: dict[str, Any] = {"record_id": exchange.record_id, "step": exchange.step,
                "messages": [dict(m) for m in exchange.messages], "model": exchange.model,
                "backend": exchange.backend,
                "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                          "total_tokens": usage.total_tokens,
                          # cached / reasoning tokens only when the API reported some (Usage.to_dict)
                          **({"cached_tokens": usage.cached_tokens} if usage.cached_tokens else {}),
                          **({"reasoning_tokens": usage.reasoning_tokens} if usage.reasoning_tokens else {})},
                "latency": exchange.latency, "request_id": exchange.request_id, "cached": exchange.cached}
        # what the call's price depends on besides its model and usage, only when there is something to say
        if exchange.requested:
            data["requested"] = exchange.requested
        if exchange.service_tier:
            data["service_tier"] = exchange.service_tier
    else:
        data = exchange.to_dict()
    for message in data.get("messages", []):
        if message.get("sentiment") is None:
            found = result.sentiments.get(message.get("content"))
            if found is not None:
                message["sentiment"] = found.to_dict()
    return data


def _failed(record: Record, fields: dict[str, Any], ctx: StepContext, step: str, exc: Exception) -> RecordResult:
    where = f" ({record.where})" if record.where and record.where not in str(exc) else ""
    return RecordResult(record, fields, ctx.exchanges, ctx.sentiments,
                        error=f"step {step}: {type(exc).__name__}: {exc}{where}")


def _sink_path(pipeline: BuiltPipeline, sink: Any) -> Path | None:
    """The file a sink writes (``options.path``), if it writes one."""
    path = getattr(getattr(sink, "options", None), "path", None)
    return pipeline.context.path(path) if path else None


def _storage(fn: Callable[[], Any], path: Path | None, doing: str | None = None) -> Any:
    """Call ``fn``; an I/O problem (permissions, a full or read-only disk) becomes a StorageError naming the
    path (the file the error names, else ``path``)."""
    try:
        return fn()
    except OSError as exc:
        if not is_storage_error(exc):
            raise
        raise StorageError.from_os_error(exc, path, doing=doing) from exc


def _display_path(path: Path) -> str:
    """A path as the user can use it from where they are: relative below the working folder, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "pipeline"


async def run_pipeline(pipeline: BuiltPipeline, options: RunOptions | None = None,
                       reporter: Reporter | None = None) -> dict[str, Any]:
    """Run a built pipeline and return its summary (also written to ``summary.json``)."""
    return await Runner(pipeline, options, reporter).run()


def run_pipeline_file(path: str | Path, overrides: list[str] | None = None, *,
                      options: RunOptions | None = None, reporter: Reporter | None = None,
                      disabled: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Load a pipeline file and run it to the end (blocking). ``kwargs`` set :class:`RunOptions` fields."""
    opts = options or RunOptions(**kwargs)
    pipeline = load_pipeline(path, overrides, disabled=disabled)
    return asyncio.run(run_pipeline(pipeline, opts, reporter))
