"""The runner: source → steps → sinks (→ trainer), as an async core with bounded concurrency.

How a run goes:

1. The source is read in a worker thread, a batch at a time (the input is streamed, never loaded whole).
2. Up to ``backend.concurrency`` records are processed at once; each goes through every step in order.
   Sync plugin code (analyzers, blocking backends) runs in threads, off the event loop.
3. Finished records are handed to the sinks **in input order** (a bounded reorder window keeps memory
   flat), then journaled. A record that fails is logged to ``errors.jsonl``; the run goes on.
4. A summary is written to ``summary.json`` and returned.

Resuming: a run that did not finish (Ctrl-C, crash, SIGKILL) is continued by running the same command
again: journaled records are skipped and sinks drop any partial output of records not journaled, so
every record ends up exactly once in every sink. A finished run is not redone (``--fresh`` starts over).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as _dt
import json
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import StepContext
from .errors import (
    AuthenticationError,
    BackendError,
    OaipipeError,
    PluginError,
    RecordError,
    RunAborted,
    StorageError,
    is_storage_error,
    redact_data,
)
from .fsutil import remove_stale_temps
from .home import home_dir
from .pipeline import Pipeline, endpoint, fingerprint, fingerprint_parts, load_pipeline, public_config
from .pricing import PriceTable
from .progress import Reporter, SilentReporter
from .rundir import RunDir, find_runs, new_run_id
from .runlock import HeldLock, lock_outputs, lock_run_root
from .stats import RunStats
from .types import ChatRequest, ChatResponse, Exchange, Record, RecordResult, RunInfo

__all__ = ["RunOptions", "Runner", "run_pipeline", "run_pipeline_file"]

#: consecutive failures with no success at all before a run gives up (unless --max-failures says otherwise)
EARLY_ABORT_FAILURES = 10
_SOURCE_BATCH = 256
#: outcomes of the train: step after which the run is still not finished (a rerun resumes the step)
TRAIN_NOT_DONE = frozenset({"error", "interrupted"})

CallWrapper = Callable[[Callable[[ChatRequest], Awaitable[ChatResponse]]], Callable[[ChatRequest], Awaitable[ChatResponse]]]


@dataclass
class RunOptions:
    """Options of one run (the CLI's flags)."""

    fresh: bool = False
    limit: int | None = None
    dry_run: bool = False
    max_failures: int | None = None
    retry_failed: bool = False
    use_cache: bool = True
    max_cost: float | None = None
    #: extra wrappers around the backend call (outermost first); used by cache / rate limits
    call_wrappers: list[CallWrapper] = field(default_factory=list)
    #: install the response cache and rate limits from the pipeline (oaipipe.scale.configure_run)
    scale: bool = True


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Runner:
    def __init__(self, pipeline: Pipeline, options: RunOptions | None = None,
                 reporter: Reporter | None = None) -> None:
        self.pipeline = pipeline
        self.options = options or RunOptions()
        self.reporter = reporter or SilentReporter()
        cfg = pipeline.loaded.config
        self.max_failures = self.options.max_failures if self.options.max_failures is not None else cfg.run.max_failures
        self.max_cost = self.options.max_cost if self.options.max_cost is not None else cfg.run.max_cost
        self.stats = RunStats(prices=PriceTable(cfg.prices))
        self.root = pipeline.context.path(cfg.run.dir) / _safe_name(pipeline.name)
        self.fingerprint = fingerprint(pipeline)
        self._call: Callable[[ChatRequest], Awaitable[ChatResponse]] = self._backend_call
        self._abort: OaipipeError | None = None
        self._stop_scheduling = False
        self.errors_path: Path | None = None
        self._limited = False
        self._failure_kinds: collections.Counter[type] = collections.Counter()
        #: what the run found wrong but worked around (unreadable journal lines), for the summary
        self.warnings: list[str] = []
        if self.options.scale:
            try:
                from .scale import configure_run
            except ImportError:  # pragma: no cover - scale ships with the package
                pass
            else:
                configure_run(pipeline, self.options, self.reporter, quiet=True)

    # --- the backend call -------------------------------------------------------------------------

    async def _backend_call(self, request: ChatRequest) -> ChatResponse:
        return await self.pipeline.backend.chat(request)

    def _build_call(self) -> Callable[[ChatRequest], Awaitable[ChatResponse]]:
        call = self._backend_call
        for wrap in reversed(self.options.call_wrappers):
            call = wrap(call)

        batch = self.pipeline.backend.name == "batch"

        async def counted(request: ChatRequest) -> ChatResponse:
            response = await call(request)
            self.stats.add_call(request.step, response, batch=batch)
            if self.max_cost is not None and self.stats.cost_usd >= self.max_cost and not self._stop_scheduling:
                self._stop_scheduling = True
                self.reporter.note(f"cost budget of ${self.max_cost:.4f} reached: no new records are started")
            return response

        return counted

    # --- choosing the run directory ---------------------------------------------------------------

    def _changed(self, meta: dict[str, Any]) -> str:
        """Which parts of the pipeline changed since a run was started, in words."""
        old = meta.get("fingerprint_parts") or {}
        now = fingerprint_parts(self.pipeline)
        names = {"source": "the source", "steps": "the steps", "backend": "the model or its parameters"}
        changed = [names[k] for k in now if old.get(k) != now[k]]
        return ", ".join(changed) or "the pipeline"

    def _select_run(self) -> tuple[RunDir, set[str] | None, str]:
        """(run dir, ids to skip or None for a new run, mode) where mode is new|resume|retry|train|done.

        ``train``: the records of the latest run are done and its ``train:`` step is not (``summary.json``
        says ``training``): only the step is resumed."""
        runs = find_runs(self.root)
        latest = runs[-1] if runs else None
        if self.options.retry_failed:
            if self.options.fresh:
                raise RunAborted("--retry-failed and --fresh contradict each other",
                                 hint="--retry-failed redoes the failed records of the last run; --fresh starts a new one")
            if latest is None:
                raise RunAborted(f"--retry-failed: this pipeline has no earlier run in {self.root}",
                                 hint="run it once without --retry-failed")
        if latest is not None and not self.options.fresh:
            meta = latest.meta()
            summary = latest.summary()
            same = meta.get("fingerprint") == self.fingerprint
            finished = summary is not None and summary.get("status") in ("finished", "nothing-to-do")
            if self.options.retry_failed:
                if not same:
                    raise RunAborted(
                        f"{self._changed(meta)} changed since run {latest.run_id}; --retry-failed needs the same pipeline",
                        hint="undo the change, or start over with --fresh",
                    )
                statuses = latest.status_by_id()
                return latest, {i for i, s in statuses.items() if s == "done"}, "retry"
            if not finished:
                training = summary is not None and summary.get("status") == "training"
                if not same:
                    raise RunAborted(
                        f"run {latest.run_id} of this pipeline did not finish, and {self._changed(meta)} changed "
                        f"since: its records would be mixed with the new ones",
                        hint=f"rerun the unchanged pipeline to finish it, or pass --fresh to start a new run "
                             f"(the old one stays in {latest.path})",
                    )
                if training:  # its records are done; its train: step is not
                    return latest, None, "train"
                return latest, set(latest.status_by_id()), "resume"
            if same and meta.get("endpoint", endpoint(self.pipeline)) == endpoint(self.pipeline):
                return latest, None, "done"
        run = RunDir(self.root / new_run_id())
        return run, None, "new"

    # --- the run ----------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        pipeline = self.pipeline
        headline = f"oaipipe: {pipeline.name}: {pipeline.describe_backend()}"
        notes = [f"warning: {w}" for w in pipeline.warnings] + ([pipeline.backend_note] if pipeline.backend_note else [])
        if self.options.dry_run:  # estimates the whole input, whatever the state of earlier runs
            return await self._dry_run(None, headline, notes)
        # one run per run root at a time: the lock ends with this process, however it ends
        lock = _storage(lambda: lock_run_root(self.root, pipeline=pipeline.name, file=pipeline.file), self.root)
        try:
            return await self._run_locked(lock, headline, notes)
        finally:
            lock.release()
            setup = getattr(self.options, "_oaipipe_scale", None)
            if setup is not None and setup.cache is not None:
                setup.cache.close()  # now, not whenever the garbage collector gets to it (mid-run of another)

    async def _run_locked(self, lock: HeldLock, headline: str, notes: list[str]) -> dict[str, Any]:
        pipeline = self.pipeline
        run, skip_ids, mode = self._select_run()
        if mode == "done":
            previous = run.summary() or {}
            summary = {"pipeline": pipeline.name, "run_id": run.run_id, "run_dir": str(run.path),
                       "status": "nothing-to-do", "calls": 0, "records": previous.get("records", {}),
                       "previous": previous,
                       "message": f"run {run.run_id} already finished: nothing to do "
                                  f"(use --fresh to run again, --retry-failed to redo failed records)"}
            self.reporter.start(headline, notes, None)
            self.reporter.finish(summary)
            return summary
        if mode == "new":
            run.create({"pipeline": pipeline.name, "file": pipeline.file, "fingerprint": self.fingerprint,
                        "fingerprint_parts": fingerprint_parts(pipeline), "endpoint": endpoint(pipeline),
                        "started": _now(), "config": public_config(pipeline)})
        else:
            run.remove_stale_temps()  # left by a crash mid-write; the run lock makes us its only writer
            self.warnings = run.repair_journal()  # unreadable journal lines: skipped, their records redone
            notes.extend(self.warnings)
            meta = run.meta()
            if meta.get("endpoint") != endpoint(pipeline):  # resumed against another server: it ends there
                meta["endpoint"] = endpoint(pipeline)
                run.create(meta)
            notes.append({"resume": f"resuming run {run.run_id}: {len(skip_ids or ())} records already done",
                          "retry": f"retrying failed records of run {run.run_id}",
                          "train": f"run {run.run_id}: its records are done; resuming its train: step"}[mode])
        lock.update(run_id=run.run_id)
        info = RunInfo(pipeline_name=pipeline.name, run_id=run.run_id, run_dir=str(run.path),
                       backend=pipeline.backend.name, model=str(getattr(pipeline.backend.options, "model", "")),
                       resumed=mode != "new")
        self.info = info
        self.errors_path = run.errors_path
        if mode == "train":
            self.reporter.start(headline, notes, None)
            summary = {**(run.summary() or self._summary(run, "training", None)), "status": "training"}
            pipeline.host.call_hook("oaipipe_run_start", run=info)
            return await self._train_step(run, summary, info)
        self.stats.total = pipeline.source.count()
        if self.stats.total is not None and self.options.limit is not None:
            self.stats.total = min(self.stats.total, self.options.limit)
        self.reporter.start(headline, notes, self.stats.total)
        self._call = self._build_call()

        status = "finished"
        error: OaipipeError | None = None
        finish_error: PluginError | None = None
        opened: list[Any] = []
        outputs: list[HeldLock] = []
        journal = errors = None
        try:
            # two runs (of any pipelines) never write one output file at once
            outputs = _storage(lambda: lock_outputs(self._output_paths(), home_dir() / "locks",
                                                    pipeline=pipeline.name, run_id=run.run_id), None)
            for _, path in self._output_paths():
                remove_stale_temps(path)  # an atomic rewrite cut short by a crash; the lock makes us the writer
            # sinks keep what they wrote for the records this run skips, and drop the rest (partial output of
            # records not journaled; on --retry-failed also the failed records' lines, as they are redone)
            done_for_sinks = None if mode == "new" else (skip_ids or set())
            for sink in pipeline.sinks:
                _storage(lambda sink=sink: sink.open(info, done_for_sinks), _sink_path(self.pipeline, sink), "write")
                opened.append(sink)
            journal = run.open_state_file(run.journal_path)
            errors = run.open_state_file(run.errors_path)
            pipeline.host.call_hook("oaipipe_run_start", run=info)
            await self._process_all(skip_ids or set(), journal, errors, info)
            if self._abort is not None:
                raise self._abort
            if self._stop_scheduling:
                status = "budget-reached"
            elif self._limited:
                status = "partial"
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
            for closer in (journal, errors):
                if closer is not None:
                    with contextlib.suppress(OaipipeError):  # a deleted run directory is reported already
                        closer.close()
            for sink in opened:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001 - report, but keep closing the others
                    self.reporter.note(f"sink {sink.name} failed to close: {exc}")
            for held in outputs:
                held.release()
            with contextlib.suppress(Exception):
                await pipeline.backend.aclose()
            if status == "finished" and pipeline.train is not None:
                status = "training"  # a run is finished only when its train: step is
            summary = self._summary(run, status, error)
            self._save_summary(run, summary, error)
            if status != "training":
                finish_error = self._finish(info, summary)
        if status == "training":
            return await self._train_step(run, summary, info)
        if finish_error is not None:
            raise finish_error
        return summary

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
            self.pipeline.host.call_hook("oaipipe_run_finish", run=info, summary=summary)
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
        setup = getattr(self.options, "_oaipipe_scale", None)
        if setup is not None:
            summary.update(setup.to_dict())
        return summary

    async def _train(self, run: RunDir) -> dict[str, Any]:
        """Run the ``train:`` step in a worker thread. A cancellation (Ctrl-C, SIGTERM) stops the following of
        the job at once (the job keeps running at its provider); the thread ends at its next poll."""
        try:
            from .training import train_after_run
        except ImportError:  # pragma: no cover - training ships with the package
            return {"status": "skipped", "reason": "training support is not installed"}
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
        for record in self.pipeline.source.records():
            batch.append(record)
            if len(batch) >= _SOURCE_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _process_all(self, skip: set[str], journal: Any, errors: Any, info: RunInfo) -> None:
        concurrency = int(getattr(self.pipeline.backend.options, "concurrency", 8) or 8)
        gate = asyncio.Semaphore(concurrency)
        window = max(4 * concurrency, 64)
        pending: collections.deque[asyncio.Task[RecordResult | None]] = collections.deque()
        batches = self._records()
        scheduled = 0
        limit = self.options.limit
        sentinel = object()

        async def worker(record: Record) -> RecordResult | None:
            async with gate:
                if self._stop_scheduling:
                    return None  # budget reached while it waited: not started, the next run does it
                return await self._process(record)

        def emit(result: RecordResult | None) -> None:
            if result is not None:
                self._emit(result, journal, errors, info)

        try:
            while not self._stop_scheduling and self._abort is None and not self._limited:
                batch = await asyncio.to_thread(next, batches, sentinel)
                if batch is sentinel:
                    break
                for record in batch:  # type: ignore[union-attr]
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
                        emit(await pending.popleft())
                    pending.append(asyncio.create_task(worker(record)))
                    scheduled += 1
                    while pending and pending[0].done():
                        emit(pending.popleft().result())
            while pending and self._abort is None:
                emit(await pending.popleft())
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
        ctx = StepContext(record=record, backend=self.pipeline.backend, host=self.pipeline.host, call=self._call)
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

    def _emit(self, result: RecordResult, journal: Any, errors: Any, info: RunInfo) -> None:
        result = redact_data(result)  # no secret (a ${env:...} value in a prompt, say) reaches sinks or files
        ok = result.error is None
        for sink in self.pipeline.sinks:
            try:
                sink.write(result)
            except OaipipeError:
                raise
            except Exception as exc:  # a full disk, a plugin bug: stop, naming the sink (the record is redone)
                if is_storage_error(exc):  # permissions, a full or read-only disk: exit 9, naming the file
                    err = StorageError.from_os_error(exc, _sink_path(self.pipeline, sink), doing="write")  # type: ignore[arg-type]
                    err.message = f"sink {sink.name} failed to write record {result.record.id}: {err.message}"
                    raise err from exc
                raise PluginError(
                    f"sink {sink.name} failed to write record {result.record.id}: {type(exc).__name__}: {exc}",
                    hint="fix the cause (disk space, permissions, the sink's plugin) and rerun the same command: "
                         "finished records are kept, this one is written again",
                ) from exc
        entry = {
            "id": result.record.id,
            "status": "done" if ok else "failed",
            "where": result.record.where,
            "fields": result.fields,
            "exchanges": [_exchange_dict(e, result) for e in result.exchanges],
        }
        if not ok:
            entry["error"] = result.error
            errors.write(json.dumps({"id": result.record.id, "where": result.record.where, "error": result.error,
                                     "time": _now()}, ensure_ascii=False, default=str) + "\n")
            errors.flush()
            self.stats.failed += 1
        else:
            self.stats.done += 1
        journal.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        journal.flush()
        self.pipeline.host.call_hook("oaipipe_record_done", run=info, result=result)
        self.reporter.update(self.stats)
        if not ok:
            self._check_failures(result)

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

    async def _dry_run(self, run: RunDir | None, headline: str, notes: list[str]) -> dict[str, Any]:
        try:
            from .dryrun import estimate
        except ImportError:
            estimate = None
        self.reporter.start(headline + " (dry run: nothing is called)", notes, None)
        summary: dict[str, Any] = {"pipeline": self.pipeline.name, "status": "dry-run", "calls": 0,
                                   "backend": self.pipeline.backend.name}
        if estimate is not None:
            summary.update(await asyncio.to_thread(estimate, self.pipeline, limit=self.options.limit))
        else:
            count = 0
            for batch in self._records():
                count += len(batch)
                if self.options.limit is not None and count >= self.options.limit:
                    count = self.options.limit
                    break
            summary["records"] = {"total": count}
        self.reporter.finish(summary)
        return summary


def _exchange_dict(exchange: Any, result: RecordResult) -> dict[str, Any]:
    if isinstance(exchange, Exchange):
        # hot path (one per call): a shallow build is several times cheaper than dataclasses.asdict
        usage = exchange.usage
        data = {"record_id": exchange.record_id, "step": exchange.step,
                "messages": [dict(m) for m in exchange.messages], "model": exchange.model,
                "backend": exchange.backend,
                "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                          "total_tokens": usage.total_tokens},
                "latency": exchange.latency, "request_id": exchange.request_id, "cached": exchange.cached}
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


def _sink_path(pipeline: Pipeline, sink: Any) -> Path | None:
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


async def run_pipeline(pipeline: Pipeline, options: RunOptions | None = None,
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
