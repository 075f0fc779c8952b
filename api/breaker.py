"""The backend circuit breaker as the API sees it.

The worker owns the breaker and writes it to ``Keys.breaker`` (a hash with
``state`` and ``until_ms``). While it is open new requests are refused at once:
they would only wait for a backend that is known to be failing. The hash is read
at most every ``cache_s`` seconds, so a burst of requests costs one Redis call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from common.store import Keys, now_ms

from .errors import api_error

CACHE_S = 0.5


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: str
    """closed, open or half_open; a missing hash reads as closed."""
    until_ms: int | None = None

    def refusing(self, at_ms: int) -> bool:
        # Past until_ms the worker is probing the backend: let requests through.
        return self.state == "open" and (self.until_ms is None or self.until_ms > at_ms)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _milliseconds(value: str | None) -> int | None:
    try:
        return int(float(value)) if value else None
    except ValueError:
        return None


class BreakerView:
    def __init__(
        self, redis: Redis, keys: Keys, cooldown_s: float, cache_s: float = CACHE_S
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cooldown_s = cooldown_s
        self.cache_s = cache_s
        self._cached: BreakerState | None = None
        self._read_at = 0.0

    async def read(self) -> BreakerState:
        if self._cached is not None and time.monotonic() - self._read_at < self.cache_s:
            return self._cached
        fields = await self.redis.hgetall(self.keys.breaker)
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        self._cached = BreakerState(
            state=decoded.get("state") or "closed",
            until_ms=_milliseconds(decoded.get("until_ms")),
        )
        self._read_at = time.monotonic()
        return self._cached

    async def check(self) -> None:
        """Raise 503 backend_unavailable while the breaker is open."""
        breaker = await self.read()
        at_ms = now_ms()
        if not breaker.refusing(at_ms):
            return
        if breaker.until_ms is not None:
            retry_after_s = max(1.0, (breaker.until_ms - at_ms) / 1000)
        else:
            retry_after_s = self.cooldown_s
        raise api_error(
            "backend_unavailable",
            "the parser backend is failing and its circuit breaker is open; "
            f"retry in {retry_after_s:.0f} s",
            retry_after_s=retry_after_s,
        )
