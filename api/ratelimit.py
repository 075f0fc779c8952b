"""Per-client rate limiting in Redis, shared by every API process.

The limit is a generic cell rate algorithm (GCRA): a client may send a burst of
``per_minute`` requests, then one every ``60 / per_minute`` seconds. Redis keeps
one key per client, the theoretical arrival time of its next request, and the
check-and-update is one atomic script, so concurrent API processes agree.
"""

from __future__ import annotations

import hashlib
import logging
import math

from redis.asyncio import Redis

from common.store import Keys, now_ms

from .errors import api_error

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000

# KEYS: the client's key. ARGV: now_ms, interval_ms, burst_ms.
# Returns 0 when allowed, else the milliseconds until the next request may pass.
_GCRA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - burst
if allowed_at > now then return allowed_at - now end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil(next_tat - now))
return 0
"""


def client_identity(api_key: str | None, client_host: str | None) -> str:
    """The API key's digest when authenticated, else the client address."""
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:32]
    return "ip:" + (client_host or "unknown")


class RateLimiter:
    def __init__(self, redis: Redis, keys: Keys, per_minute: int | None) -> None:
        self.per_minute = per_minute
        self.keys = keys
        self._script = redis.register_script(_GCRA)

    @property
    def enabled(self) -> bool:
        return self.per_minute is not None

    async def check(self, client_id: str) -> None:
        """Count one request of ``client_id``; raise 429 when over the limit."""
        if self.per_minute is None:
            return
        interval_ms = WINDOW_MS / self.per_minute
        wait_ms = await self._script(
            keys=[f"{self.keys.prefix}:rate:{client_id}"],
            args=[now_ms(), interval_ms, WINDOW_MS],
        )
        if int(wait_ms) <= 0:
            return
        retry_after_s = max(1.0, math.ceil(int(wait_ms) / 1000))
        logger.debug("rate_limited", extra={"client": client_id})
        raise api_error(
            "rate_limited",
            f"more than {self.per_minute} requests per minute from this client; "
            f"retry in {retry_after_s:.0f} s",
            retry_after_s=retry_after_s,
        )
