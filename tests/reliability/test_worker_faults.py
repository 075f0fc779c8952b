"""Workers crash and stop under HTTP load; every accepted call is answered.

``tests/stream/test_worker_crash.py`` proves the same for requests produced
straight to Kafka; here callers wait on the API while the worker dies, so the
answer must also find its way back through the reply router (or Redis).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.settings import Settings
from tests.conftest import ServiceProcess, StartService
from tests.reliability.kit import Audit, Load, report, wait_for
from tests.stream.worker_kit import all_committed, worker_env

pytestmark = pytest.mark.integration

CALLERS = 32
BATCH = 8
# At most this many images are at the backend when a worker dies (one batch per
# slot): only those may be parsed a second time.
IN_FLIGHT_MAX = 4 * BATCH


def running_batches(simulator: RunningSimulator) -> int:
    return int(simulator.stats(include_processed=False)["running_batches"])


def assigned(worker: ServiceProcess) -> list[int]:
    body = httpx.get(worker.url + "/health", timeout=5).json()
    partitions: list[int] = body["consumer"]["assigned_partitions"]
    return partitions


async def test_worker_sigkill_mid_batch_under_http_load(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """SIGKILL of the only worker while batches are at the backend: callers keep
    waiting, a restarted worker answers every accepted call."""
    simulator.control(fixed_ms=600, per_image_ms=10)
    env = worker_env(simulator, DOLPHIN_MAX_BATCH_SIZE=str(BATCH))
    worker = start_worker(**env)
    api = start_api()
    load = Load(http, [api.url], "sigkill")
    stop = asyncio.Event()
    driving = asyncio.create_task(load.closed(CALLERS, stop))

    await wait_for(
        lambda: load.ok >= CALLERS and running_batches(simulator) >= 2,
        "answers and batches in flight",
    )
    worker.kill()
    # Calls keep arriving and queue while no worker runs.
    await asyncio.sleep(1.0)
    start_worker(**env)
    answered_before = load.ok
    await wait_for(lambda: load.ok >= answered_before + 2 * CALLERS, "answers again")
    stop.set()
    await driving

    audit = await Audit.of(settings, redis_client, api.url, load.accepted_ids())
    summary = report("worker_sigkill", load, audit, simulator, record_property)
    await wait_for(lambda: all_committed(settings), "every offset committed")
    assert summary.lost == 0
    assert summary.ok == summary.accepted
    assert summary.sent_twice <= IN_FLIGHT_MAX


async def test_worker_sigterm_under_http_load(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """SIGTERM drains (exit 0, nothing parsed twice) and a restarted worker
    answers what the first one did not take."""
    simulator.control(fixed_ms=600, per_image_ms=10)
    env = worker_env(simulator, DOLPHIN_MAX_BATCH_SIZE=str(BATCH))
    worker = start_worker(**env)
    api = start_api()
    load = Load(http, [api.url], "sigterm")
    stop = asyncio.Event()
    driving = asyncio.create_task(load.closed(CALLERS, stop))

    await wait_for(
        lambda: load.ok >= CALLERS and running_batches(simulator) >= 2,
        "answers and batches in flight",
    )
    assert await asyncio.to_thread(worker.terminate) == 0
    start_worker(**env)
    answered_before = load.ok
    await wait_for(lambda: load.ok >= answered_before + 2 * CALLERS, "answers again")
    stop.set()
    await driving

    audit = await Audit.of(settings, redis_client, api.url, load.accepted_ids())
    summary = report("worker_sigterm", load, audit, simulator, record_property)
    await wait_for(lambda: all_committed(settings), "every offset committed")
    assert summary.lost == 0
    assert summary.ok == summary.accepted
    assert summary.sent_twice == 0


async def test_one_of_two_workers_sigkilled_under_http_load(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """Two workers share the partitions; SIGKILL one and the survivor takes
    its partitions over and answers its callers."""
    simulator.control(fixed_ms=600, per_image_ms=10)
    env = worker_env(simulator, DOLPHIN_MAX_BATCH_SIZE=str(BATCH))
    first = start_worker(**env)
    second = start_worker(**env)
    api = start_api()
    await wait_for(
        lambda: bool(assigned(first)) and bool(assigned(second)),
        "both workers assigned",
    )
    load = Load(http, [api.url], "twoworkers")
    stop = asyncio.Event()
    driving = asyncio.create_task(load.closed(CALLERS, stop))

    await wait_for(
        lambda: load.ok >= CALLERS and running_batches(simulator) >= 2,
        "answers and batches in flight",
    )
    moved = assigned(second)
    second.kill()
    await wait_for(
        lambda: len(assigned(first)) == settings.topic_partitions, "takeover"
    )
    answered_before = load.ok
    await wait_for(lambda: load.ok >= answered_before + 2 * CALLERS, "answers again")
    stop.set()
    await driving

    audit = await Audit.of(settings, redis_client, api.url, load.accepted_ids())
    summary = report(
        "two_workers_one_sigkilled",
        load,
        audit,
        simulator,
        record_property,
        partitions_moved=len(moved),
    )
    await wait_for(lambda: all_committed(settings), "every offset committed")
    assert summary.lost == 0
    assert summary.ok == summary.accepted
    assert summary.sent_twice <= IN_FLIGHT_MAX
