"""The reply router against a real broker: every partition, including new ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from api.kafka_status import KafkaInspector
from api.metrics import ApiMetrics
from api.replies import ReplyRouter
from common.kafka import client_options
from common.messages import encode_reply, result_body
from common.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def router(settings: Settings) -> AsyncIterator[ReplyRouter]:
    """A started router that looks for new partitions every half second."""
    inspector = KafkaInspector(settings)
    await inspector.start()
    started = ReplyRouter(
        settings, ApiMetrics(), inspector.partitions, refresh_partitions_s=0.5
    )
    await started.start()
    yield started
    await started.stop()
    await inspector.stop()


async def reply_on(settings: Settings, request_id: str, partition: int) -> None:
    producer = AIOKafkaProducer(**client_options(settings))
    await producer.start()
    try:
        body = result_body(
            request_id=request_id,
            filename="p.png",
            elements=[],
            batch_id="b",
            processing_time_s=0.1,
        )
        key, value, headers = encode_reply(request_id, body)
        await producer.send_and_wait(
            settings.replies_topic, value, key=key, headers=headers, partition=partition
        )
    finally:
        await producer.stop()


async def test_replies_on_every_partition_reach_their_waiter(
    settings: Settings, router: ReplyRouter
) -> None:
    """A reply is delivered whichever partition it lands on."""
    assert router.partitions == set(range(4))
    waiting = {p: router.subscribe(f"id-{p}") for p in range(4)}

    for partition in range(4):
        await reply_on(settings, f"id-{partition}", partition)

    for partition, future in waiting.items():
        body = await asyncio.wait_for(future, 20)
        assert body["request_id"] == f"id-{partition}"


async def test_partitions_added_later_are_read(
    settings: Settings, router: ReplyRouter
) -> None:
    """After the replies topic grows, replies on the new partitions still arrive."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.create_partitions({settings.replies_topic: NewPartitions(6)})
    finally:
        await admin.close()
    on_new = router.subscribe("on-new")
    on_old = router.subscribe("on-old")

    await reply_on(settings, "on-new", 5)
    await reply_on(settings, "on-old", 0)

    assert (await asyncio.wait_for(on_new, 30))["request_id"] == "on-new"
    assert (await asyncio.wait_for(on_old, 30))["request_id"] == "on-old"
    assert router.partitions == set(range(6))
