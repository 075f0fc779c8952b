"""A test-only stand-in for the stream worker, enough to drive the API end to end.

It consumes the requests topic in the worker's group, and answers each request
the way the real worker does: a reply on the request's reply topic and the final
body in Redis (``record_answer``). Tests steer it:

    worker = await start_fake_worker()
    worker.pause()                    # consume, but answer only after resume()
    worker.check_state = True         # skip requests already cancelled
    worker.skip_filenames.add("x")    # never answer these
    worker.fail_filenames.add("y")    # answer with a parse_failed error
    worker.send_replies = False       # only store results in Redis

The result's single element carries the filename and a digest of the image, so a
caller can check the answer is for the image it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from PIL import Image
from redis.asyncio import Redis

from common.errors import ParseFailed
from common.kafka import client_options, max_request_bytes
from common.messages import (
    ParseRequest,
    decode_request,
    encode_reply,
    result_body,
)
from common.settings import Settings
from common.store import FINAL_STATES, Keys, RequestState, get_state, record_answer

logger = logging.getLogger(__name__)

BATCH_SIZE = 64


def image_digest(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()[:16]


class FakeWorker:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.redis_key_prefix)
        self.check_state = False
        self.send_replies = True
        self.skip_filenames: set[str] = set()
        self.fail_filenames: set[str] = set()
        self.seen: list[ParseRequest] = []
        self.answered: list[str] = []
        self.skipped: list[str] = []
        self._running = asyncio.Event()
        self._running.set()
        self._consumer = AIOKafkaConsumer(
            settings.requests_topic,
            **client_options(settings),
            group_id=settings.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max_request_bytes(settings),
            fetch_max_bytes=max_request_bytes(settings),
        )
        self._producer = AIOKafkaProducer(**client_options(settings))
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._backlog: asyncio.Queue[tuple[TopicPartition, int, ParseRequest]] = (
            asyncio.Queue()
        )

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        # aiokafka's getmany() can swallow a cancellation; the flag ends the loop.
        self._closing = True
        self.resume()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        await self._producer.stop()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def wait_seen(self, count: int, timeout_s: float = 30.0) -> None:
        """Until ``count`` requests were consumed (answered or not)."""
        async with asyncio.timeout(timeout_s):
            while True:
                if len(self.seen) >= count:
                    return
                await asyncio.sleep(0.05)

    async def _run(self) -> None:
        answering = asyncio.create_task(self._answer_all())
        try:
            while not self._closing:
                batches = await self._consumer.getmany(timeout_ms=200)
                for tp, records in batches.items():
                    for record in records:
                        request = self._decode(record)
                        self.seen.append(request)
                        self._backlog.put_nowait((tp, record.offset, request))
        finally:
            answering.cancel()

    async def _answer_all(self) -> None:
        """Answer what has arrived as one batch, then commit it; repeat."""
        while True:
            batch = [await self._backlog.get()]
            while not self._backlog.empty() and len(batch) < BATCH_SIZE:
                batch.append(self._backlog.get_nowait())
            await self._running.wait()
            await asyncio.gather(*(self._answer(request) for _, _, request in batch))
            done: dict[TopicPartition, int] = {}
            for tp, offset, _ in batch:
                done[tp] = max(done.get(tp, 0), offset + 1)
            await self._consumer.commit(done)

    def _decode(self, record: ConsumerRecord[Any, Any]) -> ParseRequest:
        return decode_request(
            record.key,
            record.value,
            record.headers,
            default_reply_topic=self.settings.replies_topic,
            max_image_bytes=self.settings.max_image_bytes,
        )

    async def _answer(self, request: ParseRequest) -> None:
        rid = request.request_id
        if request.filename in self.skip_filenames:
            self.skipped.append(rid)
            return
        if self.check_state:
            state = await get_state(self.redis, self.keys, rid)
            if state in FINAL_STATES:
                self.skipped.append(rid)
                return

        state = RequestState.DONE
        if request.filename in self.fail_filenames:
            body = ParseFailed("the parser could not read this page").body(rid)
            state = RequestState.FAILED
        else:
            body = result_body(
                request_id=rid,
                filename=request.filename,
                elements=[_element(request)],
                batch_id="fake-batch",
                processing_time_s=0.01,
            )
        if self.send_replies:
            key, value, headers = encode_reply(rid, body)
            await self._producer.send_and_wait(
                request.reply_topic, value, key=key, headers=headers
            )
        await record_answer(
            self.redis,
            self.keys,
            rid,
            body,
            state=state,
            ttl_s=self.settings.result_ttl_s,
        )
        self.answered.append(rid)


def _element(request: ParseRequest) -> dict[str, Any]:
    with Image.open(io.BytesIO(request.image)) as image:
        width, height = image.size
    return {
        "label": "text",
        "bbox": [0, 0, width, height],
        "text": f"{request.filename} {image_digest(request.image)}",
        "reading_order": 0,
    }
