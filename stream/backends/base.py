"""The small interface every parser backend implements.

A backend parses a batch of images and answers, in input order, one outcome per
image: the parsed elements or the reason that image failed alone. A failure of
the whole batch is raised as BackendError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class BatchItem:
    image: bytes
    filename: str


@dataclass(frozen=True, slots=True)
class ItemResult:
    """Elements follow Dolphin's format: label, bbox [x1, y1, x2, y2], text,
    reading_order."""

    filename: str
    elements: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ItemError:
    filename: str
    code: str
    message: str


ItemOutcome = ItemResult | ItemError


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    items: list[ItemOutcome]
    batch_id: str
    processing_time_s: float
    backend_seconds: float = 0.0
    """Backend time billed for this batch, when the backend reports it."""
    extra: dict[str, Any] = field(default_factory=dict)


class BackendError(Exception):
    """The whole batch failed.

    ``batch_failed`` means the backend answered that this batch cannot be parsed
    (one bad image fails all of them): split it and try the halves. Otherwise the
    backend was unreachable or broken and the batch may be retried as it is.
    """

    def __init__(
        self, message: str, *, batch_failed: bool = False, retriable: bool = True
    ) -> None:
        super().__init__(message)
        self.batch_failed = batch_failed
        self.retriable = retriable


@dataclass(frozen=True, slots=True)
class BackendHealth:
    name: str
    healthy: bool
    detail: str = ""


class Backend(Protocol):
    name: str

    async def parse_batch(self, items: Sequence[BatchItem]) -> BatchOutcome: ...

    async def health(self) -> BackendHealth: ...

    async def aclose(self) -> None: ...
