"""Errors the engine raises. Plain exceptions: callers (the local backend, the server) map them onto
their own error types (``oaipipe.errors`` classes, HTTP statuses)."""

from __future__ import annotations

__all__ = ["EngineError", "ImageURLNotSupported", "InvalidImage", "InvalidRequest", "ModelNotFound"]


class EngineError(Exception):
    """Base of the engine's errors. ``code`` is the OpenAI-style error code the server uses."""

    code = "engine_error"
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param


class ModelNotFound(EngineError):
    """A model id the engine does not know (an ``ft:`` model that was never trained here)."""

    code = "model_not_found"
    param = "model"


class InvalidImage(EngineError):
    """Image bytes that Pillow cannot read."""

    code = "invalid_image"


class ImageURLNotSupported(InvalidImage):
    """An http(s) image URL: the local engine has no network."""

    code = "invalid_image_url"


class InvalidRequest(EngineError):
    """A request the engine cannot answer as given (bad response_format, empty messages...)."""

    code = "invalid_request"
