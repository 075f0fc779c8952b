"""Factories for the API tests: the app in-process, and the fake worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI
from redis.asyncio import Redis

from api.app import create_app
from api.context import ApiContext
from api.kafka_status import KafkaInspector, stop_consumer
from common.kafka import client_options
from common.settings import Settings
from common.store import Keys
from tests.api.fake_worker import FakeWorker


@dataclass
class InProcessApi:
    """An app run in the test's event loop, its lifespan started."""

    app: FastAPI
    client: httpx.AsyncClient

    @property
    def ctx(self) -> ApiContext:
        ctx: ApiContext = self.app.state.ctx
        return ctx


StartApp = Callable[..., Awaitable[InProcessApi]]
StartWorker = Callable[..., Awaitable[FakeWorker]]


@pytest.fixture
async def start_app(settings: Settings) -> AsyncIterator[StartApp]:
    """Factory: the API in-process with ``settings`` plus overrides."""
    started: list[tuple[Any, httpx.AsyncClient]] = []

    async def start(**overrides: Any) -> InProcessApi:
        app = create_app(settings.model_copy(update=overrides))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60
        )
        started.append((lifespan, client))
        return InProcessApi(app, client)

    yield start
    for lifespan, client in reversed(started):
        await client.aclose()

        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def start_fake_worker(
    settings: Settings, redis_client: Redis
) -> AsyncIterator[StartWorker]:
    """Factory: a started FakeWorker on the test's topics and Redis prefix."""
    started: list[FakeWorker] = []

    async def start(**overrides: Any) -> FakeWorker:
        worker = FakeWorker(settings.model_copy(update=overrides), redis_client)
        await worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.redis_key_prefix)


class QueueProbe:
    """What was queued: the requests topic's end offsets and the admission set."""

    def __init__(self, settings: Settings, redis: Redis, keys: Keys) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys

    async def produced(self) -> int:
        inspector = KafkaInspector(self.settings)
        await inspector.start()
        consumer = AIOKafkaConsumer(**client_options(self.settings))
        await consumer.start()
        try:
            topic = self.settings.requests_topic
            partitions = await inspector.partitions(topic)
            assert partitions, f"topic {topic} has no partitions"
            ends = await consumer.end_offsets(
                [TopicPartition(topic, p) for p in partitions]
            )
            return sum(ends.values())
        finally:
            await stop_consumer(consumer)
            await inspector.stop()

    async def admitted(self) -> int:
        return int(await self.redis.zcard(self.keys.admission))

    async def snapshot(self) -> tuple[int, int]:
        return await self.produced(), await self.admitted()


@pytest.fixture
def queue_probe(settings: Settings, redis_client: Redis, keys: Keys) -> QueueProbe:
    return QueueProbe(settings, redis_client, keys)
