"""The last look at a batch before it leaves for the backend.

The batcher calls ``DispatchCheck.cancelled`` with the request ids of a batch
about to be sent. One Redis round trip reads their state hashes: the cancelled
ones are dropped (the batcher answers them ``cancelled``), the rest are marked
``processing`` so a caller polling the request sees it is being parsed. The
time each request waited since its message was produced is observed here, at
dispatch. Best effort: with Redis down nothing counts as cancelled, and the
batch goes as it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.store import Keys, RequestState, now_ms

from . import metrics
from .pipeline import state_of

__all__ = ["DispatchCheck"]

logger = logging.getLogger(__name__)

_BEFORE_DISPATCH = frozenset(
    {RequestState.UNKNOWN, RequestState.QUEUED, RequestState.PROCESSING}
)

SentAt = Callable[[str], float | None]


class DispatchCheck:
    def __init__(
        self, redis: Redis, keys: Keys, *, state_ttl_s: int, sent_at: SentAt
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._state_ttl_s = state_ttl_s
        self._sent_at = sent_at

    async def cancelled(self, request_ids: Collection[str]) -> set[str]:
        """The batcher's ``CancelledCheck``: which of these were cancelled."""
        ids = list(request_ids)
        self._observe_wait(ids)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for request_id in ids:
                    pipe.hget(self._keys.state(request_id), "state")
                states = [state_of(raw) for raw in await pipe.execute()]
            await self._mark_processing(
                request_id
                for request_id, state in zip(ids, states, strict=True)
                if state in _BEFORE_DISPATCH
            )
        except (RedisError, OSError) as exc:
            logger.warning("cancel_check_failed", extra={"error": repr(exc)})
            return set()
        return {
            request_id
            for request_id, state in zip(ids, states, strict=True)
            if state is RequestState.CANCELLED
        }

    async def _mark_processing(self, request_ids: Iterable[str]) -> None:
        stamp = now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                key = self._keys.state(request_id)
                pipe.hset(
                    key,
                    mapping={
                        "state": RequestState.PROCESSING.value,
                        "updated_ms": stamp,
                    },
                )
                pipe.expire(key, self._state_ttl_s)
            await pipe.execute()

    def _observe_wait(self, request_ids: list[str]) -> None:
        now_s = time.time()
        for request_id in request_ids:
            sent_s = self._sent_at(request_id)
            if sent_s is not None:
                metrics.QUEUE_WAIT.observe(max(0.0, now_s - sent_s))
