"""Pydantic models of the request and response bodies, as OpenAPI shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import CATALOG


class ParseBody(BaseModel):
    """A page to parse, sent as JSON."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image_data: str = Field(
        description="The image (PNG, JPEG, TIFF or WebP) in standard base64, "
        "padded, without whitespace or a data: prefix."
    )
    filename: str = Field(
        description="Name echoed in the result; directories are stripped.",
        examples=["page.png"],
    )


class Element(BaseModel):
    model_config = ConfigDict(extra="allow")

    label: str = Field(examples=["title"])
    bbox: list[int] = Field(
        description="Integer pixels [x1, y1, x2, y2] in the original image.",
        examples=[[271, 188, 1194, 221]],
    )
    text: str
    reading_order: int


class ParseResult(BaseModel):
    """The parsed page; elements are sorted by reading_order."""

    model_config = ConfigDict(extra="allow")

    request_id: str
    filename: str
    processing_time_seconds: float
    timestamp: str = Field(examples=["2026-01-15T10:30:00.000Z"])
    elements: list[Element]
    element_count: int
    batch_id: str
    success: Literal[True]


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable machine-readable code; see the table.")
    message: str = Field(description="What was wrong and what to do.")
    retry_after_s: float | None = Field(
        default=None, description="When retrying makes sense; also sent as Retry-After."
    )
    detail: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    success: Literal[False]
    request_id: str | None
    error: ErrorInfo


class RequestStatus(BaseModel):
    """Where a request without a retained result stands."""

    request_id: str
    state: Literal["queued", "processing", "done", "cancelled", "expired", "failed"]


class DependencyHealth(BaseModel):
    ok: bool
    error: str | None = None


class BackendHealth(BaseModel):
    circuit: Literal["closed", "open", "half_open", "unknown"]
    name: str | None = Field(default=None, description="As published by the worker.")


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="unavailable (503) when Kafka or Redis is down; degraded when "
        "the backend circuit is open."
    )
    kafka: DependencyHealth
    redis: DependencyHealth
    backend: BackendHealth


class PartitionLag(BaseModel):
    partition: int
    end_offset: int
    committed_offset: int | None
    lag: int


class ConsumerLag(BaseModel):
    group: str
    topic: str
    total: int
    partitions: list[PartitionLag]


class QueueStatus(BaseModel):
    depth: int = Field(description="Accepted requests not answered yet.")
    capacity: int
    threshold: int = Field(description="Depth from which new requests get 503.")
    utilization: float = Field(description="depth / capacity.")
    backpressure: bool = Field(description="True while new requests are refused.")
    consumer_lag: ConsumerLag | None = Field(
        default=None,
        description="Of the worker group on the requests topic; null if Kafka "
        "could not be asked.",
    )
    batches_in_flight: int | None = Field(
        default=None, description="As published by the worker."
    )
    throughput_per_second: float = Field(description="Answers/s over the last minute.")
    estimated_wait_seconds: float | None = Field(
        default=None, description="depth / throughput; null while nothing was answered."
    )


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for these error codes, grouped by their status."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted({CATALOG[code].status for code in codes}):
        entries = [CATALOG[c] for c in codes if CATALOG[c].status == status]
        examples = {
            e.code: {
                "summary": e.when,
                "value": {
                    "success": False,
                    "request_id": "5f0c6f1e9a8b4c2d8e7f6a5b4c3d2e1f",
                    "error": {"code": e.code, "message": e.when},
                },
            }
            for e in entries
        }
        responses[status] = {
            "model": ErrorBody,
            "description": "; ".join(f"`{e.code}`: {e.when}" for e in entries),
            "content": {"application/json": {"examples": examples}},
        }
        if status in RETRY_AFTER_STATUSES:
            responses[status]["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
    return responses


RETRY_AFTER_STATUSES = frozenset({429, 503})
RETRY_AFTER_HEADER = {
    "description": "Seconds after which a retry may succeed.",
    "schema": {"type": "integer", "minimum": 1},
}


# Codes each route can answer with.
ROUTE_FREE_CODES = frozenset({"not_found", "method_not_allowed"})
PARSE_CODES = tuple(
    code
    for code in CATALOG
    if code not in ROUTE_FREE_CODES and code != "invalid_request_id"
)
LOOKUP_CODES = (
    "invalid_request_id", "unauthorized", "not_found", "cancelled", "parse_failed",
    "deadline_exceeded", "redis_unavailable", "internal_error",
)  # fmt: skip
STATUS_CODES = ("unauthorized", "redis_unavailable", "internal_error")
