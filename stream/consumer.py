"""The Kafka side of the worker: consume, track, hold back, commit.

One task reads the requests topic and hands the messages of each poll to the
pipeline together. The pipeline blocks while the batcher's buffer is full; the
consumer then pauses every partition and keeps polling, so the group still sees
a live member while nothing new is fetched (Kafka evicts a consumer that stops
polling for ``max.poll.interval.ms``). Fetching resumes as soon as the message
got through.

Offsets are committed every ``commit_interval_s`` from the ledger (see
``stream.commits``), never from the consumer's position: a message read but not
answered keeps its partition's committed offset below it. Auto-commit is off.

On revocation the partitions' waiting requests are given back to Kafka (dropped
here, consumed again by the next owner), batches already at the backend get up
to ``shutdown_grace_s`` to finish, and what was answered is committed before the
partitions go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from common.kafka import client_options
from common.settings import Settings

from . import metrics
from .commits import OffsetLedger
from .pipeline import Pipeline, Record
from .producing import DeliveryAbandoned

__all__ = ["RequestConsumer"]

logger = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500
MAX_RECORDS_PER_POLL = 64
KEEPALIVE_POLL_S = 2.0
FETCH_PARTITION_BYTES = 2 * 1024 * 1024
FETCH_MAX_BYTES = 8 * 1024 * 1024
LAG_REFRESH_S = 5.0

ReleaseWaiting = Callable[[Collection[TopicPartition]], None]


class RequestConsumer:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        *,
        release_waiting: ReleaseWaiting,
    ) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._release_waiting = release_waiting
        self.ledger = OffsetLedger()
        self._commit_lock = asyncio.Lock()
        self._paused = False
        self._stopping = asyncio.Event()
        self._lag_partitions: set[str] = set()
        self.started = False
        grace_ms = int(settings.shutdown_grace_s * 1000)
        self._consumer = AIOKafkaConsumer(
            settings.requests_topic,
            **client_options(settings),
            group_id=settings.consumer_group,
            client_id="dolphin-worker",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            # Small fetches keep memory flat; a message larger than these limits
            # still arrives whole, since brokers always return the first one.
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
            fetch_max_bytes=FETCH_MAX_BYTES,
            # Revocation waits for running batches; the group must wait for it.
            rebalance_timeout_ms=grace_ms + 30_000,
            max_poll_interval_ms=max(300_000, grace_ms + 60_000),
        )
        self._consumer.subscribe([settings.requests_topic], listener=_Listener(self))

    # --- Lifecycle ---

    async def start(self) -> None:
        await self._consumer.start()
        self.started = True
        logger.info(
            "consumer_started",
            extra={
                "topic": self._settings.requests_topic,
                "group": self._settings.consumer_group,
            },
        )

    async def stop(self) -> None:
        """Commit what was answered and leave the group."""
        if self.started:
            await self.commit()
            self.started = False
        await self._consumer.stop()
        logger.info("consumer_stopped")

    def stop_intake(self) -> None:
        self._stopping.set()

    @property
    def assignment(self) -> list[TopicPartition]:
        return self.ledger.partitions

    async def list_topics(self) -> set[str]:
        topics: set[str] = await self._consumer.topics()
        return topics

    # --- Intake ---

    async def run(self) -> None:
        """Feed messages to the pipeline until ``stop_intake``."""
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(
                timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_RECORDS_PER_POLL
            )
            handled: list[tuple[Record, asyncio.Task[None]]] = []
            for tp, records in batches.items():
                handled += self._start_handling(tp, records)
            await self._settle(handled)

    def _start_handling(
        self, tp: TopicPartition, records: list[Any]
    ) -> list[tuple[Record, asyncio.Task[None]]]:
        """Hand one poll's messages to the pipeline at once.

        Their Redis look-ups then overlap instead of queueing one round trip
        behind another; acks may complete in any order, the ledger keeps the
        committed offset below the oldest unanswered message. Nothing awaits
        between the checks and the hand-over, so no rebalance can interleave.
        """
        ledger = self.ledger.get(tp)
        if ledger is None or self._stopping.is_set():
            return []
        started = []
        for record in records:
            ticket = ledger.track(record.offset)
            task = asyncio.create_task(self._pipeline.handle(record, ticket))
            started.append((record, task))
        return started

    async def _settle(self, handled: list[tuple[Record, asyncio.Task[None]]]) -> None:
        """Wait until every message of a poll reached the batcher or its answer."""
        tasks = {task for _, task in handled}
        waiting = set(tasks)
        try:
            while waiting:
                _, waiting = await asyncio.wait(waiting, timeout=KEEPALIVE_POLL_S)
                if waiting:
                    await self._hold_back()
        finally:
            for task in waiting:
                task.cancel()
            for task in waiting:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._paused:
            self._resume()
        for record, task in handled:
            try:
                task.result()
            except DeliveryAbandoned:
                raise
            except Exception:
                # Even dead-lettering failed. The message stays unacknowledged
                # (its partition's commits wait for a restart to retry it)
                # rather than stopping the worker for every partition.
                logger.exception(
                    "message_left_unanswered",
                    extra={"partition": record.partition, "offset": record.offset},
                )

    async def _hold_back(self) -> None:
        """Stay in the group while the pipeline is blocked, fetching nothing."""
        if not self._paused:
            self._paused = True
            self._consumer.pause(*self._consumer.assignment())
            logger.debug("intake_paused_buffer_full")
        stray = await self._consumer.getmany(timeout_ms=0)
        for tp, records in stray.items():
            # Partitions assigned meanwhile may deliver; read them again later.
            if records:
                self._consumer.seek(tp, records[0].offset)

    def _resume(self) -> None:
        self._paused = False
        self._consumer.resume(*self._consumer.assignment())
        logger.debug("intake_resumed")

    # --- Commits ---

    async def commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.commit_interval_s)
            await self.commit()

    async def commit(self) -> None:
        async with self._commit_lock:
            offsets = self.ledger.committable()
            if await self._commit(offsets):
                self.ledger.mark_committed(offsets)

    async def _commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        if not offsets:
            return False
        try:
            await self._consumer.commit(dict(offsets))
        except KafkaError as exc:
            # The next tick retries; after a rebalance the next owner resumes
            # from the last commit that did succeed.
            logger.warning("commit_failed", extra={"error": repr(exc)})
            return False
        logger.debug(
            "offsets_committed",
            extra={"offsets": {str(tp.partition): o for tp, o in offsets.items()}},
        )
        return True

    # --- Rebalancing ---

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        ledgers = self.ledger.revoke(revoked)
        if not ledgers:
            return
        logger.info(
            "partitions_revoked",
            extra={"partitions": sorted(tp.partition for tp in revoked)},
        )
        self._release_waiting(revoked)
        wait_s = 0.0 if self._stopping.is_set() else self._settings.shutdown_grace_s
        drained = await asyncio.gather(
            *(ledger.wait_drained(wait_s) for ledger in ledgers)
        )
        if not all(drained):
            logger.warning(
                "revoked_with_requests_in_flight",
                extra={"unanswered": sum(ledger.unanswered for ledger in ledgers)},
            )
        async with self._commit_lock:
            offsets = {
                ledger.tp: offset
                for ledger in ledgers
                if (offset := ledger.committable()) is not None
            }
            await self._commit(offsets)
        for ledger in ledgers:
            ledger.close()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.ledger.assign(assigned)
        if self._paused and assigned:
            self._consumer.pause(*assigned)
        logger.info(
            "partitions_assigned",
            extra={"partitions": sorted(tp.partition for tp in assigned)},
        )

    # --- Lag ---

    async def lag_loop(self) -> None:
        while True:
            try:
                await self.refresh_lag()
            except (KafkaError, OSError) as exc:
                logger.warning("lag_refresh_failed", extra={"error": repr(exc)})
            await asyncio.sleep(LAG_REFRESH_S)

    async def refresh_lag(self) -> dict[int, int]:
        tps = self.ledger.partitions
        lags: dict[int, int] = {}
        if tps:
            ends = await self._consumer.end_offsets(tps)
            starts = await self._consumer.beginning_offsets(tps)
            for tp in tps:
                committed = await self._consumer.committed(tp)
                base = committed if committed is not None else starts[tp]
                lags[tp.partition] = max(0, ends[tp] - base)
        labels = {str(partition) for partition in lags}
        for gone in self._lag_partitions - labels:
            metrics.CONSUMER_LAG.remove(gone)
        for partition, lag in lags.items():
            metrics.CONSUMER_LAG.labels(partition=str(partition)).set(lag)
        self._lag_partitions = labels
        return lags


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: RequestConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner.on_assigned(set(assigned))
