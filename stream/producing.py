"""Producing replies and dead letters, retried until Kafka takes them.

The worker acks a request only after its reply is on the broker, so a send that
fails is retried with backoff for as long as the worker runs: a broker restart
delays answers, it does not lose them. Once shutdown begins, a send gives up
after a few attempts and its request stays unacked, to be redelivered.
Errors that no retry can fix (a message over the size limit, a forbidden or
invalid topic) are raised at once as ``UndeliverableMessage``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from redis.exceptions import RedisError

from common.kafka import client_options, max_request_bytes
from common.settings import Settings

__all__ = [
    "DeliveryAbandoned",
    "ReliableProducer",
    "Retrier",
    "UndeliverableMessage",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PERMANENT: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)
_TRANSIENT: tuple[type[BaseException], ...] = (
    KafkaError,
    RedisError,
    OSError,
    TimeoutError,
)


class UndeliverableMessage(Exception):
    """Kafka refused the message for good; retrying cannot help."""


class DeliveryAbandoned(Exception):
    """The worker is stopping and the operation still failed; leave it unacked."""


class Retrier:
    """Retries transient Kafka and Redis failures with capped backoff."""

    def __init__(
        self,
        *,
        base_s: float = 0.2,
        cap_s: float = 5.0,
        attempts_when_stopping: int = 3,
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempts_when_stopping = attempts_when_stopping
        self.stopping = asyncio.Event()

    async def run(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await operation()
            except _PERMANENT as exc:
                raise UndeliverableMessage(f"{what}: {exc!r}") from exc
            except _TRANSIENT as exc:
                if self.stopping.is_set() and attempt >= self.attempts_when_stopping:
                    raise DeliveryAbandoned(f"{what}: {exc!r}") from exc
                delay_s = min(self.cap_s, self.base_s * 2 ** min(attempt - 1, 10))
                logger.warning(
                    "retrying_after_error",
                    extra={
                        "operation": what,
                        "attempt": attempt,
                        "delay_s": delay_s,
                        "error": repr(exc),
                    },
                )
                await asyncio.sleep(delay_s)


class ReliableProducer:
    """An acks=all producer whose sends wait for the broker."""

    def __init__(self, settings: Settings, retrier: Retrier) -> None:
        self._retrier = retrier
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            client_id="dolphin-worker",
            acks="all",
            # Not idempotent: aiokafka numbers a batch when it is drained, and a
            # batch that expires waiting for a partition leader leaves a gap the
            # broker answers with OutOfOrderSequenceNumber, after which every
            # send fails until the process restarts. A reply or dead letter sent
            # twice is harmless: consumers key them by request id.
            enable_idempotence=False,
            max_request_size=max_request_bytes(settings),
            linger_ms=2,
        )

    @property
    def client(self) -> Any:
        return self._producer.client

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        """Send and wait for the broker's ack, retrying transient errors."""

        async def attempt() -> None:
            await self._producer.send_and_wait(
                topic, value=value, key=key, headers=list(headers)
            )

        await self._retrier.run(f"produce to {topic}", attempt)
