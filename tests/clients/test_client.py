"""DolphinClient: requests in the contract, replies routed to whoever waits.

The Kafka tests answer requests with a stand-in responder, so they pin the
client's side of the contract without a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from common.client import (
    DolphinClient,
    Reply,
    ReplyError,
    ReplyTimeout,
    parse_sync,
    sniff_content_type,
)
from common.errors import ConnectorError, InvalidRequest
from common.messages import (
    decode_request,
    encode_reply,
    parse_time,
    result_body,
)
from common.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
Answer = Callable[[str, str], dict[str, Any] | None]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        pytest.param(PNG, "image/png", id="png"),
        pytest.param(b"\xff\xd8\xff\xe0rest", "image/jpeg", id="jpeg"),
        pytest.param(b"II*\x00rest", "image/tiff", id="tiff-le"),
        pytest.param(b"MM\x00*rest", "image/tiff", id="tiff-be"),
        pytest.param(b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp", id="webp"),
        pytest.param(b"%PDF-1.7", None, id="pdf"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_content_type_is_told_by_magic_bytes(head: bytes, expected: str | None) -> None:
    """The media type comes from the bytes, never from the file name."""
    assert sniff_content_type(head) == expected


@pytest.mark.parametrize(
    ("image", "filename", "code"),
    [
        pytest.param(b"", "page.png", "empty_image", id="empty"),
        pytest.param(b"%PDF-1.7", "page.png", "unsupported_image", id="not-image"),
        pytest.param(PNG * 100, "page.png", "payload_too_large", id="too-large"),
        pytest.param(PNG, "", "invalid_filename", id="no-filename"),
        pytest.param(PNG, "a\nb.png", "invalid_filename", id="control-char"),
        pytest.param(PNG, "x" * 256, "invalid_filename", id="long-filename"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_sent(
    image: bytes, filename: str, code: str
) -> None:
    """submit() checks cheaply and raises InvalidRequest with a stable code."""
    client = DolphinClient(max_image_bytes=1000)

    with pytest.raises(InvalidRequest) as refused:
        await client.submit(image, filename)

    assert refused.value.code == code


async def test_submit_needs_a_started_client() -> None:
    """Using the client outside ``async with`` says how to use it."""
    with pytest.raises(RuntimeError, match="async with"):
        await DolphinClient().submit(PNG, "page.png")


# --- Against a real broker ---


@pytest.fixture
async def responder(
    settings: Settings,
) -> AsyncIterator[Callable[[Answer], None]]:
    """Factory: answer every request with ``answer(request_id, filename)``.

    ``answer`` returns the reply body, or None to leave the request unanswered.
    """
    tasks: list[asyncio.Task[None]] = []

    async def serve(answer: Answer) -> None:
        consumer = AIOKafkaConsumer(
            settings.requests_topic,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=f"{settings.consumer_group}-responder",
            auto_offset_reset="earliest",
        )
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        try:
            await consumer.start()
            await producer.start()
            async for record in consumer:
                request = decode_request(
                    record.key,
                    record.value,
                    record.headers,
                    default_reply_topic=settings.replies_topic,
                    max_image_bytes=settings.max_image_bytes,
                )
                body = answer(request.request_id, request.filename)
                if body is not None:
                    key, value, headers = encode_reply(request.request_id, body)
                    await producer.send_and_wait(
                        request.reply_topic, value, key=key, headers=headers
                    )
        finally:
            await consumer.stop()
            await producer.stop()

    def start(answer: Answer) -> None:
        tasks.append(asyncio.create_task(serve(answer)))

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _ok(request_id: str, filename: str) -> dict[str, Any]:
    element = {"label": "text", "bbox": [0, 0, 1, 1], "text": filename}
    return result_body(
        request_id=request_id,
        filename=filename,
        elements=[{**element, "reading_order": 0}],
        batch_id="b1",
        processing_time_s=0.01,
    )


@pytest.mark.integration
async def test_concurrent_parse_calls_each_get_their_own_reply(
    settings: Settings, responder: Callable[[Answer], None]
) -> None:
    """Many parse() calls on one client resolve with the reply to their request."""
    responder(_ok)

    async with DolphinClient.from_settings(settings) as client:
        names = [f"page-{index:03d}.png" for index in range(60)]
        bodies = await asyncio.gather(
            *(client.parse(PNG, name, timeout_s=30) for name in names)
        )

    assert [body["filename"] for body in bodies] == names
    assert [body["elements"][0]["text"] for body in bodies] == names


@pytest.mark.integration
async def test_replies_yields_each_submitted_request_once(
    settings: Settings, responder: Callable[[Answer], None]
) -> None:
    """submit() then replies(): every request answered exactly once, by id."""
    async with DolphinClient.from_settings(settings) as client:
        # The responder starts after submitting: replies still arrive, because
        # the client's consumer was positioned before the first submit.
        ids = {await client.submit(PNG, f"p{i}.png") for i in range(20)}
        responder(_ok)
        seen: dict[str, Reply] = {}
        async with asyncio.timeout(30):
            async for reply in client.replies():
                seen[reply.request_id] = reply
                if not client.pending:
                    break

    assert set(seen) == ids
    assert all(reply.ok for reply in seen.values())


@pytest.mark.integration
async def test_parse_sync_blocks_until_the_result(
    settings: Settings, responder: Callable[[Answer], None]
) -> None:
    """parse_sync() runs a whole client on its own loop, for scripts."""
    responder(_ok)

    body = await asyncio.to_thread(
        parse_sync,
        PNG,
        "sync.png",
        bootstrap_servers=settings.kafka_bootstrap_servers,
        requests_topic=settings.requests_topic,
        reply_topic=settings.replies_topic,
        timeout_s=30,
    )

    assert body["filename"] == "sync.png"


@pytest.mark.integration
async def test_an_error_reply_raises_with_its_code(
    settings: Settings, responder: Callable[[Answer], None]
) -> None:
    """parse() turns the error body into ReplyError carrying the body's code."""

    def fail(request_id: str, filename: str) -> dict[str, Any]:
        return ConnectorError("unreadable", code="parse_failed").body(request_id)

    responder(fail)

    async with DolphinClient.from_settings(settings) as client:
        with pytest.raises(ReplyError) as failed:
            await client.parse(PNG, "page.png", timeout_s=30)

    assert failed.value.code == "parse_failed"
    assert failed.value.reply.error_code == "parse_failed"


@pytest.mark.integration
async def test_no_reply_times_out_and_sets_the_deadline(
    settings: Settings, responder: Callable[[Answer], None]
) -> None:
    """parse(timeout_s) raises ReplyTimeout and tells the worker the same deadline."""
    deadlines: list[datetime] = []
    responder(lambda request_id, filename: None)

    async with DolphinClient.from_settings(settings) as client:
        started = datetime.now(UTC)
        with pytest.raises(ReplyTimeout):
            await client.parse(PNG, "page.png", timeout_s=1.5)
        assert client.pending == 0

    consumer = AIOKafkaConsumer(
        settings.requests_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 10)
        deadlines.append(parse_time(dict(record.headers)["ce_deadline"].decode()))
    finally:
        await consumer.stop()
    assert abs(deadlines[0] - (started + timedelta(seconds=1.5))).total_seconds() < 1


@pytest.mark.integration
async def test_an_own_reply_topic_is_created_and_read_from_the_start(
    settings: Settings, responder: Callable[[Answer], None]
) -> None:
    """A named reply topic is created; replies(since=...) reads all of it again."""
    responder(_ok)
    topic = f"{settings.replies_topic}.own"

    async with DolphinClient.from_settings(settings, reply_topic=topic) as client:
        body = await client.parse(PNG, "own.png", timeout_s=30)
        replies = client.replies(since="beginning")
        try:
            reply = await asyncio.wait_for(anext(replies), 30)
        finally:
            await replies.aclose()

    assert body["filename"] == "own.png"
    assert reply.request_id == body["request_id"]


async def test_closing_the_client_ends_a_waiting_replies_loop() -> None:
    """A replies() loop waiting when the client closes raises instead of hanging."""
    client = DolphinClient()
    replies = client.replies()
    waiting = asyncio.ensure_future(anext(replies))

    await client.close()

    with pytest.raises(ConnectorError) as closed:
        await asyncio.wait_for(waiting, 5)
    assert closed.value.code == "closed"
