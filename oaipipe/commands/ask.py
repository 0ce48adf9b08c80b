"""``oaipipe ask``: send one message and print the reply."""

from __future__ import annotations

import json

import click

from ..errors import ExitCode
from .common import backend_options, json_option, key_from_env, note

__all__ = ["ask"]


@click.command("ask")
@click.argument("message")
@click.option("--system", help="System message")
@click.option("--model", help="Model id (ft:... models work on the local engine and `oaipipe serve`)")
@backend_options
@click.option("--assistant", help="Name of an assistant preset (see `oaipipe assistants`)")
@click.option("--pipeline", type=click.Path(dir_okay=True), help="Use this pipeline file's backend and presets")
@click.option("--temperature", type=float)
@click.option("--max-tokens", type=int)
@json_option("Print the whole response as JSON")
def ask(message: str, system: str | None, model: str | None, backend_name: str | None, base_url: str | None,
        api_key_env: str | None, assistant: str | None, pipeline: str | None, temperature: float | None,
        max_tokens: int | None, as_json: bool) -> ExitCode:
    """Send one message and print the reply."""
    from ..oneoff import call, chat_request, load_backend, preset_for

    oneoff = load_backend(pipeline, backend_name, base_url, api_key=key_from_env(api_key_env))
    for warning in oneoff.warnings:
        click.echo(f"warning: {warning}", err=True)
    note(oneoff.note)
    backend = oneoff.backend
    request = chat_request(message, system=system, model=model, preset=preset_for(assistant, oneoff.context),
                           backend=backend, temperature=temperature, max_tokens=max_tokens, step="cli:ask")
    resp = call(backend, lambda: backend.chat(request))
    if as_json:
        click.echo(json.dumps(resp.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(resp.text)
    return ExitCode.OK
