"""Build a runnable pipeline from a pipeline file: plugins loaded, every block validated, components built.

Building does no I/O beyond reading the pipeline file, importing plugins and peeking at the source's
header: ``oaipipe validate`` is exactly :func:`load_pipeline` without running.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import Backend, BackendOptions, Context, Sink, Source, Step
from .cache import check_cache
from .config import LoadedConfig, load_config
from .errors import ConfigError, OaipipeError, redact
from .plugins import PluginHost

__all__ = ["Pipeline", "build_backend", "endpoint", "fingerprint", "fingerprint_parts", "load_pipeline"]


@dataclass
class Pipeline:
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

    @property
    def name(self) -> str:
        return self.loaded.config.name

    @property
    def file(self) -> str:
        return str(self.loaded.path)

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
        if self.backend.name == "local":
            text += " (embedded offline engine: deterministic replies, not GPT)"
        elif where:
            text += f" at {redact(str(where))}"
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


def load_pipeline(
    path: str | Path,
    overrides: list[str] | None = None,
    *,
    disabled: list[str] | None = None,
    environ: dict[str, str] | None = None,
    entry_points: bool = True,
) -> Pipeline:
    """Load and validate a pipeline file and build its components (nothing runs)."""
    loaded = load_config(path, overrides, environ=environ)
    cfg = loaded.config
    file = str(path)
    host = PluginHost(
        [],
        base_dir=loaded.base_dir,
        disabled=[*cfg.disable_plugins, *(disabled or [])],
        entry_points=entry_points,
        pipeline_file=file,
    )
    for i, item in enumerate(cfg.plugins):
        try:
            host.load(item)
        except OaipipeError as exc:
            line, col = loaded.where(f"plugins.{i}")
            raise ConfigError(exc.message, file=file, line=line, column=col, key=f"plugins.{i}",
                              hint=exc.hint) from exc
    host.check_pending()
    host.check_disabled()
    assistants = loaded.base_dir / cfg.assistants if cfg.assistants else None
    context = Context(base_dir=loaded.base_dir, host=host, pipeline_name=cfg.name,
                      settings={"assistants": str(assistants) if assistants else None,
                                "pipeline_file": str(loaded.path), "prices": cfg.prices,
                                "unset_env": dict(loaded.unset_env)})
    backend, note = build_backend(loaded.data.get("backend") or {"type": "local"}, host=host, context=context,
                                  file=file, lines=loaded.where, offline_fallback=cfg.run.offline_fallback)
    source = host.build("source", loaded.data["source"], context, key="source", file=file, lines=loaded.where)
    assert isinstance(source, Source)
    steps = [_built(Step, "step", block, i, "each step must be a mapping with `type:` and `output:`",
                    host=host, context=context, loaded=loaded, file=file)
             for i, block in enumerate(loaded.data.get("steps") or [])]
    sinks = [_built(Sink, "sink", block, i, "each sink must be a mapping with `type:`",
                    host=host, context=context, loaded=loaded, file=file)
             for i, block in enumerate(loaded.data.get("sinks") or [])]
    if cfg.train is not None:
        from .training import build_train_block  # validates every key of `train:`; no network

        build_train_block(cfg.train, host=host, context=context, backend_options=backend.options,
                          file=file, lines=loaded.where)
    pipeline = Pipeline(loaded=loaded, host=host, context=context, backend=backend, source=source, steps=steps,
                        sinks=sinks, backend_note=note, warnings=list(loaded.warnings))
    check_name(pipeline)
    check_templates(pipeline)
    check_sink_paths(pipeline)
    check_train_select(pipeline)
    check_cache(pipeline)  # run.cache names a registered store with valid options
    return pipeline


def check_name(pipeline: Pipeline) -> None:
    """``name`` names the run's folder under ``run.dir``: it must stay inside it (no ``..``, ``.``, path
    separators or absolute paths)."""
    name = pipeline.name
    if name.strip() not in ("", ".", "..") and not any(c in name for c in "/\\\0"):
        return
    line, col = pipeline.loaded.where("name")
    raise ConfigError(
        f"{name!r} cannot name a folder inside run.dir ({pipeline.loaded.config.run.dir}): it would put "
        f"the run directory elsewhere", file=pipeline.file, line=line, column=col, key="name",
        hint="use a plain name such as reviews-demo (letters, digits, '-', '_', '.'; no '/', '\\' or '..')",
    )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal after resolving symlinks, or (when both exist) the same
    inode (a hard link, a bind mount)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_sink_paths(pipeline: Pipeline) -> None:
    """Two sinks writing one file would interleave their lines, and a sink writing the source (or the
    pipeline file) would destroy the input while it is read: refuse both."""
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
        for what, input_path in inputs:
            if _same_file(full, input_path):
                raise ConfigError(
                    f"sink {i} would write {path}, which is {what}: the input would be overwritten while it is "
                    f"read", file=pipeline.file, line=line, column=col, key=f"sinks.{i}.path",
                    hint="give the sink its own path, e.g. out/records.jsonl",
                )
        if resolved in seen:
            raise ConfigError(f"sinks {seen[resolved]} and {i} both write {path}", file=pipeline.file, line=line,
                              column=col, key=f"sinks.{i}.path", hint="give each sink its own path")
        seen[resolved] = i


def check_train_select(pipeline: Pipeline) -> None:
    """``train.select`` must name fields the records will have, and sentiment labels that exist."""
    import difflib

    train = pipeline.train or {}
    select = train.get("select") or {}
    if not isinstance(select, dict) or not select:
        return
    fields = pipeline.source.fields()
    sentiment_fields = {"sentiment"}
    produced: list[str] = []
    for step in pipeline.steps:
        produced += step.outputs()
        if step.name == "sentiment":
            sentiment_fields.add(step.options.output)
    known = None if fields is None else {*fields, *produced, "sentiment"}
    for key, value in select.items():
        line, col = pipeline.loaded.where(f"train.select.{key}")
        if known is not None and key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ConfigError(
                f"selects on field '{key}', which no record will have", file=pipeline.file, line=line, column=col,
                key=f"train.select.{key}",
                hint=(f"did you mean '{close[0]}'? " if close else "") + f"fields: {', '.join(sorted(known))}",
            )
        values = value if isinstance(value, list) else [value]
        if key in sentiment_fields:
            for v in values:
                if v not in ("positive", "negative", "neutral"):
                    raise ConfigError(
                        f"'{key}' holds a sentiment label, and {v!r} is not one", file=pipeline.file, line=line,
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


def check_templates(pipeline: Pipeline) -> None:
    """Every ``{field}`` a step reads must come from the source or an earlier step (when the source says)."""
    available = pipeline.source.fields()
    if available is None:
        return
    have = set(available)
    loaded = pipeline.loaded
    for i, step in enumerate(pipeline.steps):
        for opt, names in step.template_fields().items():
            for name in names:
                if name not in have:
                    import difflib

                    close = difflib.get_close_matches(name, sorted(have), n=1)
                    hint = f"did you mean '{{{close[0]}}}'? " if close else ""
                    if not name.isidentifier():
                        hint += "for literal braces (JSON in a prompt) write {{ and }}; "
                    hint += f"fields available at this step: {', '.join(sorted(have))}"
                    line, col = loaded.where(f"steps.{i}.{opt}")
                    raise ConfigError(
                        f"template names field '{name}', which neither the source nor an earlier step provides",
                        file=pipeline.file, line=line, column=col, key=f"steps.{i}.{opt}", hint=hint,
                    )
        have.update(step.outputs())


def _public(data: Any) -> Any:
    """A copy of the config data without secrets: values of keys named like one (``api_key``, ``token``,
    ``password``...) become ``***``, and any string is :func:`~oaipipe.errors.redact`-ed (keys, URL passwords)."""
    if isinstance(data, dict):
        return {k: ("***" if v and _SECRET_NAME.search(str(k)) else _public(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_public(v) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data


_SECRET_NAME = re.compile(r"(?i)key|secret|passw|(^|_)token$|(^|_)auth$|authorization|credential")


#: backend keys that change how calls are made, not what they answer (a resumed run may change them)
_VOLATILE_BACKEND_KEYS = ("concurrency", "timeout", "max_retries", "rpm", "tpm", "api_key", "record_timeout",
                          "base_url", "type")


def fingerprint_parts(pipeline: Pipeline) -> dict[str, str]:
    """Hashes of what decides the records' results: the source, the steps, the model and its parameters.

    Sinks, run settings and *where* calls go (backend type, ``base_url``, timeouts, limits) are left out:
    an unfinished run may be resumed against another server or transport. The resolved backend's name
    is in (the offline engine answers differently from a model).
    """
    data = pipeline.loaded.data
    backend = _public(dict(data.get("backend") or {}))
    for volatile in _VOLATILE_BACKEND_KEYS:
        backend.pop(volatile, None)
    backend["engine"] = "local" if pipeline.backend.name == "local" else "remote"
    source = dict(data.get("source") or {})
    source.pop("chunksize", None)  # how the input is read, not what it holds
    parts = {"source": source, "steps": data.get("steps"), "backend": backend}
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:12]
            for k, v in parts.items()}


def fingerprint(pipeline: Pipeline) -> str:
    """One hash of :func:`fingerprint_parts`."""
    blob = json.dumps(fingerprint_parts(pipeline), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def endpoint(pipeline: Pipeline) -> str:
    """Where calls go: the server (a run finished against one server is not finished for another).

    The transport does not matter: ``openai``, ``requests`` and ``batch`` against one server are one endpoint.
    """
    base_url = getattr(pipeline.backend.options, "base_url", None)
    if base_url:
        return redact(str(base_url).rstrip("/"))  # kept in pipeline.json: no password of the URL
    return "https://api.openai.com/v1" if pipeline.backend.needs_api_key else f"backend:{pipeline.backend.name}"


def public_config(pipeline: Pipeline) -> dict[str, Any]:
    return _public(pipeline.loaded.data)
