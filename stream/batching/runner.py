"""Run one dispatched batch to its end.

The runner calls the backend through ``run_batch``, frees the slot as soon as
the backend is done (before answering, so the next batch need not wait for the
sink), teaches the latency model, counts, tells the breaker, and then either
answers every request or gives the unanswered back to wait again. After a
failed batch it asks the dispatcher to pause, doubling with each failure in a
row, so an unreachable backend is not hammered between breaker trips.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Collection

from common.logging import bound
from stream.backends.base import Backend, BatchItem, ItemOutcome
from stream.batching.clock import Clock
from stream.batching.ledger import Job, Ledger
from stream.batching.model import LatencyModel
from stream.batching.queue import Entry
from stream.batching.stats import BatchRecord, Counters
from stream.batching.types import BatchMeta
from stream.breaker import Breaker
from stream.execution import CallRecord, RunAborted, run_batch

logger = logging.getLogger(__name__)

MAX_FAILURE_PAUSE_S = 10.0


class BatchRunner:
    def __init__(
        self,
        backend: Backend,
        ledger: Ledger,
        model: LatencyModel,
        counters: Counters,
        clock: Clock,
        *,
        breaker: Breaker | None,
        retry_base_s: float,
        slot_freed: Callable[[], None],
        give_back: Callable[[list[Entry]], None],
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self._backend = backend
        self._ledger = ledger
        self._model = model
        self._counters = counters
        self._clock = clock
        self._breaker = breaker
        self._retry_base_s = retry_base_s
        self._slot_freed = slot_freed
        self._give_back = give_back
        self._on_batch = on_batch
        self.failures_in_row = 0
        self.paused_until_s = -math.inf
        """Monotonic time before which nothing should be sent."""

    async def run(self, job: Job, dispatched_s: float) -> None:
        with bound(batch_id=job.batch_id):
            try:
                await self._execute(job, dispatched_s)
            except Exception:
                logger.exception("batch_task_failed")
            finally:
                self._ledger.close_job(job)

    async def _execute(self, job: Job, dispatched_s: float) -> None:
        items = [BatchItem(e.pending.image, e.pending.filename) for e in job.entries]
        done: dict[int, tuple[ItemOutcome, BatchMeta]] = {}
        failure: Exception | None = None
        calls: list[CallRecord] = []
        try:
            outcomes, info = await run_batch(
                self._backend, items, batch_id=job.batch_id, clock=self._clock.monotonic
            )
            done = dict(enumerate(zip(outcomes, info.metas, strict=True)))
            calls = info.calls
        except RunAborted as exc:
            failure, done, calls = exc, exc.completed, exc.info.calls
        except Exception as exc:  # a broken backend must not lose requests
            logger.exception("backend_crashed")
            failure = exc
        finally:
            self._slot_freed()

        self._account(job, dispatched_s, calls, ok=failure is None)
        if failure is not None:
            await self._requeue(job, done, failure)
        else:
            self.failures_in_row = 0
            if self._breaker is not None:
                await self._breaker.record_success()
        await asyncio.gather(
            *(
                self._ledger.deliver(job, job.entries[i], outcome, meta)
                for i, (outcome, meta) in done.items()
            )
        )

    def _account(
        self, job: Job, dispatched_s: float, calls: list[CallRecord], *, ok: bool
    ) -> None:
        for call in calls:
            if call.ok:
                self._model.observe(call.size, call.wall_s)
        record = BatchRecord(
            batch_id=job.batch_id,
            size=len(job.entries),
            wall_s=self._clock.monotonic() - dispatched_s,
            backend_s=sum(call.backend_s for call in calls),
            calls=len(calls),
            ok=ok,
            queued_s=dispatched_s - min(e.arrived_s for e in job.entries),
        )
        self._counters.add(record)
        logger.debug("batch_done", extra={"size": record.size, "ok": ok})
        if self._on_batch is not None:
            try:
                self._on_batch(record)
            except Exception:
                logger.exception("on_batch_hook_failed")

    async def _requeue(
        self, job: Job, done: Collection[int], failure: Exception
    ) -> None:
        back = [e for i, e in enumerate(job.entries) if i not in done]
        job.unanswered = [e for e in job.unanswered if e not in back]
        self._counters.requeued += len(back)

        self.failures_in_row += 1
        pause_s = self._retry_base_s * 2 ** (self.failures_in_row - 1)
        self.paused_until_s = self._clock.monotonic() + min(
            pause_s, MAX_FAILURE_PAUSE_S
        )
        if self._breaker is not None:
            await self._breaker.record_failure()
        logger.warning(
            "batch_failed",
            extra={
                "error": str(failure),
                "size": len(job.entries),
                "failures_in_row": self.failures_in_row,
                "consequence": f"{len(back)} requests wait again for the backend",
            },
        )
        self._give_back(back)
