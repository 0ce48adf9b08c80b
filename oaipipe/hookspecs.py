"""The plugin contract: every hook oaipipe calls, and what a plugin author needs to know about each.

A plugin is a module (or an object) with functions decorated by ``oaipipe.hookimpl`` whose names match
the specs below. oaipipe finds plugins in three places, and treats them all the same way:

1. its own built-in plugins (``oaipipe/builtin/*.py``: ordinary plugin modules, nothing special);
2. installed packages that declare an entry point in the ``oaipipe`` group::

       [project.entry-points.oaipipe]
       my_plugin = "my_package.plugin_module"

3. the ``plugins:`` list of a pipeline file: a ``.py`` path (relative to the pipeline file) or a
   dotted module name.

``oaipipe plugins`` shows what was loaded, from where, and what each plugin registers. A plugin can be
switched off by name with ``disable_plugins: [name]`` in the pipeline file or ``--disable-plugin NAME``.

**Registering components.** The ``register_*`` hooks receive a ``register(name, cls)`` callback (the
pattern of Simon Willison's ``llm``). ``cls`` subclasses the matching base in :mod:`oaipipe.base` and has
a nested pydantic ``Options`` model: the pipeline file's block for it is validated against that model
(unknown keys are errors), and the instance is built as ``cls(options, context)``. Registering a name
that another plugin already registered is an error that names both plugins.

**Observing a run.** The ``oaipipe_run_*`` / ``oaipipe_record_done`` hooks are called by the runner in
the event loop's thread; keep them quick (hand slow work to a thread of your own). Exceptions raised in
them are reported and stop the run: an observer should not fail silently.

A hook name that matches none of these specs makes loading fail (no silent typos).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .base import Analyzer, Backend, Sink, Source, Step, Trainer
    from .cache import CacheStore
    from .types import RecordResult, RunInfo

PROJECT_NAME = "oaipipe"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- components ---------------------------------------------------------------------------------


@hookspec
def register_sources(register: Callable[[str, type[Source]], None]) -> None:
    """Register input sources: ``register("csv", CsvSource)``.

    A source is named in pipeline.yaml as ``source: {type: NAME, ...}``. Subclass
    :class:`oaipipe.base.Source` and implement ``records()``, a generator of
    :class:`oaipipe.types.Record`. Stream: never read the whole input into memory. Each record needs an
    ``id`` that is the same on every run (the resume journal keys on it) and a ``where`` that a user can
    find (``reviews.csv row 12``). Raise :class:`oaipipe.errors.InputError` if the input as a whole is
    unusable (a missing file, a missing column), before the first record.
    """


@hookspec
def register_analyzers(register: Callable[[str, type[Analyzer]], None]) -> None:
    """Register sentiment analyzers: ``register("shouty", ShoutyAnalyzer)``.

    An analyzer is named by a ``sentiment`` step (``analyzer: NAME`` or
    ``analyzer: {type: NAME, ...options}``) and by dialogue sinks. Subclass
    :class:`oaipipe.base.Analyzer` and implement ``analyze(text) -> Sentiment``, where the label is
    ``"positive"``, ``"negative"`` or ``"neutral"`` and the score is in [-1, 1]. ``analyze`` is
    synchronous and runs in a worker thread; it must be safe to call from several threads at once.
    An analyzer that asks a model sets ``needs_backend = True`` and implements ``async analyze_with(text,
    ctx)`` instead, calling ``await ctx.chat(request)`` (cached and costed like a step's calls; see the
    built-in ``llm``).
    """


@hookspec
def register_backends(register: Callable[[str, type[Backend]], None]) -> None:
    """Register chat/vision backends (transports): ``register("openai", OpenAIBackend)``.

    Named by ``backend: {type: NAME}``. Subclass :class:`oaipipe.base.Backend` (async ``chat``) or
    :class:`oaipipe.base.SyncBackend` (blocking ``chat_sync``, run in a thread). ``Options`` should
    subclass :class:`oaipipe.base.BackendOptions` so that ``model``, ``base_url``, ``api_key``,
    ``concurrency``, ``timeout`` and ``max_retries`` mean the same everywhere. Retries with backoff are
    the backend's job; raise the :class:`oaipipe.errors.BackendError` subclass that fits once they are
    spent. Never log or raise with the API key in the text.
    """


@hookspec
def register_steps(register: Callable[[str, type[Step]], None]) -> None:
    """Register pipeline step types: ``register("translate", TranslateStep)``.

    Named by ``steps: [{type: NAME, output: FIELD, ...}]``. Subclass :class:`oaipipe.base.Step`
    and implement ``async run(fields, ctx) -> dict`` returning the fields to add to the record. Use
    ``await ctx.chat(request)`` (not ``ctx.backend.chat``) so the runner's cache, rate limits and cost
    accounting apply, and append :class:`oaipipe.types.Exchange` objects to ``ctx.exchanges`` for the
    dialogue sinks. Raise :class:`oaipipe.errors.RecordError` for a problem with this record only.
    """


@hookspec
def register_sinks(register: Callable[[str, type[Sink]], None]) -> None:
    """Register output sinks: ``register("dialogue-jsonl", DialogueJsonlSink)``.

    Named by ``sinks: [{type: NAME, ...}]``. Subclass :class:`oaipipe.base.Sink`: ``open(run,
    done_ids)``, ``write(result)`` for each finished record in input order, ``close()``. Write so that
    a crash loses nothing already written (append + flush, or atomic rewrite), and honour ``done_ids``
    on resume so that each record ends up in the output exactly once.
    """


@hookspec
def register_trainers(register: Callable[[str, type[Trainer]], None]) -> None:
    """Register fine-tuning trainers: ``register("openai", OpenAITrainer)``.

    Named by ``train: {type: NAME}`` and ``oaipipe train --trainer NAME``. Subclass
    :class:`oaipipe.base.Trainer` (its ``Options`` too, so that ``train:`` blocks look alike) and
    implement ``launch(dataset, job)``, ``refresh(job)`` and ``cancel(job)``. oaipipe builds and
    validates the dataset before ``launch`` is called, and records every job in the job registry
    (``oaipipe jobs``) itself: a trainer only fills in the job's id, status, fine-tuned model and error.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``oaipipe`` command line: ``@cli.command() def my_command(): ...``.

    Keep commands thin: parse arguments, call a library function, print the result. Commands come from
    built-in and installed (entry-point) plugins only: a pipeline's ``plugins:`` list is read after the
    command line is parsed, so a command defined there is listed by ``oaipipe plugins`` but not callable.
    """


# --- lifecycle ----------------------------------------------------------------------------------


@hookspec
def oaipipe_run_start(run: RunInfo) -> None:
    """Called once when a run starts (or resumes: ``run.resumed`` is then true), before any record."""


@hookspec
def oaipipe_record_done(run: RunInfo, result: RecordResult) -> None:
    """Called for each record when it is finished, in input order; ``result.error`` is set if it failed."""


@hookspec
def oaipipe_run_finish(run: RunInfo, summary: dict[str, Any]) -> None:
    """Called once when a run ends, with the summary that is written to ``summary.json``.

    Also called when the run was aborted (``summary["status"]`` then says why).
    """


# --- the response cache -------------------------------------------------------------------------


@hookspec
def register_cache_stores(register: Callable[[str, type[CacheStore]], None]) -> None:
    """Register response-cache stores: ``register("redis", RedisStore)``.

    Named by ``run.cache: {type: NAME, ...options}`` in the pipeline file (``run.cache: true``, the default,
    is ``{type: sqlite}``: one SQLite file in ``run.cache_dir``). Subclass :class:`oaipipe.CacheStore`
    (its ``Options`` are validated against the rest of the block, errors naming the file and line) and
    implement:

    * ``get(key) -> dict | None``: the dict ``put`` stored under ``key``, or ``None`` when it is missing or
      past the store's age bound. ``put(key, value)`` stores (or replaces) a JSON-able dict. Keys are 64 hex
      characters; they already cover the request and the server that answered, so keep them as they are.
    * ``stats() -> dict`` for ``oaipipe cache stats``: ``entries`` at least; ``store``, ``path`` (or a
      location without secrets), ``size_bytes``, ``oldest``/``newest`` (ISO 8601), ``hits``/``misses`` when
      the store knows them. ``clear(older_than=None) -> int`` removes every entry, or those stored more
      than ``older_than`` seconds ago, and returns how many (``oaipipe cache clear [--older-than 30d]``).
    * ``evict() -> int`` (optional) applies the store's own bounds now (a size, an age); ``close()``
      releases connections (it is also called when the store is garbage-collected: the store may be used
      again after it).

    ``get`` and ``put`` run in the event loop's thread on every call of a run, and several threads and
    processes (two runs sharing a cache) may use one store at once: keep them quick and safe for that.
    The constructor must not connect or open anything (``oaipipe validate`` builds the store only to check
    its options): connect on the first call. ``context.settings["cache_dir"]`` is the pipeline's cache
    folder. A store that fails (unreachable, locked, corrupt) raises any exception: oaipipe prints one
    warning, stops using the store for the rest of the run and makes the calls uncached, so a broken cache
    never fails a run; never raise for a missing key. The cache is not used with ``--no-cache``,
    ``run.cache: false`` or on the ``local`` backend.
    """
