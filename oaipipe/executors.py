"""Where a run's CPU-bound steps run: in the driver, or in a pool of worker processes (``run.workers``).

The driver (:class:`~oaipipe.runner.Runner`) keeps what makes a run trustworthy: it reads the source,
owns the journal and the sinks and writes them in input order, and decides what a resumed run skips. An
executor only turns batches of records into :class:`~oaipipe.types.RecordResult` s.

The pool is used when every step of the pipeline is local CPU work that can be rebuilt in another process
(:meth:`Step.process_safe <oaipipe.base.Step.process_safe>`: a ``sentiment`` step whose analyzer has
``process_safe = True`` and no backend), ``run.workers`` is above 1 (default: the number of cores), and
the input has at least ``run.pool_min_records`` records (starting processes costs about a second).
Each worker (started with ``spawn``: never a fork of the driver's threads, and it ends with the driver) loads the pipeline from its file with the same ``--set``/``--disable`` arguments, so plugins
named by the file are loaded there too, and runs each record's steps exactly as the driver would.

Faults: a worker that dies mid-batch breaks the pool; the driver starts a new pool and submits again every
batch whose results it has not written yet, in order. Nothing of those batches reached a sink or the
journal (only the driver writes them, after a batch came back), and the steps run here make no backend
call, so nothing is written twice and no call is repeated. A batch that kills its worker
:data:`MAX_POOL_RESTARTS` times in a row ends the run with a :class:`~oaipipe.errors.PluginError` naming
its first record (a rerun resumes after the records written so far).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, NamedTuple

from . import errors
from .errors import PluginError

if TYPE_CHECKING:
    from .pipeline import BuiltPipeline
    from .runner import Rendered
    from .types import Record, RecordResult, RunInfo

__all__ = ["MAX_POOL_RESTARTS", "BatchOut", "ProcessPool", "RayPool", "pool_plan"]


class BatchOut(NamedTuple):
    """What a worker sends back for a batch of records (the one shape every executor returns)."""

    #: the results, in the batch's order (secrets masked when ``rendered`` is given)
    results: list[RecordResult]
    #: the kind of each failure, counted (for the driver's early abort)
    kinds: dict[type, int]
    #: each result's output as text (:meth:`Runner.render <oaipipe.runner.Runner.render>`), when the worker
    #: knows the run; ``None``: the driver renders the results
    rendered: list[Rendered] | None = None

#: times in a row the same batch may break the pool before the run gives up on it
MAX_POOL_RESTARTS = 3


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def pool_plan(pipeline: BuiltPipeline, executor: str = "local") -> tuple[int, str]:
    """(workers to start, why): 0 when the steps run in the driver, with the reason in words."""
    run = pipeline.loaded.config.run
    workers = run.workers or default_workers()
    if workers <= 1 and executor == "local":
        return 0, "run.workers is 1"
    if not pipeline.steps:
        return 0, "the pipeline has no step"
    local = [step for step in pipeline.steps if not step.process_safe()]
    if local:
        return 0, f"step {local[0].label} is not process-safe CPU work (it calls the backend, or its plugin opts out)"
    if pipeline.load_args is None:
        return 0, "the pipeline was not loaded from its file (a worker could not load it)"
    count = pipeline.source.count()
    if count is not None and count < run.pool_min_records and executor == "local":
        return 0, f"{count} records are fewer than run.pool_min_records={run.pool_min_records}"
    if executor == "ray":
        return workers, f"{workers} Ray actors"
    return workers, f"{workers} worker processes"


def _start_method() -> str:
    """``spawn``: a worker's parent is the driver itself, so a worker sees the driver end (a forkserver
    outlives a driver killed with SIGKILL, and so would its workers)."""
    return "spawn"


def _pipeline_file(pipeline: BuiltPipeline) -> str:
    """The pipeline file, absolute: a worker may start in another folder."""
    from pathlib import Path

    return str(Path(pipeline.file).resolve())


# --- in a worker process ------------------------------------------------------------------------------

_runner: Any = None
_loop: asyncio.AbstractEventLoop | None = None
#: the run being written (given by the driver): the worker renders its records' output for it
_run: RunInfo | None = None


def _exit_with_parent(parent: int) -> None:
    """End this worker when its parent (the driver, process ``parent``) ends: a driver killed with SIGKILL
    leaves no worker behind holding its terminal or pipes, even one still starting when it was killed."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="oaipipe-parent-watch", daemon=True).start()


def _init_worker(file: str, load_args: dict[str, Any], watch_parent: int | None = None, run: RunInfo | None = None,
                 secrets: tuple[str, ...] = ()) -> None:
    """Load the pipeline from its file (its plugins too) and keep one runner to process records with.
    With ``run``, each batch's output is rendered here too, masked with the driver's ``secrets``."""
    global _runner, _loop, _run
    if watch_parent is not None:
        _exit_with_parent(watch_parent)
    for secret in secrets:  # the driver's, whatever registered them there (a key given on the command line)
        errors.register_secret(secret)
    _run = run
    from .pipeline import load_pipeline
    from .runner import Runner, RunOptions

    pipeline = load_pipeline(file, load_args["overrides"], disabled=load_args["disabled"],
                             entry_points=load_args["entry_points"])
    _runner = Runner(pipeline, RunOptions(scale=False))
    _runner.inline = True
    _loop = asyncio.new_event_loop()


def _run_batch(records: list[Record]) -> BatchOut:
    """The results of ``records``, in their order, and the kind of each failure (for the driver's counts);
    rendered (journal line, error line, each sink's text) when the worker knows the run."""
    assert _runner is not None and _loop is not None
    _runner._failure_kinds.clear()

    async def batch() -> list[RecordResult]:
        return [await _runner._process(record) for record in records]

    results = _loop.run_until_complete(batch())
    kinds = dict(_runner._failure_kinds)
    if _run is None:
        return BatchOut(results, kinds)
    staged = [_runner.render(result, _run) for result in results]
    return BatchOut([result for result, _ in staged], kinds, [out for _, out in staged])


# --- in the driver ------------------------------------------------------------------------------------


class ProcessPool:
    """Batches of records processed by worker processes; results come back in submission order."""

    def __init__(self, pipeline: BuiltPipeline, workers: int, run: RunInfo | None = None) -> None:
        self.pipeline = pipeline
        self.workers = workers
        #: the run being written: given, the workers render each record's output (the driver appends it)
        self.run = run
        #: batches submitted and not yet taken back, oldest first: (records, future)
        self._pending: collections.deque[tuple[list[Record], asyncio.Future[Any]]] = collections.deque()
        self._breaks = 0
        self._pool = self._new_pool()
        #: how many times a dead worker made the driver start the pool again (for the summary)
        self.restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context(_start_method())
        assert self.pipeline.load_args is not None
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(_pipeline_file(self.pipeline), self.pipeline.load_args, os.getpid(), self.run,
                                             tuple(errors._registered_secrets)))

    def _submit(self, records: list[Record]) -> asyncio.Future[Any]:
        return asyncio.wrap_future(self._pool.submit(_run_batch, records))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, records: list[Record]) -> None:
        self._pending.append((records, self._submit(records)))

    def head_done(self) -> bool:
        return bool(self._pending) and self._pending[0][1].done()

    async def take(self) -> BatchOut:
        """The results of the oldest batch (waits for them). A dead worker: a new pool, the batches again."""
        while True:
            records, future = self._pending[0]
            try:
                out = await future
            except BrokenProcessPool:
                self._restart(records)
                continue
            self._pending.popleft()
            self._breaks = 0
            return out

    def _restart(self, head: list[Record]) -> None:
        self._breaks += 1
        if self._breaks >= MAX_POOL_RESTARTS:
            raise PluginError(
                f"a worker process died {self._breaks} times in a row on the batch starting at record "
                f"{head[0].id} ({head[0].where or 'no position'})",
                hint="run with `--set run.workers=1` to see the error in the driver; rerun the same command "
                     "to continue (finished records are kept)")
        self.restarts += 1
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        batches = [records for records, _ in self._pending]
        for future in (f for _, f in self._pending):
            future.cancel()
        self._pending.clear()
        for records in batches:  # the same batches, in the same order: their results were never written
            self.submit(records)

    async def close(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)


# --- on Ray -------------------------------------------------------------------------------------------


class BatchActor:
    """A Ray actor: loads the pipeline from its file once, then processes batches (``run.executor: ray``)."""

    def __init__(self, file: str, load_args: dict[str, Any]) -> None:
        _init_worker(file, load_args)

    def pid(self) -> int:
        return os.getpid()

    def run_batch(self, records: list[Record]) -> BatchOut:
        return _run_batch(records)


class RayPool(ProcessPool):
    """The same batches on a pool of Ray actors (one CPU each). Joins the cluster at ``address``, else the
    Ray already initialised in this process, else starts a local one (shut down again at the end).

    An actor that dies (its process killed, its node lost) fails the batches it held: each is submitted
    again, in order, to a new actor when it reaches the head of the queue; nothing of it was written."""

    def __init__(self, pipeline: BuiltPipeline, workers: int, address: str | None = None) -> None:
        from .extras import require

        self.ray = require("ray", extra="ray", feature="run.executor: ray")
        self._started = False
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
            self.ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
            self._started = True
        self._remote = self.ray.remote(num_cpus=1, max_restarts=0)(BatchActor)
        self._next = 0
        self._actor_errors = (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError)
        super().__init__(pipeline, workers)

    def _new_actor(self) -> Any:
        return self._remote.remote(_pipeline_file(self.pipeline), self.pipeline.load_args)

    def _new_pool(self) -> Any:
        self.actors = [self._new_actor() for _ in range(self.workers)]
        return None

    def _submit(self, records: list[Record]) -> asyncio.Future[Any]:
        index = self._next % len(self.actors)
        self._next += 1
        future: asyncio.Future[Any] = asyncio.wrap_future(self.actors[index].run_batch.remote(records).future())
        future.actor_index = index  # type: ignore[attr-defined]
        return future

    async def take(self) -> BatchOut:
        while True:
            records, future = self._pending[0]
            try:
                out = await future
            except self._actor_errors:
                self._replace(records, future)
                continue
            self._pending.popleft()
            self._breaks = 0
            return out

    def _replace(self, records: list[Record], future: Any) -> None:
        """The actor of the head batch died: a new actor in its place, the head batch sent again."""
        self._breaks += 1
        if self._breaks >= MAX_POOL_RESTARTS:
            raise PluginError(
                f"a Ray actor died {self._breaks} times in a row on the batch starting at record {records[0].id}",
                hint="run with `--executor local --set run.workers=1` to see the error in the driver")
        self.restarts += 1
        index = future.actor_index
        with contextlib.suppress(Exception):
            self.ray.kill(self.actors[index])
        self.actors[index] = self._new_actor()
        self._pending[0] = (records, self._submit(records))

    async def close(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        if self._started:
            self.ray.shutdown()
