"""Worker restarts lose nothing: SIGKILL mid-batch, and a graceful SIGTERM."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.settings import Settings
from common.store import Keys
from tests.conftest import StartService
from tests.stream.worker_kit import (
    all_committed,
    client,
    make_request,
    processed_shas,
    replies,
    wait_until,
    worker_env,
)
from tests.stream.worker_kit import simulator_fixture as simulator_fixture

pytestmark = pytest.mark.integration

REQUESTS = 120


def _sha(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


async def test_sigkill_mid_batch_loses_nothing_and_reparses_only_unstored(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
    record_property: Callable[[str, object], None],
) -> None:
    """After SIGKILL with batches at the backend, a new worker answers every
    accepted request; those whose result was already stored are answered from
    the store, never parsed twice."""
    simulator.control(fixed_ms=1500, per_image_ms=10)
    env = worker_env(simulator, DOLPHIN_MAX_BATCH_SIZE="16")
    worker = start_worker(**env)
    requests = [make_request(i, settings) for i in range(REQUESTS)]
    keys = Keys(settings.redis_key_prefix)

    async with replies(settings) as inbox, client(settings, redis_client) as kafka:
        await kafka.send_many(requests)
        await wait_until(
            lambda: (
                len(inbox.by_id) >= 16
                and simulator.stats(include_processed=False)["running_batches"] >= 1
            ),
            what="answers given and batches in flight",
        )
        worker.kill()
        stored_before = {
            r.request_id
            for r in requests
            if await redis_client.exists(keys.result(r.request_id))
        }

        start_worker(**env)
        await inbox.wait_for(r.request_id for r in requests)
        await wait_until(lambda: all_committed(settings), what="offsets committed")

    answered = {r.request_id for r in requests} & inbox.by_id.keys()
    lost = REQUESTS - len(answered)
    parsed = Counter(processed_shas(simulator))
    twice = [r for r in requests if parsed[_sha(r.image)] > 1]
    record_property("accepted", REQUESTS)
    record_property("answered", len(answered))
    record_property("lost", lost)
    record_property("stored_before_kill", len(stored_before))
    record_property("sent_to_backend_twice", len(twice))
    print(
        f"\nSIGKILL: accepted={REQUESTS} answered={len(answered)} lost={lost} "
        f"stored_before_kill={len(stored_before)} sent_twice={len(twice)}"
    )
    assert lost == 0
    assert stored_before, "the kill should come after some answers were stored"
    assert not [r for r in twice if r.request_id in stored_before]
    for request in requests:
        assert all(body["success"] for body in inbox.by_id[request.request_id])


async def test_sigterm_drains_exits_zero_and_loses_nothing(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
) -> None:
    """SIGTERM lets running batches finish and be answered, exits 0, and the
    requests it did not take are answered by the next worker, parsed once."""
    simulator.control(fixed_ms=800, per_image_ms=10)
    env = worker_env(simulator, DOLPHIN_MAX_BATCH_SIZE="8")
    worker = start_worker(**env)
    requests = [make_request(i, settings) for i in range(80)]

    async with replies(settings) as inbox, client(settings, redis_client) as kafka:
        await kafka.send_many(requests)
        await wait_until(
            lambda: simulator.stats(include_processed=False)["running_batches"] >= 2,
            what="batches in flight",
        )
        assert worker.terminate() == 0
        assert '"worker_stopped"' in worker.log_text()

        start_worker(**env)
        await inbox.wait_for(r.request_id for r in requests)
        await wait_until(lambda: all_committed(settings), what="offsets committed")

    assert simulator.stats()["duplicates"] == []
    for request in requests:
        assert inbox.first(request.request_id)["success"] is True
