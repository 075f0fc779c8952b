"""The worker end to end, without the API: Kafka in, simulator, Kafka out."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.settings import Settings
from common.store import Keys
from infra.localstack.kafka import consumer_groups_command, parse_lag
from tests.conftest import StartService
from tests.stream.worker_kit import (
    all_committed,
    client,
    make_request,
    metric_value,
    replies,
    wait_until,
    worker_env,
)
from tests.stream.worker_kit import simulator_fixture as simulator_fixture

pytestmark = pytest.mark.integration


async def test_every_request_is_answered_once_stored_and_committed(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
) -> None:
    """Each request gets exactly one reply with its filename, its result is
    stored, its admission entry released, and the group commits every offset,
    as Kafka's consumer-group tool reports."""
    worker = start_worker(**worker_env(simulator))
    requests = [make_request(i, settings) for i in range(60)]
    keys = Keys(settings.redis_key_prefix)

    async with replies(settings) as inbox, client(settings, redis_client) as kafka:
        await kafka.send_many(requests)
        await inbox.wait_for(r.request_id for r in requests)
        await wait_until(lambda: all_committed(settings), what="offsets committed")

        for request in requests:
            answers = inbox.by_id[request.request_id]
            assert len(answers) == 1
            assert answers[0]["success"] is True
            assert answers[0]["filename"] == request.filename
            assert answers[0]["request_id"] == request.request_id
            stored = await redis_client.get(keys.result(request.request_id))
            assert stored is not None
            assert await redis_client.zscore(keys.admission, request.request_id) is None
            state = await redis_client.hget(keys.state(request.request_id), "state")
            assert state == b"done"
    assert simulator.stats()["duplicates"] == []
    assert metric_value(worker.url, "dolphin_worker_messages_total") == 60
    assert metric_value(worker.url, "dolphin_worker_images_total") == 60
    assert metric_value(worker.url, "dolphin_worker_queue_wait_seconds_count") == 60
    assert metric_value(worker.url, "dolphin_worker_batch_size_count") >= 1
    # Kafka's own tool sees the group, its commits and no lag.
    lag = await asyncio.to_thread(_group_lag, settings)
    assert set(lag) == set(range(settings.topic_partitions))
    assert set(lag.values()) == {0}


def _group_lag(settings: Settings) -> dict[int, int]:
    command = consumer_groups_command(
        settings.kafka_bootstrap_servers,
        "--describe",
        "--group",
        settings.consumer_group,
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return parse_lag(done.stdout)


async def test_a_burst_fills_batches_of_32_and_a_lone_request_is_answered(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
) -> None:
    """Requests that pile up while the backend is busy leave in full batches of
    32; a single request on an idle worker is still answered on its own."""
    worker = start_worker(**worker_env(simulator))

    async with replies(settings) as inbox, client(settings, redis_client) as kafka:
        simulator.control(paused=True)
        burst = [make_request(i, settings) for i in range(200)]
        await kafka.send_many(burst)
        # Hold the backend until everything is buffered behind the busy slots.
        await wait_until(
            lambda: metric_value(worker.url, "dolphin_worker_batches_in_flight") >= 4,
            what="slots busy",
        )
        simulator.control(paused=False)
        await inbox.wait_for(r.request_id for r in burst)
        assert "32" in simulator.stats()["batch_size_histogram"]

        for i in range(3):
            lone = make_request(f"lone-{i}", settings)
            await kafka.send(lone)
            await inbox.wait_for([lone.request_id])
            assert inbox.first(lone.request_id)["success"] is True
