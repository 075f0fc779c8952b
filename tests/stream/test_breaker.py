"""The circuit breaker: transitions on a manual clock, and its Redis record."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from common.store import Keys
from stream.batching.clock import ManualClock
from stream.breaker import Breaker, BreakerState


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def breaker(clock: ManualClock) -> Breaker:
    return Breaker(failure_threshold=5, cooldown_s=30.0, clock=clock)


async def trip(breaker: Breaker) -> None:
    for _ in range(breaker.failure_threshold):
        await breaker.record_failure()


async def test_opens_on_the_fifth_consecutive_failure(breaker: Breaker) -> None:
    """Four failures leave it closed; the fifth opens it and stops sending."""
    for _ in range(4):
        await breaker.record_failure()
        assert breaker.state is BreakerState.CLOSED
        assert await breaker.acquire()

    await breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.ready()
    assert not await breaker.acquire()


async def test_a_success_resets_the_failure_count(breaker: Breaker) -> None:
    """Failures must be consecutive: a success in between starts over."""
    for _ in range(4):
        await breaker.record_failure()
    await breaker.record_success()
    for _ in range(4):
        await breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


async def test_after_cooldown_exactly_one_probe_goes(
    breaker: Breaker, clock: ManualClock
) -> None:
    """30 s after opening, one caller may probe; the next is refused."""
    await trip(breaker)
    clock.advance(29.9)
    states = [breaker.state]
    assert breaker.reopens_at_s() == pytest.approx(clock.monotonic() + 0.1)

    clock.advance(0.1)
    states.append(breaker.state)
    assert states == [BreakerState.OPEN, BreakerState.HALF_OPEN]
    assert breaker.ready()
    assert await breaker.acquire()
    assert not breaker.ready()
    assert not await breaker.acquire()


async def test_a_successful_probe_closes(breaker: Breaker, clock: ManualClock) -> None:
    """The probe's success closes the breaker and clears the failures."""
    await trip(breaker)
    clock.advance(30)
    assert await breaker.acquire()
    await breaker.record_success()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0
    assert await breaker.acquire()
    assert await breaker.acquire()


async def test_a_failed_probe_reopens_for_another_cooldown(
    breaker: Breaker, clock: ManualClock
) -> None:
    """One failed probe is enough to open again, counted from now."""
    await trip(breaker)
    clock.advance(30)
    assert await breaker.acquire()
    await breaker.record_failure()

    assert breaker.state is BreakerState.OPEN
    assert breaker.reopens_at_s() == pytest.approx(clock.monotonic() + 30)


async def test_an_unused_probe_can_be_given_back(
    breaker: Breaker, clock: ManualClock
) -> None:
    """release() lets the next caller probe instead."""
    await trip(breaker)
    clock.advance(30)
    assert await breaker.acquire()
    breaker.release()
    assert await breaker.acquire()


async def test_late_failures_while_open_do_not_extend_the_cooldown(
    breaker: Breaker, clock: ManualClock
) -> None:
    """Batches sent before it opened may fail later; they only count."""
    await trip(breaker)
    reopens_at_s = breaker.reopens_at_s()
    clock.advance(5)
    await breaker.record_failure()
    assert breaker.reopens_at_s() == reopens_at_s
    assert breaker.failures == 6


async def test_every_transition_is_written_to_redis(
    redis_client: Redis, namespace: str, clock: ManualClock
) -> None:
    """The API reads state, until_ms, failures and updated_ms from the hash."""
    keys = Keys(namespace)
    breaker = Breaker(
        failure_threshold=2, cooldown_s=30.0, redis=redis_client, keys=keys, clock=clock
    )
    await breaker.record_failure()
    await breaker.record_failure()

    record = await redis_client.hgetall(keys.breaker)
    assert record[b"state"] == b"open"
    assert int(record[b"failures"]) == 2
    assert int(record[b"until_ms"]) == pytest.approx((clock.wall() + 30) * 1000, abs=2)
    assert int(record[b"updated_ms"]) == pytest.approx(clock.wall() * 1000, abs=2)

    clock.advance(30)
    assert await breaker.acquire()
    assert (await redis_client.hget(keys.breaker, "state")) == b"half_open"
    await breaker.record_success()
    record = await redis_client.hgetall(keys.breaker)
    assert record[b"state"] == b"closed"
    assert record[b"until_ms"] == b"0"
    assert record[b"failures"] == b"0"


async def test_a_redis_outage_is_logged_not_raised(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis unreachable the breaker still works and warns once per write."""
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    breaker = Breaker(failure_threshold=1, redis=unreachable, clock=clock)
    with caplog.at_level(logging.WARNING, logger="stream.breaker"):
        await breaker.record_failure()
    await unreachable.aclose()

    assert breaker.state is BreakerState.OPEN
    assert [r.getMessage() for r in caplog.records] == [
        "breaker_transition",
        "breaker_publish_failed",
    ]
