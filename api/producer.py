"""Producing parse requests to Kafka, exactly as the message contract says.

While Kafka is known to be unreachable, new requests are refused at once
(``check_available``) instead of each waiting ``PRODUCE_TIMEOUT_S`` for the same
503. Kafka counts as down from a produce that failed for want of a broker, or
from ``PROBE_FAILURES_DOWN`` failed probes in a row; one successful probe or
produce brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.codec import has_lz4
from aiokafka.errors import KafkaError, KafkaTimeoutError

from common.errors import ConnectorError
from common.kafka import client_options, max_request_bytes
from common.messages import ParseRequest, encode_request
from common.settings import Settings

from .errors import api_error

logger = logging.getLogger(__name__)

# Upper bound for one produce; a broker that takes longer is treated as down.
PRODUCE_TIMEOUT_S = 15.0
PROBE_INTERVAL_S = 1.0
# Longer than the probe's own timeout, which should decide first.
PROBE_TIMEOUT_S = 5.0
PROBE_FAILURES_DOWN = 2
RETRY_AFTER_S = 5

Probe = Callable[[], Awaitable[bool]]
"""True when a Kafka broker answered a metadata request."""


def compression_type() -> str:
    """lz4 when its codec is installed: much cheaper than gzip on large images."""
    return "lz4" if has_lz4() else "gzip"


class RequestProducer:
    def __init__(self, settings: Settings, probe: Probe | None = None) -> None:
        self.topic = settings.requests_topic
        self._probe = probe
        self._down_since: float | None = None
        self._went_down = asyncio.Event()
        self._probe_failures = 0
        self._watch: asyncio.Task[None] | None = None
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            client_id="dolphin-api",
            # Not idempotent: aiokafka's idempotent producer gives a batch its
            # sequence number when it is drained, and a batch that then expires
            # waiting for a leader (any outage over the request timeout) leaves a
            # gap the broker answers with OutOfOrderSequenceNumber, which kills
            # the producer for good. A duplicate request message is harmless: the
            # worker suppresses it by request id.
            enable_idempotence=False,
            acks="all",
            compression_type=compression_type(),
            max_request_size=max_request_bytes(settings),
            request_timeout_ms=int(PRODUCE_TIMEOUT_S * 1000),
        )

    async def start(self) -> None:
        await self._producer.start()
        if self._probe is not None:
            self._watch = asyncio.create_task(self._watch_kafka(), name="kafka-watch")
        logger.info(
            "producer_started",
            extra={"topic": self.topic, "compression": compression_type()},
        )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._producer.stop()
        logger.info("producer_stopped")

    @property
    def available(self) -> bool:
        return self._down_since is None

    def check_available(self) -> None:
        """Raise 503 kafka_unavailable at once while Kafka is known to be down."""
        if self._down_since is not None:
            down_s = time.monotonic() - self._down_since
            raise _unavailable(
                f"Kafka has been unreachable for {down_s:.0f} s, so the request "
                "cannot be queued; retry shortly"
            )

    async def send(self, request: ParseRequest, timeout_s: float) -> None:
        """Produce ``request`` and wait for the broker's ack; 503 if that fails."""
        key, value, headers = encode_request(request)
        wait_s = max(0.1, min(PRODUCE_TIMEOUT_S, timeout_s))
        try:
            metadata = await self._send_unless_down(key, value, headers, wait_s)
        except (KafkaError, TimeoutError) as exc:
            logger.warning("produce_failed", extra={"error": repr(exc)})
            if _broker_trouble(exc, wait_s):
                self._mark_down(repr(exc))
            raise _unavailable(
                "the request could not be queued because Kafka did not accept it; "
                "retry shortly"
            ) from exc
        self._mark_up()
        logger.debug(
            "request_produced",
            extra={
                "topic": metadata.topic,
                "partition": metadata.partition,
                "offset": metadata.offset,
            },
        )

    async def _send_unless_down(
        self,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        wait_s: float,
    ) -> Any:
        """The broker's ack; TimeoutError after ``wait_s`` or once Kafka is down.

        A caller whose produce is stuck when Kafka is found down is told at once
        rather than after the full wait. Its message may still land later: the
        caller withdraws the request, and the worker answers it as cancelled.
        """
        sending = asyncio.ensure_future(
            self._producer.send_and_wait(
                self.topic, value=value, key=key, headers=headers
            )
        )
        went_down = asyncio.ensure_future(self._went_down.wait())
        acked = False
        try:
            done, _ = await asyncio.wait(
                {sending, went_down},
                timeout=wait_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            acked = sending in done
        finally:
            went_down.cancel()
            if not acked:
                sending.cancel()
        if not acked:
            raise TimeoutError("no ack from Kafka")
        return sending.result()

    async def _watch_kafka(self) -> None:
        assert self._probe is not None
        while True:
            try:
                reachable = await asyncio.wait_for(self._probe(), PROBE_TIMEOUT_S)
            except Exception:
                reachable = False
            if reachable:
                self._probe_failures = 0
                self._mark_up()
            else:
                self._probe_failures += 1
                if self._probe_failures >= PROBE_FAILURES_DOWN:
                    self._mark_down("probe failed")
            await asyncio.sleep(PROBE_INTERVAL_S)

    def _mark_down(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._went_down.set()
            logger.warning(
                "kafka_down",
                extra={
                    "reason": reason,
                    "consequence": "new requests get 503 until a probe succeeds",
                },
            )

    def _mark_up(self) -> None:
        if self._down_since is not None:
            down_s = time.monotonic() - self._down_since
            self._down_since = None
            self._went_down.clear()
            logger.info("kafka_recovered", extra={"down_s": round(down_s, 1)})


def _broker_trouble(exc: BaseException, waited_s: float) -> bool:
    """Does this failed produce say the broker is unreachable?

    Neither a refused message (too large, say) nor a caller's own short
    deadline does.
    """
    if isinstance(exc, TimeoutError):
        return waited_s >= PRODUCE_TIMEOUT_S
    return isinstance(exc, KafkaTimeoutError) or bool(getattr(exc, "retriable", False))


def _unavailable(message: str) -> ConnectorError:
    return api_error("kafka_unavailable", message, retry_after_s=RETRY_AFTER_S)
