"""Who is still owed an answer, and how much the batcher holds in memory.

Every request the batcher takes is *held* from ``admit`` until it is answered
through the sink or handed back; the count and bytes held are what bounds
memory, and ``admit`` blocks while either is at its limit. Requests leave the
waiting queue in *jobs* (a batch, or a group answered with an error); a job
lists the requests it has not answered yet, so ``stop()`` can return exactly
those whose answer never completed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from stream.backends.base import ItemError, ItemOutcome
from stream.batching.queue import Entry
from stream.batching.types import BatchMeta, ResultSink

logger = logging.getLogger(__name__)


class BatcherClosed(Exception):
    """put() after stop(): the request was not taken; leave it unacknowledged."""


@dataclass(eq=False, slots=True)
class Job:
    entries: list[Entry]
    """The requests the job took, in order."""
    unanswered: list[Entry]
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    task: asyncio.Task[None] | None = None


class Ledger:
    def __init__(self, sink: ResultSink, max_messages: int, max_bytes: int) -> None:
        self._sink = sink
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self.held = 0
        self.held_bytes = 0
        self.jobs: set[Job] = set()
        self._space_freed = asyncio.Event()
        self._closed = False

    async def admit(self, size_bytes: int) -> None:
        """Count a request in, once there is room; raises BatcherClosed."""
        while not self._fits(size_bytes):
            self._space_freed.clear()
            await self._space_freed.wait()
            if self._closed:
                raise BatcherClosed("the batcher stopped while put() waited")
        self.held += 1
        self.held_bytes += size_bytes

    def close(self) -> None:
        """Wake every blocked ``admit`` to fail."""
        self._closed = True
        self._space_freed.set()

    def release(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.held -= 1
            self.held_bytes -= entry.size_bytes
        self._space_freed.set()

    def open(self, entries: list[Entry]) -> Job:
        job = Job(entries, unanswered=list(entries))
        self.jobs.add(job)
        return job

    def close_job(self, job: Job) -> None:
        if not job.unanswered:
            self.jobs.discard(job)

    def take_unanswered(self) -> list[Entry]:
        """Forget every job; return the requests they never answered."""
        left = [entry for job in self.jobs for entry in job.unanswered]
        self.jobs.clear()
        return left

    async def deliver(
        self, job: Job, entry: Entry, outcome: ItemOutcome, meta: BatchMeta | None
    ) -> None:
        try:
            await self._sink(entry.pending, outcome, meta)
        except Exception:
            logger.exception("sink_failed", extra={"request_id": entry.request_id})
        # Only a sink call that returned (or raised) counts as an answer; a
        # cancelled one leaves the request on the job for stop() to return.
        job.unanswered.remove(entry)
        self.release([entry])

    async def answer_error(self, job: Job, code: str, message: str) -> None:
        """Answer every request of ``job`` with the same error, no batch run."""
        await asyncio.gather(
            *(
                self.deliver(job, e, ItemError(e.pending.filename, code, message), None)
                for e in list(job.unanswered)
            )
        )
        self.close_job(job)

    def spawn_error(self, entries: list[Entry], code: str, message: str) -> None:
        """``answer_error`` in a task of its own, so a slow sink stalls no one."""
        if entries:
            job = self.open(entries)
            job.task = asyncio.create_task(self.answer_error(job, code, message))

    def tasks(self) -> list[asyncio.Task[None]]:
        return [job.task for job in self.jobs if job.task is not None]

    def _fits(self, size_bytes: int) -> bool:
        if self.held == 0:
            return True  # one oversized image must still get through
        return (
            self.held < self._max_messages
            and self.held_bytes + size_bytes <= self._max_bytes
        )
