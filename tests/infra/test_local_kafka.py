"""The local broker is real Apache Kafka, and the topics have explicit configs."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from common.kafka import ensure_topics, max_request_bytes
from common.settings import Settings

pytestmark = pytest.mark.integration


async def test_group_commits_and_a_second_member_resumes(kafka_bootstrap: str) -> None:
    """A consumer group commits offsets and a later member resumes from them."""
    topic = f"real-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()

    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    for i in range(10):
        await producer.send_and_wait(topic, f"m{i}".encode())
    await producer.stop()

    group = f"g-{uuid.uuid4().hex[:8]}"
    first = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await first.start()
    seen = []
    while len(seen) < 4:
        batch = await first.getmany(timeout_ms=2000, max_records=4 - len(seen))
        for records in batch.values():
            seen.extend(r.value for r in records)
    await first.commit()
    await first.stop()

    second = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await second.start()
    try:
        batch = await second.getmany(timeout_ms=5000, max_records=1)
        first_value = next(iter(batch.values()))[0].value
        committed = await second.committed(TopicPartition(topic, 0))
    finally:
        await second.stop()

    assert seen == [b"m0", b"m1", b"m2", b"m3"]
    assert committed == 4
    assert first_value == b"m4"


async def test_topics_are_created_idempotently_with_configs(settings: Settings) -> None:
    """ensure_topics twice is harmless and sets size and retention explicitly."""
    await ensure_topics(settings)

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.requests_topic)]
        )
        topics = await admin.describe_topics([settings.requests_topic])
    finally:
        await admin.close()

    configs = {
        name: value
        for response in described
        for resource in response.resources
        for name, value, *_ in resource[4]
    }
    assert int(configs["max.message.bytes"]) == max_request_bytes(settings)
    assert int(configs["retention.ms"]) == 24 * 3600 * 1000
    assert len(topics[0]["partitions"]) == settings.topic_partitions
