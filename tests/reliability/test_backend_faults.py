"""The parser backend misbehaves; callers still get one right answer each.

Server errors and timeouts are retried, a refused connection trips the
circuit breaker (the API then refuses new calls fast) and heals when the
backend comes back, Modal's 303 redirects are followed, and a batch failed by
one undecodable image is split until only that image fails.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.settings import Settings
from common.store import Keys
from infra.localstack.procs import free_port
from tests.conftest import StartService
from tests.reliability.conftest import StartSimulator
from tests.reliability.kit import (
    Audit,
    Load,
    latency_figures,
    page,
    report,
    wait_for,
)
from tests.reliability.strict_backend import StrictStats, strict_backend
from tests.stream.worker_kit import worker_env

pytestmark = pytest.mark.integration

CALLERS = 32


async def drive(load: Load, calls: int, callers: int = CALLERS) -> None:
    """Closed-loop load until ``calls`` calls were answered."""
    stop = asyncio.Event()
    driving = asyncio.create_task(load.closed(callers, stop))
    await wait_for(lambda: len(load.samples) >= calls, f"{calls} calls answered")
    stop.set()
    await driving


async def test_one_batch_in_five_answering_5xx_is_retried(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """With 20 % of backend calls failing with HTTP 500, retries make at least
    99.9 % of the calls succeed."""
    simulator.control(fail_rate=0.2, fail_mode="5xx", seed=7)
    start_worker(**worker_env(simulator, DOLPHIN_BACKEND_ATTEMPTS="3"))
    api = start_api()
    load = Load(http, [api.url], "5xx")

    # Few callers make many small batches: many draws of the fault.
    await drive(load, 400, callers=8)

    audit = await Audit.of(settings, redis_client, api.url, load.accepted_ids())
    stats = simulator.stats(include_processed=False)
    summary = report(
        "backend_5xx_20pct",
        load,
        audit,
        simulator,
        record_property,
        injected_5xx=stats["injected"]["5xx"],
        backend_calls=stats["requests"],
    )
    assert summary.lost == 0
    assert summary.ok / len(load.samples) >= 0.999
    assert stats["injected"]["5xx"] > 0


async def test_backend_slower_than_the_client_timeout_is_retried(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """Batches that take 3 s against a 1 s client timeout are abandoned and
    sent again; every call succeeds. The backend finishes an abandoned batch
    anyway, so those images are parsed twice: the price of a timeout."""
    simulator.control(fail_rate=0.3, fail_mode="slow", slow_ms=3000, seed=11)
    env = worker_env(
        simulator, DOLPHIN_BACKEND_ATTEMPTS="3", DOLPHIN_BACKEND_TIMEOUT_S="1"
    )
    start_worker(**env)
    api = start_api()
    load = Load(http, [api.url], "slow")

    await drive(load, 200)

    audit = await Audit.of(settings, redis_client, api.url, load.accepted_ids())
    stats = simulator.stats(include_processed=False)
    summary = report(
        "backend_slower_than_timeout",
        load,
        audit,
        simulator,
        record_property,
        slow_batches=stats["injected"]["slow"],
    )
    assert summary.lost == 0
    assert summary.ok == summary.accepted == len(load.samples)
    assert stats["injected"]["slow"] > 0


async def test_refused_connections_open_the_breaker_until_the_backend_is_up(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    start_simulator: StartSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """Nothing listens at the backend's address: accepted calls wait, the
    breaker opens and the API refuses new calls at once with 503
    backend_unavailable; once a backend listens there, every accepted call is
    answered."""
    port = free_port()
    start_worker(
        **worker_env(
            start_simulator(),  # only for the settings; replaced below
            MODAL_API_ENDPOINT=f"http://127.0.0.1:{port}",
            DOLPHIN_BREAKER_COOLDOWN_S="2",
        )
    )
    api = start_api()
    keys = Keys(settings.redis_key_prefix)
    waiting = Load(http, [api.url], "refused")
    accepted = asyncio.gather(*(waiting.run.call(waiting.send, i) for i in range(24)))
    calls = asyncio.ensure_future(accepted)

    await wait_for(
        lambda: breaker_state(redis_client, keys, "open"), "the breaker to open"
    )
    await asyncio.sleep(1.0)  # the API reads the breaker every 0.5 s
    refused = Load(http, [api.url], "refused-new")
    await asyncio.gather(*(refused.run.call(refused.send, i) for i in range(10)))
    simulator = start_simulator(port=port)
    await calls

    audit = await Audit.of(settings, redis_client, api.url, waiting.accepted_ids())
    summary = report(
        "backend_connection_refused",
        waiting,
        audit,
        simulator,
        record_property,
        refused_while_open=refused.count(lambda s: s.code == "backend_unavailable"),
        refusal_latency=latency_figures(refused.samples),
    )
    assert summary.lost == 0
    assert summary.ok == summary.accepted == 24
    assert refused.codes() == {"backend_unavailable": 10}


async def breaker_state(redis: Redis, keys: Keys, state: str) -> bool:
    return await redis.hget(keys.breaker, "state") == state.encode()


async def test_modal_303_redirects_are_followed(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """Every batch answered with 303 to a result URL is fetched from there."""
    simulator.control(redirect=True, fixed_ms=200)
    start_worker(**worker_env(simulator))
    api = start_api()
    load = Load(http, [api.url], "redirect")

    await drive(load, 100)

    audit = await Audit.of(settings, redis_client, api.url, load.accepted_ids())
    stats = simulator.stats(include_processed=False)
    summary = report(
        "backend_303_redirects",
        load,
        audit,
        simulator,
        record_property,
        redirects=stats["redirects"],
        batches=stats["batches"],
    )
    assert summary.lost == 0
    assert summary.ok == summary.accepted == len(load.samples)
    assert stats["redirects"] >= stats["batches"] > 0


def corrupt_png(width: int = 640, height: int = 480) -> bytes:
    """A PNG whose header is sound and whose pixel data is not zlib at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"this is not deflate data" * 8)
        + chunk(b"IEND", b"")
    )


async def test_one_corrupt_image_fails_alone(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """A corrupt PNG passes the API's header check and fails its whole batch at
    the backend; the worker splits the batch, so that call alone gets 502
    parse_failed and the other calls of the batch succeed."""
    strict = StrictStats()
    keys = Keys(settings.redis_key_prefix)
    api = start_api()
    load = Load(http, [api.url], "corrupt")
    load.bodies[13] = {
        "image_data": base64.b64encode(corrupt_png()).decode(),
        "filename": "corrupt.png",
    }
    with strict_backend(simulator, strict) as base_url:
        # Every call is queued before a worker runs, so they share batches.
        calls = asyncio.gather(*(load.run.call(load.send, i) for i in range(32)))
        await wait_for(lambda: queued(redis_client, keys, 32), "every call admitted")
        start_worker(**worker_env(simulator, MODAL_API_ENDPOINT=base_url))
        await calls

    audit = await Audit.of(settings, redis_client, api.url, load.accepted_ids())
    summary = report(
        "one_corrupt_image",
        load,
        audit,
        simulator,
        record_property,
        backend_calls_failed_by_it=strict.failed_batches,
    )
    assert load.codes() == {"200": 31, "parse_failed": 1}
    corrupt = next(s for s in load.samples if s.sequence == 13)
    assert (corrupt.status, corrupt.code) == (502, "parse_failed")
    assert summary.lost == 0
    assert strict.failed_batches >= 2, "the corrupt image should have shared a batch"
    assert summary.sent_twice == 0


async def queued(redis: Redis, keys: Keys, count: int) -> bool:
    return int(await redis.zcard(keys.admission)) >= count


def test_corrupt_png_passes_the_api_header_check() -> None:
    """The corrupt page is refused by the backend, not by the API's checks."""
    from api.validation import inspect_image

    assert inspect_image(corrupt_png()).content_type == "image/png"
    assert page(1, "x")["filename"] == "x-1.png"
