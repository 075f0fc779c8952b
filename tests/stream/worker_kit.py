"""Shared pieces of the worker tests: requests, replies, offsets, the simulator.

The worker runs as a subprocess (``start_worker``); the tests act as the API
would: admit a request in Redis, produce it, and read replies from Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from bench.simulator import RunningSimulator, SimConfig, start_in_thread
from common.messages import (
    ParseRequest,
    decode_reply,
    encode_request,
    new_request_id,
    utc_now,
)
from common.settings import Settings
from common.store import Keys, RequestState, set_state

WAIT_S = 90.0


def fake_png(seed: int | str, width: int = 800, height: int = 1000) -> bytes:
    """A small PNG that identifies itself: unique bytes per seed."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    payload = f"page {seed} {os.urandom(8).hex()}".encode()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", b"Comment\x00" + payload)
        + chunk(b"IEND", b"")
    )


def make_request(
    index: int | str,
    settings: Settings,
    *,
    deadline_s: float = 300.0,
    request_id: str | None = None,
    image: bytes | None = None,
) -> ParseRequest:
    return ParseRequest(
        request_id=request_id or new_request_id(),
        filename=f"page-{index}.png",
        image=image if image is not None else fake_png(index),
        content_type="image/png",
        deadline=utc_now() + timedelta(seconds=deadline_s),
        reply_topic=settings.replies_topic,
    )


@dataclass
class Client:
    """Produces requests and admits them in Redis, as the API does."""

    settings: Settings
    redis: Redis
    producer: AIOKafkaProducer
    sent: dict[str, ParseRequest] = field(default_factory=dict)

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_key_prefix)

    async def send(self, request: ParseRequest, *, admit: bool = True) -> None:
        if admit:
            await self.redis.zadd(
                self.keys.admission, {request.request_id: request.deadline_ms}
            )
            await set_state(
                self.redis, self.keys, request.request_id, RequestState.QUEUED, 3600
            )
        key, value, headers = encode_request(request)
        await self.producer.send_and_wait(
            self.settings.requests_topic, value=value, key=key, headers=headers
        )
        self.sent[request.request_id] = request

    async def send_many(self, requests: Iterable[ParseRequest]) -> None:
        for request in requests:
            await self.send(request)

    async def produce_raw(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        topic: str | None = None,
    ) -> tuple[int, int]:
        """Produce any message; returns its (partition, offset)."""
        meta = await self.producer.send_and_wait(
            topic or self.settings.requests_topic, value=value, key=key, headers=headers
        )
        return meta.partition, meta.offset


@asynccontextmanager
async def client(settings: Settings, redis: Redis) -> AsyncIterator[Client]:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        max_request_size=8 * 1024 * 1024,
        acks="all",
    )
    await producer.start()
    try:
        yield Client(settings, redis, producer)
    finally:
        await producer.stop()


class TopicReader:
    """Every message on a topic since the test began, read in the background."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.messages: list[Any] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await self._consumer.start()
        numbers = await partitions(self.settings, self.topic)
        tps = [TopicPartition(self.topic, p) for p in numbers]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        async for message in self._consumer:
            self.on_message(message)

    def on_message(self, message: Any) -> None:
        self.messages.append(message)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


class Replies(TopicReader):
    """Reply bodies by request id."""

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        super().__init__(settings, topic or settings.replies_topic)
        self.by_id: dict[str, list[dict[str, Any]]] = {}

    def on_message(self, message: Any) -> None:
        request_id, body = decode_reply(message.key, message.value)
        self.by_id.setdefault(request_id, []).append(body)

    async def wait_for(self, ids: Iterable[str], timeout_s: float = WAIT_S) -> None:
        wanted = set(ids)
        await wait_until(lambda: wanted <= self.by_id.keys(), timeout_s, "replies")

    def first(self, request_id: str) -> dict[str, Any]:
        return self.by_id[request_id][0]


@asynccontextmanager
async def replies(
    settings: Settings, topic: str | None = None
) -> AsyncIterator[Replies]:
    reader = Replies(settings, topic)
    await reader.start()
    try:
        yield reader
    finally:
        await reader.stop()


@asynccontextmanager
async def reading(settings: Settings, topic: str) -> AsyncIterator[TopicReader]:
    reader = TopicReader(settings, topic)
    await reader.start()
    try:
        yield reader
    finally:
        await reader.stop()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout_s: float = WAIT_S,
    what: str = "condition",
) -> None:
    """Poll until ``condition`` holds; the timeout only guards against hangs."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def partitions(settings: Settings, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described[0]["partitions"])


async def committed_offsets(settings: Settings) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.consumer_group)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.requests_topic
    }


async def end_offsets(settings: Settings) -> dict[int, int]:
    topic = settings.requests_topic
    tps = [TopicPartition(topic, p) for p in await partitions(settings, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def all_committed(settings: Settings) -> bool:
    """Is every produced request of the topic covered by the group's commit?"""
    ends = await end_offsets(settings)
    committed = await committed_offsets(settings)
    return all(committed.get(p, 0) == end for p, end in ends.items() if end > 0)


@pytest.fixture(name="simulator")
def simulator_fixture() -> Iterator[RunningSimulator]:
    """A fast simulated Modal endpoint; tests slow it with ``control()``."""
    running = start_in_thread(SimConfig(fixed_ms=40, per_image_ms=2, containers=4))
    yield running
    running.stop()


def worker_env(simulator: RunningSimulator, **extra: str) -> dict[str, str]:
    """Worker settings for tests: the simulator as backend, short intervals."""
    return {
        "MODAL_API_ENDPOINT": simulator.base_url,
        "DOLPHIN_COMMIT_INTERVAL_S": "0.5",
        "DOLPHIN_BACKEND_RETRY_BASE_S": "0.05",
        "DOLPHIN_BACKEND_ATTEMPTS": "2",
        "DOLPHIN_SHUTDOWN_GRACE_S": "20",
        "DOLPHIN_LATENCY_TARGET_S": "0.5",
        **extra,
    }


def processed_shas(simulator: RunningSimulator) -> list[str]:
    return [item["sha256"] for item in simulator.stats()["processed"]]


def metric_value(url: str, name: str) -> float:
    """Sum of a metric's samples on the worker's /metrics."""
    text = httpx.get(url + "/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total
