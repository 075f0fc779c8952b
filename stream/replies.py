"""Final answers: the reply message, the stored result, then the ack.

The order is the delivery guarantee. A reply is produced (and acknowledged by
the broker) before the result is stored, and both happen before the request's
offset may be committed; a crash between any two steps leaves the request
uncommitted, so it is consumed again and answered again (from the store when
the result got there). Never the other way round: an offset is never committed
for a request whose caller got nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from common.errors import (
    ConnectorError,
    DeadlineExceeded,
    InvalidRequest,
    ParseFailed,
    Unavailable,
)
from common.messages import encode_reply
from common.store import Keys, RequestState, get_result, record_answer
from stream.backends.base import ItemError

from . import metrics
from .commits import Ticket
from .producing import ReliableProducer, Retrier, UndeliverableMessage

__all__ = ["Answers", "Cancelled", "Delivery", "error_for", "refusal_body"]

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Delivery:
    """A consumed request waiting for its answer: what the answer needs."""

    request_id: str
    filename: str
    reply_topic: str
    ticket: Ticket
    timestamp_ms: int
    """Timestamp of the request message (producer time)."""
    received_s: float = field(default_factory=time.monotonic)


class Cancelled(ConnectorError):
    code = "cancelled"
    status = 410


# Codes of the shared error catalog (the API maps each to its HTTP status).
BACKEND_UNAVAILABLE = "backend_unavailable"

# Why a request message was dead-lettered, as the code its caller is told.
_POISON_CODES: dict[str, tuple[str, int]] = {
    "too_large": ("payload_too_large", 413),
    "not_an_image": ("unsupported_image", 415),
    "unsupported_content_type": ("unsupported_image", 415),
    "empty_value": ("empty_image", 400),
    "bad_filename": ("invalid_filename", 422),
    "processing_error": ("internal_error", 500),
}
_POISON_DEFAULT = ("invalid_field", 422)


def error_for(code: str, message: str) -> tuple[ConnectorError, RequestState]:
    """The client-facing error and final state for an item that failed."""
    if code == DeadlineExceeded.code:
        return DeadlineExceeded(message), RequestState.EXPIRED
    if code == Cancelled.code:
        return Cancelled(message), RequestState.CANCELLED
    if code in (Unavailable.code, BACKEND_UNAVAILABLE):
        return Unavailable(message, code=BACKEND_UNAVAILABLE), RequestState.FAILED
    if code == ParseFailed.code:
        return ParseFailed(message), RequestState.FAILED
    # Backend-specific reasons stay visible, under the one code clients know.
    return ParseFailed(message, detail={"reason": code}), RequestState.FAILED


def refusal_body(request_id: str, reason: str, message: str) -> dict[str, Any]:
    """The error answer of a request whose message was dead-lettered."""
    code, status = _POISON_CODES.get(reason, _POISON_DEFAULT)
    error = InvalidRequest(
        f"the request message was refused: {message}",
        code=code,
        status=status,
        detail={"reason": reason},
    )
    return error.body(request_id)


_OUTCOME_BY_STATE = {
    RequestState.DONE: "ok",
    RequestState.FAILED: "parse_error",
    RequestState.EXPIRED: "expired",
    RequestState.CANCELLED: "cancelled",
}


class Answers:
    """Produces replies and stores results, retrying both until they stick."""

    def __init__(
        self,
        producer: ReliableProducer,
        redis: Redis,
        keys: Keys,
        retrier: Retrier,
        *,
        result_ttl_s: int,
    ) -> None:
        self._producer = producer
        self._redis = redis
        self._keys = keys
        self._retrier = retrier
        self._ttl_s = result_ttl_s

    async def stored(self, request_id: str) -> dict[str, Any] | None:
        async def read() -> dict[str, Any] | None:
            return await get_result(self._redis, self._keys, request_id)

        return await self._retrier.run("read stored result", read)

    async def final(
        self, delivery: Delivery, body: dict[str, Any], state: RequestState
    ) -> None:
        """Reply, store the result, release the message for commit."""

        async def store(stored: dict[str, Any]) -> None:
            async def write() -> None:
                await record_answer(
                    self._redis,
                    self._keys,
                    delivery.request_id,
                    stored,
                    state=state,
                    ttl_s=self._ttl_s,
                )

            await self._retrier.run("store result", write)

        # The reply and the stored result go out together: the caller waits on
        # whichever comes first, and the message is released only after both.
        storing = asyncio.ensure_future(store(body))
        try:
            sent = await self._reply(delivery, body)
        finally:
            await asyncio.gather(storing, return_exceptions=True)
        storing.result()
        if sent is not body:
            # The reply had to become an error; the store must say the same.
            await store(sent)
        delivery.ticket.release()
        metrics.MESSAGES.labels(outcome=_OUTCOME_BY_STATE.get(state, "other")).inc()
        logger.debug(
            "request_answered",
            extra={"state": state.value, "reply_topic": delivery.reply_topic},
        )

    async def again(self, delivery: Delivery, body: dict[str, Any]) -> None:
        """Answer a redelivered request from its stored result."""
        await self._reply(delivery, body)
        delivery.ticket.release()
        metrics.MESSAGES.labels(outcome="duplicate").inc()
        logger.debug("request_answered_from_store")

    async def refused(
        self, request_id: str, reply_topic: str | None, body: dict[str, Any]
    ) -> None:
        """Answer a dead-lettered request whose id could be read."""
        if reply_topic is not None:
            key, value, headers = encode_reply(request_id, body)
            await self._producer.send(
                reply_topic, key=key, value=value, headers=headers
            )

        async def store() -> None:
            await record_answer(
                self._redis,
                self._keys,
                request_id,
                body,
                state=RequestState.FAILED,
                ttl_s=self._ttl_s,
            )

        await self._retrier.run("store result", store)

    async def _reply(self, delivery: Delivery, body: dict[str, Any]) -> dict[str, Any]:
        key, value, headers = encode_reply(delivery.request_id, body)
        try:
            await self._producer.send(
                delivery.reply_topic, key=key, value=value, headers=headers
            )
            return body
        except UndeliverableMessage as exc:
            # A result too large for the reply topic still needs an answer.
            logger.error(
                "reply_undeliverable",
                extra={"reply_topic": delivery.reply_topic, "error": str(exc)},
            )
            body = ParseFailed(
                "the parsed result could not be sent as a reply message "
                f"({len(value)} bytes); the page may be too dense to return",
                detail={"reason": "reply_too_large"},
            ).body(delivery.request_id)
            key, value, headers = encode_reply(delivery.request_id, body)
            await self._producer.send(
                delivery.reply_topic, key=key, value=value, headers=headers
            )
            return body


def item_error_answer(
    request_id: str, error: ItemError
) -> tuple[dict[str, Any], RequestState]:
    exc, state = error_for(error.code, error.message)
    return exc.body(request_id), state
