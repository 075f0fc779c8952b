"""Run one batch on a backend, isolating images that fail the whole batch.

The Modal endpoint answers a batch with one undecodable image as failed,
without saying which image it was. ``run_batch`` then splits the batch in
halves and runs each half in turn (never in parallel: the batch holds one
backend slot), down to single images, so a bad image fails alone with
``parse_failed`` and the others are parsed. One bad image among ``n`` costs
about ``2 * log2(n)`` extra calls.

Any other backend failure ends the run: ``RunAborted`` carries what the halves
that already ran produced, so only the rest needs to be sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stream.backends.base import (
    Backend,
    BackendError,
    BatchItem,
    ItemError,
    ItemOutcome,
)
from stream.batching.types import BatchMeta

logger = logging.getLogger(__name__)

PARSE_FAILED = "parse_failed"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One request to the backend."""

    size: int
    wall_s: float
    backend_s: float
    ok: bool
    """False when the backend failed the batch as a whole."""


@dataclass(slots=True)
class ExecutionInfo:
    calls: list[CallRecord] = field(default_factory=list)
    metas: list[BatchMeta] = field(default_factory=list)
    """Per input item, the backend batch that produced its outcome (filled
    when the run completes)."""

    @property
    def backend_s(self) -> float:
        return sum(call.backend_s for call in self.calls)


class RunAborted(BackendError):
    """The backend failed; ``completed`` holds the outcomes obtained before,
    by input index (empty unless halves of a split batch had already run)."""

    def __init__(
        self,
        cause: BackendError,
        completed: dict[int, tuple[ItemOutcome, BatchMeta]],
        info: ExecutionInfo,
    ) -> None:
        super().__init__(str(cause), retriable=cause.retriable)
        self.cause = cause
        self.completed = completed
        self.info = info


async def run_batch(
    backend: Backend,
    items: Sequence[BatchItem],
    *,
    batch_id: str = "",
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[ItemOutcome], ExecutionInfo]:
    """Parse ``items``; outcomes and metas come back in input order.

    ``batch_id`` names the run in the metas of images that failed alone (their
    failed call has no backend batch id). Raises RunAborted when the backend
    failed other than by rejecting a batch's content.
    """
    outcomes: list[ItemOutcome | None] = [None] * len(items)
    metas: list[BatchMeta | None] = [None] * len(items)
    info = ExecutionInfo()

    async def run(lo: int, hi: int) -> None:
        started_s = clock()
        try:
            result = await backend.parse_batch(items[lo:hi])
        except BackendError as exc:
            wall_s = clock() - started_s
            info.calls.append(CallRecord(hi - lo, wall_s, wall_s, ok=False))
            if not exc.batch_failed:
                raise
            if hi - lo == 1:
                outcomes[lo] = ItemError(items[lo].filename, PARSE_FAILED, str(exc))
                metas[lo] = BatchMeta(batch_id, 1, wall_s)
                return
            logger.info(
                "batch_split",
                extra={"size": hi - lo, "error": str(exc)},
            )
            mid = (lo + hi) // 2
            await run(lo, mid)
            await run(mid, hi)
            return

        wall_s = clock() - started_s
        if len(result.items) != hi - lo:
            msg = (
                f"backend {backend.name} answered {len(result.items)} outcomes "
                f"for {hi - lo} images"
            )
            info.calls.append(CallRecord(hi - lo, wall_s, wall_s, ok=False))
            raise BackendError(msg)
        backend_s = result.backend_seconds or result.processing_time_s or wall_s
        info.calls.append(CallRecord(hi - lo, wall_s, backend_s, ok=True))
        meta = BatchMeta(result.batch_id or batch_id, hi - lo, wall_s)
        for offset, outcome in enumerate(result.items):
            outcomes[lo + offset] = outcome
            metas[lo + offset] = meta

    try:
        await run(0, len(items))
    except BackendError as exc:
        completed = {
            index: (outcome, meta)
            for index, (outcome, meta) in enumerate(zip(outcomes, metas, strict=True))
            if outcome is not None and meta is not None
        }
        raise RunAborted(exc, completed, info) from exc
    done = [outcome for outcome in outcomes if outcome is not None]
    info.metas = [meta for meta in metas if meta is not None]
    # Every call either filled its slice or raised.
    assert len(done) == len(info.metas) == len(items)
    return done, info
