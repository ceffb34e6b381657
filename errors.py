"""The error families, and the one place they become JSON responses."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client can act on; `status` picks the HTTP status, `extra` adds body fields."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.extra = extra or {}
        self.headers = headers or {}


class BadRequestError(ApiError):
    status = 400


class UnauthorizedError(ApiError):
    status = 401

    def __init__(self, message: str = "missing, invalid or expired credentials", **kwargs):
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="vram-dashboard"'})
        super().__init__(message, **kwargs)


class ForbiddenError(ApiError):
    status = 403


class NotFoundError(ApiError):
    status = 404


class ConflictError(ApiError):
    status = 409


class PayloadTooLargeError(ApiError):
    status = 413


class TooManyRequestsError(ApiError):
    """Throttled: 429 with Retry-After, the whole seconds until an attempt would be admitted."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: int, **kwargs):
        kwargs.setdefault("headers", {"Retry-After": str(max(1, int(retry_after_s)))})
        super().__init__(message, **kwargs)


class OllamaUnavailableError(ApiError):
    """Ollama could not be reached at all."""

    status = 503


class OllamaError(ApiError):
    """Ollama answered with an error; `upstream_status` is its HTTP status."""

    status = 502

    def __init__(self, message: str, *, upstream_status: int | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.upstream_status = upstream_status


class OllamaTimeoutError(ApiError):
    status = 504


class NvmlUnavailableError(ApiError):
    status = 503


class ServiceUnavailableError(ApiError):
    """The server cannot take this request now (say when with Retry-After)."""

    status = 503


def error_response(message: str, status: int, extra: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None):
    """Build the one JSON error shape: {"error": message, **extra}."""
    body = {"error": message}
    if extra:
        body.update(extra)
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status == 401 and "WWW-Authenticate" not in response.headers:
        response.headers["WWW-Authenticate"] = 'Bearer realm="vram-dashboard"'
    return response


_HTTP_MESSAGES = {
    400: "malformed request",
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
    415: "unsupported media type: send Content-Type: application/json",
}


def init_app(app: Flask, services=None) -> None:
    """Map every error, ours and Werkzeug's, to the JSON error shape."""

    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError):
        return error_response(exc.message, exc.status, exc.extra, exc.headers)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException):
        status = exc.code or 500
        message = _HTTP_MESSAGES.get(status) or (exc.description or exc.name)
        if status == 404:
            message = f"not found: {request.path}"
        elif status == 405:
            message = f"method {request.method} not allowed on {request.path}"
        elif status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body too large (limit {limit} bytes)" if limit else message
        elif status == 429:
            message = "too many attempts; try again later"
        headers = {}
        for name in ("Retry-After", "Allow", "WWW-Authenticate"):
            value = exc.get_response().headers.get(name)
            if value:
                headers[name] = value
        return error_response(message, status, headers=headers)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("internal server error", 500)
