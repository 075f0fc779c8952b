"""Prometheus metrics of one API app, in a registry of its own.

Labels stay low-cardinality: an outcome, the HTTP status and the error code, the
code folded to ``other`` when it is not one the API documents. Never request ids.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .errors import CATALOG

DURATION_BUCKETS_S = (
    0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800,
)  # fmt: skip


def outcome_for(status: int) -> str:
    """Outcome label: ok, invalid, rejected (retry later), cancelled, failed,
    timeout."""
    if status < 400:
        return "ok"
    if status in (429, 503):
        return "rejected"
    if status == 504:
        return "timeout"
    if status == 410:
        return "cancelled"
    if status < 500:
        return "invalid"
    return "failed"


class ApiMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dolphin_api_requests_total",
            "Parse requests answered, by outcome, HTTP status and error code.",
            ["outcome", "status", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "dolphin_api_request_duration_seconds",
            "End-to-end time of parse requests, arrival to answer, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "dolphin_api_queue_depth",
            "Accepted requests not answered yet, as last seen in Redis.",
            registry=self.registry,
        )
        self.queue_capacity = Gauge(
            "dolphin_api_queue_capacity",
            "Configured queue capacity.",
            registry=self.registry,
        )
        self.inflight = Gauge(
            "dolphin_api_inflight_requests",
            "Requests this process is waiting on.",
            registry=self.registry,
        )
        self.replies_dropped = Counter(
            "dolphin_api_replies_dropped_total",
            "Replies read for requests nobody waits for in this process.",
            registry=self.registry,
        )

    def observe(self, status: int, code: str | None, duration_s: float) -> None:
        label = code if code is None or code in CATALOG else "other"
        outcome = outcome_for(status)
        self.requests.labels(outcome, str(status), label or "").inc()
        self.duration.labels(outcome).observe(duration_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
