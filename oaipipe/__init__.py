"""oaipipe: plugin-based pipelines for work with OpenAI models.

Read ``README.md``, then ``pipeline.yaml``, then :mod:`oaipipe.hookspecs`.
"""

from __future__ import annotations

from .api import Pipeline, run_sync
from .base import (
    Analyzer,
    Backend,
    BackendOptions,
    Context,
    PluginOptions,
    Sink,
    Source,
    Step,
    StepContext,
    StepOptions,
    SyncBackend,
    Trainer,
)
from .cache import CacheStore
from .client import Client, Reply
from .errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BadRequestError,
    ConfigError,
    DatasetError,
    ExitCode,
    ImageError,
    InputError,
    OaipipeError,
    PluginError,
    PluginLoadError,
    Problem,
    RateLimitError,
    RecordError,
    RunAborted,
    RunLockedError,
    ServerError,
    StorageError,
    TemplateError,
    TrainingError,
    UnknownPluginError,
)
from .hookspecs import hookimpl
from .results import RunResult
from .types import (
    ChatRequest,
    ChatResponse,
    Exchange,
    ModelInfo,
    Record,
    RecordResult,
    RunInfo,
    Sentiment,
    Usage,
)

__version__ = "0.1.0"


def run(pipeline: str, **kwargs):  # type: ignore[no-untyped-def]
    """Run a pipeline file and return its summary: a thin alias of ``Pipeline.from_yaml(pipeline).run(...)``
    (works inside a running event loop too); see :meth:`oaipipe.Pipeline.run` for the options (``use_cache``
    is accepted for ``cache``)."""
    overrides = kwargs.pop("overrides", None)
    if "use_cache" in kwargs:
        kwargs["cache"] = kwargs.pop("use_cache")
    return Pipeline.from_yaml(pipeline, overrides).run(**kwargs).summary


__all__ = [
    "Analyzer",
    "AuthenticationError",
    "Backend",
    "BackendConnectionError",
    "BackendError",
    "BackendOptions",
    "BadRequestError",
    "CacheStore",
    "ChatRequest",
    "ChatResponse",
    "Client",
    "ConfigError",
    "Context",
    "DatasetError",
    "Exchange",
    "ExitCode",
    "ImageError",
    "InputError",
    "ModelInfo",
    "OaipipeError",
    "Pipeline",
    "PluginError",
    "PluginLoadError",
    "PluginOptions",
    "Problem",
    "RateLimitError",
    "Record",
    "RecordError",
    "RecordResult",
    "Reply",
    "RunAborted",
    "RunInfo",
    "RunLockedError",
    "RunResult",
    "Sentiment",
    "ServerError",
    "Sink",
    "Source",
    "Step",
    "StepContext",
    "StepOptions",
    "StorageError",
    "SyncBackend",
    "TemplateError",
    "Trainer",
    "TrainingError",
    "UnknownPluginError",
    "Usage",
    "__version__",
    "hookimpl",
    "run",
    "run_sync",
]
