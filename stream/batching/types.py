"""What the batcher is handed and what it hands back.

The pipeline puts ``Pending`` requests in; for each one the batcher calls the
result sink exactly once, with the parsed result, the reason the image failed
alone, or a deadline/cancellation error. Nothing put in is dropped silently.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from stream.backends.base import ItemOutcome


@dataclass(slots=True)
class Pending:
    request_id: str
    filename: str
    image: bytes
    deadline_s: float
    """Wall-clock deadline, epoch seconds."""
    enqueued_s: float = field(default_factory=time.monotonic)
    """Monotonic time the batcher received it."""
    token: Any = None
    """Opaque to the batcher: whatever the pipeline needs to ack the message."""
    accepted_s: float | None = None
    """Wall-clock epoch seconds the request entered the system (e.g. when the
    API accepted it), if known. The latency target counts from here rather than
    from when the batcher received it, so requests that waited in the topic are
    not held back further."""

    @property
    def size_bytes(self) -> int:
        return len(self.image)


@dataclass(frozen=True, slots=True)
class BatchMeta:
    batch_id: str
    size: int
    processing_time_s: float
    """Wall time of the backend call that produced the outcome."""


ResultSink = Callable[[Pending, ItemOutcome, BatchMeta | None], Awaitable[None]]
"""Called once per Pending. ``BatchMeta`` is None when no batch ran for it
(deadline passed or cancelled before dispatch)."""

CancelledCheck = Callable[[Collection[str]], Awaitable[set[str]]]
"""Given request ids about to be sent, answers those cancelled meanwhile."""
