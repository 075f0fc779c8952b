"""The dead-letter topic: messages that can never be processed, with the reason.

A dead letter keeps the original key, value and headers, so it can be inspected
and replayed as it was, and adds:

    dlq_reason            stable code, e.g. missing_header, not_an_image
    dlq_error             the human explanation
    dlq_source_topic      where it was consumed from
    dlq_source_partition
    dlq_source_offset
    dlq_time              when it was dead-lettered (RFC 3339, UTC)

A value too large for the dead-letter topic is dropped and flagged with
``dlq_value_dropped: true``, so even an oversized message leaves a trace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common.messages import format_time, utc_now

from . import metrics
from .producing import ReliableProducer, UndeliverableMessage

__all__ = ["DeadLetter", "DeadLetters"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str
    error: str


class DeadLetters:
    def __init__(self, producer: ReliableProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def send(self, letter: DeadLetter) -> None:
        headers = [
            *letter.headers,
            ("dlq_reason", letter.reason.encode()),
            ("dlq_error", letter.error.encode("utf-8", "replace")),
            ("dlq_source_topic", letter.topic.encode()),
            ("dlq_source_partition", str(letter.partition).encode()),
            ("dlq_source_offset", str(letter.offset).encode()),
            ("dlq_time", format_time(utc_now()).encode()),
        ]
        try:
            await self._producer.send(
                self.topic, key=letter.key, value=letter.value, headers=headers
            )
        except UndeliverableMessage:
            logger.warning(
                "dead_letter_value_dropped",
                extra={"reason": letter.reason, "dlq_topic": self.topic},
            )
            headers.append(("dlq_value_dropped", b"true"))
            await self._producer.send(
                self.topic, key=letter.key, value=None, headers=headers
            )
        metrics.DLQ.labels(reason=letter.reason).inc()
        metrics.MESSAGES.labels(outcome="dlq").inc()
        logger.warning(
            "request_dead_lettered",
            extra={
                "reason": letter.reason,
                "error": letter.error,
                "topic": letter.topic,
                "partition": letter.partition,
                "offset": letter.offset,
            },
        )
