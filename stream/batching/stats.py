"""What the batcher reports: one record per batch, running counters, a snapshot.

Nothing here knows about Prometheus; the worker turns ``BatchRecord`` (through
the batcher's ``on_batch`` hook) and ``BatcherStats`` into metrics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchRecord:
    batch_id: str
    size: int
    """Images sent (after dropping late and cancelled ones)."""
    wall_s: float
    """From dispatch until the backend's last answer, retries and splits included."""
    backend_s: float
    """Backend time billed, as the backend reported it (else wall time)."""
    calls: int
    """Requests made to the backend: more than one when the batch was split."""
    ok: bool
    """False when the backend failed and the requests went back to wait."""
    queued_s: float
    """How long the oldest request of the batch waited in the batcher."""


@dataclass(slots=True)
class Counters:
    batches: int = 0
    failed_batches: int = 0
    images: int = 0
    backend_seconds: float = 0.0
    requeued: int = 0
    expired: int = 0
    cancelled: int = 0

    def add(self, record: BatchRecord) -> None:
        self.batches += 1
        self.images += record.size
        self.backend_seconds += record.backend_s
        if not record.ok:
            self.failed_batches += 1

    def copy(self) -> Counters:
        return dataclasses.replace(self)

    @property
    def backend_seconds_per_image(self) -> float:
        return self.backend_seconds / self.images if self.images else 0.0


@dataclass(frozen=True, slots=True)
class BatcherStats:
    waiting: int
    waiting_bytes: int
    held: int
    """Requests in memory: waiting, in a running batch, or being answered."""
    held_bytes: int
    in_flight_batches: int
    slots: int
    arrival_rate_per_s: float
    latency_fixed_s: float
    latency_per_image_s: float
    latency_residual_s: float
    breaker_state: str
    counters: Counters
