"""Operational routes: /health, /queue/status and /metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from redis.exceptions import RedisError

from common.store import answered_per_second

from .context import ApiContext, context
from .errors import json_response
from .models import (
    STATUS_CODES,
    BackendHealth,
    DependencyHealth,
    Health,
    QueueStatus,
    error_responses,
)
from .routes import authenticate, bearer

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

REDIS_PING_TIMEOUT_S = 1.0


async def _redis_health(ctx: ApiContext) -> DependencyHealth:
    try:
        await asyncio.wait_for(ctx.redis.ping(), REDIS_PING_TIMEOUT_S)
        return DependencyHealth(ok=True)
    except (RedisError, OSError, TimeoutError) as exc:
        return DependencyHealth(ok=False, error=type(exc).__name__)


async def _backend_health(ctx: ApiContext) -> BackendHealth:
    try:
        breaker = await ctx.breaker.read()
        name = await ctx.redis.get(ctx.keys.backend)
    except (RedisError, OSError) as exc:
        logger.debug("backend_state_unreadable", extra={"error": repr(exc)})
        return BackendHealth(circuit="unknown")
    if isinstance(name, bytes):
        name = name.decode()
    if breaker.state == "open":
        return BackendHealth(circuit="open", name=name)
    if breaker.state == "half_open":
        return BackendHealth(circuit="half_open", name=name)
    return BackendHealth(circuit="closed", name=name)


@router.get(
    "/health",
    response_model=Health,
    summary="Liveness and readiness: Kafka, Redis and the backend circuit",
    responses={503: {"model": Health, "description": "Kafka or Redis is down."}},
)
async def health(request: Request) -> Response:
    ctx = context(request)
    kafka, redis, backend = await asyncio.gather(
        ctx.inspector.health(), _redis_health(ctx), _backend_health(ctx)
    )
    up = kafka.ok and redis.ok
    status: Literal["ok", "degraded", "unavailable"] = "ok"
    if not up:
        status = "unavailable"
    elif backend.circuit == "open":
        status = "degraded"
    report = Health(
        status=status,
        kafka=DependencyHealth(ok=kafka.ok, error=kafka.error),
        redis=redis,
        backend=backend,
    )
    return json_response(report.model_dump(), 200 if up else 503)


@router.get(
    "/queue/status",
    response_model=QueueStatus,
    summary="Queue depth, capacity, worker lag, throughput and expected wait",
    responses=error_responses(*STATUS_CODES),
)
async def queue_status(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    ctx = context(request)
    authenticate(ctx, request, credentials)
    settings = ctx.settings

    depth = await ctx.admission.depth()
    throughput = await answered_per_second(ctx.redis, ctx.keys)
    inflight = _count(await ctx.redis.get(ctx.keys.inflight))
    lag = await ctx.inspector.consumer_lag()
    ctx.metrics.queue_depth.set(depth)

    status = QueueStatus(
        depth=depth,
        capacity=settings.queue_capacity,
        threshold=ctx.admission.limit,
        utilization=round(depth / settings.queue_capacity, 4),
        backpressure=depth >= ctx.admission.limit,
        consumer_lag=lag,
        batches_in_flight=inflight,
        throughput_per_second=round(throughput, 3),
        estimated_wait_seconds=round(depth / throughput, 1) if throughput else None,
    )
    return json_response(status.model_dump(), 200)


def _count(raw: bytes | str | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    ctx = context(request)
    try:
        ctx.metrics.queue_depth.set(await ctx.admission.depth())
    except (RedisError, OSError):
        logger.debug("queue_depth_unavailable_for_metrics")
    return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)
