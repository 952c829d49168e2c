"""The CommonSchemas ``Error`` body and the exception handlers that produce it.

gematik's REST interfaces answer every error with ``{"message": ..., "traceId": ...}``
(CommonSchemas v1.0.3, digest §3.3; ``traceId`` at most 255 characters) in
``application/json; charset=utf-8``. Handlers raise :class:`ApiError` with the documented
status and a message naming the field and the reason; routing errors (404, 405) and anything
unexpected are turned into the same body here. This module must never put a password, an OTP
or a token into a message.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kim_appliance.errors import KimError
from kim_appliance.store import StoreUnavailable

log = logging.getLogger("kim_appliance.web")

#: the media type of every body in gematik's OpenAPI files
JSON_UTF8 = "application/json; charset=utf-8"


class ApiError(KimError):
    """A documented error answer: HTTP ``status`` with ``message`` in the Error body."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class JsonUtf8Response(JSONResponse):
    """A JSON response with the media type gematik's files declare (``charset=utf-8``)."""

    media_type = JSON_UTF8


def new_trace_id() -> str:
    """A fresh trace id (16 hex digits, the shape of CommonSchemas' example)."""
    return secrets.token_hex(8)


def error_response(
    status: int,
    message: str,
    *,
    trace_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The CommonSchemas Error body with ``status``; logs the trace id with the message."""
    trace_id = (trace_id or new_trace_id())[:255]
    log.info("HTTP %d traceId=%s: %s", status, trace_id, message)
    return JsonUtf8Response(
        {"message": message, "traceId": trace_id}, status_code=status, headers=dict(headers or {})
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, headers=exc.headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such resource: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, headers=exc.headers)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    log.error("HTTP 503 on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503, "the store is unavailable; try again later", headers={"Retry-After": "30"}
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    trace_id = new_trace_id()
    log.exception("HTTP 500 traceId=%s on %s %s", trace_id, request.method, request.url.path)
    return error_response(
        500, f"internal error (traceId {trace_id}); see the appliance log", trace_id=trace_id
    )


def install_error_handlers(app: Starlette) -> None:
    """Make ``app`` answer ApiError, routing errors and unexpected exceptions with the Error
    body (an unexpected exception is logged with its trace id and answered with 500; a store
    that fails, `StoreUnavailable`, is a temporary 503)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected)
