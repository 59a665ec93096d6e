"""The API's error vocabulary and the one table that maps errors to HTTP statuses.

Every error response is JSON {"error": message} (plus "field" for bad input); a refusal logs one line (the
access log), never a traceback. Anything not in the table is a bug: it is logged with its traceback and
answered 500 without details.
"""

from __future__ import annotations

import logging
from typing import Final

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from contracts.errors import ConcurrencyConflict, ConfigError, NotFound, TransientError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API answers on purpose."""

    status: int = 400

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class Missing(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class TooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    """Busy on purpose (a bound is reached): 503 with Retry-After."""

    status = 503


# Errors from lower layers, by the status they mean at this edge.
STATUS_OF: Final[dict[type[Exception], int]] = {
    ConfigError: 400,
    NotFound: 404,
    ConcurrencyConflict: 409,
    TransientError: 503,
    TimeoutError: 503,  # a database call past its deadline
}


def error_response(status: int, message: str, field: str | None = None) -> Response:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="fedbus"'
    return response


def _api_error(error: ApiError) -> Response:
    response = error_response(error.status, error.message, error.field)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


def _http_error(error: HTTPException) -> Response:
    response = error_response(error.code or 500, error.description or error.name)
    if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return response


def _known(error: Exception) -> Response:
    status = next(code for kind, code in STATUS_OF.items() if isinstance(error, kind))
    field = error.field if isinstance(error, ConfigError) else None
    message = error.message if isinstance(error, ConfigError) else str(error)
    if status == 404:
        message = f"not found: {message}"
    if status == 503:
        log.warning("database unavailable: %s", error or type(error).__name__)
        message = "the event log is unavailable; try again"
    return error_response(status, message, field)


def _unexpected(error: Exception) -> Response:
    log.exception("unexpected error", exc_info=error)
    return error_response(500, "internal error")


def register_error_handlers(app: Flask) -> None:
    """JSON errors for everything: our own, the lower layers' (by STATUS_OF), HTTP ones, and bugs."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    for kind in STATUS_OF:
        app.register_error_handler(kind, _known)
    app.register_error_handler(Exception, _unexpected)


__all__ = [
    "STATUS_OF",
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Missing",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "error_response",
    "register_error_handlers",
]
