"""Command ``oaipipe serve``: the embedded engine as an OpenAI-compatible HTTP server (loopback by default)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, register_secret
from ..hookspecs import hookimpl

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
@click.option("--seed", default=None, type=int, help="Seed of the random fault/jitter choices (reproducible runs).")
@click.option("--quiet", is_flag=True, help="Print only the base URL line.")
@click.option("--log", "log_requests", is_flag=True, help="Log one line per request to stderr.")
def serve_command(host: str, port: int, allow_remote: bool, latency: float, jitter: float,
                  error_rate: tuple[str, ...], retry_after: float, drop_rate: float, timeout_rate: float,
                  timeout_seconds: float, flex_unavailable_rate: float, model_shutdown: tuple[str, ...],
                  prompt_cache_size: int, api_key: str | None, data_dir: Path | None, ft_seconds: float,
                  ft_min_examples: int, batch_seconds: float, max_body_size: int, client_timeout: float,
                  max_connections: int, seed: int | None, quiet: bool, log_requests: bool) -> None:
    """Serve the embedded offline engine as an OpenAI-compatible API (models, chat, responses, files,
    fine-tuning jobs, batches), with switches to inject latency and errors."""
    from ..server.config import Faults, ServerConfig, parse_model_shutdowns
    from ..testing import ServerHandle, serve_forever

    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"--host {host} is not a loopback address; the server has no TLS and answers anyone "
                          "who can reach it.", hint="use --host 127.0.0.1, or add --allow-remote if you mean it")
    if api_key:
        register_secret(api_key)
    try:
        faults = Faults(latency=latency, jitter=jitter, error_rates=_error_rates(error_rate),
                        retry_after=retry_after, drop_rate=drop_rate, timeout_rate=timeout_rate,
                        timeout_seconds=timeout_seconds, flex_unavailable_rate=flex_unavailable_rate)
    except ValueError as exc:
        raise ConfigError(f"fault settings: {exc}", hint="lower the rates so that they add up to at most 1") from None
    try:
        shutdowns = parse_model_shutdowns(list(model_shutdown))
    except ValueError as exc:
        raise ConfigError(f"--model-shutdown: {exc}", hint="repeat the flag per model: "
                          "--model-shutdown gpt-4o-mini=2027-01-14") from None
    config = ServerConfig(host=host, port=port, data_dir=data_dir, api_key=api_key or None, seed=seed,
                          ft_seconds=ft_seconds, ft_min_examples=ft_min_examples, batch_seconds=batch_seconds,
                          log_requests=log_requests, model_shutdowns=shutdowns,
                          prompt_cache_size=prompt_cache_size, faults=faults, max_body_size=max_body_size,
                          client_timeout=client_timeout, max_connections=max_connections)

    def ready(handle: ServerHandle) -> None:
        click.echo(f"oaipipe serve: listening on {handle.base_url}  (use --set backend.base_url={handle.base_url})")
        if not quiet:
            notes = []
            if api_key:
                notes.append("bearer key required")
            if faults.error_rates or faults.drop_rate or faults.timeout_rate or faults.latency or faults.jitter \
                    or faults.flex_unavailable_rate:
                notes.append("faults: " + ", ".join(f"{k}={v}" for k, v in faults.to_dict().items()
                                                    if v and k not in ("retry_after", "timeout_seconds")))
            notes.append(f"files in {handle.data_dir}")
            click.echo("  " + "; ".join(notes) + ". Ctrl-C stops.", err=True)
        import sys

        sys.stdout.flush()

    try:
        serve_forever(config, ready=ready)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          hint="pick another --port (or --port 0 for a free one)") from None
    if not quiet:
        click.echo("oaipipe serve: stopped", err=True)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(serve_command)
