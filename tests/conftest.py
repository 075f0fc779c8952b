"""Session-wide services and factories for processes under test."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from common.kafka import ensure_topics
from common.settings import Settings
from infra.localstack.procs import REPO_ROOT, free_port, spawn, stop_group
from tests.services import KafkaControl, RedisControl, kafka_service, redis_service


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def _kafka(services_dir: Path) -> Iterator[tuple[str, KafkaControl]]:
    with kafka_service(services_dir) as service:
        yield service


@pytest.fixture(scope="session")
def _redis(services_dir: Path) -> Iterator[tuple[str, RedisControl]]:
    with redis_service(services_dir) as service:
        yield service


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka: tuple[str, KafkaControl]) -> str:
    """Address of a real Kafka broker shared by the session."""
    return _kafka[0]


@pytest.fixture(scope="session")
def kafka_control(_kafka: tuple[str, KafkaControl]) -> KafkaControl:
    return _kafka[1]


@pytest.fixture(scope="session")
def redis_url(_redis: tuple[str, RedisControl]) -> str:
    """URL of a real Redis server shared by the session."""
    return _redis[0]


@pytest.fixture(scope="session")
def redis_control(_redis: tuple[str, RedisControl]) -> RedisControl:
    return _redis[1]


@pytest.fixture
def namespace() -> str:
    """A fresh prefix, so tests sharing the broker and Redis never see each other."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings_env(
    kafka_bootstrap: str, redis_url: str, namespace: str
) -> dict[str, str]:
    """Environment for processes under test: the session's services, own names."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "DOLPHIN_REQUESTS_TOPIC": f"{namespace}.dolphin.parse.requests",
        "DOLPHIN_REPLIES_TOPIC": f"{namespace}.dolphin.parse.replies",
        "DOLPHIN_DLQ_TOPIC": f"{namespace}.dolphin.parse.dlq",
        "DOLPHIN_CONSUMER_GROUP": f"{namespace}-dolphin-connector",
        "DOLPHIN_REDIS_KEY_PREFIX": namespace,
        "DOLPHIN_TOPIC_PARTITIONS": "4",
        "LOG_LEVEL": "DEBUG",
        "DOLPHIN_LOG_FORMAT": "json",
    }


@pytest.fixture
async def settings(settings_env: dict[str, str]) -> Settings:
    """Settings matching ``settings_env``, with the topics created."""
    values = Settings(
        kafka_bootstrap_servers=settings_env["KAFKA_BOOTSTRAP_SERVERS"],
        redis_url=settings_env["REDIS_URL"],
        requests_topic=settings_env["DOLPHIN_REQUESTS_TOPIC"],
        replies_topic=settings_env["DOLPHIN_REPLIES_TOPIC"],
        dlq_topic=settings_env["DOLPHIN_DLQ_TOPIC"],
        consumer_group=settings_env["DOLPHIN_CONSUMER_GROUP"],
        redis_key_prefix=settings_env["DOLPHIN_REDIS_KEY_PREFIX"],
        topic_partitions=int(settings_env["DOLPHIN_TOPIC_PARTITIONS"]),
    )
    await ensure_topics(values)
    return values


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class ServiceProcess:
    """A worker or API run as a real subprocess, with its log kept for asserts."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, port: int
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.port = port
        self.proc = spawn(argv, log, env=_clean_env(env))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, path: str = "/health", timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_text()[-4000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not healthy:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except Exception:
                stop_group(self.proc.pid, 5)
        return self.proc.returncode if self.proc.returncode is not None else -9

    def restart(self) -> None:
        self.terminate()
        self.proc = spawn(self.argv, self.log, env=_clean_env(self.env))

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_group(self.proc.pid, 10)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    # Settings reject unknown DOLPHIN_* names, so the test runner's own are dropped.
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOLPHIN_")}
    base.pop("CONFIG_PATH", None)
    return {**base, **extra}


StartService = Callable[..., ServiceProcess]


@contextlib.contextmanager
def _service_factory(
    name: str, module: str, port_variable: str, env: dict[str, str], logs: Path
) -> Iterator[StartService]:
    """Start ``python -m module`` subprocesses on free ports; stop them all after."""
    started: list[ServiceProcess] = []

    def start(wait: bool = True, **overrides: str) -> ServiceProcess:
        port = free_port()
        full = {**env, port_variable: str(port), **overrides}
        log = logs / f"{name}-{len(started)}.log"
        argv = [sys.executable, "-m", module]
        proc = ServiceProcess(name, argv, full, log, port)
        started.append(proc)
        if wait:
            proc.wait_healthy()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
def start_worker(
    settings_env: dict[str, str], tmp_path: Path
) -> Iterator[StartService]:
    """Factory: start a worker subprocess with ``settings_env`` plus overrides."""
    with _service_factory(
        "worker", "stream.main", "DOLPHIN_WORKER_PORT", settings_env, tmp_path
    ) as start:
        yield start


@pytest.fixture
def start_api(settings_env: dict[str, str], tmp_path: Path) -> Iterator[StartService]:
    """Factory: start an API subprocess with ``settings_env`` plus overrides."""
    with _service_factory(
        "api", "api.main", "DOLPHIN_API_PORT", settings_env, tmp_path
    ) as start:
        yield start


__all__ = ["REPO_ROOT", "ServiceProcess", "StartService"]
