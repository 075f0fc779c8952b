"""Producing parse requests to Kafka, exactly as the message contract says."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.codec import has_lz4
from aiokafka.errors import KafkaError

from common.kafka import client_options, max_request_bytes
from common.messages import ParseRequest, encode_request
from common.settings import Settings

from .errors import api_error

logger = logging.getLogger(__name__)

# Upper bound for one produce; a broker that takes longer is treated as down.
PRODUCE_TIMEOUT_S = 15.0


def compression_type() -> str:
    """lz4 when its codec is installed: much cheaper than gzip on large images."""
    return "lz4" if has_lz4() else "gzip"


class RequestProducer:
    def __init__(self, settings: Settings) -> None:
        self.topic = settings.requests_topic
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            client_id="dolphin-api",
            enable_idempotence=True,
            acks="all",
            compression_type=compression_type(),
            max_request_size=max_request_bytes(settings),
            request_timeout_ms=int(PRODUCE_TIMEOUT_S * 1000),
        )

    async def start(self) -> None:
        await self._producer.start()
        logger.info(
            "producer_started",
            extra={"topic": self.topic, "compression": compression_type()},
        )

    async def stop(self) -> None:
        await self._producer.stop()
        logger.info("producer_stopped")

    async def send(self, request: ParseRequest, timeout_s: float) -> None:
        """Produce ``request`` and wait for the broker's ack; 503 if that fails."""
        key, value, headers = encode_request(request)
        try:
            metadata = await asyncio.wait_for(
                self._producer.send_and_wait(
                    self.topic, value=value, key=key, headers=headers
                ),
                timeout=max(0.1, min(PRODUCE_TIMEOUT_S, timeout_s)),
            )
        except (KafkaError, TimeoutError) as exc:
            logger.warning("produce_failed", extra={"error": repr(exc)})
            raise api_error(
                "kafka_unavailable",
                "the request could not be queued because Kafka did not accept it; "
                "retry shortly",
                retry_after_s=5,
            ) from exc
        logger.debug(
            "request_produced",
            extra={
                "topic": metadata.topic,
                "partition": metadata.partition,
                "offset": metadata.offset,
            },
        )
