"""Prometheus metrics of the worker, served on its ``/metrics``.

Labels carry only small, fixed sets of values (outcomes, reasons, partition
numbers); request and batch ids go to the logs, never into labels.
Backend cost per image is ``dolphin_worker_backend_seconds_total`` divided by
``dolphin_worker_images_total``.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "BACKEND_CALLS",
    "BACKEND_RETRIES",
    "BACKEND_SECONDS",
    "BATCHES_IN_FLIGHT",
    "BATCH_DURATION",
    "BATCH_SIZE",
    "BREAKER_STATE",
    "CONSUMER_LAG",
    "CONTENT_TYPE",
    "DLQ",
    "IMAGES",
    "MESSAGES",
    "QUEUE_WAIT",
    "render",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

MESSAGES = Counter(
    "dolphin_worker_messages_total",
    "Request messages by how they ended: ok, parse_error, duplicate, cancelled, "
    "expired, dlq.",
    ["outcome"],
)
BATCH_SIZE = Histogram(
    "dolphin_worker_batch_size",
    "Images per batch sent to the backend.",
    buckets=(1, 2, 4, 8, 16, 24, 32),
)
BATCH_DURATION = Histogram(
    "dolphin_worker_batch_duration_seconds",
    "Wall time of a backend batch call that produced results.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
BACKEND_CALLS = Counter(
    "dolphin_worker_backend_calls_total",
    "Backend batch calls by outcome: ok, batch_failed, error.",
    ["outcome"],
)
BACKEND_RETRIES = Counter(
    "dolphin_worker_backend_retries_total",
    "Backend batch calls that repeated an earlier, failed call.",
)
BREAKER_STATE = Gauge(
    "dolphin_worker_breaker_state",
    "Backend circuit breaker: 0 closed, 1 half-open, 2 open.",
)
BATCHES_IN_FLIGHT = Gauge(
    "dolphin_worker_batches_in_flight",
    "Backend batch calls running now.",
)
BACKEND_SECONDS = Counter(
    "dolphin_worker_backend_seconds_total",
    "Backend time spent on batches, as billed when the backend reports it.",
)
IMAGES = Counter(
    "dolphin_worker_images_total",
    "Images the backend returned an outcome for.",
)
QUEUE_WAIT = Histogram(
    "dolphin_worker_queue_wait_seconds",
    "Time from a request message's timestamp to its dispatch to the backend.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
)
CONSUMER_LAG = Gauge(
    "dolphin_worker_consumer_lag",
    "End offset minus committed offset of each assigned requests partition.",
    ["partition"],
)
DLQ = Counter(
    "dolphin_worker_dlq_total",
    "Request messages sent to the dead-letter topic, by reason.",
    ["reason"],
)

BREAKER_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}


def render() -> bytes:
    """The text exposition of every metric of this process."""
    return generate_latest(REGISTRY)
