"""``oaipipe ask``: send one message and print the reply (``oaipipe.Client.ask`` on the command line).

The message is the argument, or standard input when it is ``-`` or left out (``echo hi | oaipipe ask``).
``--sentiment`` scores both sides; ``--log PATH`` appends the exchange to a dialogue log (the
``dialogue-jsonl`` sink's format, each message with its sentiment).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import ExitCode, InputError
from .common import backend_options, json_option, key_from_env, not_a_stream, note

__all__ = ["ask"]


def _message(message: str | None) -> str:
    """The argument, or standard input for ``-``/none (a terminal is refused: it would wait forever)."""
    if message is not None and message != "-":
        return message
    stream = sys.stdin
    if message is None and stream.isatty():
        raise InputError("no message: give it as the argument or on standard input",
                         hint='oaipipe ask "Hello" or echo Hello | oaipipe ask')
    text = stream.read().strip()
    if not text:
        raise InputError("the message read from standard input is empty",
                         hint='oaipipe ask "Hello" or echo Hello | oaipipe ask')
    return text


def _sentiment_text(sentiment: object) -> str:
    if sentiment is None:
        return "-"
    return f"{sentiment.label} ({sentiment.score:+.3f})"  # type: ignore[attr-defined]


@click.command("ask")
@click.argument("message", required=False)
@click.option("-s", "--system", help="System message")
@click.option("-m", "--model", help="Model id (ft:... models work on the local engine and `oaipipe serve`)")
@backend_options
@click.option("--assistant", help="Name of an assistant preset (see `oaipipe assistants`)")
@click.option("--pipeline", type=click.Path(dir_okay=True), help="Use this pipeline file's backend and presets")
@click.option("--temperature", type=float)
@click.option("--max-tokens", type=int)
@click.option("--sentiment", is_flag=True, help="Score the sentiment of the message and of the reply")
@click.option("--analyzer", default="vader", show_default=True, metavar="NAME",
              help="Analyzer for --sentiment and --log: vader, keyword, llm or a plugin's")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), callback=not_a_stream,
              help="Append the exchange (with sentiments) to this dialogue log (.jsonl)")
@json_option("Print the whole response as JSON")
def ask(message: str | None, system: str | None, model: str | None, backend_name: str | None,
        base_url: str | None, api_key_env: str | None, assistant: str | None, pipeline: str | None,
        temperature: float | None, max_tokens: int | None, sentiment: bool, analyzer: str,
        log_path: str | None, as_json: bool) -> ExitCode:
    """Send one message (the argument, or standard input) and print the reply."""
    from ..client import Client

    text = _message(message)
    scored = sentiment or log_path is not None
    client = Client(backend_name, model=model, system=system, analyzer=analyzer if scored else None,
                    dialogue=log_path, assistant=assistant, base_url=base_url, api_key=key_from_env(api_key_env),
                    pipeline=pipeline, cache=False, temperature=temperature, max_tokens=max_tokens)
    for warning in client.warnings:
        click.echo(f"warning: {warning}", err=True)
    note(client.note)
    reply = client.ask(text, sentiment=scored)
    if as_json:
        data: dict[str, Any] = reply.response.to_dict() if reply.response is not None else {"text": reply.text}
        if sentiment:
            data["sentiment"] = reply.sentiment.to_dict() if reply.sentiment else None
            data["input_sentiment"] = reply.input_sentiment.to_dict() if reply.input_sentiment else None
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return ExitCode.OK
    click.echo(reply.text)
    if sentiment:
        click.echo(f"sentiment: message {_sentiment_text(reply.input_sentiment)}, "
                   f"reply {_sentiment_text(reply.sentiment)}")
    return ExitCode.OK
