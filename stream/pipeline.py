"""What happens to each request message, from the consumer to its answer.

    message ──decode, check──> dead letter           poison: can never be parsed
               │
               ├──> answer again from the store     redelivered, already answered
               ├──> error reply: cancelled          cancelled by the caller
               ├──> error reply: deadline_exceeded  too late to be worth parsing
               └──> batcher ── backend ── result sink ──> reply, store, release

Every branch ends by releasing the message's ticket, which lets its offset be
committed (see ``stream.commits``); nothing is released before its reply is on
the broker. A message whose processing raises unexpectedly is dead-lettered as
``processing_error``, so one bad message can never stop the worker.

Two messages with the same request id waiting at once (a redelivery after a
rebalance, a client that produced twice) share one backend call: the second
waits for the first one's answer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import orjson
from aiokafka import TopicPartition
from redis.asyncio import Redis

from common.errors import DeadlineExceeded
from common.logging import bound
from common.messages import (
    H_ID,
    H_REPLY_TO,
    ParseRequest,
    PoisonMessage,
    decode_request,
    result_body,
    utc_now,
)
from common.settings import Settings
from common.store import Keys, RequestState
from stream.backends.base import ItemOutcome, ItemResult
from stream.batching.types import BatchMeta, Pending

from .commits import Ticket
from .dlq import DeadLetter, DeadLetters
from .producing import DeliveryAbandoned, Retrier
from .replies import Answers, Cancelled, Delivery, item_error_answer, refusal_body
from .topics import TopicDirectory
from .validation import check_image

__all__ = ["BatcherPort", "Pipeline", "Record"]

logger = logging.getLogger(__name__)

_NO_DEADLINE_YEAR = 9999


class Record(Protocol):
    """The fields of an aiokafka ConsumerRecord the pipeline reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class BatcherPort(Protocol):
    async def put(self, pending: Pending) -> None: ...

    def discard(self, request_ids: Collection[str]) -> list[Pending]: ...


@dataclass(slots=True, eq=False)
class Waiting:
    """Deliveries of one request id that wait for the same backend outcome."""

    deliveries: list[Delivery] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        answers: Answers,
        dead_letters: DeadLetters,
        topics: TopicDirectory,
        retrier: Retrier,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = Keys(settings.redis_key_prefix)
        self._answers = answers
        self._dead_letters = dead_letters
        self._topics = topics
        self._retrier = retrier
        self._batcher: BatcherPort | None = None
        self._waiting: dict[str, Waiting] = {}

    def attach(self, batcher: BatcherPort) -> None:
        self._batcher = batcher

    @property
    def waiting(self) -> int:
        """Request ids handed to the batcher and not answered yet."""
        return len(self._waiting)

    # --- Intake ---

    async def handle(self, record: Record, ticket: Ticket) -> None:
        """Take one message to its answer, a dead letter, or the batcher."""
        with bound(
            topic=record.topic, partition=record.partition, offset=record.offset
        ):
            try:
                await self._handle(record, ticket)
            except DeliveryAbandoned:
                raise
            except Exception as exc:
                logger.exception("request_processing_failed")
                await self._dead_letter(
                    record, ticket, PoisonMessage("processing_error", repr(exc))
                )

    async def _handle(self, record: Record, ticket: Ticket) -> None:
        try:
            request = decode_request(
                record.key,
                record.value,
                record.headers,
                default_reply_topic=self._settings.replies_topic,
                max_image_bytes=self._settings.max_image_bytes,
            )
            check_image(request)
            await self._check_reply_topic(request.reply_topic)
        except PoisonMessage as exc:
            await self._dead_letter(record, ticket, exc)
            return

        with bound(request_id=request.request_id):
            await self._admit(self._with_deadline(request), record, ticket)

    async def _check_reply_topic(self, topic: str) -> None:
        if topic == self._settings.replies_topic or await self._topics.exists(topic):
            return
        raise PoisonMessage(
            "unknown_reply_topic",
            f"reply topic {topic!r} does not exist; create it or omit ce_replyto",
        )

    def _with_deadline(self, request: ParseRequest) -> ParseRequest:
        if request.deadline.year != _NO_DEADLINE_YEAR:
            return request
        # Without a deadline of its own a request gets the configured timeout.
        limit = timedelta(seconds=self._settings.request_timeout_s)
        return dataclasses.replace(request, deadline=request.time + limit)

    async def _admit(
        self, request: ParseRequest, record: Record, ticket: Ticket
    ) -> None:
        delivery = Delivery(
            request_id=request.request_id,
            filename=request.filename,
            reply_topic=request.reply_topic,
            ticket=ticket,
            timestamp_ms=record.timestamp,
        )
        stored, state = await self._lookup(request.request_id)
        if stored is not None:
            logger.debug("request_already_answered")
            await self._answers.again(delivery, stored)
            return
        if state is RequestState.CANCELLED:
            body = Cancelled("the request was cancelled").body(request.request_id)
            await self._answers.final(delivery, body, RequestState.CANCELLED)
            return
        if request.deadline <= utc_now():
            body = DeadlineExceeded(
                "the request's deadline passed before it could be parsed",
                detail={"deadline": request.deadline.isoformat()},
            ).body(request.request_id)
            await self._answers.final(delivery, body, RequestState.EXPIRED)
            return

        waiting = self._waiting.get(request.request_id)
        if waiting is not None:
            logger.debug("request_joins_waiting_duplicate")
            waiting.deliveries.append(delivery)
            return
        waiting = self._waiting[request.request_id] = Waiting([delivery])
        pending = Pending(
            request_id=request.request_id,
            filename=request.filename,
            image=request.image,
            deadline_s=request.deadline.timestamp(),
            token=waiting,
            # The latency target counts from when the request was produced.
            accepted_s=record.timestamp / 1000,
        )
        assert self._batcher is not None, "attach() a batcher before handling"
        try:
            await self._batcher.put(pending)
        except BaseException:
            self._waiting.pop(request.request_id, None)
            raise
        logger.debug("request_queued", extra={"image_bytes": len(request.image)})

    async def _lookup(
        self, request_id: str
    ) -> tuple[dict[str, Any] | None, RequestState]:
        """The stored answer and the state of a request, in one round trip."""

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._keys.result(request_id))
                pipe.hget(self._keys.state(request_id), "state")
                replies: list[Any] = await pipe.execute()
                return replies

        raw_result, raw_state = await self._retrier.run("read request", read)
        stored = orjson.loads(raw_result) if raw_result is not None else None
        if not isinstance(stored, dict):
            stored = None
        return stored, state_of(raw_state)

    async def _dead_letter(
        self, record: Record, ticket: Ticket, exc: PoisonMessage
    ) -> None:
        await self._dead_letters.send(
            DeadLetter(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                value=record.value,
                headers=list(record.headers or ()),
                reason=exc.reason,
                error=exc.message,
            )
        )
        await self._answer_poison(record, exc)
        ticket.release()

    async def _answer_poison(self, record: Record, exc: PoisonMessage) -> None:
        """Tell a waiting caller its request was refused, when it can be named."""
        request_id, reply_topic = _salvage(record, self._settings.replies_topic)
        if request_id is None:
            return
        with bound(request_id=request_id):
            if await self._answers.stored(request_id) is not None:
                return
            body = refusal_body(request_id, exc.reason, exc.message)
            if reply_topic is not None and not await self._topics.exists(reply_topic):
                reply_topic = None
            await self._answers.refused(request_id, reply_topic, body)

    # --- Answers from the batcher ---

    async def on_result(
        self, pending: Pending, outcome: ItemOutcome, meta: BatchMeta | None
    ) -> None:
        """The batcher's result sink: answer every delivery of ``pending``."""
        waiting = pending.token
        if self._waiting.get(pending.request_id) is waiting:
            del self._waiting[pending.request_id]
        if not isinstance(waiting, Waiting) or not waiting.deliveries:
            logger.error(
                "result_without_delivery", extra={"request_id": pending.request_id}
            )
            return
        # The batcher's own batch id is already bound (it names the batch's
        # lines); the backend's id, which the reply carries, is added beside it.
        backend_batch_id = meta.batch_id if meta is not None else None
        with bound(request_id=pending.request_id, backend_batch_id=backend_batch_id):
            try:
                await self._answer(pending, waiting.deliveries, outcome, meta)
            except DeliveryAbandoned as exc:
                logger.warning(
                    "answer_abandoned_at_shutdown", extra={"error": str(exc)}
                )
            except Exception:
                logger.exception("answer_failed_request_stays_unacked")

    async def _answer(
        self,
        pending: Pending,
        deliveries: list[Delivery],
        outcome: ItemOutcome,
        meta: BatchMeta | None,
    ) -> None:
        first, *rest = deliveries
        if isinstance(outcome, ItemResult):
            body = result_body(
                request_id=pending.request_id,
                filename=first.filename,
                elements=outcome.elements,
                batch_id=meta.batch_id if meta is not None else "",
                processing_time_s=meta.processing_time_s if meta is not None else 0.0,
            )
            state = RequestState.DONE
        else:
            # An error never replaces a result stored by an earlier delivery.
            stored = await self._answers.stored(pending.request_id)
            if stored is not None:
                for delivery in deliveries:
                    await self._answers.again(delivery, stored)
                return
            body, state = item_error_answer(pending.request_id, outcome)
            logger.debug(
                "request_failed",
                extra={"code": outcome.code, "error": outcome.message},
            )
        await self._answers.final(first, body, state)
        for delivery in rest:
            await self._answers.again(delivery, body)

    # --- Hooks for the batcher and the consumer ---

    def sent_at(self, request_id: str) -> float | None:
        """Epoch seconds the request's message was produced, while it waits."""
        waiting = self._waiting.get(request_id)
        if waiting is None or not waiting.deliveries:
            return None
        return waiting.deliveries[0].timestamp_ms / 1000

    def waiting_only_in(self, tps: Collection[TopicPartition]) -> list[str]:
        """Request ids whose every delivery came from ``tps``."""
        return [
            request_id
            for request_id, waiting in self._waiting.items()
            if all(d.ticket.tp in tps for d in waiting.deliveries)
        ]

    def forget(self, pendings: Iterable[Pending]) -> None:
        """Drop requests the batcher gave back unanswered; they stay unacked."""
        for pending in pendings:
            if self._waiting.get(pending.request_id) is pending.token:
                del self._waiting[pending.request_id]
            if isinstance(pending.token, Waiting):
                for delivery in pending.token.deliveries:
                    delivery.ticket.abandon()


def state_of(raw: Any) -> RequestState:
    """A state read from Redis; anything unreadable counts as unknown."""
    if raw is None:
        return RequestState.UNKNOWN
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return RequestState(text)
    except ValueError:
        return RequestState.UNKNOWN


def _salvage(record: Record, default_reply_topic: str) -> tuple[str | None, str | None]:
    """Request id and reply topic of a poison message, when readable."""
    attrs: dict[str, str] = {}
    for name, value in record.headers or ():
        try:
            attrs[name.lower()] = bytes(value).decode("utf-8")
        except (UnicodeDecodeError, TypeError):
            continue
    request_id = attrs.get(H_ID, "")
    if not request_id or len(request_id) > 128 or not request_id.isprintable():
        return None, None
    return request_id, attrs.get(H_REPLY_TO) or default_reply_topic
