"""``oaipipe describe``: describe images (paths, http(s) URLs or data URLs) with a vision model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, ExitCode
from .common import backend_options, json_option, key_from_env, note

__all__ = ["describe"]


def _response_format(schema_file: str | None) -> dict[str, Any] | None:
    """The ``response_format`` of a ``--schema`` file (``None`` without one)."""
    if not schema_file:
        return None
    from ..assistants import schema_response_format

    try:
        schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--schema file is not valid JSON: {exc}", file=schema_file,
                          hint="give a JSON schema object, e.g. {\"type\": \"object\", ...}") from None
    if not isinstance(schema, dict):
        raise ConfigError("--schema must hold a JSON object (a schema)", file=schema_file)
    return schema_response_format(schema, default_name="description")


@dataclass
class _Job:
    """What every image (or group of images) is described with."""

    backend: Any
    prompt: str
    system: str | None
    model: str | None
    preset: Any
    detail: str
    response_format: dict[str, Any] | None
    as_json: bool
    many: bool


async def _describe(job: _Job, group: list[str]) -> bool:
    """Describe one group of images and print the reply; False (and the error printed) when it fails."""
    from ..errors import BadRequestError, ImageError
    from ..images import load_image
    from ..oneoff import chat_request

    label = ", ".join(group)
    try:
        prepared = [load_image(src, Path.cwd(), detail=job.detail) for src in group]
        content = [{"type": "text", "text": job.prompt}] + [p.part() for p in prepared]
        request = chat_request(content, system=job.system, model=job.model, preset=job.preset, backend=job.backend,
                               response_format=job.response_format, step="cli:describe")
        resp = await job.backend.chat(request)
    except (ImageError, BadRequestError) as exc:  # this image fails, the others go on
        if job.as_json:
            click.echo(json.dumps({"image": label, "error": str(exc)}))
        else:
            click.echo(f"{label}: error: {exc}", err=True)
        return False
    tokens = [p.tokens_for(request.model or resp.model) for p in prepared]
    if job.as_json:
        click.echo(json.dumps({
            "image": label, "reply": resp.text, "parsed": resp.parsed, "model": resp.model,
            "backend": resp.backend, "usage": resp.usage.to_dict(), "request_id": resp.request_id,
            "image_tokens": None if None in tokens else sum(t or 0 for t in tokens),
        }, ensure_ascii=False))
    else:
        text = json.dumps(resp.parsed, indent=2, ensure_ascii=False) if resp.parsed is not None else resp.text
        click.echo(f"{label}: {text}" if job.many else text)
    return True


@click.command("describe")
@click.argument("images", nargs=-1, required=True)
@click.option("--prompt", default="What's in this image?", show_default=True)
@click.option("--system", help="System message")
@click.option("--detail", type=click.Choice(["auto", "low", "high"]), default="auto", show_default=True)
@click.option("--schema", "schema_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON schema file: the reply is JSON following it")
@click.option("--model", help="Model id")
@backend_options
@click.option("--assistant", help="Name of an assistant preset")
@click.option("--pipeline", type=click.Path(dir_okay=True), help="Use this pipeline file's backend and presets")
@click.option("--together", is_flag=True, help="Send all images in one request instead of one each")
@json_option("Print JSON lines: image, reply, parsed, usage")
def describe(images: tuple[str, ...], prompt: str, system: str | None, detail: str, schema_file: str | None,
             model: str | None, backend_name: str | None, base_url: str | None, api_key_env: str | None,
             assistant: str | None, pipeline: str | None, together: bool, as_json: bool) -> ExitCode:
    """Describe images (paths, http(s) URLs or data URLs) with a vision model."""
    from ..oneoff import call, load_backend, preset_for

    response_format = _response_format(schema_file)
    oneoff = load_backend(pipeline, backend_name, base_url, api_key=key_from_env(api_key_env))
    for warning in oneoff.warnings:
        click.echo(f"warning: {warning}", err=True)
    note(oneoff.note)
    groups = [list(images)] if together else [[img] for img in images]
    job = _Job(oneoff.backend, prompt, system, model, preset_for(assistant, oneoff.context), detail,
               response_format, as_json, many=len(groups) > 1)

    async def describe_all() -> int:
        return sum([not await _describe(job, group) for group in groups])

    failed = call(oneoff.backend, describe_all)
    return ExitCode.RECORDS_FAILED if failed else ExitCode.OK
