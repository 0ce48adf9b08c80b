"""``oaipipe.Pipeline``: a pipeline built in Python, run from scripts, notebooks, async code and threads.

Built from a pipeline file (:meth:`Pipeline.from_yaml`) or from the same blocks in code
(``Pipeline({...})`` or ``Pipeline(source=..., steps=[...])``), it is validated, built and run exactly
as ``oaipipe run`` does it (:func:`oaipipe.pipeline.load_pipeline_data`, :class:`oaipipe.runner.Runner`):
the same plugins, checks, run directories, journal, resume and response cache. Records held in memory go
in through the built-in ``records`` source (``run(records=...)``).

:meth:`Pipeline.run` blocks until the run ends, wherever it is called: with no event loop running in the
thread it uses :func:`asyncio.run`; inside a running loop (Jupyter, IPython, an async web handler) it runs
the run on a private event loop in a worker thread and waits for it (no ``nest_asyncio``). In async code,
``await pipeline.arun()`` runs on the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .config import Problems, load_config
from .pipeline import BuiltPipeline, build_pipeline, load_pipeline, load_pipeline_data
from .results import RunResult

if TYPE_CHECKING:
    from .progress import Reporter
    from .runner import RunOptions

__all__ = ["Pipeline", "run_sync"]

T = TypeVar("T")

_BLOCKS = ("name", "description", "plugins", "disable_plugins", "assistants", "backend", "source", "steps",
           "sinks", "train", "prices", "run")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end and return its result, from any thread, with or without a running loop.

    With a running event loop in this thread (a notebook cell, an async handler), the coroutine runs on a
    fresh loop in a worker thread while this thread waits: the caller's loop is blocked for that time, as
    any blocking call would block it (use the ``a...`` twin with ``await`` to keep it free).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="oaipipe-run") as pool:
        return pool.submit(context.run, asyncio.run, coro).result()


class Pipeline:
    """A pipeline: the blocks of a pipeline file, validated when it is made.

    ``Pipeline({"source": {...}, "steps": [...]})``, ``Pipeline(steps=[...], sinks=[...])`` or
    :meth:`from_yaml`. ``source`` may be left out when records are passed to :meth:`run`. Relative paths
    are resolved against ``base_dir`` (default: the current folder; for :meth:`from_yaml`, the file's folder).
    A problem raises :class:`~oaipipe.errors.ConfigError` naming the key path (``steps.1.prompt``) and the fix.
    """

    def __init__(self, config: dict[str, Any] | None = None, /, *, base_dir: str | Path | None = None,
                 overrides: list[str] | None = None, **blocks: Any) -> None:
        unknown = sorted(set(blocks) - set(_BLOCKS))
        if unknown:
            from .errors import ConfigError

            raise ConfigError(f"unknown pipeline block(s): {', '.join(unknown)}",
                              hint=f"the blocks are: {', '.join(_BLOCKS)}")
        data = dict(config or {})
        data.update(blocks)
        self._data: dict[str, Any] | None = data
        self._path: Path | None = None
        self._base_dir = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
        self._overrides = list(overrides or [])
        self.built = self._build(None, None, None)  # validates every block now

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Pipeline:
        """The pipeline of a pipeline file (validated as ``oaipipe validate`` does; errors name its lines)."""
        self = cls.__new__(cls)
        self._data = None
        self._path = Path(path)
        self._base_dir = self._path.resolve().parent
        self._overrides = list(overrides or [])
        self.built = self._build(None, None, None)
        return self

    @property
    def name(self) -> str:
        return self.built.name

    def __repr__(self) -> str:
        where = f"from {self._path}" if self._path else "built in code"
        return f"Pipeline({self.name!r}, {where}, {self.built.describe_backend()})"

    def _build(self, records: Any, id_field: str | None, input_key: str | None) -> BuiltPipeline:
        settings: dict[str, Any] = {}
        block: dict[str, Any] | None = None
        if records is not None:
            from .builtin.source_records import input_fingerprint

            block = {"type": "records", "input": input_fingerprint(records, input_key)}
            if id_field:
                block["id_field"] = id_field
            settings["records"] = records
        if self._path is None:
            data = dict(self._data or {})
            if block is not None:
                data["source"] = block
            elif "source" not in data:
                data["source"] = {"type": "records"}  # handed over by run(records=...)
                settings["records"] = None
            return load_pipeline_data(data, self._base_dir, self._overrides, settings=settings)
        if block is None:
            return load_pipeline(self._path, self._overrides)
        file = str(self._path)
        problems = Problems(file)
        loaded = load_config(self._path, self._overrides, problems=problems)
        loaded.data["source"] = block  # the file's own source is replaced by the records given
        loaded.invalid.discard("source")
        loaded.config = loaded.config.model_copy(update={"source": block})
        return build_pipeline(loaded, problems, file=file, settings=settings)

    async def arun(self, records: Any = None, *, id_field: str | None = None, input_key: str | None = None,
                   fresh: bool = False, limit: int | None = None, max_failures: int | None = None,
                   retry_failed: bool = False, cache: bool = True, max_cost: float | None = None,
                   dry_run: bool = False, progress: bool = False, options: RunOptions | None = None,
                   reporter: Reporter | None = None) -> RunResult:
        """Run the pipeline on the caller's event loop; see :meth:`run`."""
        from .runner import Runner, RunOptions

        if records is None and self._path is None and "source" not in (self._data or {}):
            from .errors import ConfigError

            raise ConfigError("this pipeline has no source and no records were given", key="source",
                              hint="pass them: run(records=[{...}, ...]) (a list of dicts, a DataFrame or any "
                                   "iterable of dicts), or give the pipeline a source block")
        built = self._build(records, id_field, input_key)
        if options is None:
            options = RunOptions(fresh=fresh, limit=limit, dry_run=dry_run, max_failures=max_failures,
                                 retry_failed=retry_failed, use_cache=cache, max_cost=max_cost)
        if progress and reporter is None:
            from .progress import make_reporter

            reporter = make_reporter()
        summary = await Runner(built, options, reporter).run()
        return RunResult(summary)

    def run(self, records: Any = None, *, id_field: str | None = None, input_key: str | None = None,
            fresh: bool = False, limit: int | None = None, max_failures: int | None = None,
            retry_failed: bool = False, cache: bool = True, max_cost: float | None = None,
            dry_run: bool = False, progress: bool = False, options: RunOptions | None = None,
            reporter: Reporter | None = None) -> RunResult:
        """Run the pipeline to its end and return its :class:`~oaipipe.results.RunResult`.

        ``records``: a list of dicts, a pandas DataFrame or any iterable of dicts (an iterator is streamed,
        never held whole); it replaces the pipeline's ``source``. Ids come from ``id_field`` or the position
        (``0``, ``1``...). A run that did not finish is resumed by the same call (a list or DataFrame is
        recognized by its content; an iterator only with ``input_key=``). The other options are ``oaipipe
        run``'s flags. Works in scripts, notebooks, async code (it blocks the loop: prefer ``await arun()``)
        and threads. ``options`` (a :class:`~oaipipe.runner.RunOptions`, e.g. with ``call_wrappers``) replaces
        the flags; ``reporter`` receives the progress. Errors raise the :mod:`oaipipe.errors` exception the CLI would exit with.
        """
        return run_sync(self.arun(records, id_field=id_field, input_key=input_key, fresh=fresh, limit=limit,
                                  max_failures=max_failures, retry_failed=retry_failed, cache=cache,
                                  max_cost=max_cost, dry_run=dry_run, progress=progress, options=options,
                                  reporter=reporter))
