"""Kafka client options and the topics of the connector."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from .settings import MiB, Settings

logger = logging.getLogger(__name__)

HOUR_MS = 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str]


def max_request_bytes(settings: Settings) -> int:
    """Largest Kafka message: the largest allowed image plus room for headers."""
    return settings.max_image_bytes + MiB


def topic_specs(settings: Settings) -> list[TopicSpec]:
    big = str(max_request_bytes(settings))
    return [
        # Requests matter until their deadline; a day leaves room to replay.
        TopicSpec(
            settings.requests_topic,
            settings.topic_partitions,
            {
                "max.message.bytes": big,
                "retention.ms": str(24 * HOUR_MS),
                "cleanup.policy": "delete",
            },
        ),
        # Replies only matter while a caller waits; results also live in Redis.
        TopicSpec(
            settings.replies_topic,
            settings.topic_partitions,
            {
                "max.message.bytes": str(16 * MiB),
                "retention.ms": str(2 * HOUR_MS),
                "cleanup.policy": "delete",
            },
        ),
        # Poison messages wait for a human; keep them a week.
        TopicSpec(
            settings.dlq_topic,
            1,
            {
                "max.message.bytes": big,
                "retention.ms": str(7 * 24 * HOUR_MS),
                "cleanup.policy": "delete",
            },
        ),
    ]


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection and security options shared by every aiokafka client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            )
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password else None,
        )
    return options


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the connector's topics if missing; existing ones are left alone."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=settings.topic_replication_factor,
                topic_configs=spec.configs,
            )
            for spec in topic_specs(settings)
            if spec.name not in existing
        ]
        if not missing:
            return
        with contextlib.suppress(TopicAlreadyExistsError):
            await asyncio.wait_for(admin.create_topics(missing), timeout_s)
        logger.info("topics_created", extra={"topics": [t.name for t in missing]})
    finally:
        await admin.close()


async def metadata_round_trip(bootstrap: str, timeout_s: float) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        try:
            await admin.close()
        except Exception:
            logger.debug("admin_close_failed", exc_info=True)
