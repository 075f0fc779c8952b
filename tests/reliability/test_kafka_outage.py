"""The Kafka broker stops for 20 s under load and comes back with its data.

While it is down the API refuses new work at once with 503
``kafka_unavailable``; every call accepted before the stop is answered once the
broker is back: the worker's consumer and producer, and the API's reply router,
all reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.settings import Settings
from tests.conftest import StartService
from tests.reliability.kit import (
    Audit,
    Load,
    latency_figures,
    page,
    report,
    wait_for,
)
from tests.services import KafkaControl
from tests.stream.worker_kit import all_committed, worker_env

pytestmark = pytest.mark.integration

OUTAGE_S = 20.0
RATE_PER_S = 12.0


async def test_broker_down_20s_refuses_fast_and_loses_nothing(
    settings: Settings,
    redis_client: Redis,
    kafka_control: KafkaControl,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """Calls accepted before the broker stops are answered after it restarts;
    calls made while it is down get 503 kafka_unavailable without waiting."""
    if not kafka_control.controllable:
        pytest.skip(
            "Kafka comes from KAFKA_BOOTSTRAP_SERVERS or a container; only the "
            "session's own local broker can be stopped and restarted"
        )
    # Batches take long enough that some are at the backend when Kafka stops.
    simulator.control(fixed_ms=1500, per_image_ms=10)
    worker = start_worker(**worker_env(simulator))
    api = start_api()
    load = Load(http, [api.url], "kafka")
    driving = asyncio.create_task(load.open(RATE_PER_S, duration_s=5 + OUTAGE_S + 20))

    await asyncio.sleep(5)
    stopped_at = load.run.duration_s
    try:
        await asyncio.to_thread(kafka_control.stop)
        down_at = load.run.duration_s
        await asyncio.sleep(OUTAGE_S)
    finally:
        await asyncio.to_thread(kafka_control.start)
    restarted_at = load.run.duration_s
    await driving

    audit = await Audit.of(settings, redis_client, api.url, load.accepted_ids())
    refusals = [s for s in load.samples if s.code == "kafka_unavailable"]
    while_down = [s for s in load.samples if down_at <= s.started_s < restarted_at]
    after = [s for s in load.samples if s.started_s >= restarted_at + 5]
    summary = report(
        "kafka_broker_down_20s",
        load,
        audit,
        simulator,
        record_property,
        refusal_latency=latency_figures(refusals),
        calls_while_down=len(while_down),
        refused_while_down=sum(1 for s in while_down if s.status == 503),
        ok_from_5s_after_restart=f"{sum(s.status == 200 for s in after)}/{len(after)}",
        stop_took_s=round(down_at - stopped_at, 1),
        restart_took_s=round(restarted_at - down_at - OUTAGE_S, 1),
    )
    await wait_for(lambda: all_committed(settings), "every offset committed")
    assert summary.lost == 0
    assert refusals, "calls made while the broker was down should be refused"
    assert {s.code for s in while_down if s.status != 200} <= {"kafka_unavailable"}
    assert after and all(s.status == 200 for s in after), "the API did not recover"
    assert worker.proc.poll() is None and api.proc.poll() is None
    started = time.monotonic()
    response = await http.post(
        f"{api.url}/parse",
        json=page(10**6, "kafka-after"),
        headers={"X-Request-Timeout": "60"},
    )
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 30
