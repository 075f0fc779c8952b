"""The worker's parts, wired together and started and stopped in order.

    requests topic ─> RequestConsumer ─> Pipeline ─> Batcher ─> backend
                          ^ commits          |  answers (reply, store) <─┘
                          └── OffsetLedger <─┘

Start: topics exist, producer, breaker state, batcher, consumer, then the
background loops (intake, commits, lag, status for the API). Stop: intake ends,
running batches get ``shutdown_grace_s`` to finish and be answered, the
answered offsets are committed, and the clients close. Whatever was not
answered stays uncommitted and is consumed again by whoever owns its partition
next; its stored result, if it got one, answers it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from common.kafka import ensure_topics
from common.settings import Settings
from common.store import Keys
from stream.backends import make_backend
from stream.batching.batcher import Batcher
from stream.batching.stats import BatchRecord
from stream.breaker import Breaker

from . import metrics
from .consumer import RequestConsumer
from .dispatch import DispatchCheck
from .dlq import DeadLetters
from .instrumented import InstrumentedBackend
from .pipeline import Pipeline
from .producing import DeliveryAbandoned, ReliableProducer, Retrier
from .replies import Answers
from .topics import TopicDirectory

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0
STATUS_TTL_S = 10
BACKEND_HEALTH_TTL_S = 5.0
BACKEND_HEALTH_TIMEOUT_S = 3.0
TOPICS_READY_TIMEOUT_S = 60.0
REDIS_MAX_CONNECTIONS = 64
REDIS_POOL_TIMEOUT_S = 30.0

OnFatal = Callable[[BaseException], Awaitable[None]]


class Worker:
    """Everything between the requests topic and the replies."""

    def __init__(self, settings: Settings, *, on_fatal: OnFatal) -> None:
        self.settings = settings
        self._on_fatal = on_fatal
        self._stopping = False
        self.keys = Keys(settings.redis_key_prefix)
        # Answers of whole batches run at once; past the pool size they queue
        # for a connection instead of failing.
        self.redis = Redis(
            connection_pool=BlockingConnectionPool.from_url(
                settings.redis_url.get_secret_value(),
                max_connections=REDIS_MAX_CONNECTIONS,
                timeout=REDIS_POOL_TIMEOUT_S,
            )
        )
        self.retrier = Retrier()
        self.producer = ReliableProducer(settings, self.retrier)
        self.backend = InstrumentedBackend(make_backend(settings))
        self.breaker = Breaker.from_settings(settings, self.redis)
        self.pipeline = Pipeline(
            settings,
            redis=self.redis,
            answers=Answers(
                self.producer,
                self.redis,
                self.keys,
                self.retrier,
                result_ttl_s=settings.result_ttl_s,
            ),
            dead_letters=DeadLetters(self.producer, settings.dlq_topic),
            topics=TopicDirectory(self._list_topics),
            retrier=self.retrier,
        )
        dispatch = DispatchCheck(
            self.redis,
            self.keys,
            state_ttl_s=settings.result_ttl_s,
            sent_at=self.pipeline.sent_at,
        )
        self.batcher = Batcher(
            self.backend,
            settings,
            self.pipeline.on_result,
            cancelled=dispatch.cancelled,
            breaker=self.breaker,
            on_batch=_observe_batch,
        )
        self.pipeline.attach(self.batcher)
        self.consumer = RequestConsumer(
            settings, self.pipeline, release_waiting=self._release_waiting
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._intake: asyncio.Task[None] | None = None
        self._backend_health: tuple[float, dict[str, Any]] | None = None

    # --- Lifecycle ---

    async def start(self) -> None:
        await self._ensure_topics()
        # Load the embedded parser's models before taking work, so the first
        # batch is not slowed by it and a missing model fails start-up.
        warm_up = getattr(self.backend.inner, "warm_up", None)
        if warm_up is not None:
            await warm_up()
        await self.producer.start()
        await self.breaker.publish()
        self.batcher.start()
        await self.consumer.start()
        self._intake = self._spawn(self._run_intake())
        self._spawn(self.consumer.commit_loop())
        self._spawn(self.consumer.lag_loop())
        self._spawn(self._status_loop())
        logger.info(
            "worker_started",
            extra={
                "backend": self.backend.name,
                "requests_topic": self.settings.requests_topic,
                "group": self.settings.consumer_group,
            },
        )

    async def stop(self) -> None:
        """Drain: stop intake, finish running batches, answer, commit, leave."""
        self._stopping = True
        logger.info(
            "worker_stopping", extra={"grace_s": self.settings.shutdown_grace_s}
        )
        self.retrier.stopping.set()
        self.consumer.stop_intake()
        if self._intake is not None:
            await _cancel(self._intake)
        unanswered = await self.batcher.stop(self.settings.shutdown_grace_s)
        self.pipeline.forget(unanswered)
        for task in self._tasks:
            await _cancel(task)
        with contextlib.suppress(KafkaError, OSError):
            await self.consumer.stop()
        await self.producer.stop()
        await self.backend.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self.keys.inflight)
        await self.redis.aclose()
        logger.info(
            "worker_stopped",
            extra={"unanswered_left_for_redelivery": len(unanswered)},
        )

    async def _ensure_topics(self) -> None:
        deadline_s = time.monotonic() + TOPICS_READY_TIMEOUT_S
        while True:
            try:
                await ensure_topics(self.settings)
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                if time.monotonic() > deadline_s:
                    raise
                logger.warning("kafka_not_ready", extra={"error": repr(exc)})
                await asyncio.sleep(2.0)

    async def _run_intake(self) -> None:
        try:
            await self.consumer.run()
        except asyncio.CancelledError:
            raise
        except DeliveryAbandoned:
            # Shutdown: what was not answered stays unacked for redelivery.
            return
        except Exception as exc:
            # Without intake the worker is useless; exit non-zero to be restarted.
            logger.exception("intake_failed")
            await self._on_fatal(exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    def _release_waiting(self, tps: Collection[TopicPartition]) -> None:
        given_back = self.batcher.discard(self.pipeline.waiting_only_in(tps))
        self.pipeline.forget(given_back)
        if given_back:
            logger.info("waiting_requests_given_back", extra={"count": len(given_back)})

    async def _list_topics(self) -> set[str]:
        return await self.consumer.list_topics()

    # --- Status for the API and for /health ---

    async def _status_loop(self) -> None:
        while True:
            metrics.BREAKER_STATE.set(
                metrics.BREAKER_STATES.get(self.breaker.state.value, 0)
            )
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.set(
                        self.keys.inflight, self.backend.in_flight, ex=STATUS_TTL_S
                    )
                    pipe.set(self.keys.backend, self.backend.name, ex=STATUS_TTL_S * 3)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                logger.warning("status_write_failed", extra={"error": repr(exc)})
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def health(self) -> tuple[bool, dict[str, Any]]:
        intake_alive = self._intake is not None and not self._intake.done()
        running = self.consumer.started and intake_alive and not self._stopping
        stats = self.batcher.stats()
        body: dict[str, Any] = {
            "consumer": {
                "running": running,
                "group": self.settings.consumer_group,
                "topic": self.settings.requests_topic,
                "assigned_partitions": sorted(
                    tp.partition for tp in self.consumer.assignment
                ),
                "unanswered": self.consumer.ledger.unanswered,
            },
            "backend": await self._check_backend(),
            "breaker": {
                "state": self.breaker.state.value,
                "failures": self.breaker.failures,
            },
            "batcher": {
                "waiting": stats.waiting,
                "held": stats.held,
                "in_flight_batches": self.backend.in_flight,
                "slots": stats.slots,
            },
        }
        return running, body

    async def _check_backend(self) -> dict[str, Any]:
        now_s = time.monotonic()
        if (
            self._backend_health
            and now_s - self._backend_health[0] < BACKEND_HEALTH_TTL_S
        ):
            return self._backend_health[1]
        try:
            report = await asyncio.wait_for(
                self.backend.health(), BACKEND_HEALTH_TIMEOUT_S
            )
            checked = {
                "name": report.name,
                "healthy": report.healthy,
                "detail": report.detail,
            }
        except Exception as exc:
            checked = {"name": self.backend.name, "healthy": False, "detail": repr(exc)}
        self._backend_health = (now_s, checked)
        return checked


def _observe_batch(record: BatchRecord) -> None:
    metrics.BATCH_SIZE.observe(record.size)
    metrics.BATCH_DURATION.observe(record.wall_s)
    metrics.BACKEND_SECONDS.inc(record.backend_s)
    if record.ok:
        metrics.IMAGES.inc(record.size)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
