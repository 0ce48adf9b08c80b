"""What the Ray actors of a run share (``run.executor: ray``): one rate limiter and one response cache.

A step that calls the backend may run on any actor of the cluster. Its calls still go through the run's
call chain (:mod:`oaipipe.calls`: cache → rate limits → retries → transport), built in the actor, with two
layers pointed at actors of the run instead of local objects:

* :class:`LimiterActor` holds the run's :class:`~oaipipe.ratelimit.RateLimiter` state: the configured
  ``backend.rpm``/``tpm`` buckets, what is learnt from the servers' ``x-ratelimit-*`` headers (reported by
  every actor), the cool-down after a 429's ``Retry-After``. :class:`RemoteRateLimiter` takes its place in
  an actor's chain: before each call it *reserves* a turn (one round trip: the limiter takes the call's
  request and estimated tokens from its buckets now and answers how long to wait, so turns are handed out
  in the order they were asked, FIFO across the cluster); after the call it reports the real usage and the
  answer's headers (no wait), and on a retry it asks for the retry's turn and reports the cool-down. The
  AIMD concurrency (calls in flight, halved on a 429) stays per actor, up to ``backend.concurrency``.
* :class:`CacheActor` opens the run's cache store (``run.cache``, in the driver's cache folder: it runs on
  the driver's node) and :class:`RemoteStore` reads and writes through it (one round trip each). So a
  rerun on any actor finds every answer a call stored, and an answer is stored before its record's batch
  comes back: a batch redone after its actor died repeats only the calls that were in flight.

Both are started by the driver (:class:`ClusterServices`, one CPU-less actor each) and ended with the run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .cache import CacheStore
from .ratelimit import AdaptiveConcurrency, RateLimiter
from .retry import RetryEvent, is_rate_limited

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .calls import CallChain
    from .pipeline import BuiltPipeline
    from .types import ChatRequest, ChatResponse

__all__ = ["CONNECT_TIMEOUT", "CacheActor", "ClusterServices", "LimiterActor", "RemoteRateLimiter", "RemoteStore",
           "check_ray_address", "join_ray", "ray_address_problem"]


def _ray() -> Any:
    """The ``ray`` module (the optional extra; this module runs only where it is installed)."""
    from .extras import require

    return require("ray", extra="ray", feature="run.executor: ray")


# --- joining a cluster -----------------------------------------------------------------------------------

#: seconds a cluster's address has to accept a TCP connection before joining it is given up (``ray.init``
#: itself retries an address that does not answer for a minute and more)
CONNECT_TIMEOUT = 3.0
#: the ports Ray listens on when an address names none: the Ray Client server, the GCS
RAY_CLIENT_PORT, GCS_PORT = 10001, 6379

_ADDRESS_HINT = ("start the cluster (`ray start --head` on its head node; Ray Client listens on port 10001), "
                 "correct --ray-address / run.ray_address, or leave it out to run on a local Ray")


def ray_address_problem(address: str) -> str | None:
    """What makes ``address`` something no Ray cluster can be joined at, read from its text alone (no lookup,
    no connection), or None: a Ray address is ``auto``, ``local``, ``HOST[:PORT]`` (the GCS) or
    ``ray://HOST[:PORT]`` (Ray Client), with a port from 1 to 65535 and nothing after it. ``run.ray_address``
    is held to it when the pipeline file is read (placed on its line), ``--ray-address`` before joining."""
    import urllib.parse

    if address in ("auto", "local"):
        return None
    if not address.strip():
        return "it is empty"
    if address != address.strip():
        return "it has spaces around it"
    scheme, sep, _ = address.partition("://")
    if sep and scheme != "ray":
        why = f"{scheme}:// is not a scheme Ray joins (only ray://, or none for the GCS's HOST:PORT)"
        if scheme in ("http", "https"):
            why += "; an http address is the dashboard's or the Jobs API's, not the cluster's"
        return why
    try:
        parsed = urllib.parse.urlsplit(address if sep else f"//{address}")
        port = parsed.port
    except ValueError as exc:
        text = str(exc)
        return ("its port is not a number from 1 to 65535" if "port" in text.lower() else
                f"it is not an address ({text})")
    if not parsed.hostname:
        return "it names no host"
    if port == 0:
        return "its port is 0 (give the cluster's port, or none: 10001 for ray://, 6379 for the GCS)"
    if parsed.path or parsed.query or parsed.fragment:
        return "it has something after the host and port (a Ray address is HOST[:PORT], with no path)"
    return None


def _endpoint(address: str) -> tuple[str, int] | None:
    """The (host, port) that joining ``address`` connects to first; None for ``local`` (Ray starts one) and
    for ``auto`` when Ray's own lookup cannot be asked. Raises the :class:`ConfigError` of
    :func:`check_ray_address` when ``auto`` finds no running cluster, or when ``address`` is not one
    (:func:`ray_address_problem`)."""
    import urllib.parse

    if address == "local":
        return None
    if address == "auto":  # the cluster Ray finds on this machine (RAY_ADDRESS, /tmp/ray's latest)
        try:
            from ray._private import services  # private: if it moves, ray.init does the looking itself
        except ImportError:
            return None
        lookup = getattr(services, "canonicalize_bootstrap_address_or_die", None)
        if lookup is None:
            return None
        try:
            address = str(lookup("auto"))
        except ConnectionError as exc:
            raise _unreachable("auto", f"no running Ray cluster was found on this machine ({exc})") from None
        except Exception:  # noqa: BLE001 - Ray's lookup failing otherwise: ray.init says what it says
            return None
    problem = ray_address_problem(address)
    if problem is not None:
        raise _unreachable(address, problem)
    client = address.startswith("ray://")
    parsed = urllib.parse.urlsplit(address if "://" in address else f"//{address}")
    assert parsed.hostname is not None  # ray_address_problem holds it
    return parsed.hostname, parsed.port or (RAY_CLIENT_PORT if client else GCS_PORT)


def _unreachable(address: str, why: str) -> Exception:
    from .errors import ConfigError

    return ConfigError(f"cannot join the Ray cluster at {address}: {why}", hint=_ADDRESS_HINT)


def check_ray_address(address: str | None, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast, naming ``address`` and the fix (a :class:`~oaipipe.errors.ConfigError`, exit 2), when the
    cluster it names cannot be reached: its host and port must accept a TCP connection within ``timeout``
    seconds (``ray://host[:10001]`` the Ray Client server, ``host[:6379]`` the GCS, ``auto`` the cluster
    Ray finds on this machine). Nothing to check for None or ``local`` (a local Ray is started)."""
    import socket

    if not address:
        return
    endpoint = _endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        raise _unreachable(address, f"{host}:{port} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise _unreachable(address, f"{host}:{port}: {exc.strerror or exc}") from None


def _require_ray_client(address: str) -> None:
    """A ``ray://`` address goes through Ray Client, which needs ``grpcio`` (``ray[client]``): say so plainly
    (Ray's own error surfaces as an unexpected ValueError)."""
    import importlib.util

    from .errors import ConfigError

    if importlib.util.find_spec("grpc") is None:
        raise ConfigError(f"joining {address} goes through Ray Client, which needs the Python package 'grpcio' "
                          "(not installed: this Ray was installed without its client part)",
                          hint="pip install 'ray[client]' (oaipipe's `ray` extra brings it), or give the cluster's "
                               "GCS address (HEAD:6379) from a machine of the cluster")


def join_ray(ray: Any, address: str | None, workers: int) -> None:
    """``ray.init``: join the cluster at ``address`` (checked first: :func:`check_ray_address`), else start a
    local Ray with ``workers`` CPUs. A connection Ray itself refuses is the same clear error."""
    import logging

    check_ray_address(address)
    if address and address.startswith("ray://"):
        _require_ray_client(address)
    kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
    try:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
    except (ConnectionError, ValueError) as exc:  # Ray refusing the address: the same clear error
        if not address:
            raise
        raise _unreachable(address, str(exc)) from None


# --- the actors ------------------------------------------------------------------------------------------


class LimiterActor:
    """The run's rate limiter, one for the whole cluster (a Ray actor; every method is quick)."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.limiter = RateLimiter(rpm, tpm)
        self.clients: set[str] = set()

    def reserve(self, client: str, tokens: int) -> tuple[float, bool]:
        """Take a turn for a call of ``tokens`` estimated tokens: (seconds to wait before sending it,
        whether the limiter counts tokens: the next calls send their estimate)."""
        self.clients.add(client)
        limiter = self.limiter
        wait = limiter._reserve(tokens, 0.0)
        if wait > 0:
            with limiter._state:
                limiter.waited += wait
        return wait, limiter._counts_tokens

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token buckets with a call's real usage."""
        with self.limiter._state:
            for bucket in (self.limiter.tokens, self.limiter.learned_tokens):
                if bucket is not None and estimated:
                    bucket.give(estimated - actual)

    def headers(self, headers: dict[str, str]) -> None:
        self.limiter.response_headers(headers)

    def retrying(self, refused: bool, retry_after: float | None, delay: float, tokens: int) -> float:
        """A call is retried: count a 429, cool everyone down for ``Retry-After``; returns the retry's delay
        (its turn, at least ``delay``)."""
        limiter = self.limiter
        if refused:
            with limiter._state:
                limiter.refusals += 1
        if retry_after is not None:
            limiter.cool_down(min(retry_after, delay))
        return limiter._reserve(tokens if limiter._counts_tokens else 0, delay)

    def summary(self) -> dict[str, Any]:
        return {**self.limiter.to_dict(), "shared_by": len(self.clients)}


class CacheActor:
    """The run's cache store, opened once for the whole cluster (a Ray actor on the driver's node)."""

    def __init__(self, file: str, load_args: dict[str, Any]) -> None:
        from .cache import cache_dir_for, store_for
        from .pipeline import load_pipeline

        pipeline = load_pipeline(file, load_args["overrides"], disabled=load_args["disabled"],
                                 entry_points=load_args["entry_points"])
        store = store_for(pipeline)
        assert store is not None  # the driver starts this actor only when the run has a cache
        self.store = store
        self.dir = str(cache_dir_for(pipeline))
        self.warnings: list[str] = []
        store.on_warning = self._warn

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.store.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.store.put(key, value)

    def where(self) -> str:
        return self.store.where

    def close(self) -> list[str]:
        """Close the store; returns the warnings it gave."""
        self.store.close()
        return list(self.warnings)


# --- in a BatchActor: the proxies that take the local objects' places in the call chain ----------------


class RemoteStore(CacheStore):
    """A :class:`~oaipipe.cache.CacheStore` that reads and writes through the run's :class:`CacheActor`
    (one round trip per call: a get before the call, a put after a new answer)."""

    name = "cluster"

    def __init__(self, actor: Any, where: str = "cluster cache") -> None:
        super().__init__()
        self.actor = actor
        self._where = where

    @property
    def where(self) -> str:
        return self._where

    def get(self, key: str) -> dict[str, Any] | None:
        ray = _ray()
        value: dict[str, Any] | None = ray.get(self.actor.get.remote(key))
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        ray = _ray()
        ray.get(self.actor.put.remote(key, value))  # stored before the batch comes back

    def stats(self) -> dict[str, Any]:
        return {"store": self.name, "path": self.where, "entries": 0}

    def clear(self, older_than: float | None = None) -> int:
        return 0


class RemoteRateLimiter(RateLimiter):
    """The :class:`~oaipipe.ratelimit.RateLimiter` of an actor's call chain, backed by the run's
    :class:`LimiterActor`: the same methods the chain's rate-limit layer and the retry policy call."""

    def __init__(self, actor: Any, client: str, concurrency: int | None = None) -> None:
        super().__init__(learn=False)
        self.actor = actor
        self.client = client
        self.concurrency = AdaptiveConcurrency(concurrency) if concurrency else None
        self._remote_counts_tokens = False

    @property
    def active(self) -> bool:
        return True

    @property
    def _counts_tokens(self) -> bool:
        return self._remote_counts_tokens

    async def acquire(self, request: ChatRequest) -> int:
        need = self.estimate(request) if self._remote_counts_tokens else 0
        wait, self._remote_counts_tokens = await self.actor.reserve.remote(self.client, need)
        if wait > 0:
            self.waited += wait
            await self.sleep(wait)
        return int(need)

    def settle(self, estimated: int, response: ChatResponse | None, request: ChatRequest | None = None) -> None:
        if not estimated or response is None or response.cached:
            return
        if request is not None and request.max_tokens is None:
            self._seen_completions += 1
            self._completion_tokens += response.usage.completion_tokens
        usage = response.usage
        self.actor.settle.remote(estimated, usage.total_tokens or (usage.prompt_tokens + usage.completion_tokens))

    def response_headers(self, headers: Mapping[str, str]) -> None:
        if any(str(k).lower().startswith("x-ratelimit-") for k in headers):
            self.actor.headers.remote({str(k): str(v) for k, v in headers.items()
                                       if str(k).lower().startswith("x-ratelimit-")})

    def retrying(self, event: RetryEvent) -> None:
        ray = _ray()
        error = event.error
        refused = error.status == 429
        if refused and self.concurrency is not None and is_rate_limited(error):
            self.concurrency.decrease(event.started)
        tokens = self._typical_tokens() if self._remote_counts_tokens else 0
        event.delay = float(ray.get(self.actor.retrying.remote(refused, error.retry_after, event.delay, tokens)))


# --- in the driver ---------------------------------------------------------------------------------------


@dataclass
class ClusterServices:
    """The limiter and cache actors of one Ray run (either may be absent), as the driver holds them."""

    limiter: Any = None
    cache: Any = None
    cache_dir: str | None = None

    @classmethod
    def start(cls, ray: Any, pipeline: BuiltPipeline, file: str, chain: CallChain) -> ClusterServices:
        """Start the actors that take the places of the driver's ``chain`` layers: a limiter when it has
        one (not for a :attr:`~oaipipe.base.Backend.batched` backend, whose Batch API queues on its side),
        a cache when it has one (``--no-cache``, ``run.cache: false`` and a backend that is not
        :attr:`~oaipipe.base.Backend.cacheable` have none)."""
        services = cls()
        if chain.limiter is not None:
            services.limiter = ray.remote(num_cpus=0, max_restarts=0)(LimiterActor).remote(
                chain.limiter.rpm, chain.limiter.tpm)
        if chain.cache is not None:
            here = _driver_node(ray)
            services.cache = ray.remote(num_cpus=0, max_restarts=0, **here)(CacheActor).remote(
                file, pipeline.load_args)
            services.cache_dir = str(chain.cache.root)
        return services

    def worker_args(self) -> dict[str, Any]:
        """What each BatchActor is given to build its call chain with."""
        return {"limiter": self.limiter, "cache": self.cache, "cache_dir": self.cache_dir}

    def close(self, ray: Any) -> dict[str, Any]:
        """The summary's ``rate_limit`` (the whole cluster's) and the cache's warnings; the actors end."""
        out: dict[str, Any] = {}
        if self.limiter is not None:
            with contextlib.suppress(Exception):
                out["rate_limit"] = ray.get(self.limiter.summary.remote(), timeout=30)
        if self.cache is not None:
            with contextlib.suppress(Exception):
                warnings = ray.get(self.cache.close.remote(), timeout=30)
                if warnings:
                    out["cache_warnings"] = warnings
        for actor in (self.limiter, self.cache):
            if actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        return out


def _driver_node(ray: Any) -> dict[str, Any]:
    """Scheduling options that put an actor on the driver's node (where the driver's files are)."""
    try:
        from .extras import require

        strategies = require("ray.util.scheduling_strategies", extra="ray", feature="run.executor: ray")
        node = ray.get_runtime_context().get_node_id()
        return {"scheduling_strategy": strategies.NodeAffinitySchedulingStrategy(node, soft=True)}
    except Exception:  # noqa: BLE001 - a Ray client without a node of its own: anywhere will do
        return {}
