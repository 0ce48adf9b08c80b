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
    from collections.abc import Callable

    from .cache import CacheStats, ResponseCache
    from .calls import CallChain
    from .pipeline import BuiltPipeline
    from .runner import Rendered
    from .stats import RetryStats
    from .types import ChatRequest, ChatResponse, Record, RecordResult, RunInfo

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
    """(workers to start, why): 0 when the steps run in the driver, with the reason in words.

    The process pool takes process-safe CPU work only (:meth:`Step.process_safe`); Ray takes every step
    that can run on an actor (:meth:`Step.cluster_safe`: API steps too, whose calls go through the run's
    shared limiter and cache, :mod:`oaipipe.ray_cluster`), unless the backend is
    :attr:`~oaipipe.base.Backend.batched` (the Batch API's jobs are the driver's)."""
    run = pipeline.loaded.config.run
    workers = run.workers or default_workers()
    if workers <= 1 and executor == "local":
        return 0, "run.workers is 1"
    if not pipeline.steps:
        return 0, "the pipeline has no step"
    if executor == "ray":
        calling = [step for step in pipeline.steps if not step.process_safe()]
        if calling and pipeline.backend.batched:
            return 0, (f"step {calling[0].label} calls the backend, which is batched (the Batch API): "
                       f"its jobs are submitted and followed by the driver")
        local = [step for step in pipeline.steps if not step.cluster_safe()]
        if local:
            return 0, f"step {local[0].label} cannot run on a Ray actor (its plugin opts out)"
    else:
        local = [step for step in pipeline.steps if not step.process_safe()]
        if local:
            return 0, (f"step {local[0].label} is not process-safe CPU work (it calls the backend, or its "
                       f"plugin opts out)")
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

    return _rendered(_loop.run_until_complete(batch()), dict(_runner._failure_kinds))


def _rendered(results: list[RecordResult], kinds: dict[type, int]) -> BatchOut:
    """A batch's results as the driver takes them back: rendered here when this worker knows the run."""
    if _run is None or _runner is None:
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

    def summary(self) -> dict[str, Any]:
        """What the pool adds to the run's summary (nothing: the driver's chain made every call)."""
        return {}


# --- on Ray -------------------------------------------------------------------------------------------


class BatchActor:
    """A Ray actor: loads the pipeline from its file once, then processes batches (``run.executor: ray``).

    Given the run's shared services (:class:`oaipipe.ray_cluster.ClusterServices`), its steps' backend calls
    go through a call chain of its own whose rate limiter and cache are the run's shared ones; a batch's
    records then run concurrently (up to ``backend.concurrency``), and each batch comes back with what its
    calls cost, for the driver's counts and budget (:meth:`run_batch`)."""

    def __init__(self, file: str, load_args: dict[str, Any], services: dict[str, Any] | None = None,
                 client: str = "", backend: str = "", run: RunInfo | None = None,
                 secrets: tuple[str, ...] = (), tier: str | None = None) -> None:
        from .errors import OaipipeError

        #: why this actor cannot run the driver's steps (the driver stops the run with it), or ""
        self.mismatch = ""
        self.calls: list[tuple[str, ChatResponse, str]] = []
        self.concurrency = 1
        self.calling = False
        try:
            _init_worker(file, load_args, None, run, secrets)
        except OaipipeError as exc:  # the cluster's environment differs: the driver says so, once
            self.mismatch = f"a Ray actor could not load the pipeline: {exc}"
            return
        assert _runner is not None
        if backend and _backend_id(_runner.pipeline) != backend:
            self.mismatch = (f"a Ray actor built the backend {_backend_id(_runner.pipeline)} from the pipeline "
                             f"file, the driver {backend}")
        if tier and tier in _runner.pipeline.backend.tiers:  # the driver's choice (``backend.tier``, auto)
            _runner.pipeline.backend.use_tier(tier)
        #: steps that may call the backend: the batch's records run concurrently
        self.calling = any(not step.process_safe() for step in _runner.pipeline.steps)
        if services is not None and self.calling:
            self._chain(services, client)

    def _chain(self, services: dict[str, Any], client: str) -> None:
        """The actor's call chain: cache → the run's limiter → retries → transport, each call recorded."""
        from dataclasses import replace

        from .cache import ResponseCache
        from .calls import CallChain, retry_policy
        from .ray_cluster import RemoteRateLimiter, RemoteStore
        from .resume import backend_endpoint

        runner = _runner
        assert runner is not None
        backend = runner.pipeline.backend
        concurrency = int(getattr(backend.options, "concurrency", 0) or 0)
        limiter = None
        if services.get("limiter") is not None:
            limiter = RemoteRateLimiter(services["limiter"], client,
                                        concurrency if retry_policy(backend) is not None else None)
        cache = None
        if services.get("cache") is not None:
            cache = ResponseCache(services["cache_dir"], store=RemoteStore(services["cache"]),
                                  namespace=backend_endpoint(backend))
        chain = CallChain.shared(backend, limiter=limiter, cache=cache)
        runner.calls = chain
        self.concurrency = max(1, concurrency or 8)

        async def recorded(request: ChatRequest) -> ChatResponse:
            response = await chain(request)
            self.calls.append((request.step, replace(response, text="", parsed=None), request.model))
            return response

        runner._call = recorded

    def pid(self) -> int:
        return os.getpid()

    def run_batch(self, records: list[Record]) -> tuple[BatchOut | None, dict[str, Any]]:
        """The batch's results (as the process pool's), and what its calls did: ``calls`` (step, answer
        without its text), ``retries`` (attempts and retries, for the driver's counters) and ``abort``
        (the message of an error that stops the run: a refused key)."""
        runner = _runner
        assert runner is not None and _loop is not None
        if self.mismatch:
            return None, {"mismatch": self.mismatch}
        self.calls = []
        out = _run_batch(records) if not self.calling else self._run_concurrently(records)
        extras: dict[str, Any] = {"calls": self.calls, "retries": _take_retries(runner.calls.retries),
                                  "cache": _take_cache_stats(runner.calls.cache)}
        if runner._abort is not None:
            extras["abort"] = (runner._abort.message, runner._abort.hint)
            runner._abort = None
        return out, extras

    def _run_concurrently(self, records: list[Record]) -> BatchOut:
        """The batch's records, up to ``backend.concurrency`` at once; results in input order."""
        runner = _runner
        assert runner is not None and _loop is not None
        runner._failure_kinds.clear()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(record: Record) -> RecordResult:
            async with gate:
                result: RecordResult = await runner._process(record)
                return result

        async def batch() -> list[RecordResult]:
            return list(await asyncio.gather(*(one(record) for record in records)))

        return _rendered(_loop.run_until_complete(batch()), dict(runner._failure_kinds))


def _backend_id(pipeline: BuiltPipeline) -> str:
    """The backend a pipeline built, in words: its type and who answers (an actor must build the same)."""
    from .resume import backend_endpoint

    return f"{pipeline.backend.name} ({backend_endpoint(pipeline.backend)})"


def _take_retries(stats: RetryStats | None) -> dict[str, Any] | None:
    """The attempts and retries counted since the last batch (the counters start again from 0)."""
    if stats is None:
        return None
    with stats._lock:
        out = {"attempts": stats.attempts, "by_status": dict(stats.by_status), "waited": stats.waited,
               "gave_up": stats.gave_up}
        stats.attempts, stats.waited, stats.gave_up = 0, 0.0, 0
        stats.by_status.clear()
    return out


def _add_retries(stats: RetryStats | None, delta: dict[str, Any] | None) -> None:
    if stats is None or not delta:
        return
    with stats._lock:
        stats.attempts += delta["attempts"]
        stats.by_status.update(delta["by_status"])
        stats.waited += delta["waited"]
        stats.gave_up += delta["gave_up"]


_CACHE_COUNTS = ("hits", "misses", "merged", "writes", "errors")


def _take_cache_stats(cache: ResponseCache | None) -> dict[str, Any] | None:
    """The cache's hits, misses, merged calls, writes, errors and warnings since the last batch (counted again
    from 0)."""
    if cache is None:
        return None
    stats = cache.stats
    with stats._lock:
        out: dict[str, Any] = {name: getattr(stats, name) for name in _CACHE_COUNTS}
        out["warnings"] = list(stats.warnings)
        for name in _CACHE_COUNTS:
            setattr(stats, name, 0)
        stats.warnings.clear()
    return out


def _add_cache_stats(stats: CacheStats, delta: dict[str, Any] | None) -> None:
    if not delta:
        return
    with stats._lock:
        for name in _CACHE_COUNTS:
            setattr(stats, name, getattr(stats, name) + delta[name])
        stats.warnings.extend(w for w in delta["warnings"] if w not in stats.warnings)


def quiet_ray_output(ray: Any) -> None:
    """Route what Ray prints in the driver (``(raylet) A worker died or was killed ...``, its workers'
    lines) to stderr: stdout is the command's (``--json``). Ray's error listener writes to ``sys.stdout``
    whatever ``log_to_driver`` says; this wraps the function it calls (a no-op if Ray has no such function)."""
    worker: Any = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "oaipipe_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.oaipipe_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


#: records per batch on Ray for steps that call the backend, per unit of ``backend.concurrency``: small
#: batches keep the calls in flight (and the overshoot of a cost budget) bounded
CALLS_PER_BATCH = 2


class RayPool(ProcessPool):
    """The same batches on a pool of Ray actors (one CPU each). Joins the cluster at ``address``, else the
    Ray already initialised in this process, else starts a local one (shut down again at the end).

    Steps that call the backend run there too: their calls go through the run's one limiter and one cache
    (:mod:`oaipipe.ray_cluster`), started when the driver's ``chain`` has them. Each batch's answers come
    back to ``on_call(step, response)`` (the driver's counts and cost budget), its attempts, retries and
    cache hits to the driver's ``chain`` counters.

    An actor that dies (its process killed, its node lost) fails the batches it held: each is submitted
    again, in order, to a new actor when it reaches the head of the queue; nothing of it was written, and
    the answers of its finished calls are in the shared cache."""

    def __init__(self, pipeline: BuiltPipeline, workers: int, address: str | None = None, *,
                 chain: CallChain | None = None, on_call: Callable[[str, ChatResponse, str], None] | None = None,
                 stop: Callable[[], bool] | None = None, run: RunInfo | None = None,
                 tier: str | None = None) -> None:
        from .extras import require
        from .ray_cluster import ClusterServices, join_ray

        self.ray = require("ray", extra="ray", feature="run.executor: ray")
        self._started = False
        if not self.ray.is_initialized():
            join_ray(self.ray, address, workers)  # an address that does not answer fails in seconds
            self._started = True
        quiet_ray_output(self.ray)
        self._remote = self.ray.remote(num_cpus=1, max_restarts=0)(BatchActor)
        self._next = 0
        self._actor_errors = (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError)
        self.on_call = on_call
        #: True once the driver starts no new record (the cost budget is reached): queued batches are dropped
        self.stop = stop or (lambda: False)
        self.chain = chain
        calling = [step for step in pipeline.steps if not step.process_safe()]
        self.services = (ClusterServices.start(self.ray, pipeline, _pipeline_file(pipeline), chain)
                         if calling and chain is not None else ClusterServices())
        concurrency = int(getattr(pipeline.backend.options, "concurrency", 0) or 8)
        #: records per batch: whole source batches for CPU work, a few rounds of calls for API steps
        self.batch_size = CALLS_PER_BATCH * concurrency if calling else 0
        self._summary: dict[str, Any] = {}
        #: the tier the driver serves the calls at (the actors build their backend from the file: told it)
        self.tier = tier
        super().__init__(pipeline, workers, run)

    def _new_actor(self) -> Any:
        self._made = getattr(self, "_made", 0) + 1
        return self._remote.remote(_pipeline_file(self.pipeline), self.pipeline.load_args,
                                   self.services.worker_args(), f"actor-{self._made}",
                                   _backend_id(self.pipeline), self.run, tuple(errors._registered_secrets),
                                   self.tier)

    def _new_pool(self) -> Any:
        self.actors = [self._new_actor() for _ in range(self.workers)]
        return None

    def submit(self, records: list[Record]) -> None:
        """Queue ``records`` in batches; at most 2 batches per actor are sent to the cluster at a time, so a
        reached budget (:attr:`stop`) leaves the rest unstarted."""
        size = self.batch_size or len(records)
        for start in range(0, len(records), size):
            self._pending.append((records[start:start + size], None))  # type: ignore[arg-type]
        self._send()

    def _send(self) -> None:
        """Send queued batches, oldest first, while fewer than 2 per actor are out (the sent batches are
        always the oldest ones: the queue's head is always sent)."""
        if self.stop():
            while self._pending and self._pending[-1][1] is None:  # unsent: nothing of them started
                self._pending.pop()
            return
        out = sum(1 for _, future in self._pending if future is not None)
        for index, (records, future) in enumerate(self._pending):
            if out >= 2 * self.workers:
                break
            if future is None:
                self._pending[index] = (records, self._submit(records))
                out += 1

    def head_done(self) -> bool:
        return bool(self._pending) and self._pending[0][1] is not None and self._pending[0][1].done()

    def _submit(self, records: list[Record]) -> asyncio.Future[Any]:
        index = self._next % len(self.actors)
        self._next += 1
        actor = self.actors[index]
        future: asyncio.Future[Any] = asyncio.wrap_future(actor.run_batch.remote(records).future())
        future.actor = (index, actor)  # type: ignore[attr-defined]
        return future

    async def take(self) -> BatchOut:
        while True:
            records, future = self._pending[0]
            try:
                out, extras = await future
            except self._actor_errors:
                self._replace(records, future)
                continue
            self._pending.popleft()
            self._breaks = 0
            self._account(extras)
            self._send()
            return out  # type: ignore[no-any-return]

    def _account(self, extras: dict[str, Any]) -> None:
        """Count a batch's calls in the driver (cost, budget, retries); stop on a refused key."""
        if extras.get("mismatch"):
            from .errors import ConfigError

            raise ConfigError(extras["mismatch"], hint=(
                "the actors load the pipeline in the cluster's environment: set the same environment "
                "variables (OPENAI_API_KEY, ${env:...} values) on every node, e.g. with Ray's runtime_env"))
        if self.on_call is not None:
            for step, response, requested in extras.get("calls", ()):
                self.on_call(step, response, requested)
        if self.chain is not None:
            _add_retries(self.chain.retries, extras.get("retries"))
            if self.chain.cache is not None:
                _add_cache_stats(self.chain.cache.stats, extras.get("cache"))
        if extras.get("abort"):
            from .errors import AuthenticationError

            message, hint = extras["abort"]
            raise AuthenticationError(message, hint=hint)

    def _replace(self, records: list[Record], future: Any) -> None:
        """The actor of the head batch died: a new actor in its place (unless one took it already), the head
        batch sent again."""
        index, actor = future.actor
        if self.actors[index] is actor:
            self._breaks += 1
            if self._breaks >= MAX_POOL_RESTARTS:
                raise PluginError(
                    f"a Ray actor died {self._breaks} times in a row on the batch starting at record "
                    f"{records[0].id}",
                    hint="run with `--executor local --set run.workers=1` to see the error in the driver")
            self.restarts += 1
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
            self.actors[index] = self._new_actor()
        self._pending[0] = (records, self._submit(records))

    def summary(self) -> dict[str, Any]:
        """What the cluster's shared services did (``rate_limit`` of the whole cluster), once closed."""
        return {k: v for k, v in self._summary.items() if k == "rate_limit"}

    async def close(self) -> None:
        for _, future in self._pending:
            if future is not None:
                future.cancel()
        self._pending.clear()
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self._summary = await asyncio.to_thread(self.services.close, self.ray)
        warnings = self._summary.get("cache_warnings")
        if warnings and self.chain is not None and self.chain.cache is not None:
            _add_cache_stats(self.chain.cache.stats, {**dict.fromkeys(_CACHE_COUNTS, 0), "warnings": warnings})
        if self._started:
            self.ray.shutdown()
