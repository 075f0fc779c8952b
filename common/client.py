"""A Python client for systems that talk to the connector over Kafka, not HTTP.

It produces requests in the version 1 message contract (see the README) and
reads the answers from a reply topic. Five lines submit a page and wait for it::

    async with DolphinClient("127.0.0.1:9092", reply_topic="billing.replies") as dc:
        request_id = await dc.submit(Path("page.png").read_bytes(), "page.png")
        async for reply in dc.replies():
            print(reply.request_id, reply.ok, reply.body.get("element_count"))
            break

``parse()`` does both steps for one page and returns the result body; many
``parse()`` calls may run at once on one client. ``parse_sync()`` wraps it for
scripts without an event loop.

Errors, all :class:`common.errors.ConnectorError` with a stable ``code``:

    InvalidRequest   the image or a name was refused before anything was sent
    Unavailable      Kafka could not be reached when the client started
    ReplyError       the connector answered with an error body (its code)
    ReplyTimeout     no answer arrived within ``timeout_s``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

from .errors import ConnectorError, InvalidRequest, Unavailable
from .kafka import client_options
from .messages import (
    H_OUTCOME,
    MAX_FILENAME_CHARS,
    ParseRequest,
    decode_reply,
    encode_request,
    new_request_id,
    utc_now,
)
from .settings import MiB, Settings

__all__ = [
    "DolphinClient",
    "Reply",
    "ReplyError",
    "ReplyTimeout",
    "parse_sync",
    "sniff_content_type",
]

logger = logging.getLogger(__name__)

DEFAULT_REQUESTS_TOPIC = "dolphin.parse.requests"
DEFAULT_REPLIES_TOPIC = "dolphin.parse.replies"
DEFAULT_SOURCE = "/dolphin-connector/client"
_UNKNOWN_TOPIC = 3
_RETRIABLE = frozenset(
    {"rate_limited", "overloaded", "backend_unavailable", "kafka_unavailable"}
)
_REPLY_TOPIC_CONFIGS = {
    "retention.ms": str(2 * 3600 * 1000),
    "cleanup.policy": "delete",
}


class ReplyError(ConnectorError):
    """The connector answered with an error body; ``code`` is the body's code."""

    def __init__(self, reply: Reply) -> None:
        error = reply.body.get("error")
        error = error if isinstance(error, dict) else {}
        retry_after = error.get("retry_after_s")
        super().__init__(
            str(error.get("message") or "the connector answered with an error"),
            code=str(error.get("code") or "unknown_error"),
            retry_after_s=float(retry_after) if retry_after is not None else None,
        )
        self.reply = reply
        # Answers that say "later" rather than "never".
        self.retriable = self.retry_after_s is not None or self.code in _RETRIABLE


class ReplyTimeout(ConnectorError):
    code = "reply_timeout"
    retriable = True


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer from the reply topic: a result body or an error body."""

    request_id: str
    body: dict[str, Any]
    ok: bool

    @property
    def error_code(self) -> str | None:
        if self.ok:
            return None
        error = self.body.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        return str(code) if code else "unknown_error"


def sniff_content_type(image: bytes) -> str | None:
    """The media type told by the image's first bytes, or None if not an image."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if image.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if image[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return None


class DolphinClient:
    """Submits pages to the connector over Kafka and reads their replies.

    ``kafka_options`` are connection and security options named as aiokafka
    names them (``security_protocol``, ``ssl_context``, ``sasl_mechanism``,
    ``sasl_plain_username``, ``sasl_plain_password``, ``client_id``); they are
    given to the producer, the reply consumer and the admin client alike.

    The reply topic is created when missing. Replies are read by a consumer
    outside any group, assigned every partition and positioned at the end when
    the client starts, before anything is submitted, so no reply is missed.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str] = "127.0.0.1:9092",
        *,
        reply_topic: str = DEFAULT_REPLIES_TOPIC,
        requests_topic: str = DEFAULT_REQUESTS_TOPIC,
        source: str = DEFAULT_SOURCE,
        request_timeout_s: float = 1800.0,
        max_image_bytes: int = 50 * MiB,
        reply_topic_partitions: int = 1,
        reply_topic_replication: int = 1,
        **kafka_options: Any,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.reply_topic = reply_topic
        self.requests_topic = requests_topic
        self.source = source
        self.request_timeout_s = request_timeout_s
        self.max_image_bytes = max_image_bytes
        self.reply_topic_partitions = reply_topic_partitions
        self.reply_topic_replication = reply_topic_replication
        self._kafka_options = {"bootstrap_servers": bootstrap_servers, **kafka_options}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._pump: asyncio.Task[None] | None = None
        # Submitted to our own reply topic and not answered yet.
        self._pending: set[str] = set()
        self._waiters: dict[str, asyncio.Future[Reply]] = {}
        self._inbox: asyncio.Queue[Reply | BaseException] = asyncio.Queue()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        reply_topic: str | None = None,
        source: str = DEFAULT_SOURCE,
    ) -> DolphinClient:
        """A client with the connector's topics, limits and Kafka security."""
        options = client_options(settings)
        bootstrap = options.pop("bootstrap_servers")
        return cls(
            bootstrap,
            reply_topic=reply_topic or settings.replies_topic,
            requests_topic=settings.requests_topic,
            source=source,
            request_timeout_s=settings.request_timeout_s,
            max_image_bytes=settings.max_image_bytes,
            reply_topic_partitions=settings.topic_partitions,
            reply_topic_replication=settings.topic_replication_factor,
            **options,
        )

    async def __aenter__(self) -> DolphinClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def pending(self) -> int:
        """Requests submitted to this client's reply topic and not yet handed over.

        Counts the replies that arrived but wait for ``replies()`` to take them.
        """
        return len(self._pending) + self._inbox.qsize()

    async def start(self) -> None:
        """Connect, position the reply consumer at the end, start reading."""
        try:
            partitions = await self._reply_partitions()
            self._partitions = [TopicPartition(self.reply_topic, p) for p in partitions]
            self._consumer = await self._positioned_consumer(None)
            self._producer = AIOKafkaProducer(
                **self._kafka_options,
                acks="all",
                # aiokafka's idempotent producer fails for good once a batch
                # expires waiting for a leader (OutOfOrderSequenceNumber); a
                # request sent twice is suppressed by its id instead.
                enable_idempotence=False,
                max_request_size=self.max_image_bytes + MiB,
            )
            await self._producer.start()
        except (KafkaConnectionError, KafkaTimeoutError, OSError) as exc:
            await self.close()
            msg = (
                f"cannot reach Kafka at {self.bootstrap_servers}: {exc!r}; check the "
                "address and that the broker runs"
            )
            raise Unavailable(msg, code="kafka_unavailable") from exc
        except KafkaError as exc:
            await self.close()
            msg = f"Kafka refused to start the client: {exc!r}"
            raise ConnectorError(msg, code="kafka_error") from exc
        self._pump = asyncio.create_task(self._read_replies(), name="dolphin-replies")
        logger.info(
            "client_started",
            extra={"topic": self.reply_topic, "partitions": len(self._partitions)},
        )

    async def close(self) -> None:
        """Stop reading and producing; waiting ``parse()`` calls fail."""
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        for client in (self._producer, self._consumer):
            if client is not None:
                await client.stop()
        self._producer = self._consumer = None
        closed = ConnectorError("the client was closed", code="closed")
        self._fail_waiters(closed)
        self._inbox.put_nowait(closed)

    async def submit(
        self,
        image: bytes,
        filename: str,
        *,
        reply_topic: str | None = None,
        deadline: datetime | float | None = None,
        request_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """Produce one request and return its request id once Kafka has it.

        ``deadline`` is an aware datetime or seconds from now (default
        ``request_timeout_s``). Replies to another ``reply_topic`` than the
        client's are not read by this client.
        """
        request = ParseRequest(
            request_id=_checked_request_id(request_id or new_request_id()),
            filename=_checked_filename(filename),
            image=image,
            content_type=self._checked_content_type(image),
            deadline=self._deadline(deadline),
            reply_topic=reply_topic or self.reply_topic,
            source=source or self.source,
        )
        producer = self._running_producer()
        key, value, headers = encode_request(request)
        if request.reply_topic == self.reply_topic:
            self._pending.add(request.request_id)
        try:
            await producer.send_and_wait(
                self.requests_topic, value, key=key, headers=headers
            )
        except BaseException as exc:
            self._pending.discard(request.request_id)
            if isinstance(exc, KafkaError):
                msg = f"producing to {self.requests_topic!r} failed: {exc!r}"
                raise Unavailable(msg, code="kafka_unavailable") from exc
            raise
        logger.debug("request_produced", extra={"request_id": request.request_id})
        return request.request_id

    def replies(
        self, *, since: datetime | Literal["beginning"] | None = None
    ) -> AsyncGenerator[Reply, None]:
        """Replies in arrival order; the iterator never ends by itself.

        By default: the replies to this client's own ``submit()`` calls, each
        once, except those a ``parse()`` call is waiting for. With ``since``
        (a datetime, or "beginning"): every reply on the reply topic from that
        point on, whoever asked, read by a consumer of its own.
        """
        if since is None:
            return self._own_replies()
        return self._topic_replies(since)

    async def parse(
        self,
        image: bytes,
        filename: str,
        *,
        timeout_s: float | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Submit one page and return its result body.

        Raises ReplyError when the connector answers with an error body and
        ReplyTimeout when no answer comes within ``timeout_s``, which is also
        the request's deadline.
        """
        timeout = timeout_s or self.request_timeout_s
        request_id = new_request_id()
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        # Registered before producing: the reply may beat the produce's ack.
        self._waiters[request_id] = waiter
        try:
            async with asyncio.timeout(timeout):
                await self.submit(
                    image,
                    filename,
                    deadline=timeout,
                    request_id=request_id,
                    source=source,
                )
                reply = await waiter
        except TimeoutError:
            msg = f"no reply for {filename!r} within {timeout:g} s"
            raise ReplyTimeout(msg, detail={"request_id": request_id}) from None
        finally:
            self._waiters.pop(request_id, None)
            self._pending.discard(request_id)
        if not reply.ok:
            raise ReplyError(reply)
        return reply.body

    # --- Reading replies ---

    async def _read_replies(self) -> None:
        assert self._consumer is not None
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        self._dispatch(_to_reply(record))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("reply_consumer_failed; waiting calls fail")
            self._fail_waiters(exc)
            self._inbox.put_nowait(exc)

    def _dispatch(self, reply: Reply | None) -> None:
        if reply is None:
            return
        waiter = self._waiters.pop(reply.request_id, None)
        if waiter is not None:
            self._pending.discard(reply.request_id)
            if not waiter.done():
                waiter.set_result(reply)
        elif reply.request_id in self._pending:
            self._pending.discard(reply.request_id)
            self._inbox.put_nowait(reply)
        # Anything else answers another caller, or repeats an answer we had.

    async def _own_replies(self) -> AsyncGenerator[Reply, None]:
        while True:
            item = await self._inbox.get()
            if isinstance(item, ConnectorError):
                self._inbox.put_nowait(item)
                raise item
            if isinstance(item, BaseException):
                self._inbox.put_nowait(item)
                msg = "reading replies failed; see the cause"
                raise Unavailable(msg, code="kafka_unavailable") from item
            yield item

    async def _topic_replies(
        self, since: datetime | Literal["beginning"]
    ) -> AsyncGenerator[Reply, None]:
        consumer = await self._positioned_consumer(since)
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        if (reply := _to_reply(record)) is not None:
                            yield reply
        finally:
            await consumer.stop()

    # --- Set-up ---

    async def _reply_partitions(self) -> list[int]:
        """Partition ids of the reply topic, creating the topic if missing."""
        admin = AIOKafkaAdminClient(**self._kafka_options)
        await admin.start()
        try:
            for _ in range(50):
                (described,) = await admin.describe_topics([self.reply_topic])
                partitions = sorted(p["partition"] for p in described["partitions"])
                if described["error_code"] == 0 and partitions:
                    return partitions
                if described["error_code"] == _UNKNOWN_TOPIC:
                    await self._create_reply_topic(admin)
                await asyncio.sleep(0.1)
            msg = f"reply topic {self.reply_topic!r} has no partitions after creation"
            raise Unavailable(msg, code="kafka_unavailable")
        finally:
            await admin.close()

    async def _create_reply_topic(self, admin: AIOKafkaAdminClient) -> None:
        topic = NewTopic(
            name=self.reply_topic,
            num_partitions=self.reply_topic_partitions,
            replication_factor=self.reply_topic_replication,
            topic_configs=_REPLY_TOPIC_CONFIGS,
        )
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([topic])
            logger.info("reply_topic_created", extra={"topic": self.reply_topic})

    async def _positioned_consumer(
        self, since: datetime | Literal["beginning"] | None
    ) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **self._kafka_options,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign(self._partitions)
            offsets = await _start_offsets(consumer, self._partitions, since)
            for partition, offset in offsets.items():
                consumer.seek(partition, offset)
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    # --- Checks ---

    def _checked_content_type(self, image: bytes) -> str:
        if not image:
            raise InvalidRequest("the image is empty", code="empty_image")
        if len(image) > self.max_image_bytes:
            msg = (
                f"the image has {len(image)} bytes, over the limit of "
                f"{self.max_image_bytes}; downscale or recompress it"
            )
            raise InvalidRequest(msg, code="payload_too_large", status=413)
        content_type = sniff_content_type(image)
        if content_type is None:
            msg = "the bytes are not a PNG, JPEG, TIFF or WebP image"
            raise InvalidRequest(msg, code="unsupported_image", status=415)
        return content_type

    def _deadline(self, deadline: datetime | float | None) -> datetime:
        if deadline is None:
            return utc_now() + timedelta(seconds=self.request_timeout_s)
        if isinstance(deadline, datetime):
            if deadline.tzinfo is None:
                msg = f"deadline {deadline!r} has no time zone; pass an aware datetime"
                raise ValueError(msg)
            return deadline
        if deadline <= 0:
            raise ValueError(f"deadline of {deadline!r} s must be positive")
        return utc_now() + timedelta(seconds=deadline)

    def _running_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            msg = "the client is not started; use `async with DolphinClient(...)`"
            raise RuntimeError(msg)
        if self._pump is not None and self._pump.done():
            msg = "the client stopped reading replies; see the log, then reconnect"
            raise Unavailable(msg, code="kafka_unavailable")
        return self._producer

    def _fail_waiters(self, exc: BaseException) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(exc)
        self._waiters.clear()


def parse_sync(
    image: bytes,
    filename: str,
    *,
    bootstrap_servers: str | list[str] = "127.0.0.1:9092",
    timeout_s: float | None = None,
    **client_kwargs: Any,
) -> dict[str, Any]:
    """Blocking ``parse()`` for scripts: connects, parses one page, disconnects."""

    async def run() -> dict[str, Any]:
        async with DolphinClient(bootstrap_servers, **client_kwargs) as client:
            return await client.parse(image, filename, timeout_s=timeout_s)

    return asyncio.run(run())


def _to_reply(record: Any) -> Reply | None:
    try:
        request_id, body = decode_reply(record.key, record.value)
    except ValueError:
        logger.warning(
            "reply_malformed",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
        )
        return None
    outcome = dict(record.headers or ()).get(H_OUTCOME)
    ok = outcome == b"ok" if outcome is not None else body.get("success") is True
    return Reply(request_id=request_id, body=body, ok=ok)


async def _start_offsets(
    consumer: AIOKafkaConsumer,
    partitions: Iterable[TopicPartition],
    since: datetime | Literal["beginning"] | None,
) -> dict[TopicPartition, int]:
    partitions = list(partitions)
    if since == "beginning":
        return dict(await consumer.beginning_offsets(partitions))
    ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    if since is None:
        return ends
    assert isinstance(since, datetime)
    moment_ms = int(since.timestamp() * 1000)
    found = await consumer.offsets_for_times({tp: moment_ms for tp in partitions})
    return {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in partitions}


def _checked_filename(filename: str) -> str:
    if not filename or len(filename) > MAX_FILENAME_CHARS or not filename.isprintable():
        msg = (
            f"filename {filename[:300]!r} must be 1 to {MAX_FILENAME_CHARS} "
            "printable characters"
        )
        raise InvalidRequest(msg, code="invalid_filename", status=422)
    return filename


def _checked_request_id(request_id: str) -> str:
    if not request_id or len(request_id) > 128 or not request_id.isprintable():
        msg = f"request id {request_id[:200]!r} must be 1 to 128 printable characters"
        raise InvalidRequest(msg, code="invalid_request_id")
    return request_id
