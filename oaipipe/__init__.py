"""oaipipe: plugin-based pipelines for work with OpenAI models.

Read ``README.md``, then ``pipeline.yaml``, then :mod:`oaipipe.hookspecs`.
"""

from __future__ import annotations

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
    """Run a pipeline file; see :func:`oaipipe.runner.run_pipeline_file` for the options."""
    from .runner import run_pipeline_file

    return run_pipeline_file(pipeline, **kwargs)


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
    "ConfigError",
    "Context",
    "DatasetError",
    "Exchange",
    "ExitCode",
    "ImageError",
    "InputError",
    "ModelInfo",
    "OaipipeError",
    "PluginError",
    "PluginLoadError",
    "PluginOptions",
    "Problem",
    "RateLimitError",
    "Record",
    "RecordError",
    "RecordResult",
    "RunAborted",
    "RunInfo",
    "RunLockedError",
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
]
