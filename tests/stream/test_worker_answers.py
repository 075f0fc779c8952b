"""Answers that never reach the backend: repeats, expired and cancelled requests."""

from __future__ import annotations

import hashlib

import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.settings import Settings
from common.store import Keys, RequestState, set_state
from tests.conftest import StartService
from tests.stream.worker_kit import (
    client,
    make_request,
    processed_shas,
    replies,
    wait_until,
    worker_env,
)
from tests.stream.worker_kit import simulator_fixture as simulator_fixture

pytestmark = pytest.mark.integration


async def test_a_redelivered_request_is_answered_from_the_store(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
) -> None:
    """A request consumed again after its result was stored gets the stored
    body as its reply, and the backend sees its image once."""
    start_worker(**worker_env(simulator))
    request = make_request("again", settings)

    async with replies(settings) as inbox, client(settings, redis_client) as kafka:
        await kafka.send(request)
        await inbox.wait_for([request.request_id])
        await kafka.send(request, admit=False)
        await wait_until(
            lambda: len(inbox.by_id[request.request_id]) == 2, what="second reply"
        )

    first, second = inbox.by_id[request.request_id]
    assert first == second
    assert processed_shas(simulator) == [hashlib.sha256(request.image).hexdigest()]


async def test_expired_and_cancelled_requests_get_errors_without_parsing(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
) -> None:
    """A request past its deadline is answered deadline_exceeded and one the
    caller cancelled is answered cancelled; neither reaches the backend."""
    start_worker(**worker_env(simulator))
    keys = Keys(settings.redis_key_prefix)
    expired = make_request("late", settings, deadline_s=-5)
    cancelled = make_request("cancelled", settings)
    normal = make_request("normal", settings)

    async with replies(settings) as inbox, client(settings, redis_client) as kafka:
        await kafka.send(expired)
        await set_state(
            redis_client, keys, cancelled.request_id, RequestState.CANCELLED, 600
        )
        await kafka.send(cancelled, admit=False)
        await kafka.send(normal)
        await inbox.wait_for(r.request_id for r in (expired, cancelled, normal))

    assert inbox.first(expired.request_id)["error"]["code"] == "deadline_exceeded"
    assert inbox.first(cancelled.request_id)["error"]["code"] == "cancelled"
    assert inbox.first(normal.request_id)["success"] is True
    for request, state in ((expired, b"expired"), (cancelled, b"cancelled")):
        assert await redis_client.hget(keys.state(request.request_id), "state") == state
        assert await redis_client.zscore(keys.admission, request.request_id) is None
    assert processed_shas(simulator) == [hashlib.sha256(normal.image).hexdigest()]
