"""Wiring of the scale features into a run: response cache, rate limits, shared cool-down, live progress.

:func:`configure_run` is called by ``oaipipe run`` and by :class:`oaipipe.runner.Runner` (so library
callers get the same behaviour). It is idempotent: a second call on the same options adds nothing.

Order of the call wrappers (outermost first): **cache → rate limiter → backend**. A cache hit therefore
never waits for, nor spends, the rate limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import DEFAULT_CACHE_DIR, ResponseCache, cache_dir_for, cache_wrapper, open_response_cache
from .progress import PlainReporter, Reporter, RichReporter, _is_tty
from .ratelimit import RateLimiter, install_cooldown, rate_limit_wrapper

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .runner import RunOptions

__all__ = ["DEFAULT_CACHE_DIR", "ScaleSetup", "cache_dir_for", "cache_namespace", "configure_run"]

_MARK = "_oaipipe_scale"


class ScaleSetup:
    """What :func:`configure_run` installed (kept on the options as ``options._oaipipe_scale``)."""

    def __init__(self, pipeline_id: int = 0) -> None:
        self.pipeline_id = pipeline_id
        self.wrappers: list[Any] = []
        self.cache: ResponseCache | None = None
        self.limiter: RateLimiter | None = None
        self.cooldown = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.cache is not None:
            out["cache"] = {"dir": str(self.cache.root), **self.cache.stats.to_dict()}
        if self.limiter is not None:
            out["rate_limit"] = {"rpm": self.limiter.rpm, "tpm": self.limiter.tpm,
                                 "waited_s": round(self.limiter.waited, 3), "cooldowns": self.limiter.cooldowns}
        return out


def cache_namespace(backend: Any) -> str:
    """Who answers: the server's URL (the same for `openai`, `requests` and `batch` against one server),
    so that answers cached from one server (say `oaipipe serve`) are never served for another (OpenAI)."""
    base_url = getattr(backend.options, "base_url", None)
    if base_url:
        return str(base_url).rstrip("/")
    return "https://api.openai.com/v1" if getattr(backend, "needs_api_key", False) else f"backend:{backend.name}"


def configure_run(pipeline: Pipeline, options: RunOptions, reporter: Reporter | None = None, *,
                  quiet: bool = False) -> Reporter:
    """Install the cache and rate limits on ``options``; return the reporter to use.

    * cache: unless ``options.use_cache`` is False (``--no-cache``) or ``run.cache: false``, and not for
      the ``local`` backend (free and deterministic: caching it would only cost disk);
    * rate limits: ``backend.rpm`` / ``backend.tpm``; the shared cool-down whenever the backend has a
      retry policy (HTTP backends). The ``batch`` backend gets neither (the Batch API has its own queue);
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
        if options.use_cache and cfg.run.cache is not False and backend.name != "local":
            setup.cache = open_response_cache(pipeline, namespace=cache_namespace(backend),
                                              notify=reporter.note if reporter is not None else None)
            if setup.cache is not None:
                wrappers.append(cache_wrapper(setup.cache))
        if backend.name != "batch":
            opts = backend.options
            limiter = RateLimiter(getattr(opts, "rpm", None), getattr(opts, "tpm", None))
            setup.cooldown = install_cooldown(backend, limiter)
            if limiter.active or setup.cooldown:
                setup.limiter = limiter
                wrappers.append(rate_limit_wrapper(limiter))
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
