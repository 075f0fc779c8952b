"""What the API asks Kafka besides producing: reachability, partitions, lag.

Health and lag are cached for ``cache_s`` seconds, so probes and dashboards
polling /health and /queue/status cannot turn into a load on the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import BrokerResponseError, KafkaError

from common.kafka import client_options
from common.settings import Settings

from .models import ConsumerLag, PartitionLag

logger = logging.getLogger(__name__)

CACHE_S = 2.0
CALL_TIMEOUT_S = 3.0

T = TypeVar("T")


class _Cached(Generic[T]):
    """The last value of ``load`` for ``ttl_s`` seconds; one load at a time."""

    def __init__(self, load: Callable[[], Awaitable[T]], ttl_s: float) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._value: T | None = None
        self._loaded_at = -float("inf")
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        async with self._lock:
            if self._value is None or time.monotonic() - self._loaded_at > self._ttl_s:
                self._value = await self._load()
                self._loaded_at = time.monotonic()
            return self._value


@dataclass(frozen=True, slots=True)
class KafkaHealth:
    ok: bool
    error: str | None = None


class KafkaInspector:
    def __init__(self, settings: Settings, cache_s: float = CACHE_S) -> None:
        self.settings = settings
        options = client_options(settings)
        self._admin = AIOKafkaAdminClient(
            **options, request_timeout_ms=int(CALL_TIMEOUT_S * 1000)
        )
        # Group-less and never assigned: only asked for offsets.
        self._offsets = AIOKafkaConsumer(
            **options,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=int(CALL_TIMEOUT_S * 1000),
        )
        self._health = _Cached(self._check_health, cache_s)
        self._lag = _Cached(self._fetch_lag, cache_s)

    async def start(self) -> None:
        await self._admin.start()
        await self._offsets.start()

    async def stop(self) -> None:
        await stop_consumer(self._offsets)
        await self._admin.close()

    async def partitions(self, topic: str) -> set[int]:
        """Partition ids of ``topic`` from fresh metadata; empty if it is missing."""
        described = await asyncio.wait_for(
            self._admin.describe_topics([topic]), CALL_TIMEOUT_S
        )
        return {
            p["partition"]
            for t in described
            if t["topic"] == topic and not t["error_code"]
            for p in t["partitions"]
        }

    async def health(self) -> KafkaHealth:
        return await self._health.get()

    async def reachable(self) -> bool:
        """Does a broker answer now? Not cached.

        An error answer (missing ACLs, say) is an answer: only a broker that
        cannot be reached makes this False.
        """
        try:
            await asyncio.wait_for(self._admin.describe_cluster(), CALL_TIMEOUT_S)
        except BrokerResponseError:
            return True
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.debug("kafka_probe_failed", extra={"error": repr(exc)})
            return False
        return True

    async def consumer_lag(self) -> ConsumerLag | None:
        """Lag of the worker group on the requests topic; None if Kafka failed."""
        try:
            return await self._lag.get()
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.warning("consumer_lag_failed", extra={"error": repr(exc)})
            return None

    async def _check_health(self) -> KafkaHealth:
        # A metadata request is a real round trip to a broker.
        try:
            await asyncio.wait_for(self._admin.describe_cluster(), CALL_TIMEOUT_S)
            return KafkaHealth(ok=True)
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.warning("kafka_unhealthy", extra={"error": repr(exc)})
            return KafkaHealth(ok=False, error=type(exc).__name__)

    async def _fetch_lag(self) -> ConsumerLag:
        topic = self.settings.requests_topic
        group = self.settings.consumer_group
        partitions = [TopicPartition(topic, p) for p in await self.partitions(topic)]
        partitions.sort()
        committed = await asyncio.wait_for(
            self._admin.list_consumer_group_offsets(group, partitions=partitions),
            CALL_TIMEOUT_S,
        )
        ends = await self._offsets.end_offsets(partitions)
        starts = await self._offsets.beginning_offsets(partitions)

        rows = []
        for tp in partitions:
            offset = committed[tp].offset if tp in committed else -1
            known = offset if offset >= 0 else None
            # Without a commit the group starts at the earliest retained offset.
            consumed_to = known if known is not None else starts.get(tp, 0)
            rows.append(
                PartitionLag(
                    partition=tp.partition,
                    end_offset=ends[tp],
                    committed_offset=known,
                    lag=max(0, ends[tp] - consumed_to),
                )
            )
        return ConsumerLag(
            group=group,
            topic=topic,
            total=sum(r.lag for r in rows),
            partitions=rows,
        )


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer``, even one started a moment ago.

    A group-less consumer stopped before its internal offset-reset task first
    ran raises CancelledError from stop() and leaves its connections open;
    yielding to the loop once lets that task start.
    """
    await asyncio.sleep(0)
    await consumer.stop()
