"""Admission: one atomic Redis script decides whether a request may be queued.

The script, in one step: answers a repeated Idempotency-Key with the request id it
was first used for; drops admission entries whose deadline has passed; refuses
when the depth has reached the backpressure threshold; else adds the request to
``Keys.admission``, creates its state hash and stores the idempotency record.
Because it runs atomically, any number of API processes racing for the last
slots can never push the depth over the threshold.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from common.settings import Settings
from common.store import Keys, RequestState, answered_per_second, now_ms

logger = logging.getLogger(__name__)

# Wait suggested to refused callers when no answer was counted in the last minute.
DEFAULT_RETRY_AFTER_S = 10.0
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0

# KEYS: admission zset, state hash, [idempotency key]
# ARGV: now_ms, deadline_ms, request id, filename, limit, state ttl s,
#       idempotency value, idempotency ttl s
_ADMIT = """
if #KEYS == 3 then
  local previous = redis.call('GET', KEYS[3])
  if previous then return {'duplicate', previous} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local depth = redis.call('ZCARD', KEYS[1])
if depth >= tonumber(ARGV[5]) then return {'overloaded', tostring(depth)} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], 'state', 'queued', 'filename', ARGV[4],
           'deadline_ms', ARGV[2], 'updated_ms', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if #KEYS == 3 then
  redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[8])
end
return {'admitted', tostring(depth + 1)}
"""

# Deletes an idempotency record only if it still names this request.
_RELEASE_KEY = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['request_id'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Admitted:
    depth: int


@dataclass(frozen=True, slots=True)
class Overloaded:
    depth: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The Idempotency-Key was seen before: with this body, or with another."""

    request_id: str
    same_body: bool


Decision = Admitted | Overloaded | Duplicate


def idempotency_key(keys: Keys, client_id: str, key: str) -> str:
    """Redis key of an Idempotency-Key, scoped to the client that sent it."""
    digest = hashlib.sha256(f"{client_id}\x00{key}".encode()).hexdigest()
    return f"{keys.prefix}:idem:{digest}"


class Admission:
    def __init__(self, redis: Redis, keys: Keys, settings: Settings) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self._admit = redis.register_script(_ADMIT)
        self._release_key = redis.register_script(_RELEASE_KEY)

    @property
    def limit(self) -> int:
        return min(self.settings.admission_threshold, self.settings.queue_capacity)

    def state_ttl_s(self, deadline_ms: int) -> int:
        """The state hash outlives the deadline by the result retention."""
        remaining_s = max(0, deadline_ms - now_ms()) // 1000
        return int(remaining_s) + self.settings.result_ttl_s

    async def admit(
        self,
        request_id: str,
        filename: str,
        deadline_ms: int,
        *,
        idempotency: tuple[str, str] | None = None,
    ) -> Decision:
        """Admit the request; ``idempotency`` is (redis key, body fingerprint)."""
        keys = [self.keys.admission, self.keys.state(request_id)]
        record = b""
        if idempotency is not None:
            redis_key, body_hash = idempotency
            keys.append(redis_key)
            record = orjson.dumps({"request_id": request_id, "hash": body_hash})
        args: list[Any] = [
            now_ms(),
            deadline_ms,
            request_id,
            filename,
            self.limit,
            self.state_ttl_s(deadline_ms),
            record,
            self.settings.result_ttl_s,
        ]
        outcome, value = await self._admit(keys=keys, args=args)
        outcome = outcome.decode()
        if outcome == "admitted":
            return Admitted(int(value))
        if outcome == "overloaded":
            return Overloaded(int(value))
        previous = orjson.loads(value)
        same = idempotency is not None and previous.get("hash") == idempotency[1]
        return Duplicate(str(previous["request_id"]), same)

    async def withdraw(
        self, request_id: str, idempotency_redis_key: str | None
    ) -> None:
        """Undo an admission whose request never reached Kafka.

        The state becomes cancelled rather than vanishing: if the produce did
        land after all, the worker sees the state and skips the request.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.admission, request_id)
            pipe.hset(
                self.keys.state(request_id),
                mapping={"state": RequestState.CANCELLED.value, "updated_ms": now_ms()},
            )
            pipe.expire(self.keys.state(request_id), self.settings.result_ttl_s)
            await pipe.execute()
        if idempotency_redis_key is not None:
            await self.release_idempotency(request_id, idempotency_redis_key)

    async def release_idempotency(self, request_id: str, redis_key: str) -> None:
        """Free the key, so a retry with it is treated as a new request."""
        await self._release_key(keys=[redis_key], args=[request_id])

    async def depth(self) -> int:
        """Accepted, unanswered requests, after dropping those past their deadline."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self.keys.admission, "-inf", f"({now_ms()}")
            pipe.zcard(self.keys.admission)
            _, depth = await pipe.execute()
        return int(depth)

    async def retry_after_s(self, depth: int) -> float:
        throughput = await answered_per_second(self.redis, self.keys)
        return retry_after_s(depth, self.limit, throughput)


def retry_after_s(depth: int, threshold: int, throughput_per_s: float) -> float:
    """Seconds until enough answers have freed a slot for one more request."""
    if throughput_per_s <= 0:
        return DEFAULT_RETRY_AFTER_S
    needed = max(1, depth - threshold + 1)
    estimate = math.ceil(needed / throughput_per_s)
    return float(min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, estimate)))
