"""Build a runnable pipeline from a pipeline file: plugins loaded, every block validated, components built.

Building does no I/O beyond reading the pipeline file, importing plugins and peeking at the source's
header: ``oaipipe validate`` is exactly :func:`load_pipeline` without running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import Backend, BackendOptions, Context, Sink, Source, Step
from .cache import check_cache
from .config import SECRET_KEY_NAME, LoadedConfig, Problems, load_config, load_config_data
from .errors import ConfigError, OaipipeError, redact
from .fsutil import same_file
from .lifecycle import check_models
from .plugins import PluginHost
from .pricing import PriceTable

__all__ = [
    "CHECKS",
    "BuiltPipeline",
    "build_backend",
    "build_pipeline",
    "load_pipeline",
    "load_pipeline_data",
    "pipeline_context",
    "plugin_host",
    "public_config",
    "public_data",
]


@dataclass
class BuiltPipeline:
    """Everything a run needs, built and validated."""

    loaded: LoadedConfig
    host: PluginHost
    context: Context
    backend: Backend
    source: Source
    steps: list[Step]
    sinks: list[Sink]
    #: one line saying the backend fell back to the local engine, and why (or None)
    backend_note: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: how the pipeline was loaded (``load_pipeline``'s arguments but the path): a worker process loads the
    #: same pipeline from its file with them (``run.workers``); None for a pipeline built another way
    load_args: dict[str, Any] | None = None
    #: the pipeline file as the user named it (``oaipipe validate p.yaml``: ``p.yaml``), which every message
    #: about the file names, as the per-block checks do; ``""`` for a pipeline built in code. (``file`` is the
    #: absolute path, which the run directory records.)
    shown_file: str = ""

    @property
    def name(self) -> str:
        return self.loaded.config.name

    @property
    def file(self) -> str:
        """The pipeline file, absolute (what the run directory records; messages name ``shown_file``); ``""``
        for a pipeline built in code."""
        return "" if self.loaded.in_code else str(self.loaded.path)

    @property
    def base_dir(self) -> Path:
        return self.loaded.base_dir

    @property
    def train(self) -> dict[str, Any] | None:
        return self.loaded.config.train

    def describe_backend(self) -> str:
        opts = self.backend.options
        model = getattr(opts, "model", "?")
        where = getattr(opts, "base_url", None)
        text = f"backend {self.backend.name}, model {model}"
        if self.backend.offline:
            text += f" ({self.backend.offline_note})"
        elif where:
            origin = getattr(opts, "origin_of", lambda name: None)("base_url")
            text += f" at {redact(str(where))}" + (f" (from {origin})" if origin else "")
        elif getattr(self.backend, "needs_api_key", False):
            from .keys import OPENAI_BASE_URL

            text += f" at {OPENAI_BASE_URL}"  # where the HTTP backends go when no base_url is set
        return text


def _resolved_key(backend_cls: type[Backend], options: BackendOptions) -> str | None:
    from .keys import resolve_api_key  # the transports' rule (a custom base_url gets no OpenAI key)

    return resolve_api_key(options)


def build_backend(
    block: dict[str, Any],
    *,
    host: PluginHost,
    base_dir: Path | None = None,
    context: Context | None = None,
    file: str | None = None,
    lines: Any = None,
    offline_fallback: bool = True,
) -> tuple[Backend, str | None]:
    """Build the backend of ``block``; fall back to ``local`` when it needs an OpenAI key and has none.

    Returns the backend and a one-line note when it fell back (else ``None``).
    """
    ctx = context or Context(base_dir=base_dir or Path.cwd(), host=host)
    block = dict(block or {})
    block.setdefault("type", "local")
    backend = host.build("backend", block, ctx, key="backend", file=file, lines=lines)
    assert isinstance(backend, Backend)
    note = None
    options = backend.options
    if (
        offline_fallback
        and backend.needs_api_key
        and isinstance(options, BackendOptions)
        and options.base_url is None
        and not _resolved_key(type(backend), options)
    ):
        local_block = {k: v for k, v in block.items() if k in BackendOptions.model_fields}
        local_block["type"] = "local"
        local_block.pop("api_key", None)
        local = host.build("backend", local_block, ctx, key="backend", file=file, lines=lines)
        assert isinstance(local, Backend)
        note = (f"no OPENAI_API_KEY set: backend '{block['type']}' falls back to the embedded offline engine "
                f"(set OPENAI_API_KEY, or backend.base_url for another server, to run for real)")
        backend = local
    return backend, note


def plugin_host(
    loaded: LoadedConfig,
    *,
    file: str | None = None,
    disabled: list[str] | None = None,
    entry_points: bool = True,
    problems: Problems | None = None,
) -> PluginHost:
    """The plugins of a pipeline file: built-ins, entry points and its ``plugins:`` (errors at their line).

    With ``problems``, a plugin that cannot be loaded is recorded there and the others still load.
    """
    file = file or str(loaded.path)
    cfg = loaded.config
    own = problems if problems is not None else Problems(file, loaded.where)
    host = PluginHost([], base_dir=loaded.base_dir, disabled=[*cfg.disable_plugins, *(disabled or [])],
                      entry_points=entry_points, pipeline_file=file)
    for i, item in enumerate(cfg.plugins):
        with own.collect():
            try:
                host.load(item)
            except OaipipeError as exc:
                line, col = loaded.where(f"plugins.{i}")
                raise ConfigError(exc.message, file=file, line=line, column=col, key=f"plugins.{i}",
                                  hint=exc.hint) from exc
    with own.collect():
        host.check_pending()
    with own.collect():
        host.check_disabled()
    if problems is None:
        own.raise_if_any()
    return host


def pipeline_context(loaded: LoadedConfig, host: PluginHost) -> Context:
    """What every component of a pipeline file is built with: its folder, plugins, presets, prices."""
    cfg = loaded.config
    assistants = loaded.base_dir / cfg.assistants if cfg.assistants else None
    return Context(base_dir=loaded.base_dir, host=host, pipeline_name=cfg.name, shown_file=loaded.shown_file,
                   settings={"assistants": str(assistants) if assistants else None,
                             "pipeline_file": str(loaded.path), "prices": cfg.prices, "models": cfg.models,
                             "unset_env": dict(loaded.unset_env)})


def load_pipeline(
    path: str | Path,
    overrides: list[str] | None = None,
    *,
    disabled: list[str] | None = None,
    environ: dict[str, str] | None = None,
    entry_points: bool = True,
) -> BuiltPipeline:
    """Load and validate a pipeline file and build its components (nothing runs).

    Every problem of the file is found in one pass (unknown keys, bad values, unknown plugin names, bad
    plugin options, plugins or input files that cannot be read), then the checks across blocks
    (:data:`CHECKS`) run once every block is valid. One problem is raised as it is; several as one
    :class:`ConfigError` whose ``problems`` lists each with its file, line and fix.
    """
    problems = Problems(str(path))
    loaded = load_config(path, overrides, environ=environ, problems=problems)
    problems.file = file = loaded.shown_file  # a folder's FOLDER/pipeline.yaml, as load_config names it
    pipeline = build_pipeline(loaded, problems, file=file, disabled=disabled, entry_points=entry_points)
    # how to build it again from its file (the workers of a process pool or Ray do)
    pipeline.load_args = {"overrides": list(overrides or []), "disabled": list(disabled or []),
                          "entry_points": entry_points}
    return pipeline


def load_pipeline_data(
    data: dict[str, Any],
    base_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    disabled: list[str] | None = None,
    environ: dict[str, str] | None = None,
    entry_points: bool = True,
    settings: dict[str, Any] | None = None,
) -> BuiltPipeline:
    """:func:`load_pipeline` for pipeline data given in code: the same validation, plugins and checks; each
    problem names its key path (``steps.1.prompt``) instead of a line. ``settings`` are added to the
    components' :attr:`Context.settings` (the in-memory input of the ``records`` source)."""
    problems = Problems("")
    loaded = load_config_data(data, base_dir, overrides, environ=environ, problems=problems)
    return build_pipeline(loaded, problems, file="", disabled=disabled, entry_points=entry_points,
                          settings=settings)


def build_pipeline(loaded: LoadedConfig, problems: Problems, *, file: str, disabled: list[str] | None = None,
                   entry_points: bool = True, settings: dict[str, Any] | None = None) -> BuiltPipeline:
    """Build and check every block of a loaded config (``file``: the name errors carry; ``""`` for none)."""
    problems.where, problems.origin = loaded.where, loaded.origin
    if "prices" not in loaded.invalid and "models" not in loaded.invalid:
        with problems.collect(key="prices"):  # every price finite and >= 0, `models:` under `prices:`
            PriceTable(loaded.config.prices, file=file, lines=loaded.where, models=loaded.config.models)
    host = plugin_host(loaded, file=file or str(loaded.path), disabled=disabled, entry_points=entry_points,
                       problems=problems)
    context = pipeline_context(loaded, host)
    context.settings.update(settings or {})
    parts = _build_parts(loaded, host, context, file, problems)
    problems.raise_if_any()
    pipeline = BuiltPipeline(loaded=loaded, host=host, context=context, warnings=list(loaded.warnings),
                             shown_file=file, **parts)
    for check in CHECKS:
        with problems.collect():
            check(pipeline)
    problems.raise_if_any()
    return pipeline


def _build_parts(loaded: LoadedConfig, host: PluginHost, context: Context, file: str,
                 problems: Problems) -> dict[str, Any]:
    """Build each block of the file that passed the top-level check; record what fails in ``problems``."""
    data, cfg, skip = loaded.data, loaded.config, loaded.invalid
    parts: dict[str, Any] = {"backend": None, "backend_note": None, "source": None, "steps": [], "sinks": []}
    if "backend" not in skip:
        with problems.collect():
            parts["backend"], parts["backend_note"] = build_backend(
                data.get("backend") or {"type": "local"}, host=host, context=context, file=file,
                lines=loaded.where, offline_fallback=cfg.run.offline_fallback)
    if "source" not in skip:
        with problems.collect():
            parts["source"] = host.build("source", data["source"], context, key="source", file=file,
                                         lines=loaded.where)
        if parts["source"] is not None:
            with problems.collect(key="source"):
                parts["source"].fields()  # reads the header: a missing file or column is reported here
    for kind, cls, shape_error in (("step", Step, "each step must be a mapping with `type:` and `output:`"),
                                   ("sink", Sink, "each sink must be a mapping with `type:`")):
        if f"{kind}s" in skip:
            continue
        for i, block in enumerate(data.get(f"{kind}s") or []):
            with problems.collect():
                parts[f"{kind}s"].append(_built(cls, kind, block, i, shape_error, host=host, context=context,
                                                loaded=loaded, file=file))
    if cfg.train is not None and "train" not in skip:
        from .training import build_train_block  # validates every key of `train:`; no network

        backend = parts["backend"]
        with problems.collect():
            build_train_block(cfg.train, host=host, context=context, file=file, lines=loaded.where,
                              backend_options=backend.options if backend is not None else None)
    return parts


def check_name(pipeline: BuiltPipeline) -> None:
    """``name`` names the run's folder under ``run.dir``: it must stay inside it (no ``..``, ``.``, path
    separators or absolute paths)."""
    name = pipeline.name
    if name.strip() not in ("", ".", "..") and not any(c in name for c in "/\\\0"):
        return
    line, col = pipeline.loaded.where("name")
    raise ConfigError(
        f"{name!r} cannot name a folder inside run.dir ({pipeline.loaded.config.run.dir}): it would put "
        f"the run directory elsewhere", file=pipeline.shown_file, line=line, column=col, key="name",
        hint="use a plain name such as reviews-demo (letters, digits, '-', '_', '.'; no '/', '\\' or '..')",
    )


def check_sink_paths(pipeline: BuiltPipeline) -> None:
    """Two sinks writing one file would interleave their lines, and a sink writing the source (or the
    pipeline file) would destroy the input while it is read: refuse both (every such sink is reported)."""
    problems = Problems(pipeline.shown_file)
    seen: dict[Path, int] = {}
    inputs: list[tuple[str, Path]] = [("the pipeline file", Path(pipeline.loaded.path))]
    source_path = getattr(pipeline.source.options, "path", None)
    if isinstance(source_path, str) and source_path:
        inputs.insert(0, (f"the source's file ({source_path})", pipeline.context.path(source_path)))
    for i, sink in enumerate(pipeline.sinks):
        path = getattr(sink.options, "path", None)
        if not path:
            continue
        full = pipeline.context.path(path)
        resolved = full.resolve()
        line, col = pipeline.loaded.where(f"sinks.{i}.path")
        clash = next((what for what, input_path in inputs if same_file(full, input_path)), None)
        if clash is not None:
            problems.add(ConfigError(
                f"sink {i} would write {path}, which is {clash}: the input would be overwritten while it is "
                f"read", file=pipeline.shown_file, line=line, column=col, key=f"sinks.{i}.path",
                hint="give the sink its own path, e.g. out/records.jsonl",
            ))
            continue
        if resolved in seen:
            problems.add(ConfigError(f"sinks {seen[resolved]} and {i} both write {path}", file=pipeline.shown_file,
                                     line=line, column=col, key=f"sinks.{i}.path",
                                     hint="give each sink its own path"))
            continue
        seen[resolved] = i
    problems.raise_if_any()


def check_train_select(pipeline: BuiltPipeline) -> None:
    """``train.select`` must name fields the records will have, and sentiment labels that exist."""
    train = pipeline.train or {}
    select = train.get("select") or {}
    if not isinstance(select, dict) or not select:
        return
    fields = pipeline.source.fields()
    sentiment_fields = {"sentiment"}
    produced: list[str] = []
    for step in pipeline.steps:
        produced += step.outputs()
        if step.writes_sentiment:
            sentiment_fields.add(step.options.output)
    known = None if fields is None else {*fields, *produced, "sentiment"}
    problems = Problems(pipeline.shown_file)
    for key, value in select.items():
        with problems.collect():
            _check_select(pipeline, key, value, known, sentiment_fields)
    problems.raise_if_any()


def _check_select(pipeline: BuiltPipeline, key: str, value: Any, known: set[str] | None,
                  sentiment_fields: set[str]) -> None:
    import difflib

    line, col = pipeline.loaded.where(f"train.select.{key}")
    if known is not None and key not in known:
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        raise ConfigError(
            f"selects on field '{key}', which no record will have", file=pipeline.shown_file, line=line, column=col,
            key=f"train.select.{key}",
            hint=(f"did you mean '{close[0]}'? " if close else "") + f"fields: {', '.join(sorted(known))}",
        )
    values = value if isinstance(value, list) else [value]
    if key in sentiment_fields:
        for v in values:
            if v not in ("positive", "negative", "neutral"):
                raise ConfigError(
                    f"'{key}' holds a sentiment label, and {v!r} is not one", file=pipeline.shown_file, line=line,
                    column=col, key=f"train.select.{key}", hint="use positive, negative or neutral",
                )


def _built(cls: type[Any], kind: str, block: Any, index: int, shape_error: str, *, host: PluginHost,
           context: Context, loaded: LoadedConfig, file: str) -> Any:
    """Build item ``index`` of the ``steps``/``sinks`` list and call its ``prepare()`` (errors carry its line)."""
    key = f"{kind}s.{index}"
    line, col = loaded.where(key)
    if not isinstance(block, dict):
        raise ConfigError(shape_error, file=file, line=line, column=col, key=key)
    component = host.build(kind, block, context, key=key, file=file, lines=loaded.where)
    assert isinstance(component, cls)
    try:
        component.prepare()
    except OaipipeError as exc:
        raise ConfigError(exc.message, file=file, line=line, column=col, key=key, hint=exc.hint) from exc
    return component


def check_templates(pipeline: BuiltPipeline) -> None:
    """Every ``{field}`` a step reads must come from the source or an earlier step (when the source says).

    Every field that is missing is reported, not only the first.
    """
    available = pipeline.source.fields()
    if available is None:
        return
    have = set(available)
    problems = Problems(pipeline.shown_file)
    for i, step in enumerate(pipeline.steps):
        for opt, names in step.template_fields().items():
            for name in names:
                if name not in have:
                    problems.add(_missing_field(pipeline, f"steps.{i}.{opt}", name, have))
        have.update(step.outputs())
    problems.raise_if_any()


def _missing_field(pipeline: BuiltPipeline, key: str, name: str, have: set[str]) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(name, sorted(have), n=1)
    hint = f"did you mean '{{{close[0]}}}'? " if close else ""
    if not name.isidentifier():
        hint += "for literal braces (JSON in a prompt) write {{ and }}; "
    hint += f"fields available at this step: {', '.join(sorted(have))}"
    line, col = pipeline.loaded.where(key)
    return ConfigError(f"template names field '{name}', which neither the source nor an earlier step provides",
                       file=pipeline.shown_file, line=line, column=col, key=key, hint=hint)


def check_deadline(pipeline: BuiltPipeline) -> None:
    """``deadline:`` is read only by ``tier: auto``: with another tier (or none) it would be ignored in
    silence, and a user who wrote it expects it to count. A warning naming the line says so."""
    options = pipeline.backend.options
    deadline, tier = getattr(options, "deadline", None), getattr(options, "tier", None)
    if deadline is None or tier == "auto":
        return
    line, _col = pipeline.loaded.where("backend.deadline")
    origin = pipeline.loaded.origin("backend.deadline") or "--set"
    where = f"{pipeline.shown_file}:{line}" if line else f"{pipeline.shown_file} ({origin})"
    now = f"with tier: {tier}" if tier else "without `tier:`"
    pipeline.warnings.append(f"{where}: backend.deadline: {deadline} has no effect {now}; only `tier: auto` "
                             f"plans against a deadline (set `tier: auto`, or remove the deadline)")


def check_executor(pipeline: BuiltPipeline) -> None:
    """``run.executor: ray`` needs Ray installed: said at ``validate``, with the line, not mid-run."""
    if pipeline.loaded.config.run.executor != "ray":
        return
    from .extras import missing

    error = missing("ray", extra="ray", feature="run.executor: ray")
    if error is not None:
        line, col = pipeline.loaded.where("run.executor")
        raise ConfigError(error.message, file=pipeline.shown_file, line=line, column=col, key="run.executor",
                          hint=f"{error.hint}, or set run.executor: local")


#: the checks across blocks :func:`load_pipeline` runs once every block is valid; each raises a
#: :class:`ConfigError` (with every problem it found in ``problems``)
CHECKS: tuple[Callable[[BuiltPipeline], None], ...] = (check_name, check_templates, check_sink_paths, check_cache,
                                                  check_train_select, check_models, check_deadline,
                                                  check_executor)


def public_data(data: Any) -> Any:
    """A copy of the config data without secrets: values of keys named like one (``api_key``, ``token``,
    ``password``...) become ``***``, and any string is :func:`~oaipipe.errors.redact`-ed (keys, URL passwords)."""
    if isinstance(data, dict):
        return {k: ("***" if v and SECRET_KEY_NAME.search(str(k)) else public_data(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [public_data(v) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data


def public_config(pipeline: BuiltPipeline) -> dict[str, Any]:
    """The pipeline's data as run, without secrets (what ``pipeline.json`` of a run holds)."""
    return public_data(pipeline.loaded.data)
