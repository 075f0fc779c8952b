"""Turn a stream of single requests into batches on a bounded set of slots.

    put() ──> waiting (bounded) ──dispatcher──> batch tasks (≤ slots) ──> sink
                   ^                                   |
                   +──── back on failure, until due ───+

One dispatcher task asks the policy what to send whenever a slot is free and
requests wait; each batch then runs in its own task (``BatchRunner``). Every
request put in is answered through the sink exactly once (a result, the error
its image earned alone, ``deadline_exceeded`` or ``cancelled``) unless
``stop()`` or ``discard()`` hands it back unanswered. When the backend fails a
whole batch, its requests wait again, for a recovered backend or for their
deadline, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Collection

from common.settings import Settings
from stream.backends.base import Backend
from stream.batching.clock import Clock, LoopClock
from stream.batching.ledger import BatcherClosed, Ledger
from stream.batching.model import ArrivalRate, LatencyModel
from stream.batching.policy import BatchPolicy, Dispatch, make_policy
from stream.batching.queue import Entry, WaitingQueue
from stream.batching.runner import BatchRunner
from stream.batching.stats import BatcherStats, BatchRecord, Counters
from stream.batching.types import CancelledCheck, Pending, ResultSink
from stream.breaker import Breaker

__all__ = ["Batcher", "BatcherClosed"]

logger = logging.getLogger(__name__)

CANCELLED_CHECK_TIMEOUT_S = 2.0
DEADLINE = ("deadline_exceeded", "the deadline passed before the image was parsed")
CANCELLED = ("cancelled", "the request was cancelled")


class Batcher:
    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        sink: ResultSink,
        *,
        cancelled: CancelledCheck | None = None,
        breaker: Breaker | None = None,
        clock: Clock | None = None,
        model: LatencyModel | None = None,
        policy: BatchPolicy | None = None,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self._settings = settings
        self._cancelled = cancelled
        self._breaker = breaker
        self._clock = clock or LoopClock()
        self.model = model or LatencyModel(prior_span=settings.max_batch_size)
        self.arrivals = ArrivalRate()
        self.policy = policy or make_policy(
            settings, self.model, self.arrivals, self._clock
        )
        self.counters = Counters()
        self._ledger = Ledger(
            sink, settings.buffer_max_messages, settings.buffer_max_bytes
        )
        self._runner = BatchRunner(
            backend,
            self._ledger,
            self.model,
            self.counters,
            self._clock,
            breaker=breaker,
            retry_base_s=settings.backend_retry_base_s,
            slot_freed=self._slot_freed,
            give_back=self._give_back,
            on_batch=on_batch,
        )
        self._waiting = WaitingQueue()
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch_loop())

    async def put(self, pending: Pending) -> None:
        """Take a request; blocks while the buffer is full (count or bytes).

        Raises BatcherClosed once stop() has begun: the request was not taken.
        """
        if self._closing:
            raise BatcherClosed("the batcher is stopping")
        now_s = self._clock.monotonic()
        entry = Entry.of(
            pending, now_s, self._clock.wall(), self._settings.latency_target_s
        )
        await self._ledger.admit(entry.size_bytes)
        self.arrivals.observe(self._clock.monotonic())
        self._waiting.add(entry)
        self._wakeup.set()

    async def stop(self, grace_s: float) -> list[Pending]:
        """Stop sending; give running batches ``grace_s`` to finish and answer.

        Returns the requests not answered: those still waiting, and those whose
        batch or answer did not complete in time.
        """
        self._closing = True
        self._ledger.close()
        self._wakeup.set()
        if self._dispatcher is not None:
            await self._dispatcher
        tasks = self._ledger.tasks()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=max(grace_s, 0.0))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

        left = [*self._waiting, *self._ledger.take_unanswered()]
        self._waiting = WaitingQueue()
        self._ledger.release(left)
        if left:
            logger.info("batcher_stopped_unanswered", extra={"count": len(left)})
        return [entry.pending for entry in left]

    async def cancel(self, request_ids: Collection[str]) -> list[Pending]:
        """Answer these waiting requests with ``cancelled``; returns those found."""
        entries = self._waiting.remove_where(lambda e: e.request_id in request_ids)
        self.counters.cancelled += len(entries)
        await self._ledger.answer_error(self._ledger.open(entries), *CANCELLED)
        return [entry.pending for entry in entries]

    def discard(self, request_ids: Collection[str]) -> list[Pending]:
        """Hand waiting requests back unanswered (e.g. their partition moved)."""
        return self.discard_matching(lambda p: p.request_id in request_ids)

    def discard_matching(self, predicate: Callable[[Pending], bool]) -> list[Pending]:
        entries = self._waiting.remove_where(lambda e: predicate(e.pending))
        self._ledger.release(entries)
        return [entry.pending for entry in entries]

    def stats(self) -> BatcherStats:
        estimate = self.model.estimate
        return BatcherStats(
            waiting=len(self._waiting),
            waiting_bytes=self._waiting.size_bytes,
            held=self._ledger.held,
            held_bytes=self._ledger.held_bytes,
            in_flight_batches=self._in_flight,
            slots=self._settings.max_concurrent_batches,
            arrival_rate_per_s=self.arrivals.per_s(self._clock.monotonic()),
            latency_fixed_s=estimate.fixed_s,
            latency_per_image_s=estimate.per_image_s,
            latency_residual_s=estimate.residual_s,
            breaker_state=self._breaker.state.value if self._breaker else "none",
            counters=self.counters.copy(),
        )

    # --- dispatching ---

    async def _dispatch_loop(self) -> None:
        while not self._closing:
            try:
                await self._dispatch_once()
            except Exception:
                # A bug here must not strand every waiting request.
                logger.exception("dispatcher_error")
                await asyncio.sleep(0.1)

    async def _dispatch_once(self) -> None:
        self._wakeup.clear()
        now_s = self._clock.monotonic()
        self._expire(now_s)
        wake_s = self._waiting.next_deadline_s()
        slot_free = self._in_flight < self._settings.max_concurrent_batches
        if self._waiting and slot_free:
            blocked_until_s = self._blocked_until_s(now_s)
            if blocked_until_s is not None:
                wake_s = min(wake_s, blocked_until_s)
            else:
                decision = self.policy.decide(
                    self._waiting.entries, in_flight=self._in_flight
                )
                if isinstance(decision, Dispatch):
                    await self._launch(self._waiting.take(decision.indices))
                    return
                wake_s = min(wake_s, decision.until_s)
        # Sleep until then, or until a put, a freed slot or a requeue.
        timeout_s = wake_s - self._clock.monotonic()
        if timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wakeup.wait(), None if math.isinf(timeout_s) else timeout_s
                )

    def _blocked_until_s(self, now_s: float) -> float | None:
        """When sending may resume after failures (inf: on an event); None: now."""
        if now_s < self._runner.paused_until_s:
            return self._runner.paused_until_s
        if self._breaker is None or self._breaker.ready():
            return None
        return self._breaker.reopens_at_s() or math.inf

    def _expire(self, now_s: float) -> None:
        if self._waiting.next_deadline_s() <= now_s:
            expired = self._waiting.remove_where(lambda e: e.deadline_s <= now_s)
            self.counters.expired += len(expired)
            self._ledger.spawn_error(expired, *DEADLINE)

    async def _launch(self, entries: list[Entry]) -> None:
        # Never send what is already late, or what the caller gave up on.
        now_s = self._clock.monotonic()
        late = [e for e in entries if e.deadline_s <= now_s]
        self.counters.expired += len(late)
        self._ledger.spawn_error(late, *DEADLINE)
        entries = await self._drop_cancelled([e for e in entries if e not in late])
        if not entries:
            return
        if self._closing or (
            self._breaker is not None and not await self._breaker.acquire()
        ):
            self._waiting.extend(entries)
            return

        self._in_flight += 1
        job = self._ledger.open(entries)
        job.task = asyncio.create_task(self._runner.run(job, now_s))

    async def _drop_cancelled(self, entries: list[Entry]) -> list[Entry]:
        if self._cancelled is None or not entries:
            return entries
        try:
            ids = await asyncio.wait_for(
                self._cancelled([e.request_id for e in entries]),
                CANCELLED_CHECK_TIMEOUT_S,
            )
        except Exception as exc:
            logger.warning(
                "cancelled_check_failed",
                extra={"error": repr(exc), "consequence": "sending the batch as is"},
            )
            return entries
        dropped = [e for e in entries if e.request_id in ids]
        self.counters.cancelled += len(dropped)
        self._ledger.spawn_error(dropped, *CANCELLED)
        return [e for e in entries if e.request_id not in ids]

    def _slot_freed(self) -> None:
        self._in_flight -= 1
        self._wakeup.set()

    def _give_back(self, entries: list[Entry]) -> None:
        self._waiting.extend(entries)
        self._wakeup.set()
