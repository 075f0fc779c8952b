"""The circuit breaker as the worker uses it against a failing backend."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.settings import Settings
from common.store import Keys
from tests.conftest import StartService
from tests.stream.worker_kit import (
    client,
    make_request,
    replies,
    wait_until,
    worker_env,
)
from tests.stream.worker_kit import simulator_fixture as simulator_fixture

pytestmark = pytest.mark.integration

COOLDOWN_S = 4.0


async def test_breaker_opens_holds_requests_and_closes_after_recovery(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
) -> None:
    """Five failed batches open the breaker (published in Redis); while open
    nothing is sent; once the backend recovers the breaker closes and every
    held request is answered with a result."""
    simulator.control(fail_rate=1.0, fail_mode="5xx")
    start_worker(
        **worker_env(
            simulator,
            DOLPHIN_BACKEND_ATTEMPTS="1",
            DOLPHIN_BREAKER_COOLDOWN_S=str(COOLDOWN_S),
        )
    )
    breaker_key = Keys(settings.redis_key_prefix).breaker
    requests = [make_request(i, settings) for i in range(10)]

    async def breaker_state() -> bytes | str | None:
        return await redis_client.hget(breaker_key, "state")

    async def breaker_is(expected: bytes) -> bool:
        return await breaker_state() == expected

    async with replies(settings) as inbox, client(settings, redis_client) as kafka:
        await kafka.send_many(requests)
        await wait_until(lambda: breaker_is(b"open"), what="breaker open")
        sent_when_opened = simulator.stats(include_processed=False)["requests"]
        assert sent_when_opened >= 5
        until_ms = int(await redis_client.hget(breaker_key, "until_ms") or 0)
        # Watch the open period up to shortly before the probe is allowed.
        quiet_until_s = until_ms / 1000 - 1.0
        while time.time() < quiet_until_s:
            await asyncio.sleep(0.2)
            assert await breaker_state() == b"open"
        assert simulator.stats(include_processed=False)["requests"] == sent_when_opened

        simulator.control(fail_rate=0.0)
        await inbox.wait_for(r.request_id for r in requests)
        await wait_until(lambda: breaker_is(b"closed"), what="breaker closed")

    for request in requests:
        assert inbox.first(request.request_id)["success"] is True
