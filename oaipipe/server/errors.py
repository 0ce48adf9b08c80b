"""API errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "not_found", "require_object", "require_str"]

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "invalid_request_error", 408: "timeout", 409: "invalid_request_error",
          422: "invalid_request_error", 429: "requests", 500: "server_error", 502: "server_error",
          503: "server_error", 504: "server_error"}


class ApiError(Exception):
    """An error answer. ``headers`` are extra response headers (``Retry-After`` on 429)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found(kind: str, ident: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind} object: {ident}", param=param, code=None)


def require_object(body: Any) -> dict[str, Any]:
    """The request body, which must be a JSON object (a 400 ``invalid_json`` otherwise)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def require_str(body: dict[str, Any], name: str) -> str:
    """The non-empty string parameter ``name`` of the body (a 400 ``missing_required_parameter`` otherwise)."""
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    return value
