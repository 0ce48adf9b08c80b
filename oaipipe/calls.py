"""The call chain of a run, as a value: cache → rate limits → retries → transport.

A step never calls the backend itself: it calls ``ctx.chat(request)``, which the runner points at the
run's :class:`CallChain`. The chain is built once per run from the pipeline and the run's options
(:meth:`CallChain.build`). Its layers, outermost first (the order of httpx's), each a small object whose
one method, ``await layer(request)``, answers a request around the next layer:

1. :class:`CacheLayer`: an identical call is answered from the response cache (:mod:`oaipipe.cache`), and
   identical calls in flight at once are made once. A hit never waits for, nor spends, the rate limit.
   Only for a :attr:`~oaipipe.base.Backend.cacheable` backend, unless ``--no-cache`` or ``run.cache: false``.
2. :class:`RateLimitLayer`: a call waits for its turn: the configured (``backend.rpm``/``tpm``) and learnt
   (``x-ratelimit-*``) limits, the shared cool-down after a 429, an AIMD concurrency slot
   (:mod:`oaipipe.ratelimit`). Installed when limits are configured or the backend has a retry policy
   (its answers teach the limits); never for a :attr:`~oaipipe.base.Backend.batched` backend (the Batch
   API queues on its side).
3. :class:`RetryLayer`: the backend's :class:`~oaipipe.retry.RetryPolicy` retries each HTTP attempt
   inside the transport (the ``requests`` backend in its worker thread), so this layer does not loop: it
   owns the policy for the run. It gives the policy fresh counters (attempts, retries by cause, seconds
   waited: the summary's ``attempts`` and ``retries``) and the rate limiter as a listener
   (``policy.listeners``: it hears every answer's headers and every retry, paces the retries and cools
   everyone down). A backend without a policy gets one attempt counted per call.
4. the caller's own layers (:attr:`oaipipe.runner.RunOptions.call_wrappers`, outermost first), then
   :class:`Transport`: the backend's ``chat()``.

``RunOptions(scale=False)`` leaves out layers 1-3. The chain reports what it installed:
:meth:`CallChain.summary` (``cache`` and ``rate_limit`` for the run's summary) and :attr:`CallChain.retries`
(the counters the progress line and the summary read).

The response cache is made in one place, :func:`open_cache`: a store of another kind is opened there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import DEFAULT_CACHE_DIR, ResponseCache, cache_dir_for, cache_wrapper, open_response_cache
from .ratelimit import RateLimiter, rate_limit_wrapper
from .resume import backend_endpoint
from .retry import RetryPolicy
from .stats import RetryStats
from .types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from .base import Backend
    from .pipeline import BuiltPipeline
    from .runner import RunOptions

__all__ = ["DEFAULT_CACHE_DIR", "CacheLayer", "Call", "CallChain", "Layer", "RateLimitLayer", "RetryLayer",
           "Transport", "cache_dir_for", "open_cache", "open_rate_limiter", "retry_policy"]


Call = Callable[[ChatRequest], Awaitable[ChatResponse]]


class Layer:
    """One layer of the chain: ``await layer(request)`` answers ``request``, around :attr:`next`."""

    #: the layer's name in :meth:`CallChain.describe`
    name = "layer"

    def __init__(self, next: Call) -> None:
        self.next = next

    async def __call__(self, request: ChatRequest) -> ChatResponse:
        return await self.next(request)

    def summary(self) -> dict[str, Any]:
        """What this layer adds to the run's summary."""
        return {}


class Transport(Layer):
    """The innermost layer: the backend's ``chat()`` (HTTP, the Batch API, the embedded engine...)."""

    name = "transport"

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend.chat)
        self.backend = backend


class RetryLayer(Layer):
    """The backend's retry policy, owned for one run: fresh counters, and the rate limiter as its listener.

    The policy retries inside the transport; without one, each call counts as one attempt here."""

    name = "retries"

    def __init__(self, next: Call, policy: RetryPolicy | None, limiter: RateLimiter | None = None) -> None:
        super().__init__(next)
        self.policy = policy
        self.stats = RetryStats()
        if policy is not None:
            policy.stats = self.stats  # the policy counts this run's attempts and retries here
            if limiter is not None:  # it hears every attempt, retry and answer header (replacing an older one)
                policy.listeners[:] = [x for x in policy.listeners if not isinstance(x, RateLimiter)] + [limiter]

    async def __call__(self, request: ChatRequest) -> ChatResponse:
        if self.policy is None:
            self.stats.attempt()
        return await self.next(request)


class RateLimitLayer(Layer):
    """Waits for a turn (limits, cool-down, concurrency slot) before each call; settles the tokens after."""

    name = "rate limits"

    def __init__(self, next: Call, limiter: RateLimiter) -> None:
        super().__init__(next)
        self.limiter = limiter
        self._limited = rate_limit_wrapper(limiter)(next)

    async def __call__(self, request: ChatRequest) -> ChatResponse:
        return await self._limited(request)

    def summary(self) -> dict[str, Any]:
        return {"rate_limit": self.limiter.to_dict()}


class CacheLayer(Layer):
    """Answers from the response cache when it can; stores new successful answers (a thin adapter around
    :func:`oaipipe.cache.cache_wrapper`)."""

    name = "cache"

    def __init__(self, next: Call, cache: ResponseCache) -> None:
        super().__init__(next)
        self.cache = cache
        self._cached = cache_wrapper(cache)(next)

    async def __call__(self, request: ChatRequest) -> ChatResponse:
        return await self._cached(request)

    def summary(self) -> dict[str, Any]:
        return {"cache": {"dir": str(self.cache.root), **self.cache.stats.to_dict()}}


# --- what the chain is built from ------------------------------------------------------------------------


def open_cache(pipeline: BuiltPipeline, options: RunOptions,
               notify: Callable[[str], None] | None = None) -> ResponseCache | None:
    """The run's response cache, or None: not with ``--no-cache`` (``options.use_cache``) or
    ``run.cache: false``, and only for a :attr:`~oaipipe.base.Backend.cacheable` backend. The store is the
    one ``run.cache`` names (SQLite by default; :func:`oaipipe.cache.store_for`). Its namespace is the
    endpoint (:func:`oaipipe.resume.backend_endpoint`): answers of one server never serve another.
    ``notify`` receives the cache's warnings (a damaged store degrades to misses)."""
    if not (options.use_cache and pipeline.loaded.config.run.cache is not False and pipeline.backend.cacheable):
        return None
    return open_response_cache(pipeline, namespace=backend_endpoint(pipeline.backend), notify=notify)


def retry_policy(backend: Backend) -> RetryPolicy | None:
    """The backend's :class:`RetryPolicy` (the HTTP and batch backends have one), if any."""
    policy = getattr(backend, "policy", None)
    return policy if isinstance(policy, RetryPolicy) else None


def open_rate_limiter(backend: Backend, policy: RetryPolicy | None) -> RateLimiter | None:
    """The run's rate limiter, or None: for a backend that is not :attr:`~oaipipe.base.Backend.batched`,
    when ``backend.rpm``/``tpm`` are set or the backend has a retry policy (whose answers and 429s teach
    the limits, the cool-down and the AIMD concurrency, up to ``backend.concurrency``)."""
    if backend.batched:
        return None
    opts = backend.options
    concurrency = int(getattr(opts, "concurrency", 0) or 0) if policy is not None else 0
    limiter = RateLimiter(getattr(opts, "rpm", None), getattr(opts, "tpm", None), concurrency=concurrency or None)
    return limiter if limiter.active or policy is not None else None


# --- the chain -------------------------------------------------------------------------------------------


@dataclass
class CallChain:
    """The layers a run's calls go through, outermost first; ``await chain(request)`` makes a call."""

    #: the layers, outermost first, down to the transport
    layers: list[Layer]
    #: the attempts and retries of this run's calls (None with ``RunOptions(scale=False)``)
    retries: RetryStats | None = None
    cache: ResponseCache | None = None
    limiter: RateLimiter | None = None
    _call: Call = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._call = self.layers[0]

    async def __call__(self, request: ChatRequest) -> ChatResponse:
        return await self._call(request)

    @classmethod
    def build(cls, pipeline: BuiltPipeline, options: RunOptions,
              notify: Callable[[str], None] | None = None) -> CallChain:
        """The chain of one run of ``pipeline`` (see the module docstring). ``options`` is only read;
        ``notify`` receives the layers' warnings."""
        backend = pipeline.backend
        transport = Transport(backend)
        inner: Call = transport
        for wrap in reversed(options.call_wrappers):  # the caller's own layers, just outside the transport
            inner = wrap(inner)
        innermost: list[Layer] = [transport] if inner is transport else [_Wrapped(inner), transport]
        if not options.scale:
            return cls(innermost)
        return cls._assemble(backend, inner, innermost, open_cache(pipeline, options, notify))

    @classmethod
    def for_backend(cls, backend: Backend, *, cache_dir: Path | None = None) -> CallChain:
        """The chain of one-off calls outside a run (:class:`oaipipe.Client`, ``oaipipe ask``): the same
        retries and rate limits as a run's, and the response cache in ``cache_dir`` (None: no cache; only for
        a :attr:`~oaipipe.base.Backend.cacheable` backend, namespaced by its endpoint)."""
        transport = Transport(backend)
        cache = None
        if cache_dir is not None and backend.cacheable:
            cache = ResponseCache(cache_dir, namespace=backend_endpoint(backend))
        return cls._assemble(backend, transport, [transport], cache)

    @classmethod
    def shared(cls, backend: Backend, *, limiter: RateLimiter | None, cache: ResponseCache | None) -> CallChain:
        """The chain of a worker that makes calls for a run driven elsewhere (a Ray actor,
        :mod:`oaipipe.ray_cluster`): the same layers, with the run's ``limiter`` and ``cache`` (proxies of
        the ones the whole run shares) in place of ones of its own; None leaves the layer out."""
        transport = Transport(backend)
        return cls._assemble(backend, transport, [transport], cache, limiter=limiter, own_limiter=False)

    @classmethod
    def _assemble(cls, backend: Backend, inner: Call, innermost: list[Layer], cache: ResponseCache | None,
                  *, limiter: RateLimiter | None = None, own_limiter: bool = True) -> CallChain:
        """cache → rate limits → retries around ``inner`` (whose layers are ``innermost``). The limiter is
        ``limiter``, or with ``own_limiter`` the backend's own (:func:`open_rate_limiter`)."""
        policy = retry_policy(backend)
        if own_limiter:
            limiter = open_rate_limiter(backend, policy)
        retry = RetryLayer(inner, policy, limiter)
        layers: list[Layer] = [retry]
        if limiter is not None:
            layers.insert(0, RateLimitLayer(layers[0], limiter))
        if cache is not None:
            layers.insert(0, CacheLayer(layers[0], cache))
        return cls([*layers, *innermost], retry.stats, cache, limiter)

    def close(self) -> None:
        """Release what the layers hold (the cache's store) now, not whenever the garbage collector gets to
        it (mid-run of another)."""
        if self.cache is not None:
            self.cache.close()

    def describe(self) -> str:
        """The layers in words, outermost first: ``cache → rate limits → retries → transport``."""
        return " → ".join(layer.name for layer in self.layers)

    def summary(self) -> dict[str, Any]:
        """What the layers installed, for the run's summary: ``cache`` and ``rate_limit`` stats (the
        retries are in the run's counters, :attr:`retries`)."""
        out: dict[str, Any] = {}
        for layer in self.layers:
            out.update(layer.summary())
        return out


class _Wrapped(Layer):
    """The caller's own layers (``RunOptions.call_wrappers``), as one layer of the chain."""

    name = "call_wrappers"
