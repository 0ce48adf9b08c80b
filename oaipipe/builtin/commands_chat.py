"""Commands ``models``, ``ask`` and ``describe``: one-off calls through any backend.

The backend comes from ``--backend``/``--base-url``, or from a pipeline file's ``backend:`` block
(``--pipeline FILE``; ``models`` also takes it as an argument). Without either, the ``openai`` backend is
used when ``OPENAI_API_KEY`` is set, a ``--base-url`` server when given, and otherwise the embedded
offline engine, with one line on stderr saying so.

Keys follow :mod:`oaipipe.keys`: ``OPENAI_API_KEY`` only ever goes to https://api.openai.com; a
``--base-url`` server gets a key only from ``--api-key-env VAR``. A ``--pipeline``'s ``api_key`` was
named for that pipeline's server: it does not follow ``--base-url`` to another one.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import click

from ..assistants import AssistantPreset, get_preset, schema_response_format
from ..base import Backend, Context
from ..errors import (
    AuthenticationError,
    BackendConnectionError,
    BadRequestError,
    ConfigError,
    ImageError,
)
from ..hookspecs import hookimpl
from ..images import load_image
from ..types import ChatRequest, ChatResponse, ModelInfo

__all__ = ["cli_backend", "list_models_report"]


def cli_backend(
    pipeline: str | None = None,
    backend: str | None = None,
    base_url: str | None = None,
    *,
    quick: bool = False,
) -> tuple[Backend, str | None, Context]:
    """The backend a one-off command uses, the fallback note (or ``None``) and the context."""
    from ..pipeline import build_backend
    from ..plugins import PluginHost

    block: dict[str, Any]
    settings: dict[str, Any] = {"assistants": None}
    base_dir = Path.cwd()
    extra_plugins: list[str] = []
    disabled: list[str] = []
    warnings: list[str] = []
    if pipeline:
        from ..config import load_config

        loaded = load_config(pipeline)
        block = dict(loaded.data.get("backend") or {"type": "local"})
        base_dir = loaded.base_dir
        cfg = loaded.config
        extra_plugins, disabled = list(cfg.plugins), list(cfg.disable_plugins)
        if cfg.assistants:
            settings["assistants"] = str(base_dir / cfg.assistants)
        settings["unset_env"] = dict(loaded.unset_env)
        warnings = [f"warning: {w}" for w in loaded.warnings]  # unset ${env:VAR}, values too short to mask
        offline_fallback = cfg.run.offline_fallback
    else:
        block = {"type": "openai"}
        offline_fallback = True
    if backend:
        if backend != block.get("type"):
            keep = {"model", "base_url", "api_key", "timeout", "concurrency"}
            block = {k: v for k, v in block.items() if k in keep}
        block["type"] = backend
    if base_url:
        if base_url != block.get("base_url"):  # the pipeline's key was named for its own server
            block.pop("api_key", None)
            settings.pop("unset_env", None)
        block["base_url"] = base_url
    ctx = click.get_current_context(silent=True)
    key_env = ctx.meta.get("oaipipe.api_key_env") if ctx is not None else None
    if key_env:
        if not os.environ.get(key_env):
            raise ConfigError(f"--api-key-env {key_env}: that environment variable is not set",
                              hint=f"export {key_env}=... first")
        block["api_key"] = os.environ[key_env]
    host = PluginHost(base_dir=base_dir, disabled=disabled)
    for item in extra_plugins:
        host.load(item)
    if quick and not _offline(host, block):  # a quick answer from a server: one retry at most
        block.setdefault("max_retries", 1)
    context = Context(base_dir=base_dir, host=host, settings=settings)
    built, note = build_backend(block, host=host, context=context, offline_fallback=offline_fallback)
    if warnings:
        note = "\n".join([*warnings, *([note] if note else [])])
    return built, note, context


def _offline(host: Any, block: dict[str, Any]) -> bool:
    """Whether the backend ``block`` names is :attr:`~oaipipe.base.Backend.offline` (makes no network call)."""
    registered = host.registry.get("backend", {}).get(str(block.get("type", "local")))
    return registered is not None and issubclass(registered.cls, Backend) and registered.cls.offline


def _run(coro_fn: Any, backend: Backend) -> Any:
    async def main() -> Any:
        try:
            return await coro_fn()
        finally:
            await backend.aclose()

    return asyncio.run(main())


def _where(backend: Backend) -> str:
    return getattr(backend, "base_url", None) or getattr(backend.options, "base_url", None) or "the local engine"


def list_models_report(backend: Backend, note: str | None, context: Context) -> dict[str, Any]:
    """What ``oaipipe models`` shows: the backend's models, the local engine's, and what went wrong."""
    from ..plugins import PluginHost

    host = context.host or PluginHost()
    report: dict[str, Any] = {"backend": backend.name, "base_url": getattr(backend.options, "base_url", None),
                              "note": note, "models": [], "local_models": [], "problem": None}
    local: Backend | None = None
    if not backend.offline:
        built = host.build("backend", {"type": "local"}, context)
        assert isinstance(built, Backend)
        local = built
    models: list[ModelInfo] = []
    try:
        models = _run(backend.list_models, backend)
    except AuthenticationError as exc:
        if exc.status is None:
            report["problem"] = ("no API key: set OPENAI_API_KEY (or `api_key: ${env:VAR}` in the backend block) "
                                 "to list OpenAI's models")
        else:
            report["problem"] = f"the key was refused (HTTP {exc.status}) by {_where(backend)}: {exc}"
        report["problem_kind"] = "auth"
    except BackendConnectionError as exc:
        report["problem"] = (f"cannot connect to {_where(backend)}: is `oaipipe serve` running (or the server "
                             f"at that address)? ({exc.message})")
        report["problem_kind"] = "connection"
    report["models"] = [m.__dict__ for m in models]
    if note and backend.offline:
        report["problem"] = report["problem"] or ("no API key: set OPENAI_API_KEY to list OpenAI's models; "
                                                  "showing the local engine's")
        report["problem_kind"] = "no-key"
    if local is not None:
        report["local_models"] = [m.__dict__ for m in _run(local.list_models, local)]
    if report["problem"] is None and not models:
        report["problem"] = f"{_where(backend)} answered with an empty model list"
        report["problem_kind"] = "empty"
    return report


def _preset(name: str | None, context: Context) -> AssistantPreset | None:
    if not name:
        return None
    return get_preset(name, pipeline_setting=context.settings.get("assistants"), base_dir=context.base_dir)


def _request(content: Any, *, system: str | None, model: str | None, preset: AssistantPreset | None,
             backend: Backend, response_format: dict[str, Any] | None = None,
             temperature: float | None = None, max_tokens: int | None = None, step: str = "cli") -> ChatRequest:
    if system is None and preset is not None:
        system = preset.instructions
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    opts = backend.options

    def pick(value: Any, name: str) -> Any:
        if value is None and preset is not None:
            value = getattr(preset, name)
        return value if value is not None else getattr(opts, name, None)

    if response_format is None and preset is not None:
        response_format = preset.effective_response_format()
    return ChatRequest(messages=messages, model=pick(model, "model"), temperature=pick(temperature, "temperature"),
                       max_tokens=pick(max_tokens, "max_tokens"), response_format=response_format, step=step)


def _emit_note(note: str | None) -> None:
    if note:
        click.echo(note, err=True)


def _remember_key_env(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta["oaipipe.api_key_env"] = value


def _backend_options(f: Any) -> Any:
    f = click.option("--api-key-env", metavar="VAR", expose_value=False, callback=_remember_key_env,
                     help="Environment variable holding the key for --base-url (OPENAI_API_KEY only goes to OpenAI)")(f)
    f = click.option("--base-url", help="Any OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1")(f)
    f = click.option("--backend", "backend_name", metavar="NAME",
                     help="Backend type: local, openai, requests, or a plugin's")(f)
    return f


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command("models")
    @click.argument("pipeline", required=False, type=click.Path(dir_okay=True))
    @_backend_options
    @click.option("--json", "as_json", is_flag=True, help="Print JSON")
    def models_cmd(pipeline: str | None, backend_name: str | None, base_url: str | None, as_json: bool) -> None:
        """List the backend's models, and the local engine's own."""
        backend, note, context = cli_backend(pipeline, backend_name, base_url, quick=True)
        report = list_models_report(backend, note, context)
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            if not backend.offline or not note:
                click.echo(f"{backend.name} backend ({_where(backend)}):")
                for m in report["models"]:
                    click.echo(f"  {m['id']}" + (f"  ({m['owned_by']})" if m.get("owned_by") else ""))
            if report["local_models"] or backend.offline:
                models = report["local_models"] if not backend.offline else report["models"]
                click.echo("local engine (offline, deterministic, not GPT):")
                for m in models:
                    click.echo(f"  {m['id']}")
            if report["problem"]:
                click.echo(report["problem"], err=True)
        kind = report.get("problem_kind")
        if kind == "auth":
            from ..cli import set_exit_code

            set_exit_code(AuthenticationError.exit_code)
        elif kind == "connection":
            from ..cli import set_exit_code

            set_exit_code(BackendConnectionError.exit_code)

    @cli.command("ask")
    @click.argument("message")
    @click.option("--system", help="System message")
    @click.option("--model", help="Model id (ft:... models work on the local engine and `oaipipe serve`)")
    @_backend_options
    @click.option("--assistant", help="Name of an assistant preset (see `oaipipe assistants`)")
    @click.option("--pipeline", type=click.Path(dir_okay=True), help="Use this pipeline file's backend and presets")
    @click.option("--temperature", type=float)
    @click.option("--max-tokens", type=int)
    @click.option("--json", "as_json", is_flag=True, help="Print the whole response as JSON")
    def ask_cmd(message: str, system: str | None, model: str | None, backend_name: str | None,
                base_url: str | None, assistant: str | None, pipeline: str | None, temperature: float | None,
                max_tokens: int | None, as_json: bool) -> None:
        """Send one message and print the reply."""
        backend, note, context = cli_backend(pipeline, backend_name, base_url)
        _emit_note(note)
        preset = _preset(assistant, context)
        request = _request(message, system=system, model=model, preset=preset, backend=backend,
                           temperature=temperature, max_tokens=max_tokens, step="cli:ask")
        resp: ChatResponse = _run(lambda: backend.chat(request), backend)
        if as_json:
            click.echo(json.dumps(resp.to_dict(), indent=2, ensure_ascii=False))
        else:
            click.echo(resp.text)

    @cli.command("describe")
    @click.argument("images", nargs=-1, required=True)
    @click.option("--prompt", default="What's in this image?", show_default=True)
    @click.option("--system", help="System message")
    @click.option("--detail", type=click.Choice(["auto", "low", "high"]), default="auto", show_default=True)
    @click.option("--schema", "schema_file", type=click.Path(exists=True, dir_okay=False),
                  help="JSON schema file: the reply is JSON following it")
    @click.option("--model", help="Model id")
    @_backend_options
    @click.option("--assistant", help="Name of an assistant preset")
    @click.option("--pipeline", type=click.Path(dir_okay=True), help="Use this pipeline file's backend and presets")
    @click.option("--together", is_flag=True, help="Send all images in one request instead of one each")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON lines: image, reply, parsed, usage")
    def describe_cmd(images: tuple[str, ...], prompt: str, system: str | None, detail: str,
                     schema_file: str | None, model: str | None, backend_name: str | None, base_url: str | None,
                     assistant: str | None, pipeline: str | None, together: bool, as_json: bool) -> None:
        """Describe images (paths, http(s) URLs or data URLs) with a vision model."""
        response_format = None
        if schema_file:
            try:
                schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--schema file is not valid JSON: {exc}", file=schema_file,
                                  hint="give a JSON schema object, e.g. {\"type\": \"object\", ...}") from None
            if not isinstance(schema, dict):
                raise ConfigError("--schema must hold a JSON object (a schema)", file=schema_file)
            response_format = schema_response_format(schema, default_name="description")
        backend, note, context = cli_backend(pipeline, backend_name, base_url)
        _emit_note(note)
        preset = _preset(assistant, context)
        groups = [list(images)] if together else [[img] for img in images]
        failed = 0

        async def describe_all() -> None:
            nonlocal failed
            for group in groups:
                label = ", ".join(group)
                try:
                    prepared = [load_image(src, Path.cwd(), detail=detail) for src in group]
                    content = [{"type": "text", "text": prompt}] + [p.part() for p in prepared]
                    request = _request(content, system=system, model=model, preset=preset, backend=backend,
                                       response_format=response_format, step="cli:describe")
                    resp = await backend.chat(request)
                except (ImageError, BadRequestError) as exc:  # this image fails, the others go on
                    failed += 1
                    if as_json:
                        click.echo(json.dumps({"image": label, "error": str(exc)}))
                    else:
                        click.echo(f"{label}: error: {exc}", err=True)
                    continue
                tokens = [p.tokens_for(request.model or resp.model) for p in prepared]
                if as_json:
                    click.echo(json.dumps({
                        "image": label, "reply": resp.text, "parsed": resp.parsed, "model": resp.model,
                        "backend": resp.backend, "usage": resp.usage.to_dict(), "request_id": resp.request_id,
                        "image_tokens": None if None in tokens else sum(t or 0 for t in tokens),
                    }, ensure_ascii=False))
                else:
                    text = json.dumps(resp.parsed, indent=2, ensure_ascii=False) if resp.parsed is not None \
                        else resp.text
                    click.echo(f"{label}: {text}" if len(groups) > 1 else text)

        _run(describe_all, backend)
        if failed:
            from ..cli import set_exit_code

            set_exit_code(1)
