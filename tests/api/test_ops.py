"""/health, /queue/status, /metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from api.errors import CATALOG
from common.store import Keys, now_ms
from infra.localstack.procs import free_port
from tests.api.conftest import StartApp, StartWorker
from tests.api.images import parse_json

pytestmark = pytest.mark.integration


async def eventually(
    probe: Callable[[], Awaitable[Any]],
    accept: Callable[[Any], bool],
    timeout_s: float = 20.0,
) -> Any:
    """The first value of ``probe`` that ``accept`` takes, polling until timeout."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = await probe()
            if accept(value):
                return value
            await asyncio.sleep(0.2)


async def test_health_reports_dependencies_and_backend(
    start_app: StartApp, redis_client: Redis, keys: Keys
) -> None:
    """Health is ok with Kafka and Redis up; an open breaker only degrades it."""
    api = await start_app()

    healthy = await api.client.get("/health")
    await redis_client.set(f"{keys.prefix}:backend", "modal")
    await redis_client.hset(
        keys.breaker, mapping={"state": "open", "until_ms": now_ms() + 60_000}
    )
    await asyncio.sleep(0.6)  # past the breaker cache
    degraded = await api.client.get("/health")

    assert healthy.status_code == 200
    assert healthy.json() == {
        "status": "ok",
        "kafka": {"ok": True, "error": None},
        "redis": {"ok": True, "error": None},
        "backend": {"circuit": "closed", "name": None},
    }
    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded"
    assert degraded.json()["backend"] == {"circuit": "open", "name": "modal"}


async def test_redis_down_fails_closed(start_app: StartApp) -> None:
    """Without Redis the API still starts, reports 503 and refuses requests fast."""
    dead = SecretStr(f"redis://127.0.0.1:{free_port()}/0")
    api = await start_app(redis_url=dead)

    health = await api.client.get("/health")
    parse = await api.client.post("/parse", json=parse_json())
    lookup = await api.client.get("/parse/0123456789abcdef")
    status = await api.client.get("/queue/status")

    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert health.json()["redis"]["ok"] is False
    assert health.json()["kafka"]["ok"] is True
    for response in (parse, lookup, status):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "redis_unavailable"
        assert "Retry-After" in response.headers


async def test_queue_status_reports_depth_lag_and_throughput(
    start_app: StartApp,
    start_fake_worker: StartWorker,
    redis_client: Redis,
    keys: Keys,
) -> None:
    """Depth and lag count waiting work; once answered, throughput is measured."""
    api = await start_app(queue_capacity=100)
    worker = await start_fake_worker()
    worker.pause()
    await redis_client.set(f"{keys.prefix}:inflight", 2)
    callers = [
        asyncio.create_task(api.client.post("/parse", json=parse_json(i)))
        for i in range(3)
    ]
    await worker.wait_seen(3)

    async def status() -> dict[str, Any]:
        response = await api.client.get("/queue/status")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    busy = await eventually(
        status, lambda s: bool((s["consumer_lag"] or {}).get("total"))
    )
    worker.resume()
    await asyncio.gather(*callers)
    idle = await eventually(status, lambda s: s["consumer_lag"]["total"] == 0)

    assert busy["depth"] == 3
    assert (busy["capacity"], busy["threshold"]) == (100, 83)
    assert busy["utilization"] == 0.03
    assert busy["backpressure"] is False
    assert busy["batches_in_flight"] == 2
    assert busy["consumer_lag"]["total"] == 3
    assert len(busy["consumer_lag"]["partitions"]) == 4
    assert idle["depth"] == 0
    assert idle["throughput_per_second"] > 0
    assert idle["estimated_wait_seconds"] == 0
    committed = [p["committed_offset"] for p in idle["consumer_lag"]["partitions"]]
    assert sum(c or 0 for c in committed) == 3


async def test_metrics_count_requests_by_outcome_without_ids(
    start_app: StartApp, start_fake_worker: StartWorker
) -> None:
    """Prometheus sees answers by outcome, status and code, never a request id."""
    api = await start_app()
    await start_fake_worker()
    ok = await api.client.post("/parse", json=parse_json())
    await api.client.post(
        "/parse", content=b"nope", headers={"Content-Type": "application/json"}
    )

    text = (await api.client.get("/metrics")).text

    assert 'dolphin_api_requests_total{code="",outcome="ok",status="200"} 1.0' in text
    assert (
        'dolphin_api_requests_total{code="invalid_json",outcome="invalid",'
        'status="400"} 1.0' in text
    )
    assert "dolphin_api_request_duration_seconds_bucket" in text
    assert 'le="1800.0"' in text
    assert "dolphin_api_queue_capacity 10000.0" in text
    assert "\ndolphin_api_queue_depth " in text
    assert "dolphin_api_inflight_requests 0.0" in text
    assert "dolphin_api_replies_dropped_total" in text
    assert ok.json()["request_id"] not in text


async def test_openapi_documents_every_error_code(start_app: StartApp) -> None:
    """Each status of POST /parse lists all codes it can carry, with the shape."""
    api = await start_app()

    document = (await api.client.get("/openapi.json")).json()
    post = document["paths"]["/parse"]["post"]
    get = document["paths"]["/parse/{request_id}"]["get"]

    documented = {
        code
        for response in [*post["responses"].values(), *get["responses"].values()]
        for code in response.get("content", {})
        .get("application/json", {})
        .get("examples", {})
    }
    route_level = {"method_not_allowed"}
    assert documented == set(CATALOG) - route_level
    assert set(post["requestBody"]["content"]) == {
        "application/json", "multipart/form-data",
    }  # fmt: skip
    assert "ErrorBody" in document["components"]["schemas"]
    assert (await api.client.get("/docs")).status_code == 200


async def test_one_reply_wakes_every_waiter_of_that_id(start_app: StartApp) -> None:
    """Replies are routed by id to all local waiters; others are counted as dropped."""
    api = await start_app()
    router = api.ctx.router
    first, second = router.subscribe("abc"), router.subscribe("abc")

    router.deliver(b"abc", b'{"success": true}')
    router.deliver(b"other", b'{"success": true}')
    router.deliver(b"abc", b"not json")

    assert first.result() == second.result() == {"success": True}
    metrics = httpx.Response(200, content=api.ctx.metrics.render()).text
    assert "dolphin_api_replies_dropped_total 2.0" in metrics
