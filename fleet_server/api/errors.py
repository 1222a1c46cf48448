"""``ApiError`` and the handlers that turn every error into the same JSON shape.

``{"error": {"code": str, "message": str, "details": object | null}}`` for our own errors,
werkzeug's HTTP errors (404, 405, 413, ...) and unexpected exceptions (500, logged with
the traceback, never shown to the client).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error response: HTTP ``status``, machine-readable ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_response(status: int, code: str, message: str, details: Any = None) -> Response:
    """The JSON error response."""
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    return response


_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
    413: "request_too_large", 415: "unsupported_media_type", 429: "too_many_requests",
}


def _handle_api_error(e: ApiError) -> Response:
    return error_response(e.status, e.code, e.message, e.details)


def _handle_http(e: HTTPException) -> Response:
    status = e.code or 500
    response = error_response(status, _HTTP_CODES.get(status, "http_error"),
                              e.description or e.name)
    if status == 405 and e.response is None:
        allowed = getattr(e, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
    return response


def _handle_unexpected(e: Exception) -> Response:
    log.exception("unhandled error: %s", type(e).__name__)
    return error_response(500, "internal_error", "internal server error")


def register_error_handlers(app: Flask) -> None:
    """Install the JSON error handlers on ``app``."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(Exception, _handle_unexpected)
