"""Errors of the connector, each with a stable code that clients branch on.

ConnectorError            base: code, HTTP status, retriable, retry_after_s
├── InvalidRequest        400/413/415/422: the caller sent something unusable
├── Unauthorized          401
├── RateLimited           429
├── Unavailable           503: overloaded, a dependency down, breaker open
├── DeadlineExceeded      504
└── ParseFailed           502: the parser could not handle this image
"""

from __future__ import annotations

from typing import Any


class ConnectorError(Exception):
    code = "internal_error"
    status = 500
    retriable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after_s: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after_s = retry_after_s
        self.detail = detail or {}

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The JSON error shape shared by HTTP answers and Kafka replies."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after_s is not None:
            error["retry_after_s"] = round(self.retry_after_s, 3)
        if self.detail:
            error["detail"] = self.detail
        return {"success": False, "request_id": request_id, "error": error}


class InvalidRequest(ConnectorError):
    code = "invalid_request"
    status = 400


class Unauthorized(ConnectorError):
    code = "unauthorized"
    status = 401


class RateLimited(ConnectorError):
    code = "rate_limited"
    status = 429
    retriable = True


class Unavailable(ConnectorError):
    code = "unavailable"
    status = 503
    retriable = True


class DeadlineExceeded(ConnectorError):
    code = "deadline_exceeded"
    status = 504


class ParseFailed(ConnectorError):
    code = "parse_failed"
    status = 502
