"""Run the embedded OpenAI-compatible server inside tests (like httpx's ``MockTransport``, but real HTTP).

::

    from openai import OpenAI
    from oaipipe.testing import running_server

    with running_server(error_rates={429: 0.2}, seed=1) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        print(srv.stats()["by_status"])

The server listens on a free loopback port (port 0) in a background thread and is shut down on exit.
Keyword arguments are :class:`oaipipe.server.ServerConfig` and :class:`oaipipe.server.Faults` fields.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .server.app import OaipipeServer, make_server
from .server.config import Faults, ServerConfig

__all__ = ["ServerHandle", "running_server", "serve_forever"]


class ServerHandle:
    """A running server: its URLs, counters and fault switches."""

    def __init__(self, server: OaipipeServer) -> None:
        self.server = server

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client, ending in ``/v1``."""
        return self.server.base_url

    @property
    def url(self) -> str:
        """The server root (no ``/v1``)."""
        return self.server.base_url.removesuffix("/v1")

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def config(self) -> ServerConfig:
        return self.server.config

    @property
    def data_dir(self) -> Any:
        return self.server.data_dir

    def stats(self) -> dict[str, Any]:
        """``{"requests", "by_path", "by_status", "injected"}`` since start or the last reset."""
        return self.server.stats()

    def settled_stats(self, **_ignored: Any) -> dict[str, Any]:
        """Same as :meth:`stats` (kept for old callers): the server counts a request before it sends the
        reply, so a client that has its answer already sees it counted."""
        return self.stats()

    def reset_stats(self) -> None:
        self.server.reset_stats()

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Change faults at runtime: ``srv.set_faults(error_rates={503: 1.0})``, ``srv.set_faults(Faults())``."""
        return self.server.set_faults(faults, **changes)

    def clear_faults(self) -> Faults:
        return self.server.set_faults(Faults())


@contextmanager
def running_server(config: ServerConfig | None = None, **settings: Any) -> Iterator[ServerHandle]:
    """Start the server on ``127.0.0.1`` and a free port in a daemon thread; stop it on exit."""
    if config is None:
        settings.setdefault("port", 0)
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("ft_seconds", 0.2)
        settings.setdefault("batch_seconds", 0.05)
    server = make_server(config, **settings) if config is None else make_server(config)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="oaipipe-serve", daemon=True)
    thread.start()
    try:
        yield ServerHandle(server)
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def serve_forever(config: ServerConfig, *, ready: Callable[[ServerHandle], None] | None = None) -> None:
    """Serve in the current thread until Ctrl-C or SIGTERM (used by ``oaipipe serve``)."""
    server = make_server(config)
    handle = ServerHandle(server)
    if ready is not None:
        ready(handle)

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
