"""Routing replies from Kafka to the HTTP handlers waiting for them.

Every API process reads every partition of the replies topic with a group-less
consumer: a reply lands on the partition its request id hashes to, whichever API
process holds the caller. Each handler subscribes to its request id before the
request is produced, so a reply can never arrive unnoticed; replies for ids that
nobody here waits for are counted and dropped.

    router = ReplyRouter(settings, metrics, partitions_of)
    await router.start()            # positions resolved: ready for traffic
    future = router.subscribe(request_id)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from common.kafka import client_options
from common.messages import decode_reply
from common.settings import MiB, Settings

from .kafka_status import stop_consumer
from .metrics import ApiMetrics

logger = logging.getLogger(__name__)

REFRESH_PARTITIONS_S = 30.0
POLL_TIMEOUT_MS = 500

Body = dict[str, Any]
PartitionLookup = Callable[[str], Awaitable[set[int]]]


class ReplyRouter:
    def __init__(
        self,
        settings: Settings,
        metrics: ApiMetrics,
        partitions_of: PartitionLookup,
        refresh_partitions_s: float = REFRESH_PARTITIONS_S,
    ) -> None:
        self.topic = settings.replies_topic
        self.metrics = metrics
        self.partitions_of = partitions_of
        self.refresh_partitions_s = refresh_partitions_s
        self._waiters: dict[str, set[asyncio.Future[Body]]] = {}
        self._consumer = AIOKafkaConsumer(
            **client_options(settings),
            client_id="dolphin-api-replies",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            max_partition_fetch_bytes=16 * MiB,
        )
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Assign all partitions at their end; returns once positions are known."""
        partitions = await self.partitions_of(self.topic)
        if not partitions:
            msg = (
                f"replies topic {self.topic!r} does not exist; create the topics "
                "(the API does so at start-up) before starting the app"
            )
            raise RuntimeError(msg)
        await self._consumer.start()
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        for tp in assigned:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="reply-router")
        logger.info(
            "reply_router_started",
            extra={"topic": self.topic, "partitions": len(assigned)},
        )

    async def stop(self) -> None:
        # aiokafka's getmany() can swallow a cancellation; the flag ends the loop.
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await stop_consumer(self._consumer)
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        self._waiters.clear()
        logger.info("reply_router_stopped")

    def subscribe(self, request_id: str) -> asyncio.Future[Body]:
        future: asyncio.Future[Body] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, set()).add(future)
        return future

    def unsubscribe(self, request_id: str, future: asyncio.Future[Body]) -> None:
        futures = self._waiters.get(request_id)
        if futures is None:
            return
        futures.discard(future)
        if not futures:
            del self._waiters[request_id]

    @property
    def partitions(self) -> set[int]:
        """Partitions of the replies topic this router reads."""
        return {tp.partition for tp in self._consumer.assignment()}

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def deliver(self, key: bytes | None, value: bytes | None) -> None:
        try:
            request_id, body = decode_reply(key, value)
        except ValueError as exc:
            logger.warning("reply_malformed", extra={"error": str(exc)})
            self.metrics.replies_dropped.inc()
            return
        futures = self._waiters.get(request_id)
        if not futures:
            logger.debug("reply_dropped", extra={"reply_for": request_id})
            self.metrics.replies_dropped.inc()
            return
        for future in futures:
            if not future.done():
                future.set_result(body)

    async def _run(self) -> None:
        refreshed_at = time.monotonic()
        while not self._closing:
            try:
                batches = await self._consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
                for records in batches.values():
                    for record in records:
                        self.deliver(record.key, record.value)
                if time.monotonic() - refreshed_at >= self.refresh_partitions_s:
                    refreshed_at = time.monotonic()
                    await self._add_new_partitions()
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:
                logger.warning("reply_poll_failed", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
            except Exception:
                logger.exception("reply_router_error")
                await asyncio.sleep(1.0)

    async def _add_new_partitions(self) -> None:
        """Take on partitions added to the topic since start, from their start."""
        known = await self.partitions_of(self.topic)
        assigned = self._consumer.assignment()
        new = [TopicPartition(self.topic, p) for p in sorted(known)]
        new = [tp for tp in new if tp not in assigned]
        if not new:
            return
        # assign() forgets positions; keep those of the partitions already read.
        positions = {tp: await self._consumer.position(tp) for tp in assigned}
        self._consumer.assign([*assigned, *new])
        for tp, offset in positions.items():
            self._consumer.seek(tp, offset)
        await self._consumer.seek_to_beginning(*new)
        logger.info(
            "reply_partitions_added",
            extra={"topic": self.topic, "partitions": [tp.partition for tp in new]},
        )
