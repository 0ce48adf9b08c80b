"""Base classes that plugin components subclass: sources, analyzers, backends, steps, sinks, trainers.

A component is a class with a nested pydantic ``Options`` model (``extra="forbid"``). The pipeline file's
block for the component is validated against ``Options`` and the instance is built as
``Cls(options, context)``. Register the class from a hook (see :mod:`oaipipe.hookspecs`)::

    from oaipipe import Analyzer, PluginOptions, Sentiment, hookimpl

    class Shouty(Analyzer):
        class Options(PluginOptions):
            threshold: float = 0.5

        def analyze(self, text: str) -> Sentiment:
            ...

    @hookimpl
    def register_analyzers(register):
        register("shouty", Shouty)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from .keys import BaseURL
from .models_table import DEFAULT_FINE_TUNE_MODEL, DEFAULT_MODEL
from .types import ChatRequest, ChatResponse, ModelInfo, Record, RecordResult, RunInfo, Sentiment

if TYPE_CHECKING:
    from .plugins import PluginHost

__all__ = [
    "Analyzer",
    "Backend",
    "BackendOptions",
    "Component",
    "Context",
    "OptionsT",
    "PluginOptions",
    "Sink",
    "Source",
    "Step",
    "StepContext",
    "StepOptions",
    "SyncBackend",
    "Trainer",
]


class PluginOptions(BaseModel):
    """Base of every component's ``Options``: unknown keys are an error, with a did-you-mean."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@dataclass
class Context:
    """What a component gets besides its options.

    ``base_dir`` is the pipeline file's folder: resolve relative paths against it (:meth:`path`).
    ``host`` gives access to the other registered components (``host.analyzer("vader")``).
    ``shown_file`` is the pipeline file as the user named it (``p2.yaml``), for messages about it (``""``
    when there is none: a pipeline built in code, a one-off command).
    """

    base_dir: Path = field(default_factory=Path.cwd)
    host: PluginHost | None = None
    pipeline_name: str = "pipeline"
    settings: dict[str, Any] = field(default_factory=dict)
    shown_file: str = ""

    def path(self, value: str | Path) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


#: the ``Options`` model of a component; ``Source[CsvOptions]`` makes ``self.options.path`` type-check
OptionsT = TypeVar("OptionsT", bound=PluginOptions)


class Component(Generic[OptionsT]):
    """Common base: ``Options`` model, ``name`` (the registered name) and the two constructor args.

    Generic over its options model so that ``self.options.x`` type-checks in a plugin::

        class ShoutyOptions(PluginOptions):
            threshold: float = 0.5

        class Shouty(Analyzer[ShoutyOptions]):
            Options = ShoutyOptions

    A bare ``Analyzer`` (no ``[...]``) still works: its ``self.options`` is then untyped.
    """

    Options: ClassVar[type[PluginOptions]] = PluginOptions
    #: the name it was registered under; set by the registry
    name: ClassVar[str] = ""
    #: one line shown by ``oaipipe plugins``; defaults to the first docstring line
    summary: ClassVar[str] = ""

    def __init__(self, options: OptionsT | None = None, context: Context | None = None) -> None:
        self.options: OptionsT = options if options is not None else cast(OptionsT, self.Options())
        self.context = context if context is not None else Context()


# --- sources ------------------------------------------------------------------------------------


class Source(Component[OptionsT]):
    """Yields :class:`~oaipipe.types.Record` objects one at a time (stream; never load everything).

    Raise :class:`~oaipipe.errors.InputError` when the input as a whole cannot be read (missing file,
    missing column). Record ids must be stable across runs: the journal resumes by id.
    """

    def records(self) -> Iterator[Record]:
        raise NotImplementedError

    def count(self) -> int | None:
        """How many records there will be, if cheap to know (used for progress/ETA); else ``None``."""
        return None

    def fields(self) -> list[str] | None:
        """The field names every record will have, if known before reading (a CSV header), else ``None``.

        The runner uses it to reject a template that names a missing column before the run starts.
        """
        return None


# --- analyzers ----------------------------------------------------------------------------------


class Analyzer(Component[OptionsT]):
    """Scores the sentiment of a text. Synchronous; the runner calls it off the event loop.

    An analyzer that asks a model (``needs_backend = True``, e.g. the built-in ``llm``) implements
    :meth:`analyze_with` instead: it gets the record's :class:`StepContext`, whose ``ctx.chat`` is the run's
    call chain (response cache, rate limits, retries, token and cost accounting), like a step's calls.
    """

    #: True when the analyzer calls the pipeline's backend: it is used through :meth:`analyze_with`
    needs_backend: ClassVar[bool] = False
    #: Its :meth:`analyze` may run in a worker process (``run.workers``): the worker loads the plugin from
    #: the pipeline file and builds its own analyzer. Set False for an analyzer that is only thread-safe
    #: (it holds a handle that cannot be rebuilt in another process): it then runs in the driver.
    process_safe: ClassVar[bool] = True

    def analyze(self, text: str) -> Sentiment:
        raise NotImplementedError

    async def analyze_with(self, text: str, ctx: StepContext) -> Sentiment:
        """Score ``text`` during a run (a ``sentiment`` step calls this). By default :meth:`analyze` in a
        worker thread; an analyzer with ``needs_backend = True`` overrides it and uses ``await ctx.chat()``."""
        if ctx.inline:  # in a worker process of the pool: nothing else shares this event loop
            return self.analyze(text)
        return await asyncio.to_thread(self.analyze, text)


# --- backends -----------------------------------------------------------------------------------


class BackendOptions(PluginOptions):
    """Options every backend understands (the ``backend:`` block of pipeline.yaml)."""

    type: str = "local"
    model: str = Field(DEFAULT_MODEL, description="Model to call (default: the model table's current default, "
                       "oaipipe.models_table.DEFAULT_MODEL)")
    base_url: BaseURL | None = Field(None, description="Any OpenAI-compatible server, e.g. "
                                     "http://127.0.0.1:8080/v1 (a query string is sent with every call)")
    api_key: SecretStr | None = Field(None, description="Use ${env:OPENAI_API_KEY}; never written anywhere")
    concurrency: int = Field(8, ge=1, le=1024, description="Records processed at once")
    timeout: float = Field(60.0, gt=0, description="Seconds per HTTP call")
    max_retries: int = Field(5, ge=0, le=50)
    temperature: float | None = None
    max_tokens: int | None = None
    rpm: int | None = Field(None, ge=1, description="Requests per minute limit (token bucket)")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute limit (token bucket)")
    record_timeout: float | None = Field(None, gt=0, description="Seconds for all steps of one record")
    tier: Literal["auto", "standard", "flex", "priority", "batch"] | None = Field(
        None, description="Processing tier: standard, flex (Batch API prices, slower), priority (dearer, "
        "quicker), batch (the Batch API, within 24 h) or auto: the cheapest that meets `deadline` (oaipipe.tiers); "
        "among the tiers the backend offers (Backend.tiers / tier_backends)")
    deadline: str | None = Field(
        None, validate_default=True, description="With tier: auto, when the run must be done: a duration from its start (30m, 2h, 1d, "
        "1h30m) or an ISO time (2026-12-01T18:00:00Z)")
    tier_latency: dict[Literal["standard", "flex", "priority"], float] = Field(
        default_factory=dict, description="Seconds per call the tier planner assumes at a tier, over its "
        "built-in estimate (e.g. {flex: 20})")

    @field_validator("deadline", mode="before")
    @classmethod
    def _check_deadline(cls, value: Any, info: ValidationInfo) -> str | None:
        """A duration or an ISO time that has not passed (:func:`oaipipe.tiers.parse_deadline`); required
        by ``tier: auto``."""
        from .tiers import DEADLINE_HINT, parse_deadline

        if value is None:
            if info.data.get("tier") == "auto":
                raise ValueError("tier: auto needs a `deadline:` (e.g. `deadline: 2h`): the planner picks the "
                                 "cheapest tier that finishes by it")
            return None
        deadline = parse_deadline(value)
        if deadline.remaining() <= 0:
            raise ValueError(f"the deadline {deadline.text} has passed: {DEADLINE_HINT}")
        return deadline.text

    @field_validator("tier_latency")
    @classmethod
    def _check_latency(cls, value: dict[str, float]) -> dict[str, float]:
        for tier, seconds in value.items():
            if not seconds > 0 or seconds == float("inf"):
                raise ValueError(f"seconds per call at tier {tier} must be a finite number > 0, not {seconds!r}")
        return value


class Backend(Component[OptionsT]):
    """A chat/vision transport. Implement :meth:`chat` (async) and :meth:`list_models`.

    Retries belong inside the backend (it knows its transport). Raise the
    :class:`~oaipipe.errors.BackendError` subclass that fits; never put the key in a message.
    """

    Options: ClassVar[type[PluginOptions]] = BackendOptions
    #: True when talking to api.openai.com without a key makes no sense (the CLI may fall back to local)
    needs_api_key: ClassVar[bool] = False

    # --- capabilities: what the core asks instead of comparing names (a subclass inherits them) --------

    #: No network: the answers are made on this machine (the embedded engine). The run's first line says
    #: so (with :attr:`offline_note`), fingerprints keep its answers apart from a model's (an unfinished
    #: run is never resumed on the other kind), and ``oaipipe models`` lists its models as the offline ones.
    offline: ClassVar[bool] = False
    #: what the run's first line adds after the model of an :attr:`offline` backend
    offline_note: ClassVar[str] = "offline"
    #: Calls cost money: priced from the price table (defaults, ``prices:``, ``OAIPIPE_PRICES``), counted in
    #: ``cost_usd`` and held to ``--max-cost``. False (free): a call costs nothing unless ``prices:`` names
    #: the exact model id it answers with, and a dry run shows what the calls would cost on OpenAI.
    priced: ClassVar[bool] = True
    #: Answers come through the Batch API: priced at the batch discount (half price), and no client-side
    #: rate limits (the Batch API queues the requests itself).
    batched: ClassVar[bool] = False
    #: Answers are worth keeping in the response cache. False for a free, deterministic backend (the
    #: embedded engine): caching it would only cost disk.
    cacheable: ClassVar[bool] = True
    #: The processing tiers (of ``standard``, ``flex``, ``priority``, ``batch``: :data:`oaipipe.pricing.TIERS`)
    #: this backend serves its calls at, chosen with :meth:`use_tier`. Empty: it has no tiers (``tier:`` is
    #: then ignored, with a note).
    tiers: ClassVar[tuple[str, ...]] = ()
    #: Tiers served by another registered backend type built from the same options: tier -> backend type.
    #: The tier planner (:mod:`oaipipe.tiers`) switches to that backend when it chooses such a tier.
    tier_backends: ClassVar[dict[str, str]] = {}

    def use_tier(self, tier: str) -> None:
        """Serve the calls at ``tier`` (one of :attr:`tiers`), before the first call. The base class has no
        tiers and does nothing."""

    def model_label(self, model: str) -> str:
        """The model id this backend's answers carry for a request of ``model`` (the embedded engine
        answers as ``local:<model>``). A dry run prices this id for a backend that is not :attr:`priced`."""
        return model

    async def chat(self, request: ChatRequest) -> ChatResponse:
        raise NotImplementedError

    async def list_models(self) -> list[ModelInfo]:
        return []

    async def aclose(self) -> None:
        """Release connections. Called once when the run ends."""


class SyncBackend(Backend[OptionsT]):
    """A backend written with blocking I/O: implement :meth:`chat_sync`; it runs in a worker thread."""

    def chat_sync(self, request: ChatRequest) -> ChatResponse:
        raise NotImplementedError

    def list_models_sync(self) -> list[ModelInfo]:
        return []

    _executor: Any = None

    def _pool(self) -> Any:
        """Threads of its own, as many as ``concurrency``: asyncio's shared default pool has only
        min(32, cores + 4) threads (6 on 2 cores), shared with analyzers and the source reader."""
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            workers = int(getattr(self.options, "concurrency", 8) or 8)
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"oaipipe-{self.name}")
        return self._executor

    async def chat(self, request: ChatRequest) -> ChatResponse:
        return await asyncio.get_running_loop().run_in_executor(self._pool(), self.chat_sync, request)

    async def list_models(self) -> list[ModelInfo]:
        return await asyncio.to_thread(self.list_models_sync)

    async def aclose(self) -> None:
        """Release the worker threads (a subclass that overrides this calls ``await super().aclose()``)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


# --- steps --------------------------------------------------------------------------------------


class StepOptions(PluginOptions):
    """Options every step has: ``type`` and ``output`` (the record field it writes)."""

    type: str
    output: str = Field(..., description="Record field the step writes")
    name: str | None = Field(None, description="Label used in logs, costs and the cache key")


@dataclass
class StepContext:
    """Per-record services for a step: the backend, analyzers, and the record's dialogue so far."""

    record: Record
    backend: Backend
    host: PluginHost
    exchanges: list[Any] = field(default_factory=list)
    sentiments: dict[str, Sentiment] = field(default_factory=dict)
    #: awaitable wrapper the runner installs (cache, rate limit, cost); steps call this, not backend.chat
    call: Any = None
    #: True in a worker process of ``run.workers``: blocking work may run on the event loop itself
    inline: bool = False

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if self.call is not None:
            return await self.call(request)
        return await self.backend.chat(request)


class Step(Component[OptionsT]):
    """One transformation of a record. :meth:`run` returns the fields to add (usually ``{output: value}``)."""

    Options: ClassVar[type[PluginOptions]] = StepOptions
    #: names of options that are ``{field}`` templates; checked against the source's columns before a run
    templates: ClassVar[tuple[str, ...]] = ()

    # --- capabilities: what the core asks instead of comparing names (a subclass inherits them) --------

    #: Its ``output`` field holds a sentiment label (positive, negative or neutral): ``train.select`` on
    #: that field is checked against the three labels when the pipeline is built.
    writes_sentiment: ClassVar[bool] = False
    #: Its exchanges carry images (logged with a ``[image: ...]`` text placeholder instead): building a
    #: fine-tuning dataset leaves them out unless ``step:`` names them.
    sends_images: ClassVar[bool] = False
    #: Its work is local CPU work (no backend call): with ``run.workers`` above 1 it may run in a pool of
    #: worker processes, on batches of records, when :meth:`process_safe` says so too.
    cpu_bound: ClassVar[bool] = False

    def process_safe(self) -> bool:
        """Whether this step, as configured, may run in a worker process: it is :attr:`cpu_bound` and what
        it uses can be rebuilt there from the pipeline file (a step using an analyzer asks the analyzer)."""
        return self.cpu_bound

    def cluster_safe(self) -> bool:
        """Whether this step, as configured, may run on a Ray actor (``run.executor: ray``): rebuilt there
        from the pipeline file, its backend calls made through the actor's call chain, whose rate limiter and
        response cache are the run's shared ones (:mod:`oaipipe.ray_cluster`). By default: process-safe CPU
        work, or a step that is not :attr:`cpu_bound` (an API step: all it holds are its options). A step
        that keeps state across records the driver must see overrides this to return False."""
        return self.process_safe() or not self.cpu_bound

    def template_fields(self) -> dict[str, list[str]]:
        """For each template option: the record fields it reads (used by ``oaipipe validate``)."""
        from .templates import fields_of

        out: dict[str, list[str]] = {}
        for opt in self.templates:
            value = getattr(self.options, opt, None)
            values = value if isinstance(value, list) else [value]
            names: list[str] = []
            for v in values:
                if isinstance(v, str):
                    names += [n for n in fields_of(v) if n not in names]
            if names:
                out[opt] = names
        return out

    def prepare(self) -> None:
        """Called once when the pipeline is built: resolve names (analyzers, presets) so errors come early."""

    def outputs(self) -> list[str]:
        """Record fields this step adds (used to check later steps' templates)."""
        out = getattr(self.options, "output", None)
        return [out] if out else []

    async def run(self, fields: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def label(self) -> str:
        opts = self.options
        return getattr(opts, "name", None) or f"{self.name}:{getattr(opts, 'output', '')}"


# --- sinks --------------------------------------------------------------------------------------


class Sink(Component[OptionsT]):
    """Receives each finished record, in input order.

    ``open`` is called once before the first record; ``close`` once at the end (also after a failure).
    ``done_ids`` passed to ``open`` holds the ids of records that an interrupted run already finished
    and journaled: a sink that appends should drop anything it wrote for other ids of this run, so
    that every record ends up exactly once.
    """

    def prepare(self) -> None:
        """Called once when the pipeline is built: resolve names (analyzers) so errors come before the run."""

    def open(self, run: RunInfo, done_ids: set[str] | None = None) -> None:
        """Prepare the output. ``done_ids`` is ``None`` for a new run."""

    #: capability: :meth:`render` gives a record's output as text from the options and the run alone (no
    #: state of the open file), so it can run in a worker process (``run.workers``) and the driver only
    #: appends the text (:meth:`write_rendered`) and calls :meth:`flush` once per group of records
    renders_in_worker: ClassVar[bool] = False

    def write(self, result: RecordResult) -> None:
        raise NotImplementedError

    def render(self, result: RecordResult, run: RunInfo) -> str | None:
        """(``renders_in_worker`` sinks) The text ``result`` adds to the output (``""``: nothing), or ``None``
        when only :meth:`write` can tell (it needs what :meth:`open` found). Pure: may run in another process."""
        raise NotImplementedError

    def write_rendered(self, text: str) -> None:
        """(``renders_in_worker`` sinks) Append text :meth:`render` made; it may stay buffered until :meth:`flush`."""
        raise NotImplementedError

    def flush(self) -> None:
        """Hand what was written to the operating system. The runner calls it for every sink after each group
        of records, before the journal says they are done."""

    def close(self) -> None:
        """Flush and release. Must be safe to call twice."""


# --- trainers -----------------------------------------------------------------------------------


class Trainer(Component[OptionsT]):
    """Launches and follows fine-tuning jobs. See :mod:`oaipipe.training` for the dataset side.

    oaipipe builds and validates the dataset, then calls :meth:`launch` with the written files
    (:class:`oaipipe.training.DatasetFiles`) and an unsaved :class:`oaipipe.jobs.Job` whose fields
    (trainer, base model, method, dataset hash, ...) are already filled in. The trainer sets ``id``,
    ``status`` and whatever it knows (``fine_tuned_model``, ``error``, ``remote`` ids, events) and returns
    it; oaipipe writes it to the job registry (``oaipipe jobs``) and calls :meth:`refresh` until the
    status is final (``succeeded``, ``failed``, ``cancelled``). A trainer never writes the registry
    itself. ``Options`` should subclass ``Trainer.Options`` so ``train:`` blocks look the same everywhere.
    """

    class Options(PluginOptions):
        """Options every trainer understands (the ``train:`` block; ``oaipipe train`` flags)."""

        type: str = "local"
        model: str | None = Field(
            None, description="Base model to fine-tune; defaults to the backend's `model:` when the pipeline sets "
            f"one, else {DEFAULT_FINE_TUNE_MODEL} (DEFAULT_FINE_TUNE_MODEL: the chat default {DEFAULT_MODEL} takes "
            "no fine-tuning)")
        method: Literal["supervised", "dpo"] = Field("supervised", description="supervised (SFT) or dpo")
        suffix: str | None = Field(None, description="Up to 64 characters added to the fine-tuned model name")
        hyperparameters: dict[str, Any] = Field(
            default_factory=dict,
            description="n_epochs, batch_size, learning_rate_multiplier (and beta for dpo)",
        )
        seed: int | None = Field(None, description="Training seed (and the dataset split seed)")
        select: dict[str, Any] = Field(
            default_factory=dict,
            description="Keep exchanges whose fields match, e.g. {reply_sentiment: positive} or {sentiment: positive}",
        )
        system: str | None = Field(None, description="System prompt for CSV/pair data that has none")
        step: str | None = Field(None, description="Only use the exchanges of this step (by its label)")
        validation_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Share kept for validation")
        min_examples: int = Field(10, ge=1, description="Refuse smaller datasets (OpenAI requires 10)")
        max_tokens_per_example: int | None = Field(None, ge=1, description="Override the model's example limit")
        description: str | None = Field(None, description="Shown by `oaipipe jobs list`")
        wait: bool = Field(True, description="Follow the job until it finishes")
        force: bool = Field(False, description="Launch even if the same dataset was trained already")
        poll_interval: float = Field(2.0, gt=0, description="Seconds between status checks")
        timeout: float | None = Field(None, gt=0, description="Give up waiting after this many seconds")

    #: True when :meth:`launch` finishes the job before returning (no polling needed)
    in_process: ClassVar[bool] = False

    def launch(self, dataset: Any, job: Any) -> Any:
        """Start a job on ``dataset`` and return ``job`` with ``id`` and ``status`` set."""
        raise NotImplementedError

    def refresh(self, job: Any) -> Any:
        """Return ``job`` updated from the provider (status, fine_tuned_model, error, new events)."""
        return job

    def cancel(self, job: Any) -> Any:
        """Ask the provider to cancel ``job``; return it updated."""
        raise NotImplementedError
