"""Two workers share the group: a rebalance mid-stream loses nothing."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.settings import Settings
from tests.conftest import StartService
from tests.stream.worker_kit import (
    all_committed,
    client,
    make_request,
    replies,
    wait_until,
    worker_env,
)
from tests.stream.worker_kit import simulator_fixture as simulator_fixture

pytestmark = pytest.mark.integration


async def test_a_second_worker_joining_mid_stream_loses_nothing(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
) -> None:
    """When a second worker joins while batches run, the first gives its
    waiting requests back and commits what it answered; every request is
    answered and the group ends with every offset committed."""
    simulator.control(fixed_ms=2000, per_image_ms=10)
    env = worker_env(simulator, DOLPHIN_MAX_BATCH_SIZE="8")
    first = start_worker(**env)
    requests = [make_request(i, settings) for i in range(100)]

    async with replies(settings) as inbox, client(settings, redis_client) as kafka:
        await kafka.send_many(requests)
        await wait_until(
            lambda: simulator.stats(include_processed=False)["running_batches"] >= 2,
            what="batches in flight",
        )
        second = start_worker(**env)
        await inbox.wait_for(r.request_id for r in requests)
        await wait_until(lambda: all_committed(settings), what="offsets committed")

    assert '"partitions_revoked"' in first.log_text()
    assert '"partitions_assigned"' in second.log_text()
    for request in requests:
        assert all(body["success"] for body in inbox.by_id[request.request_id])
