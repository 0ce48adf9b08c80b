"""``oaipipe.Client``: one-off calls from Python (the old ``OpenAIModel`` object, as it should have been).

``Client().ask("hi")`` sends one message and returns a :class:`Reply` with the reply's text, the sentiment
of the reply and of the message, the usage and the cost; with ``dialogue=PATH`` the exchange is appended
to that dialogue log, one JSON line in the ``dialogue-jsonl`` sink's format. ``describe_image``,
``models``, ``assistants``, ``train`` and ``jobs`` do what the commands of the same name do. Each method
has an async twin (``aask``, ``adescribe_image``...); the blocking ones work in scripts, in notebooks
(inside a running event loop) and from threads (:func:`oaipipe.api.run_sync`).

The backend is chosen as for ``oaipipe ask`` (:mod:`oaipipe.oneoff`, keys by :mod:`oaipipe.keys`): with
no ``OPENAI_API_KEY`` (or ``backend="local"``) calls go to the embedded offline engine. Calls go through
the same call chain as a run's (:meth:`oaipipe.calls.CallChain.for_backend`: response cache, rate limits,
retries) and are counted and priced like a run's (:attr:`Client.stats`).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .api import run_sync
from .models_table import DEFAULT_FINE_TUNE_MODEL
from .types import ChatResponse, ModelInfo, Record, Sentiment, Usage

__all__ = ["Client", "Reply"]

T = TypeVar("T")


@dataclass
class Reply:
    """The answer to :meth:`Client.ask` / :meth:`Client.describe_image`."""

    text: str
    #: the sentiment of the reply (None without an analyzer)
    sentiment: Sentiment | None
    #: the sentiment of the message sent
    input_sentiment: Sentiment | None
    usage: Usage
    #: USD, from the price table (0.0 for the offline engine and cached answers; None when unknown)
    cost_usd: float | None
    model: str
    backend: str
    #: the decoded JSON when a schema was given
    parsed: Any = None
    cached: bool = False
    response: ChatResponse | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.text


class Client:
    """One-off calls: ``ask``, ``describe_image``, ``models``, ``assistants``, ``train``, ``jobs``.

    ``backend``: ``local``, ``openai``, ``requests``... (default: ``openai`` with ``OPENAI_API_KEY`` set,
    else the embedded offline engine); ``model``/``system``: defaults of every call; ``analyzer``: the
    sentiment analyzer (a name such as ``vader``/``keyword``/``llm``, ``{type: ..., ...}``, or None for no
    scoring); ``dialogue``: a dialogue log (.jsonl) every exchange is appended to; ``assistant``: the name
    of an assistant preset (its instructions, model and parameters are the defaults), looked up in
    ``assistants`` (a file) or the usual places (``assistants.yaml`` here, ``$OAIPIPE_HOME``); ``pipeline``: use a
    pipeline file's backend block and presets; ``cache``: reuse identical calls from the response cache in
    ``cache_dir`` (default ``.oaipipe/cache`` in the current folder).
    """

    def __init__(self, backend: str | None = None, model: str | None = None, system: str | None = None,
                 analyzer: str | dict[str, Any] | None = "vader", dialogue: str | Path | None = None,
                 assistant: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 pipeline: str | Path | None = None, cache: bool = True, cache_dir: str | Path | None = None,
                 temperature: float | None = None, max_tokens: int | None = None,
                 registry: str | Path | None = None, assistants: str | Path | None = None) -> None:
        from .oneoff import load_backend, preset_for
        from .pricing import PriceTable
        from .stats import RunStats

        self.model = model
        self.system = system
        self.analyzer_spec = analyzer
        self.dialogue = Path(dialogue) if dialogue is not None else None
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.registry = registry
        self._spec = (pipeline, backend, base_url, api_key)
        self._oneoff = load_backend(pipeline, backend, base_url, api_key=api_key)  # validates the choice now
        self.context = self._oneoff.context
        #: one line saying the backend fell back to the offline engine, and why (or None)
        self.note = self._oneoff.note
        #: the pipeline file's warnings (unset ``${env:VAR}``...), when ``pipeline`` is given
        self.warnings = list(self._oneoff.warnings)
        if assistants is not None:  # the assistants file to look presets up in (`oaipipe assistants --file`)
            self.context.settings["assistants"] = str(Path(assistants).resolve())
        self.preset = preset_for(assistant, self.context)
        self.cache_dir = (Path(cache_dir) if cache_dir is not None else Path.cwd() / ".oaipipe" / "cache") \
            if cache else None
        #: calls, tokens and cost of every call this client made (as a run counts them)
        self.stats = RunStats(prices=PriceTable(None), priced=self._oneoff.backend.priced)
        self._lock = threading.Lock()
        self._asked = 0
        self._session = "client-" + _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")

    def __repr__(self) -> str:
        backend = self._oneoff.backend
        return f"Client(backend={backend.name!r}, model={getattr(backend.options, 'model', None)!r})"

    @property
    def backend_name(self) -> str:
        return self._oneoff.backend.name

    @property
    def cost_usd(self) -> float:
        """What the calls of this client cost so far (USD)."""
        return self.stats.cost_usd

    def set_assistant(self, name: str | None) -> None:
        """Use the assistant preset ``name`` (None: none) for the following calls."""
        from .oneoff import preset_for

        self.preset = preset_for(name, self.context)

    # --- the machinery ---------------------------------------------------------------------------------

    async def _with_backend(self, fn: Callable[[Any, Any], Awaitable[T]]) -> T:
        """Call ``fn(backend, chain)`` with a backend built for this event loop, closed afterwards."""
        from .calls import CallChain
        from .oneoff import load_backend

        pipeline, backend_name, base_url, api_key = self._spec
        oneoff = load_backend(pipeline, backend_name, base_url, api_key=api_key)
        backend = oneoff.backend
        try:
            return await fn(backend, CallChain.for_backend(backend, cache_dir=self.cache_dir))
        finally:
            await backend.aclose()

    async def _score(self, text: str, backend: Any, chain: Any) -> Sentiment | None:
        if self.analyzer_spec is None or not text:
            return None
        from .base import StepContext

        assert self.context.host is not None
        analyzer = self.context.host.analyzer(self.analyzer_spec, self.context)
        ctx = StepContext(record=Record("ask", {}), backend=backend, host=self.context.host, call=chain)
        return await analyzer.analyze_with(text, ctx)

    async def _exchange(self, content: Any, *, system: str | None, model: str | None, text: str, step: str,
                        response_format: dict[str, Any] | None = None, sentiment: bool = True) -> Reply:
        from .oneoff import chat_request

        async def go(backend: Any, chain: Any) -> Reply:
            request = chat_request(content, system=system if system is not None else self.system,
                                   model=model or self.model, preset=self.preset, backend=backend,
                                   response_format=response_format, temperature=self.temperature,
                                   max_tokens=self.max_tokens, step=f"client:{step}")

            async def counted(req: Any) -> ChatResponse:
                resp = await chain(req)
                with self._lock:
                    self._last_cost = self.stats.add_call(req.step, resp, batch=backend.batched,
                                                          requested=req.model)
                return resp

            response = await counted(request)
            cost = self._last_cost
            price = self.stats.prices.lookup(response.model, priced=self.stats.priced, requested=request.model)
            input_sentiment = await self._score(text, backend, counted) if sentiment else None
            reply_sentiment = await self._score(response.text, backend, counted) if sentiment else None
            reply = Reply(text=response.text, sentiment=reply_sentiment, input_sentiment=input_sentiment,
                          usage=response.usage, cost_usd=cost if (price.known or not self.stats.priced) else None,
                          model=response.model, backend=response.backend, parsed=response.parsed,
                          cached=response.cached, response=response)
            if self.dialogue is not None:
                self._log(request, reply, step)
            return reply

        return await self._with_backend(go)

    def _log(self, request: Any, reply: Reply, step: str) -> None:
        """Append the exchange to the dialogue log (the ``dialogue-jsonl`` sink's line format)."""
        from .builtin.sink_dialogue import safe_content

        assert self.dialogue is not None
        with self._lock:
            self._asked += 1
            number = self._asked
        messages = []
        for message in request.messages:
            sentiment = reply.input_sentiment if message.get("role") == "user" else None
            messages.append({"role": message.get("role"), "content": safe_content(message.get("content")),
                             "sentiment": sentiment.to_dict() if sentiment else None})
        messages.append({"role": "assistant", "content": reply.text,
                         "sentiment": reply.sentiment.to_dict() if reply.sentiment else None})
        line = {"run_id": self._session, "record_id": f"{step}-{number}", "step": step,
                "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "model": reply.model,
                "backend": reply.backend, "usage": reply.usage.to_dict(),
                "latency": round(reply.response.latency if reply.response else 0.0, 4),
                "request_id": reply.response.request_id if reply.response else None, "cached": reply.cached,
                "messages": messages}
        from .errors import redact_data

        text = json.dumps(redact_data(line), ensure_ascii=False, default=str) + "\n"
        self.dialogue.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.dialogue.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()

    # --- ask ------------------------------------------------------------------------------------------

    async def aask(self, message: str, system: str | None = None, *, model: str | None = None,
                   sentiment: bool = True) -> Reply:
        """Async :meth:`ask`."""
        return await self._exchange(message, system=system, model=model, text=message, step="ask",
                                    sentiment=sentiment)

    def ask(self, message: str, system: str | None = None, *, model: str | None = None,
            sentiment: bool = True) -> Reply:
        """Send one message; the reply with the sentiment of both sides (``sentiment=False``: not scored),
        appended to the dialogue log when one is set."""
        return run_sync(self.aask(message, system, model=model, sentiment=sentiment))

    # --- sentiment ------------------------------------------------------------------------------------

    async def asentiment(self, text: str) -> Sentiment | None:
        """Async :meth:`sentiment`."""

        async def go(backend: Any, chain: Any) -> Sentiment | None:
            return await self._score(text, backend, chain)

        return await self._with_backend(go)

    def sentiment(self, text: str) -> Sentiment | None:
        """The sentiment of ``text`` by the client's analyzer (``oaipipe sentiment TEXT``)."""
        return run_sync(self.asentiment(text))

    # --- images ---------------------------------------------------------------------------------------

    async def adescribe_image(self, path: str | Path, prompt: str | None = None,
                              schema: dict[str, Any] | None = None, *, detail: str = "auto",
                              model: str | None = None) -> Reply:
        """Async :meth:`describe_image`."""
        from .assistants import schema_response_format
        from .images import load_image

        prompt = prompt or "What's in this image?"
        image = await asyncio.to_thread(load_image, str(path), Path.cwd(), detail=detail)
        content = [{"type": "text", "text": prompt}, image.part()]
        response_format = schema_response_format(schema, default_name="description") if schema else None
        return await self._exchange(content, system=None, model=model, text=prompt, step="describe_image",
                                    response_format=response_format, sentiment=False)

    def describe_image(self, path: str | Path, prompt: str | None = None, schema: dict[str, Any] | None = None,
                       *, detail: str = "auto", model: str | None = None) -> Reply:
        """Describe an image (a path, an http(s) URL or a data URL); with ``schema`` (a JSON schema) the
        reply is JSON following it, decoded in ``reply.parsed``."""
        return run_sync(self.adescribe_image(path, prompt, schema, detail=detail, model=model))

    # --- listings -------------------------------------------------------------------------------------

    async def amodels(self) -> list[ModelInfo]:
        """Async :meth:`models`."""

        async def go(backend: Any, chain: Any) -> list[ModelInfo]:
            return list(await backend.list_models())

        return await self._with_backend(go)

    def models(self) -> list[ModelInfo]:
        """The models the backend offers (the offline engine's, without a key)."""
        return run_sync(self.amodels())

    def assistants(self) -> list[Any]:
        """The assistant presets found (``assistants.yaml`` here or in ``$OAIPIPE_HOME``, or the pipeline's)."""
        from .assistants import find_registry, load_presets

        path = find_registry(None, pipeline_setting=self.context.settings.get("assistants"),
                             base_dir=self.context.base_dir)
        return list(load_presets(path).values()) if path is not None else []

    async def aassistants(self) -> list[Any]:
        """Async :meth:`assistants`."""
        return await asyncio.to_thread(self.assistants)

    # --- training -------------------------------------------------------------------------------------

    def train(self, data: str | Path | list[dict[str, Any]], method: str = "supervised",
              select: dict[str, Any] | None = None, *, model: str = DEFAULT_FINE_TUNE_MODEL, trainer: str = "local",
              system: str | None = None, suffix: str | None = None, wait: bool = True,
              hyperparameters: dict[str, Any] | None = None, force: bool = False,
              timeout: float | None = None) -> Any:
        """Build, validate and launch a fine-tuning job, as ``oaipipe train`` does; returns the
        :class:`~oaipipe.jobs.Job` (finished when ``wait``). ``data``: a CSV/JSONL file, a folder, a
        dialogue log, or a list of records (dicts) written to a JSONL file first; ``select``: keep only
        matching examples (``{"sentiment": "positive"}``); ``trainer``: ``local`` (offline) or ``openai``."""
        from .jobs import JobRegistry
        from .training import (
            build_dataset,
            default_dataset_path,
            ensure_valid,
            follow_job,
            launch_job,
            raise_if_failed,
            report_for,
            write_dataset,
        )

        source = self._training_file(data)
        hp = dict(hyperparameters or {})
        trainer_obj = self._trainer(trainer, {"model": model, "method": method, "suffix": suffix,
                                              "hyperparameters": hp})
        result = build_dataset(source, method=method, select=dict(select or {}), system=system)
        report = report_for(result, model=model, source=str(source))
        ensure_valid(report)
        files = write_dataset(result, default_dataset_path(result, Path(source).stem))
        registry = JobRegistry(self.registry)
        launched = launch_job(trainer_obj, files, base_model=model, registry=registry, force=force,
                              base_url=getattr(trainer_obj.options, "base_url", None), suffix=suffix,
                              hyperparameters=hp, description=f"{Path(source).name}: {files.n_train} {method} "
                                                               f"examples (oaipipe.Client)")
        job = launched.job
        if wait and not job.finished:
            job = follow_job(trainer_obj, job, registry=registry, timeout=timeout)
        if job.finished:
            raise_if_failed(job)
        return job

    async def atrain(self, data: str | Path | list[dict[str, Any]], method: str = "supervised",
                     select: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Async :meth:`train` (in a worker thread)."""
        return await asyncio.to_thread(self.train, data, method, select, **kwargs)

    def _training_file(self, data: str | Path | list[dict[str, Any]]) -> Path:
        if isinstance(data, str | Path):
            return Path(data)
        from .fsutil import write_text_atomic
        from .home import home_dir

        rows = list(data)
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
        import hashlib

        path = home_dir() / "datasets" / f"records-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        return path

    def _trainer(self, name: str, block: dict[str, Any]) -> Any:
        from .base import Context

        assert self.context.host is not None
        host = self.context.host
        reg = host.get("trainer", name, key="trainer")
        fields = reg.cls.Options.model_fields
        pipeline, backend_name, base_url, api_key = self._spec
        block = {"type": name, **block, "base_url": base_url, "api_key": api_key}
        block = {k: v for k, v in block.items() if v not in (None, {}) and k in fields or k == "type"}
        return host.build("trainer", block, Context(host=host, base_dir=self.context.base_dir), key="trainer")

    def jobs(self) -> list[Any]:
        """Every fine-tuning job oaipipe launched (the job registry; ``oaipipe jobs list``)."""
        from .jobs import JobRegistry

        return JobRegistry(self.registry).list()

    async def ajobs(self) -> list[Any]:
        """Async :meth:`jobs`."""
        return await asyncio.to_thread(self.jobs)
