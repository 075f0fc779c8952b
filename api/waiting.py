"""Waiting for one request's answer: a Kafka reply, or the result in Redis.

The reply consumer is the fast path. Redis is polled as well, once right away and
then at intervals growing from ``poll_interval_s`` to ``MAX_POLL_INTERVAL_S``,
because the worker stores every final answer there: a reply that went past
while this process was not listening (consumer lag, a restart, an idempotent
retry arriving late) is found all the same. The intervals grow so that thousands
of long waits cost Redis little.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.store import Keys, get_result

from .replies import ReplyRouter

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.5
MAX_POLL_INTERVAL_S = 15.0

Body = dict[str, Any]


class ClientDisconnected(Exception):
    """The caller closed the connection while waiting."""


async def wait_for_answer(
    router: ReplyRouter,
    future: asyncio.Future[Body],
    redis: Redis,
    keys: Keys,
    request_id: str,
    *,
    deadline: float,
    disconnected: Awaitable[None],
    poll_interval_s: float = POLL_INTERVAL_S,
) -> Body | None:
    """The answer body, or None once the ``deadline`` (monotonic) has passed.

    ``future`` comes from ``router.subscribe(request_id)`` and is released here.
    Raises ClientDisconnected as soon as ``disconnected`` completes.
    """
    gone = asyncio.ensure_future(disconnected)
    try:
        next_poll = time.monotonic()
        interval_s = poll_interval_s
        while True:
            now = time.monotonic()
            if now >= next_poll:
                body = await stored_result(redis, keys, request_id)
                if body is not None:
                    return body
                now = time.monotonic()
                next_poll = now + interval_s
                interval_s = min(interval_s * 2, MAX_POLL_INTERVAL_S)
            if now >= deadline:
                return None
            watched: set[asyncio.Future[Any]] = {future, gone}
            done, _ = await asyncio.wait(
                watched,
                timeout=min(deadline, next_poll) - now,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if future in done:
                return future.result()
            if gone in done:
                raise ClientDisconnected
    finally:
        router.unsubscribe(request_id, future)
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await gone


async def stored_result(redis: Redis, keys: Keys, request_id: str) -> Body | None:
    # A Redis hiccup must not fail a request the Kafka path may still answer.
    try:
        return await get_result(redis, keys, request_id)
    except (RedisError, OSError) as exc:
        logger.warning("result_poll_failed", extra={"error": repr(exc)})
        return None
