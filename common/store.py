"""Redis keys and the state transitions the API and the worker share.

Keys (``<p>`` is the configured prefix):

    <p>:admission           ZSET  accepted, unanswered: request id -> deadline ms
    <p>:req:<id>            HASH  state, filename, deadline_ms, updated_ms, produced_ms
    <p>:result:<id>         STR   the final JSON body (result or error), with a TTL
    <p>:answered:<epoch_s>  INT   answers per second, for measured throughput
    <p>:breaker             HASH  the backend circuit breaker: state, until_ms, failures
    <p>:backend             STR   the name of the worker's parser backend, with a TTL
    <p>:inflight            INT   batches at the backend, as a worker last saw it
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from redis.asyncio import Redis

THROUGHPUT_WINDOW_S = 60


class RequestState(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


FINAL_STATES = frozenset(
    {
        RequestState.DONE,
        RequestState.FAILED,
        RequestState.CANCELLED,
        RequestState.EXPIRED,
    }
)


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "dolphin"

    @property
    def admission(self) -> str:
        return f"{self.prefix}:admission"

    @property
    def breaker(self) -> str:
        return f"{self.prefix}:breaker"

    @property
    def backend(self) -> str:
        return f"{self.prefix}:backend"

    @property
    def inflight(self) -> str:
        return f"{self.prefix}:inflight"

    def state(self, request_id: str) -> str:
        return f"{self.prefix}:req:{request_id}"

    def result(self, request_id: str) -> str:
        return f"{self.prefix}:result:{request_id}"

    def answered(self, epoch_s: int) -> str:
        return f"{self.prefix}:answered:{epoch_s}"


def now_ms() -> int:
    return int(time.time() * 1000)


async def record_answer(
    redis: Redis,
    keys: Keys,
    request_id: str,
    body: dict[str, Any],
    *,
    state: RequestState,
    ttl_s: int,
) -> None:
    """Store a final answer, release its admission slot and count it, atomically."""
    second = int(time.time())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.result(request_id), orjson.dumps(body), ex=ttl_s)
        pipe.hset(
            keys.state(request_id),
            mapping={"state": state.value, "updated_ms": now_ms()},
        )
        pipe.expire(keys.state(request_id), ttl_s)
        pipe.zrem(keys.admission, request_id)
        pipe.incr(keys.answered(second))
        pipe.expire(keys.answered(second), THROUGHPUT_WINDOW_S * 2)
        await pipe.execute()


async def set_state(
    redis: Redis, keys: Keys, request_id: str, state: RequestState, ttl_s: int
) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.state(request_id),
            mapping={"state": state.value, "updated_ms": now_ms()},
        )
        pipe.expire(keys.state(request_id), ttl_s)
        await pipe.execute()


async def get_state(redis: Redis, keys: Keys, request_id: str) -> RequestState:
    raw = await redis.hget(keys.state(request_id), "state")
    if raw is None:
        return RequestState.UNKNOWN
    return RequestState(raw.decode() if isinstance(raw, bytes) else raw)


async def get_result(
    redis: Redis, keys: Keys, request_id: str
) -> dict[str, Any] | None:
    raw = await redis.get(keys.result(request_id))
    if raw is None:
        return None
    body = orjson.loads(raw)
    return body if isinstance(body, dict) else None


async def answered_per_second(redis: Redis, keys: Keys) -> float:
    """Answers per second over the last minute, as counted by the workers."""
    now = int(time.time())
    seconds = range(now - THROUGHPUT_WINDOW_S, now)
    counts = await redis.mget([keys.answered(s) for s in seconds])
    return sum(int(c) for c in counts if c is not None) / THROUGHPUT_WINDOW_S
