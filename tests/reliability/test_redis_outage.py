"""Redis stops for 10 s under load and comes back with its data (AOF).

Without Redis nothing can be admitted, so the API fails closed: 503
``redis_unavailable`` at once, nothing produced. Calls accepted before the stop
are answered over Kafka all the same; the worker keeps retrying the writes of
their results and stores them once Redis is back. Both processes recover by
themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.settings import Settings
from tests.conftest import StartService
from tests.reliability.kit import Audit, Load, latency_figures, page, report, wait_for
from tests.services import RedisControl
from tests.stream.worker_kit import all_committed, worker_env

pytestmark = pytest.mark.integration

OUTAGE_S = 10.0
RATE_PER_S = 12.0


async def test_redis_down_10s_fails_closed_and_loses_nothing(
    settings: Settings,
    redis_client: Redis,
    redis_control: RedisControl,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """While Redis is down calls get 503 redis_unavailable quickly; calls
    accepted before are answered, their results stored once Redis is back."""
    if not redis_control.controllable:
        pytest.skip(
            "Redis comes from REDIS_URL or a container; only the session's own "
            "local Redis can be stopped and restarted"
        )
    simulator.control(fixed_ms=1500, per_image_ms=10)
    worker = start_worker(**worker_env(simulator))
    api = start_api()
    load = Load(http, [api.url], "redis")
    driving = asyncio.create_task(load.open(RATE_PER_S, duration_s=5 + OUTAGE_S + 10))

    await asyncio.sleep(5)
    try:
        await asyncio.to_thread(redis_control.stop)
        down_at = load.run.duration_s
        await asyncio.sleep(OUTAGE_S)
    finally:
        await asyncio.to_thread(redis_control.start)
    restarted_at = load.run.duration_s
    await driving

    audit = await Audit.of(settings, redis_client, api.url, load.accepted_ids())
    refusals = [s for s in load.samples if s.code == "redis_unavailable"]
    while_down = [s for s in load.samples if down_at <= s.started_s < restarted_at]
    after = [s for s in load.samples if s.started_s >= restarted_at + 2]
    summary = report(
        "redis_down_10s",
        load,
        audit,
        simulator,
        record_property,
        refusal_latency=latency_figures(refusals),
        calls_while_down=len(while_down),
        refused_while_down=sum(1 for s in while_down if s.status == 503),
        ok_after_restart=sum(1 for s in after if s.status == 200),
    )
    await wait_for(lambda: all_committed(settings), "every offset committed")
    assert summary.lost == 0
    assert refusals, "calls made while Redis was down should be refused"
    assert {s.code for s in while_down if s.status != 200} == {"redis_unavailable"}
    assert after and all(s.status == 200 for s in after)
    assert worker.proc.poll() is None and api.proc.poll() is None
    health = await http.get(api.url + "/health")
    assert health.status_code == 200, health.text
    response = await http.post(f"{api.url}/parse", json=page(10**6, "redis-after"))
    assert response.status_code == 200, response.text
