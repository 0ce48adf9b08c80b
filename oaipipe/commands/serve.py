"""``oaipipe serve``: the embedded engine as an OpenAI-compatible HTTP server (loopback by default)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, ExitCode, register_secret
from .common import json_option, verbosity

__all__ = ["is_loopback", "serve_command"]

#: the longest delay a fault flag may ask for (same as oaipipe.server.config.MAX_FAULT_SECONDS, not imported
#: here so that ``oaipipe --help`` does not load the server)
_MAX_FAULT_SECONDS = 3600.0


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    from ..server.config import is_loopback_address

    return is_loopback_address(host)


class _Finite(click.FloatRange):
    """A float in a range that also refuses ``nan`` and ``inf`` (click's FloatRange lets them through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a number in the range {self._describe_range()}.", param, ctx)
        return number


class _Size(click.ParamType):
    """A size in bytes: ``80MiB``, ``200MB``, ``65536``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        from ..server.config import parse_size

        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_SECONDS = _Finite(0, _MAX_FAULT_SECONDS)
_RATE = _Finite(0, 1)


def _error_rates(values: tuple[str, ...]) -> dict[int, float]:
    from ..server.config import parse_error_rate

    rates: dict[int, float] = {}
    for value in values:
        try:
            status, rate = parse_error_rate(value)
        except ValueError as exc:
            raise ConfigError(f"--error-rate: {exc}", hint="repeat the flag per status: "
                              "--error-rate 429=0.2 --error-rate 503=0.05") from None
        rates[status] = rate
    return rates


_FAULT_FLAGS = ("latency", "jitter", "retry_after", "drop_rate", "timeout_rate", "timeout_seconds",
                "flex_unavailable_rate")


def _server_config(*, error_rate: tuple[str, ...], model_shutdown: tuple[str, ...], **settings: Any) -> Any:
    """The ServerConfig of the flags; a bad fault setting or shutdown date is a ConfigError naming the flag."""
    from ..server.config import Faults, ServerConfig, parse_model_shutdowns

    fault_settings = {name: settings.pop(name) for name in _FAULT_FLAGS}
    try:
        faults = Faults(error_rates=_error_rates(error_rate), **fault_settings)
    except ValueError as exc:
        raise ConfigError(f"fault settings: {exc}", hint="lower the rates so that they add up to at most 1") from None
    try:
        shutdowns = parse_model_shutdowns(list(model_shutdown))
    except ValueError as exc:
        raise ConfigError(f"--model-shutdown: {exc}", hint="repeat the flag per model: "
                          "--model-shutdown gpt-4o-mini=2027-01-14") from None
    return ServerConfig(faults=faults, model_shutdowns=shutdowns, **settings)


def _notes(config: Any, handle: Any) -> str:
    """The second line of ``oaipipe serve``: key, faults, rate limits, where files are."""
    faults = config.faults
    notes = []
    if config.api_key:
        notes.append("bearer key required")
    if faults.error_rates or faults.drop_rate or faults.timeout_rate or faults.latency or faults.jitter \
            or faults.flex_unavailable_rate:
        notes.append("faults: " + ", ".join(f"{k}={v}" for k, v in faults.to_dict().items()
                                            if v and k not in ("retry_after", "timeout_seconds")))
    if config.rpm or config.tpm:
        notes.append("rate limits: " + ", ".join(f"{v} {k.upper()}" for k, v in (("rpm", config.rpm),
                                                                                    ("tpm", config.tpm)) if v)
                     + f" (bucket holds {config.rate_burst:g}s of refill)")
    notes.append(f"files in {handle.data_dir}")
    return "; ".join(notes)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback only "
              "unless --allow-remote).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0 picks a free one).")
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (the server has no TLS).")
@click.option("--latency", default=0.0, type=_SECONDS, help="Seconds added to every inference call.")
@click.option("--jitter", default=0.0, type=_SECONDS, help="Up to this many random extra seconds.")
@click.option("--error-rate", "error_rate", multiple=True, metavar="STATUS=RATE",
              help="Inject an error status on this share of inference calls, e.g. 429=0.2 (repeatable).")
@click.option("--retry-after", default=1.0, type=_SECONDS, show_default=True,
              help="Seconds sent in Retry-After / retry-after-ms with injected 429s.")
@click.option("--drop-rate", default=0.0, type=_RATE, help="Share of calls whose connection "
              "is closed without a response.")
@click.option("--timeout-rate", default=0.0, type=_RATE, help="Share of calls answered only "
              "after --timeout-seconds (to trip client timeouts).")
@click.option("--timeout-seconds", default=10.0, type=_SECONDS, show_default=True,
              help="How long a --timeout-rate call stalls.")
@click.option("--flex-unavailable-rate", default=0.0, type=_RATE, help="Share of service_tier=flex calls "
              "answered 429 'Resource Unavailable' (to test a client's fallback).")
@click.option("--model-shutdown", "model_shutdown", multiple=True, metavar="MODEL=YYYY-MM-DD",
              help="Test switch: report this shutdown_date for MODEL in /v1/models; past the date the model is "
              "gone (404 model_not_found). Repeatable.")
@click.option("--prompt-cache-size", default=65536, type=click.IntRange(min=0), show_default=True,
              help="Prompt-prefix blocks (128 tokens) remembered for cached-token usage; 0 turns caching off.")
@click.option("--api-key", default=None, envvar="OAIPIPE_SERVE_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every request (the /_oaipipe control paths too).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where uploaded/produced files live (default: a temporary folder removed on exit).")
@click.option("--ft-seconds", default=1.0, type=_Finite(0, 86400), show_default=True,
              help="How long a fine-tuning job takes.")
@click.option("--ft-min-examples", default=10, type=click.IntRange(min=1), show_default=True,
              help="Fewest examples a training file may have (OpenAI requires 10).")
@click.option("--batch-seconds", default=0.2, type=_Finite(0, 86400), show_default=True,
              help="How long a batch takes at least.")
@click.option("--max-body-size", default="80MiB", type=_Size(), show_default=True,
              help="Largest request body accepted (e.g. 200MB for big batch or training files); a larger one "
              "gets 413 without being read.")
@click.option("--client-timeout", default=30.0, type=_Finite(0.01, 86400), show_default=True,
              help="Seconds a client has to send a request's headers (an idle connection is closed then), again "
              "for its body, and to take the reply.")
@click.option("--max-connections", default=256, type=click.IntRange(min=1), show_default=True,
              help="Connections served at once (a thread each); one more is answered 503 and closed.")
@click.option("--rpm", default=None, type=click.IntRange(min=1), help="Enforce this many requests per minute on "
              "chat/responses: 429 with Retry-After beyond it, x-ratelimit-* headers on every answer.")
@click.option("--tpm", default=None, type=click.IntRange(min=1), help="Enforce this many tokens per minute likewise.")
@click.option("--rate-burst", default=60.0, type=_Finite(0.001, 86400), show_default=True,
              help="Seconds of refill a --rpm/--tpm bucket holds (60: the whole minute; 1: enforced per second).")
@click.option("--seed", default=None, type=int, help="Seed of the random fault/jitter choices (reproducible runs).")
@click.option("--log", "log_requests", is_flag=True, help="Log one line per request to stderr.")
@json_option("Print the ready line as JSON: {base_url, data_dir, api_key_required, faults}")
def serve_command(host: str, allow_remote: bool, api_key: str | None, as_json: bool, **settings: Any) -> ExitCode:
    """Serve the embedded offline engine as an OpenAI-compatible API (models, chat, responses, files,
    fine-tuning jobs, batches), with switches to inject latency and errors. -q prints only the base URL line."""
    from ..testing import ServerHandle, serve_forever

    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"--host {host} is not a loopback address; the server has no TLS and answers anyone "
                          "who can reach it.", hint="use --host 127.0.0.1, or add --allow-remote if you mean it")
    if api_key:
        register_secret(api_key)
    config = _server_config(host=host, api_key=api_key or None, **settings)
    faults = config.faults

    quiet = verbosity().quiet

    def ready(handle: ServerHandle) -> None:
        if as_json:
            click.echo(json.dumps({"base_url": handle.base_url, "data_dir": str(handle.data_dir),
                                   "api_key_required": bool(api_key), "faults": faults.to_dict()}))
        else:
            click.echo(f"oaipipe serve: listening on {handle.base_url}  (use --set backend.base_url={handle.base_url})")
        if not quiet:
            click.echo("  " + _notes(config, handle) + ". Ctrl-C stops.", err=True)
        import sys

        sys.stdout.flush()

    try:
        serve_forever(config, ready=ready)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{config.port}: {exc.strerror or exc}",
                          hint="pick another --port (or --port 0 for a free one)") from None
    if not quiet:
        click.echo("oaipipe serve: stopped", err=True)
    return ExitCode.OK
