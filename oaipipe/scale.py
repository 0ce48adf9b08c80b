"""Wiring of the scale features into a run: response cache, rate limits (configured and learnt), shared
cool-down, AIMD concurrency, retry counters, live progress.

:func:`configure_run` is called by ``oaipipe run`` and by :class:`oaipipe.runner.Runner` (so library
callers get the same behaviour). It is idempotent: a second call on the same options adds nothing.

Order of the call wrappers (outermost first): **cache → rate limiter → backend (retries inside)**. A
cache hit therefore never waits for, nor spends, the rate limit. The limiter hears every attempt, retry
and answer header of the backend's :class:`~oaipipe.retry.RetryPolicy` as one of its ``listeners``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import ResponseCache, cache_wrapper
from .progress import PlainReporter, Reporter, RichReporter, _is_tty
from .ratelimit import RateLimiter, rate_limit_wrapper
from .retry import RetryPolicy
from .stats import RetryStats

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .runner import RunOptions

__all__ = ["DEFAULT_CACHE_DIR", "ScaleSetup", "cache_dir_for", "cache_namespace", "configure_run"]

DEFAULT_CACHE_DIR = ".oaipipe/cache"
_MARK = "_oaipipe_scale"


class ScaleSetup:
    """What :func:`configure_run` installed (kept on the options as ``options._oaipipe_scale``)."""

    def __init__(self, pipeline_id: int = 0) -> None:
        self.pipeline_id = pipeline_id
        self.wrappers: list[Any] = []
        self.cache: ResponseCache | None = None
        self.limiter: RateLimiter | None = None
        self.cooldown = False
        self.policy: RetryPolicy | None = None
        self.retry_stats = RetryStats()

    def new_run(self) -> RetryStats:
        """Fresh attempt/retry counters for a run that starts (the backend's policy counts into them)."""
        self.retry_stats = RetryStats()
        if self.policy is not None:
            self.policy.stats = self.retry_stats
        return self.retry_stats

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.cache is not None:
            out["cache"] = {"dir": str(self.cache.root), **self.cache.stats.to_dict()}
        if self.limiter is not None:
            out["rate_limit"] = self.limiter.to_dict()
        return out


def retry_policy(backend: Any) -> RetryPolicy | None:
    """The backend's :class:`RetryPolicy` (the HTTP and batch backends have one), if any."""
    policy = getattr(backend, "policy", None)
    return policy if isinstance(policy, RetryPolicy) else None


def _count_attempts(setup: ScaleSetup) -> Any:
    """For a backend without a retry policy: every call it gets is one attempt."""

    def wrap(call: Any) -> Any:
        async def counted(request: Any) -> Any:
            setup.retry_stats.attempt()
            return await call(request)

        return counted

    return wrap


def cache_namespace(backend: Any) -> str:
    """Who answers: the server's URL (the same for `openai`, `requests` and `batch` against one server),
    so that answers cached from one server (say `oaipipe serve`) are never served for another (OpenAI)."""
    base_url = getattr(backend.options, "base_url", None)
    if base_url:
        return str(base_url).rstrip("/")
    return "https://api.openai.com/v1" if getattr(backend, "needs_api_key", False) else f"backend:{backend.name}"


def cache_dir_for(pipeline: Pipeline) -> Any:
    """``run.cache_dir`` (relative to the pipeline file) or ``.oaipipe/cache`` next to the pipeline file."""
    run = pipeline.loaded.config.run
    return pipeline.context.path(run.cache_dir or DEFAULT_CACHE_DIR)


def configure_run(pipeline: Pipeline, options: RunOptions, reporter: Reporter | None = None, *,
                  quiet: bool = False) -> Reporter:
    """Install the cache and rate limits on ``options``; return the reporter to use.

    * cache: unless ``options.use_cache`` is False (``--no-cache``) or ``run.cache: false``, and only for
      a :attr:`~oaipipe.base.Backend.cacheable` backend (not the free, deterministic local engine);
    * rate limits: ``backend.rpm`` / ``backend.tpm``; and whenever the backend has a retry policy (HTTP
      backends): limits learnt from ``x-ratelimit-*`` headers, the shared cool-down, paced retries and
      AIMD concurrency. A :attr:`~oaipipe.base.Backend.batched` backend gets none of these (the Batch API
      has its own queue);
    * attempts and retries: counted by the backend's retry policy, or one attempt per call without one;
    * reporter: a plain reporter writing to a terminal becomes a live rich bar.
    """
    setup: ScaleSetup | None = getattr(options, _MARK, None)
    if setup is not None and setup.pipeline_id != id(pipeline):  # options reused for another pipeline
        options.call_wrappers[:] = [w for w in options.call_wrappers if w not in setup.wrappers]
        setup = None
    if setup is None:
        setup = ScaleSetup(id(pipeline))
        cfg = pipeline.loaded.config
        wrappers = []
        backend = pipeline.backend
        # the local engine is free and deterministic: caching it would only cost disk
        if options.use_cache and cfg.run.cache and backend.cacheable:
            setup.cache = ResponseCache(cache_dir_for(pipeline), namespace=cache_namespace(backend))
            wrappers.append(cache_wrapper(setup.cache))
        policy = retry_policy(backend)
        setup.policy = policy
        if not backend.batched:
            opts = backend.options
            concurrency = int(getattr(opts, "concurrency", 0) or 0) if policy is not None else 0
            limiter = RateLimiter(getattr(opts, "rpm", None), getattr(opts, "tpm", None),
                                  concurrency=concurrency or None)
            if policy is not None:  # it hears every attempt, retry and answer header (replacing an older one)
                policy.listeners[:] = [x for x in policy.listeners if not isinstance(x, RateLimiter)] + [limiter]
                setup.cooldown = True
            if limiter.active or setup.cooldown:
                setup.limiter = limiter
                wrappers.append(rate_limit_wrapper(limiter))
        setup.new_run()
        if policy is None:
            wrappers.append(_count_attempts(setup))
        setup.wrappers = wrappers
        options.call_wrappers[:0] = wrappers  # ours outermost, any user wrappers inside
        setattr(options, _MARK, setup)
    if reporter is None:
        return PlainReporter() if not quiet else Reporter()
    if not quiet and type(reporter) is PlainReporter and _is_tty(reporter.stream):
        return RichReporter(reporter.stream)
    return reporter


def scale_setup(options: RunOptions) -> ScaleSetup | None:
    """The setup installed on ``options`` by :func:`configure_run`, if any."""
    return getattr(options, _MARK, None)
