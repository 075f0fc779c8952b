"""The error codes of the HTTP API and the handlers that give every error one shape.

Each code has one HTTP status and one meaning; clients branch on the code. The
catalog below is also what the OpenAPI document lists, so the two cannot drift.
Every failure, including FastAPI's own validation errors, unknown routes and bugs,
answers ``{"success": false, "request_id": ..., "error": {"code", "message"}}``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from common.errors import (
    ConnectorError,
    DeadlineExceeded,
    InvalidRequest,
    ParseFailed,
    RateLimited,
    Unauthorized,
    Unavailable,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int
    when: str


CATALOG: dict[str, ErrorCode] = {
    entry.code: entry
    for entry in (
        ErrorCode("invalid_json", 400, "the body is not a JSON object"),
        ErrorCode("invalid_multipart", 400, "the multipart body does not parse"),
        ErrorCode("invalid_base64", 400, "image_data is not strict base64"),
        ErrorCode("empty_image", 400, "the image has no bytes"),
        ErrorCode("invalid_header", 400, "X-Request-Timeout or Idempotency-Key bad"),
        ErrorCode("invalid_request_id", 400, "the request id in the path is malformed"),
        ErrorCode("unauthorized", 401, "API keys are on and no valid bearer token"),
        ErrorCode("not_found", 404, "no such request id (or route)"),
        ErrorCode("method_not_allowed", 405, "the route does not take this method"),
        ErrorCode(
            "cancelled", 410, "the caller went away and the request was cancelled"
        ),
        ErrorCode("payload_too_large", 413, "the body or the image is over the limit"),
        ErrorCode("unsupported_media_type", 415, "the body is not JSON or multipart"),
        ErrorCode("unsupported_image", 415, "the image is not PNG, JPEG, TIFF or WebP"),
        ErrorCode("invalid_field", 422, "a field is missing, unknown or mistyped"),
        ErrorCode(
            "invalid_filename",
            422,
            "the filename is empty, too long or has control characters",
        ),
        ErrorCode("invalid_image", 422, "the image header does not decode"),
        ErrorCode(
            "idempotency_conflict",
            422,
            "the Idempotency-Key was used with another body",
        ),
        ErrorCode("rate_limited", 429, "the client is over its per-minute quota"),
        ErrorCode("internal_error", 500, "a bug in the API; the message is generic"),
        ErrorCode("parse_failed", 502, "the parser could not handle this image"),
        ErrorCode("overloaded", 503, "the queue is over its backpressure threshold"),
        ErrorCode("backend_unavailable", 503, "the backend circuit breaker is open"),
        ErrorCode("kafka_unavailable", 503, "the request could not be produced"),
        ErrorCode("redis_unavailable", 503, "Redis does not answer"),
        ErrorCode("deadline_exceeded", 504, "no answer before the request deadline"),
    )
}

# Codes a worker may put in an error body that the API does not raise itself.
UNKNOWN_WORKER_ERROR_STATUS = 502

_CLASS_BY_STATUS: dict[int, type[ConnectorError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: InvalidRequest,
    405: InvalidRequest,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    502: ParseFailed,
    503: Unavailable,
    504: DeadlineExceeded,
}


def api_error(
    code: str,
    message: str,
    *,
    retry_after_s: float | None = None,
    detail: dict[str, Any] | None = None,
) -> ConnectorError:
    """The exception for ``code``, of the class and status the catalog gives it."""
    status = CATALOG[code].status
    cls = _CLASS_BY_STATUS.get(status, ConnectorError)
    return cls(
        message, code=code, status=status, retry_after_s=retry_after_s, detail=detail
    )


def status_for_body(body: dict[str, Any]) -> int:
    """HTTP status of a stored or replied body: 200, or its error code's status."""
    if body.get("success") is True:
        return 200
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    entry = CATALOG.get(code) if isinstance(code, str) else None
    return entry.status if entry else UNKNOWN_WORKER_ERROR_STATUS


def retry_after_header(retry_after_s: float | None) -> dict[str, str]:
    if retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


def json_response(
    body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body), status, headers=headers, media_type="application/json"
    )


def body_response(body: dict[str, Any], request_id: str) -> Response:
    """Answer a result or error body as the worker stored or replied it."""
    headers = {"X-Request-Id": request_id}
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("retry_after_s"), int | float):
        headers.update(retry_after_header(float(error["retry_after_s"])))
    return json_response(body, status_for_body(body), headers)


def error_response(exc: ConnectorError, request_id: str | None) -> Response:
    headers = retry_after_header(exc.retry_after_s)
    if request_id:
        headers["X-Request-Id"] = request_id
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return json_response(exc.body(request_id), exc.status, headers)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _connector_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConnectorError)
    return error_response(exc, _request_id(request))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Inputs are left out: they may hold image data or secrets.
    problems = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    error = api_error(
        "invalid_field",
        "the request does not match the schema",
        detail={"errors": problems},
    )
    return error_response(error, _request_id(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = api_error("not_found", f"no route {request.url.path!r}")
    elif exc.status_code == 405:
        error = api_error(
            "method_not_allowed", f"{request.method} is not allowed on this route"
        )
    else:
        error = ConnectorError(
            str(exc.detail), code="http_error", status=exc.status_code
        )
    return error_response(error, _request_id(request))


def redis_unavailable(exc: Exception) -> ConnectorError:
    """The 503 for a failed Redis call; Redis down means nothing can be admitted."""
    logger.warning("redis_unavailable", extra={"error": repr(exc)})
    return api_error(
        "redis_unavailable", "Redis does not answer; retry shortly", retry_after_s=2
    )


async def _redis_error(request: Request, exc: Exception) -> Response:
    return error_response(redis_unavailable(exc), _request_id(request))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled_error", exc_info=exc)
    error = api_error("internal_error", "an unexpected error occurred; it was logged")
    return error_response(error, _request_id(request))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ConnectorError, _connector_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RedisError, _redis_error)
    app.add_exception_handler(Exception, _unexpected_error)
