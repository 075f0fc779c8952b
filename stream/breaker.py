"""Circuit breaker over the parser backend, shared with the API through Redis.

    closed ──(failure_threshold consecutive failed batches)──> open
    open ──(cooldown_s elapsed)──> half_open: exactly one probe batch may go
    half_open ──probe succeeds──> closed
    half_open ──probe fails──> open (for another cooldown)

A failed batch is one that failed after all its retries; a batch the backend
answered (even with per-image errors) is a success. While the breaker is not
closed the worker sends nothing but the probe, and requests wait in the
batcher until the backend is back or their deadline passes.

Every transition is written to the ``<prefix>:breaker`` hash (state, until_ms,
failures, updated_ms) so the API can refuse new requests fast while the backend
is down. Writes are best effort: a Redis outage is logged and never stops the
worker.
"""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from common.settings import Settings
from common.store import Keys
from stream.batching.clock import Clock, SystemClock

logger = logging.getLogger(__name__)

REDIS_WRITE_TIMEOUT_S = 2.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        redis: Redis | None = None,
        keys: Keys | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._redis = redis
        self._keys = keys or Keys()
        self._clock = clock or SystemClock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._open_until_s = 0.0
        self._probe_out = False
        self.transitions = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, redis: Redis | None = None, clock: Clock | None = None
    ) -> Breaker:
        return cls(
            failure_threshold=settings.breaker_failure_threshold,
            cooldown_s=settings.breaker_cooldown_s,
            redis=redis,
            keys=Keys(settings.redis_key_prefix),
            clock=clock,
        )

    @property
    def state(self) -> BreakerState:
        """The state now; an open breaker whose cooldown ended reads half-open."""
        if (
            self._state is BreakerState.OPEN
            and self._clock.monotonic() >= self._open_until_s
        ):
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def reopens_at_s(self) -> float | None:
        """Monotonic time the open breaker lets a probe through, if open."""
        return self._open_until_s if self.state is BreakerState.OPEN else None

    def ready(self) -> bool:
        """Would ``acquire()`` say yes now?"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._probe_out

    async def acquire(self) -> bool:
        """May a batch be sent now? In half-open state only one caller hears yes,
        and it must report the outcome with ``record_success``/``record_failure``.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probe_out:
            return False
        if self._state is BreakerState.OPEN:
            await self._enter(BreakerState.HALF_OPEN)
        self._probe_out = True
        return True

    def release(self) -> None:
        """Give back a probe permission that was not used to send anything."""
        self._probe_out = False

    async def record_success(self) -> None:
        self._probe_out = False
        had_failures = self._failures > 0
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            await self._enter(BreakerState.CLOSED)
        elif had_failures:
            await self._publish()

    async def record_failure(self) -> None:
        self._probe_out = False
        self._failures += 1
        # While open, failures of batches sent before it opened only count.
        probe_failed = self._state is BreakerState.HALF_OPEN
        tripped = (
            self._state is BreakerState.CLOSED
            and self._failures >= self.failure_threshold
        )
        if probe_failed or tripped:
            self._open_until_s = self._clock.monotonic() + self.cooldown_s
            await self._enter(BreakerState.OPEN)
        else:
            await self._publish()

    async def publish(self) -> None:
        """Write the current state, e.g. at start-up to clear a stale one."""
        await self._publish()

    async def _enter(self, state: BreakerState) -> None:
        previous, self._state = self._state, state
        self.transitions += 1
        log = logger.warning if state is BreakerState.OPEN else logger.info
        log(
            "breaker_transition",
            extra={
                "from_state": previous.value,
                "to_state": state.value,
                "failures": self._failures,
                "cooldown_s": self.cooldown_s if state is BreakerState.OPEN else 0,
            },
        )
        await self._publish()

    async def _publish(self) -> None:
        if self._redis is None:
            return
        wall_s = self._clock.wall()
        until_ms = 0
        if self._state is BreakerState.OPEN:
            until_ms = int(
                (wall_s + self._open_until_s - self._clock.monotonic()) * 1000
            )
        mapping: dict[FieldT, EncodableT] = {
            "state": self._state.value,
            "until_ms": until_ms,
            "failures": self._failures,
            "updated_ms": int(wall_s * 1000),
        }
        try:
            await asyncio.wait_for(
                self._redis.hset(self._keys.breaker, mapping=mapping),
                REDIS_WRITE_TIMEOUT_S,
            )
        except Exception as exc:
            logger.warning(
                "breaker_publish_failed",
                extra={"state": self._state.value, "error": repr(exc)},
            )
