"""One real stack per test module: the Modal simulator, a worker and an API.

The session's Kafka broker and Redis server are shared; each stack gets its own
topics, consumer group and Redis prefix, so modules never see each other's
traffic. Processes run as subprocesses with JSON logs at DEBUG, as in
production but chattier.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator, SimConfig, start_in_thread
from common.kafka import ensure_topics
from common.settings import Settings
from infra.localstack.procs import free_port
from tests.conftest import ServiceProcess
from tests.observability.scrape import Scrape, scrape
from tests.stream.worker_kit import worker_env

PARTITIONS = 4


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    simulator: RunningSimulator
    worker: ServiceProcess
    api: ServiceProcess | None
    redis: Redis

    @property
    def api_url(self) -> str:
        assert self.api is not None, "this stack runs no API"
        return self.api.url

    async def scrape_api(self) -> Scrape:
        return await scrape(self.api_url)

    async def scrape_worker(self) -> Scrape:
        return await scrape(self.worker.url)


MakeStack = Callable[..., Awaitable[Stack]]


def stack_env(kafka_bootstrap: str, redis_url: str, namespace: str) -> dict[str, str]:
    """The environment of a stack's processes: shared services, own names."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "DOLPHIN_REQUESTS_TOPIC": f"{namespace}.dolphin.parse.requests",
        "DOLPHIN_REPLIES_TOPIC": f"{namespace}.dolphin.parse.replies",
        "DOLPHIN_DLQ_TOPIC": f"{namespace}.dolphin.parse.dlq",
        "DOLPHIN_CONSUMER_GROUP": f"{namespace}-dolphin-connector",
        "DOLPHIN_REDIS_KEY_PREFIX": namespace,
        "DOLPHIN_TOPIC_PARTITIONS": str(PARTITIONS),
        "DOLPHIN_REQUEST_TIMEOUT_S": "120",
        "LOG_LEVEL": "DEBUG",
        "DOLPHIN_LOG_FORMAT": "json",
    }


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        redis_url=env["REDIS_URL"],
        requests_topic=env["DOLPHIN_REQUESTS_TOPIC"],
        replies_topic=env["DOLPHIN_REPLIES_TOPIC"],
        dlq_topic=env["DOLPHIN_DLQ_TOPIC"],
        consumer_group=env["DOLPHIN_CONSUMER_GROUP"],
        redis_key_prefix=env["DOLPHIN_REDIS_KEY_PREFIX"],
        topic_partitions=int(env["DOLPHIN_TOPIC_PARTITIONS"]),
    )


@pytest.fixture(scope="module")
async def make_stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MakeStack]:
    """Factory: start a stack; everything it started stops with the module."""
    simulators: list[RunningSimulator] = []
    processes: list[ServiceProcess] = []
    clients: list[Redis] = []

    async def start(
        *,
        api: bool = True,
        api_env: dict[str, str] | None = None,
        worker_overrides: dict[str, str] | None = None,
    ) -> Stack:
        logs = tmp_path_factory.mktemp("stack")
        env = stack_env(kafka_bootstrap, redis_url, f"o{uuid.uuid4().hex[:10]}")
        settings = settings_of(env)
        await ensure_topics(settings)

        simulator = start_in_thread(
            SimConfig(fixed_ms=40, per_image_ms=2, containers=4)
        )
        simulators.append(simulator)
        worker = _spawn(
            "worker",
            {**env, **worker_env(simulator), **(worker_overrides or {})},
            logs,
        )
        processes.append(worker)
        api_process = None
        if api:
            api_process = _spawn("api", {**env, **(api_env or {})}, logs)
            processes.append(api_process)

        # Both boot at once; on two cores that halves the wait.
        worker.wait_healthy()
        if api_process is not None:
            api_process.wait_healthy()
        redis = Redis.from_url(redis_url)
        clients.append(redis)
        return Stack(settings, env, simulator, worker, api_process, redis)

    yield start
    for process in reversed(processes):
        process.stop()
    for simulator in simulators:
        simulator.stop()
    for client in clients:
        await client.aclose()


def _spawn(name: str, env: dict[str, str], logs: Path) -> ServiceProcess:
    port = free_port()
    module = "stream.main" if name == "worker" else "api.main"
    port_var = "DOLPHIN_WORKER_PORT" if name == "worker" else "DOLPHIN_API_PORT"
    return ServiceProcess(
        name,
        [sys.executable, "-m", module],
        {**env, port_var: str(port)},
        logs / f"{name}.log",
        port,
    )
