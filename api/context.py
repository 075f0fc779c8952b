"""The parts of one API app that every route shares."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from common.settings import Settings
from common.store import Keys

from .admission import Admission
from .breaker import BreakerView
from .kafka_status import KafkaInspector
from .metrics import ApiMetrics
from .producer import RequestProducer
from .ratelimit import RateLimiter
from .replies import ReplyRouter

REDIS_CONNECT_TIMEOUT_S = 1.0
REDIS_SOCKET_TIMEOUT_S = 5.0
# Commands beyond this many at once wait for a free connection (up to the
# socket timeout) instead of failing: a burst of callers is not an outage.
REDIS_MAX_CONNECTIONS = 64


@dataclass(slots=True)
class ApiContext:
    """Everything the routes share; one per app, built by ``create_app``."""

    settings: Settings
    keys: Keys
    redis: Redis
    metrics: ApiMetrics
    admission: Admission
    rate_limiter: RateLimiter
    breaker: BreakerView
    producer: RequestProducer
    router: ReplyRouter
    inspector: KafkaInspector
    uploads: asyncio.Semaphore
    """Bounds the requests reading, checking and producing their image at once."""

    @classmethod
    def build(cls, settings: Settings) -> ApiContext:
        keys = Keys(settings.redis_key_prefix)
        redis = connect_redis(settings)
        metrics = ApiMetrics()
        metrics.queue_capacity.set(settings.queue_capacity)
        inspector = KafkaInspector(settings)
        return cls(
            settings=settings,
            keys=keys,
            redis=redis,
            metrics=metrics,
            admission=Admission(redis, keys, settings),
            rate_limiter=RateLimiter(redis, keys, settings.rate_limit_per_minute),
            breaker=BreakerView(redis, keys, settings.breaker_cooldown_s),
            producer=RequestProducer(settings, probe=inspector.reachable),
            router=ReplyRouter(settings, metrics, inspector.partitions),
            inspector=inspector,
            uploads=asyncio.Semaphore(settings.max_concurrent_uploads),
        )


def connect_redis(settings: Settings) -> Redis:
    # One quick retry rides out a dropped connection; a down Redis fails fast.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url.get_secret_value(),
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), retries=1),
    )
    return Redis(connection_pool=pool)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx
